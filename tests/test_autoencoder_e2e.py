"""End to end: experiments/train on the autoencoder's MNIST smoke config, and its scale factor."""

import json

import pytest

from jaxgen.config import ConfigError
from jaxgen.train import autoencoder
from tests.e2e import run_script

pytestmark = pytest.mark.slow


def test_autoencoder_smoke_run_logs_reconstruction_and_scale_factor(tmp_path):
    workdir = tmp_path / "ae"
    with pytest.raises(ConfigError, match="no latent_scale/scale_factor"):
        autoencoder.read_scale_factor(str(workdir))
    run_script("train", "--config=configs/autoencoder/mnist.py:smoke", f"--workdir={workdir}")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20]
    assert evals[-1]["reconstruction/l1"] < evals[0]["reconstruction/l1"]
    scale = autoencoder.read_scale_factor(str(workdir))
    assert scale == pytest.approx(evals[-1]["latent_scale/z_std"] ** -1) and scale > 0
    assert (workdir / "samples" / "reconstruction_0000020.png").is_file()
    assert (workdir / "tokenizer.json").is_file()  # the captions kind's tokenizer, saved
