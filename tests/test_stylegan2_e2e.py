"""End to end: experiments/train on the StyleGAN2 MNIST smoke config, a resume, the sample
script's grids (samples, style mixing, interpolation) and evaluate --evals=fid,kid,is.

Real MNIST from ../shared/data when present (conftest sets JAXGEN_DATA_DIR).
"""

import json
import os
import shutil

import numpy as np
import pytest

from tests.e2e import comparable_metrics, final_params, run_script

pytestmark = pytest.mark.slow

SMOKE = "configs/stylegan2/mnist.py:smoke"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stylegan2_smoke")
    result = run_script("train", f"--config={SMOKE}", f"--workdir={workdir}", timeout=1800)
    return workdir, result


def test_smoke_run_leaves_metrics_checkpoints_and_grids(smoke_run):
    workdir, result = smoke_run
    config = json.loads((workdir / "config.json").read_text())
    assert config["family"] == "stylegan2" and config["train"]["num_steps"] == 20
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    for row in train_rows:
        for key in ("loss", "d_loss", "g_loss", "r1", "pl_penalty", "pl_mean", "ema_beta"):
            assert np.isfinite(row[key]), (row["step"], key)
        assert row["r1"] > 0 and row["pl_penalty"] > 0  # both lazy phases ran by step 5
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
    names = set(os.listdir(workdir / "samples"))
    for name in ("samples", "mixing_coarse", "mixing_middle", "mixing_fine", "interpolation"):
        assert f"{name}_0000020.png" in names, names
    from PIL import Image

    with Image.open(workdir / "samples" / "mixing_coarse_0000020.png") as image:
        # 2 row sources x 3 column sources plus the source row and column: 3 x 4 cells of 28px.
        assert image.size == (4 * 30 + 2, 3 * 30 + 2)


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(smoke_run, tmp_path):
    source, _ = smoke_run
    resumed = tmp_path / "resumed"
    shutil.copytree(source, resumed)
    shutil.rmtree(resumed / "checkpoints" / "20")
    result = run_script("train", f"--config={SMOKE}", f"--workdir={resumed}", timeout=1800)
    assert "resumed from step 10" in result.stderr
    assert comparable_metrics(resumed) == comparable_metrics(source)
    expected, actual = final_params(source, 20), final_params(resumed, 20)
    assert expected.keys() == actual.keys()
    assert any("w_avg" in key for key in expected) and any("pl_mean" in key for key in expected)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def test_sample_script_writes_truncated_grids(smoke_run):
    workdir, _ = smoke_run
    result = run_script(
        "sample",
        f"--workdir={workdir}",
        "--config.sample.truncation_psi=0.5",
        "--config.sample.noise_mode=none",
        "--config.sample.seed=3",
    )
    paths = result.stdout.split()
    assert any(p.endswith("samples_0000020_seed3_psi0.5_none.png") for p in paths), paths
    assert any(p.endswith("mixing_middle_0000020_seed3_psi0.5_none.png") for p in paths)


def test_evaluate_scores_fid_kid_is(smoke_run, tmp_path):
    workdir, _ = smoke_run
    cache = tmp_path / "cache"
    env = {"JAXGEN_CACHE_DIR": str(cache)}
    run_script("build_domain_network", "--dataset=mnist", "--smoke", "--num_examples=512", env=env)
    small = []
    for name in ("fid", "kid", "inception_score"):
        small += [f"--config.evals.{name}.num_samples=256", f"--config.evals.{name}.batch_size=128"]
    small += ["--config.evals.fid.num_examples=512", "--config.evals.kid.num_examples=512"]
    small += ["--config.evals.kid.subset_size=100", "--config.evals.inception_score.splits=4"]
    run_script("evaluate", f"--workdir={workdir}", "--evals=fid,kid,is", *small, env=env)
    scores = json.loads((workdir / "eval_20.json").read_text())
    assert scores["fid/fid"] > 0 and np.isfinite(scores["kid/kid"])
    assert 1 <= scores["inception_score/is"] <= 10
    assert "discriminator/d_real" in scores  # the run's own entry still runs
