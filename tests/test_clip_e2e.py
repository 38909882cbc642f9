"""End to end: experiments/train on the CLIP MNIST smoke config."""

import json

import pytest

from tests.e2e import run_script

pytestmark = pytest.mark.slow


def test_clip_smoke_run_logs_clip_scores(tmp_path):
    workdir = tmp_path / "clip"
    run_script("train", "--config=configs/clip/mnist.py:smoke", f"--workdir={workdir}")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20] and evals[-1]["clip_score/count"] == 64
    assert 0 <= evals[-1]["clip_score/score"] <= 100
    assert train[-1]["loss"] < train[0]["loss"]
    assert (workdir / "tokenizer.json").is_file()
