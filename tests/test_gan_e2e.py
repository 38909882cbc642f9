"""End to end: experiments/train and sample on the MNIST DCGAN smoke config, then a resume.

Real MNIST from ../shared/data when present (conftest sets JAXGEN_DATA_DIR).
"""

import json
import os
import shutil
import time

import numpy as np
import pytest

from tests.e2e import comparable_metrics, final_params, run_script

pytestmark = pytest.mark.slow

SMOKE = "configs/gan/mnist_dcgan.py:smoke"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gan_smoke")
    start = time.perf_counter()
    result = run_script("train", f"--config={SMOKE}", f"--workdir={workdir}")
    return workdir, result, time.perf_counter() - start


def test_smoke_run_leaves_config_metrics_checkpoints_and_samples(smoke_run):
    workdir, result, seconds = smoke_run
    # A hang guard only (about 20 s of CPU time idle); speed lives in benchmarks/.
    assert seconds < 300, f"smoke run took {seconds:.0f}s"
    config = json.loads((workdir / "config.json").read_text())
    assert config["family"] == "gan" and config["train"]["num_steps"] == 20
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    assert [r["step"] for r in eval_rows] == [10, 20]
    for row in train_rows:
        for key in ("loss", "d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm"):
            assert np.isfinite(row[key]), (row["step"], key)
    assert all(r["discriminator/count"] == 128 for r in eval_rows)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
    assert "samples_0000020.png" in os.listdir(workdir / "samples")
    assert str(workdir / "samples" / "samples_0000020.png") in result.stdout
    from PIL import Image

    with Image.open(workdir / "samples" / "samples_0000020.png") as image:
        assert image.size == (4 * 30 + 2, 4 * 30 + 2)  # 16 samples: a 4x4 grid of 28px + padding
        pixels = np.asarray(image)
    assert pixels.std() > 0  # not a blank grid


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(smoke_run, tmp_path):
    """Drop the step-20 checkpoint of a copy, re-run: it resumes at 10 and ends equal."""
    source, _, _ = smoke_run
    resumed = tmp_path / "resumed"
    shutil.copytree(source, resumed)
    shutil.rmtree(resumed / "checkpoints" / "20")
    result = run_script("train", f"--config={SMOKE}", f"--workdir={resumed}")
    assert "resumed from step 10" in result.stderr
    assert comparable_metrics(resumed) == comparable_metrics(source)
    expected, actual = final_params(source, 20), final_params(resumed, 20)
    assert expected.keys() == actual.keys()
    assert any("model_state" in key for key in expected)  # BatchNorm state is checkpointed
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def test_sample_script_writes_a_grid(smoke_run):
    workdir, _, _ = smoke_run
    result = run_script(
        "sample", f"--workdir={workdir}", "--config.sample.num_samples=4", "--config.sample.seed=3"
    )
    assert any(p.endswith("samples_0000020_seed3.png") for p in result.stdout.split())
