"""End to end: experiments/train, sample and evaluate on the VAE smoke config.

Real MNIST from ../shared/data when present (conftest sets JAXGEN_DATA_DIR).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.e2e import (
    HANG_GUARD,
    LONG,
    SMOKE,
    comparable_metrics,
    final_params,
    run_script,
    script_env,
    stderr_lines,
    wait_for,
)
from tests.helpers import ROOT
from tests.hold import hold_env, reached

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    start = time.perf_counter()
    result = run_script("train", f"--config={SMOKE}", f"--workdir={workdir}")
    return workdir, result, time.perf_counter() - start


def test_smoke_run_leaves_config_metrics_checkpoint_and_samples(smoke_run):
    workdir, result, seconds = smoke_run
    print(
        f"vae smoke run: {seconds:.0f}s"
    )  # a figure, not a bound: speed targets live in benchmarks/
    config = json.loads((workdir / "config.json").read_text())
    assert config["family"] == "vae" and config["train"]["num_steps"] == 20
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    assert [r["step"] for r in eval_rows] == [10, 20]
    assert all(np.isfinite(r["loss"]) for r in train_rows)
    assert all(r["elbo/neg_elbo"] > 0 for r in eval_rows)
    # After 20 steps the (EMA) model beats coin flips on every pixel: 784·log 2 nats.
    assert eval_rows[-1]["elbo/neg_elbo"] < 784 * np.log(2) < eval_rows[0]["elbo/neg_elbo"] + 200
    assert eval_rows[-1]["elbo/count"] == 256
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
    samples = sorted(os.listdir(workdir / "samples"))
    assert "prior_0000020.png" in samples and "interpolation_0000020.png" in samples
    assert str(workdir / "samples") in result.stdout


def test_sample_script_writes_pngs_with_overrides(smoke_run):
    workdir, _, _ = smoke_run
    result = run_script(
        "sample", f"--workdir={workdir}", "--config.sample.num_samples=4", "--config.sample.seed=7"
    )
    paths = result.stdout.split()
    assert any(p.endswith("prior_0000020_seed7.png") for p in paths)
    from PIL import Image

    with Image.open([p for p in paths if "prior" in p][0]) as image:
        assert image.size == (2 * 30 + 2, 2 * 30 + 2)  # 4 samples -> 2x2 grid of 28px + padding


def test_evaluate_script_writes_eval_json(smoke_run):
    workdir, _, _ = smoke_run
    run_script("evaluate", f"--workdir={workdir}", "--config.evals.nll.num_samples=32")
    result = json.loads((workdir / "eval_20.json").read_text())
    assert result["step"] == 20
    # The importance-sampled bound is tighter than the ELBO (same model, many examples).
    assert result["nll/nll"] < result["elbo/neg_elbo"]


BAD_CONFIGS = [
    ("--config.optim.lrr=1", "lrr"),
    ("--config.train.num_steps=abc", "num_steps"),
    ("--config.optim.lr=-0.001", "config.optim.lr"),
    ("--config.train.batch_size=30", "config.train.batch_size"),  # 4 devices
    ("--config.model.name=transformer", "config.model.name"),
    ("--config.loss.name=hinge", "config.loss.name"),
    ("--config.data.name=no_such_dataset", "config.data.name"),
    ("--config.train.eval_every=0", "config.train.eval_every"),
    ("--config.mesh.backend=tpu_magic", "config.mesh.backend"),
    ("--config.data.pixels=symmetric", "config.data.pixels"),
    ("--config.model.dtype=bf16", "config.model.dtype"),
    ("--config.model.latent_dim=8.5", "latent_dim"),
    ("--config.sample.num_samples=6", "config.sample.num_samples"),  # 4 devices
    ("--config.init_from=/no/such/run", "config.init_from"),
    ("--config=configs/vae/no_such_file.py", "no_such_file.py"),
    ("--config=configs/vae/mnist.py:cnn", "unknown argument"),
    ("--config.model.hidden=(5,x)", "config.model.hidden"),
    ("--config.model.latent_dim=0", "config.model.latent_dim"),
]


@pytest.mark.parametrize("override,field", BAD_CONFIGS)
def test_bad_config_is_one_line_naming_the_field_exit_2(tmp_path, override, field):
    start = time.perf_counter()
    result = run_script(
        "train", f"--config={SMOKE}", f"--workdir={tmp_path}", override, devices=4, check=False
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = stderr_lines(result)
    assert len(lines) == 1 and field in lines[0] and lines[0].startswith("error: "), result.stderr
    assert not (tmp_path / "checkpoints").exists()
    assert time.perf_counter() - start < HANG_GUARD  # a hang guard, not a speed limit


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """Kill -9 at seeded random steps; re-running finishes with identical params and metrics.
    Each run is held before its k-th step (tests/hold.py) and killed there: mid-run whatever
    the machine's speed, while the saves, evaluations and samples before it may be in flight."""
    args = LONG
    reference = tmp_path / "reference"
    run_script("train", *args, f"--workdir={reference}")

    killed = tmp_path / "killed"
    rng = random.Random(1234)
    for attempt in range(3):
        hold = tmp_path / f"hold{attempt}"
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.hold", *args, f"--workdir={killed}"],
            cwd=ROOT,
            env=script_env(**hold_env(hold, rng.randint(1, 15))),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_for(lambda hold=hold: reached(hold), process), "the run never reached its hold"
        process.send_signal(signal.SIGKILL)
        process.wait()
    run_script("train", *args, f"--workdir={killed}")

    assert comparable_metrics(killed) == comparable_metrics(reference)
    expected, actual = final_params(reference, 60), final_params(killed, 60)
    assert expected.keys() == actual.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def test_resume_on_another_device_count_and_backend(tmp_path):
    """10 steps on 4 devices under pmap, then 10 more on 1 device, match 20 steps on 1 device."""
    args = [
        f"--config={SMOKE}",
        "--config.train.eval_every=1000",
        "--config.train.sample_every=1000",
        "--config.optim.schedule=constant",  # so stopping at 10 does not change the lr
    ]
    reference, switched = tmp_path / "reference", tmp_path / "switched"
    run_script("train", *args, f"--workdir={reference}")
    run_script(
        "train",
        *args,
        "--config.train.num_steps=10",
        "--config.mesh.backend=pmap",
        f"--workdir={switched}",
        devices=4,
    )
    assert sorted(os.listdir(switched / "checkpoints")) == ["10"]
    run_script("train", *args, f"--workdir={switched}")
    expected, actual = final_params(reference, 20), final_params(switched, 20)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_init_from_starts_from_another_runs_params(smoke_run, tmp_path):
    source, _, _ = smoke_run
    run_script(
        "train",
        f"--config={SMOKE}",
        f"--config.init_from={source}",
        "--config.train.num_steps=1",
        "--config.optim.lr=1e-12",  # one Adam step then moves each param by about 1e-12
        "--config.optim.warmup_steps=0",
        f"--workdir={tmp_path}",
    )
    expected, actual = final_params(source, 20), final_params(tmp_path, 1)
    params = [key for key in expected if key.startswith("['params']")]
    assert params
    for key in params:
        np.testing.assert_allclose(actual[key], expected[key], atol=1e-9, err_msg=key)
    assert actual["['step']"] == 1


def test_bad_override_of_a_runs_config_is_one_line(smoke_run):
    """experiments.sample/evaluate parse overrides against W/config.json: same one-line errors."""
    workdir, _, _ = smoke_run
    for override in ("--config.evals.is.num_samples=3", "--config.sample.no_such_field=1"):
        result = run_script("sample", f"--workdir={workdir}", override, check=False)
        lines = stderr_lines(result)
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        assert lines[0].startswith("error: --config")
