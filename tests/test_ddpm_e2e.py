"""End to end: experiments/train and experiments/sample on the class-conditional DDPM smoke config.

Real MNIST from ../shared/data when present (conftest sets JAXGEN_DATA_DIR).
"""

import json
import time

import numpy as np
import pytest

from tests.e2e import run_script

pytestmark = pytest.mark.slow

SMOKE = "configs/ddpm/mnist_cond.py:smoke"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ddpm_smoke")
    start = time.perf_counter()
    result = run_script("train", f"--config={SMOKE}", f"--workdir={workdir}")
    return workdir, result, time.perf_counter() - start


def test_smoke_run_trains_evaluates_and_samples(smoke_run):
    workdir, result, seconds = smoke_run
    print(f"ddpm smoke run: {seconds:.0f}s")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    assert all(np.isfinite(r["loss"]) for r in train_rows)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert [r["step"] for r in eval_rows] == [10, 20]
    assert all(0 < r["bpd/bpd"] < 50 for r in eval_rows) and eval_rows[-1]["bpd/count"] == 128
    assert (workdir / "samples" / "ddim_0000020.png").exists()
    assert str(workdir / "samples" / "ddim_0000020.png") in result.stdout


def test_sample_script_with_ddim_guidance_and_labels(smoke_run):
    workdir, _, _ = smoke_run
    result = run_script(
        "sample",
        f"--workdir={workdir}",
        "--config.sample.sampler=ddim",
        "--config.sample.num_inference_steps=4",
        "--config.sample.guidance_scale=3",
        "--config.sample.labels=(1,2,5)",
        "--config.sample.seed=7",
    )
    paths = result.stdout.split()
    assert any(p.endswith("ddim_0000020_seed7.png") for p in paths), result.stdout
    from PIL import Image

    with Image.open(paths[-1]) as image:  # 3 rows (labels) x 2 samples per class, 28px + padding
        assert image.size == (2 * 30 + 2, 3 * 30 + 2)


def test_bad_sampler_value_is_one_line_naming_the_field(tmp_path):
    result = run_script(
        "train",
        f"--config={SMOKE}",
        f"--workdir={tmp_path}",
        "--config.sample.num_inference_steps=1000",
        check=False,
    )
    assert result.returncode == 2
    assert "config.sample.num_inference_steps" in result.stderr.strip().splitlines()[-1]
