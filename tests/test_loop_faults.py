"""Faults of the training loop and its writes, through the real experiments/ scripts:
a changed config on resume, Ctrl-C (once and twice), signals during start-up, a full disk at
every write of a run, and the bad inputs that used to give tracebacks."""

import json
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import parallel
from jaxgen.data import sources
from jaxgen.data.errors import DataError
from jaxgen.train import loop
from tests.e2e import (
    HANG_GUARD,
    LONG,
    SMOKE,
    command,
    comparable_metrics,
    final_params,
    run_script,
    script_env,
    start_trainer,
    stderr_lines,
    wait_for,
)
from tests.helpers import ROOT, load_config
from tests.hold import reached

ARGS = [f"--config={SMOKE}", "--config.train.sample_every=10", "--config.train.eval_every=10"]


def error_lines(result_or_text):
    text = result_or_text if isinstance(result_or_text, str) else result_or_text.stderr
    return [line for line in text.splitlines() if line.startswith("error:")]


def committed(workdir):
    folder = workdir / "checkpoints"
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if folder.exists() else []


def leftovers(workdir):
    """Half-written files or Orbax save folders anywhere in the run."""
    return [
        os.path.join(folder, name)
        for folder, dirs, files in os.walk(workdir)
        for name in dirs + files
        if "tmp" in name
    ]


def snapshot(workdir):
    """Every file of the run but the trainer lock (which names the last process to take it)."""
    found = {}
    for folder, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(folder, name)
            if name != ".lock":
                found[os.path.relpath(path, workdir)] = open(path, "rb").read()
    return found


@pytest.fixture(scope="module")
def ten_steps(tmp_path_factory):
    """A smoke run stopped at its checkpoint of step 10 (of 20)."""
    workdir = tmp_path_factory.mktemp("ten")
    run_script("train", *ARGS, "--config.train.num_steps=10", f"--workdir={workdir}")
    return workdir


def copy_run(source, target):
    subprocess.run(["cp", "-r", str(source), str(target)], check=True)
    return target


# --- item 4: a resume compares its config with the saved one before writing anything ---


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, fields",
    [
        (["--config.model.hidden=(128,)"], ["model.hidden: [64] -> [128]"]),
        (["--config.train.batch_size=64"], ["train.batch_size: 32 -> 64"]),
        (["--config=configs/gpt/shakespeare_char.py:smoke"], ["family: 'vae' -> 'gpt'"]),
    ],
)
def test_a_refused_config_change_is_one_line_and_leaves_the_run_untouched(
    ten_steps, tmp_path, override, fields
):
    workdir = copy_run(ten_steps, tmp_path / "run")
    before = snapshot(workdir)
    args = [*ARGS, *override] if override[0].startswith("--config.") else override
    result = run_script("train", *args, f"--workdir={workdir}", check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(stderr_lines(result)) == 1, result.stderr[-3000:]
    assert all(field in error_lines(result)[0] for field in fields), result.stderr
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_an_allowed_config_change_is_printed_recorded_and_never_rewrites_config_json(
    ten_steps, tmp_path
):
    workdir = copy_run(ten_steps, tmp_path / "run")
    saved = (workdir / "config.json").read_bytes()
    result = run_script(
        "train",
        *ARGS,
        "--config.train.num_steps=20",
        "--config.optim.lr=5e-4",
        f"--workdir={workdir}",
    )
    assert "optim.lr: 0.001 -> 0.0005" in result.stderr
    assert (workdir / "config.json").read_bytes() == saved
    rows = [
        json.loads(line) for line in (workdir / "config_changes.jsonl").read_text().splitlines()
    ]
    assert [(row["step"], row["changes"]) for row in rows] == [
        (10, {"optim.lr": [0.001, 0.0005], "train.num_steps": [10, 20]})
    ]
    assert committed(workdir) == [10, 20]


# --- item 5: a full disk at any write of a run ---


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, pattern, named",
    [
        ("train", "*/samples/prior_0000020*", "samples/prior_0000020.png"),
        ("train", "*/metrics.jsonl", "metrics.jsonl"),
        ("train", "*/events.out.tfevents*", "tensorboard"),
        ("sample", "*/samples/*", "samples/"),
        ("evaluate", "*/eval_10.json*", "eval_10.json"),
    ],
)
def test_no_space_left_at_any_write_is_one_line_and_keeps_the_checkpoint(
    ten_steps, tmp_path, script, pattern, named
):
    workdir = copy_run(ten_steps, tmp_path / "run")
    flags = [*ARGS, "--config.train.num_steps=20"] if script == "train" else []
    result = subprocess.run(
        [*command(script, *flags, f"--workdir={workdir}")[:2], "tests.enospc", pattern]
        + command(script, *flags, f"--workdir={workdir}")[2:],
        cwd=ROOT,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith(f"error: could not write {workdir}/"), lines
    assert named in lines[0] and lines[0].endswith(": no space left on device"), lines
    assert committed(workdir)[0] == 10 and not leftovers(workdir)
    for step in committed(workdir):
        params = final_params(workdir, step)
        assert all(np.all(np.isfinite(v)) for v in params.values())


@pytest.mark.slow
def test_no_space_for_config_json_leaves_no_tmp_file(tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [*command("train")[:2], "tests.enospc", "*/config.json*"]
        + command("train", *ARGS, f"--workdir={workdir}")[2:],
        cwd=ROOT,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert error_lines(result) == [
        f"error: could not write {workdir}/config.json: no space left on device"
    ]
    assert not leftovers(workdir) and not (workdir / "config.json").exists()


# --- items 7 and 8: Ctrl-C, twice, and signals during start-up ---


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 60-step run."""
    workdir = tmp_path_factory.mktemp("reference")
    run_script("train", *LONG, f"--workdir={workdir}")
    return workdir


def row_at_least(workdir, step):
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return any(json.loads(line)["step"] >= step for line in lines if line.endswith("}"))


@pytest.mark.slow
def test_ctrl_c_saves_the_step_exits_130_and_the_resumed_run_matches(reference, tmp_path):
    hold = tmp_path.with_name(f"{tmp_path.name}_hold")
    process = start_trainer(tmp_path, hold=(hold, 12))  # mid-run, whatever the machine's speed
    assert wait_for(lambda: reached(hold), process)
    process.send_signal(signal.SIGINT)
    hold.unlink()
    _, stderr = process.communicate(timeout=HANG_GUARD)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and "interrupted (Ctrl-C): saved step" in lines[0], stderr[-3000:]
    assert f"saved step {committed(tmp_path)[-1]} " in lines[0]
    run_script("train", *LONG, f"--workdir={tmp_path}")
    assert comparable_metrics(tmp_path) == comparable_metrics(reference)
    for key, value in final_params(reference, 60).items():
        np.testing.assert_array_equal(final_params(tmp_path, 60)[key], value, err_msg=key)


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_and_the_latest_checkpoint_is_whole(reference, tmp_path):
    process = start_trainer(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    # Right after a checkpoint step: the loop is busy with eval / samples / an async save.
    assert wait_for(lambda: row_at_least(tmp_path, 20) and committed(tmp_path), process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    sent = time.time()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=HANG_GUARD)
    assert time.time() - sent < HANG_GUARD
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    # Unless the first one finished its save and exit within the 50 ms between the two.
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    assert "second SIGINT: exiting now" in lines[0] or "interrupted (Ctrl-C)" in lines[0], lines
    latest = committed(tmp_path)[-1]  # an unfinished save is a tmp folder, not a step
    assert all(np.all(np.isfinite(v)) for v in final_params(tmp_path, latest).values())
    assert checkpoints.exists()
    run_script("train", *LONG, f"--workdir={tmp_path}")
    for key, value in final_params(reference, 60).items():
        np.testing.assert_array_equal(final_params(tmp_path, 60)[key], value, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_start_up_is_one_line(tmp_path, signum, status):
    process = start_trainer(tmp_path)
    # The lock is taken when training starts: data loading and compiling follow.
    assert wait_for(lambda: (tmp_path / ".lock").exists(), process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=HANG_GUARD)
    assert process.returncode == status, stderr[-3000:]
    name = signal.Signals(signum).name
    assert stderr_lines_of(stderr) == [
        f"error: stopped by {name} while starting up or compiling; nothing was trained or saved"
    ], stderr[-3000:]
    assert committed(tmp_path) == []


def stderr_lines_of(text):
    return [line for line in text.splitlines() if line.strip()]


# --- bad inputs that gave a traceback or a wrong answer ---


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, flags, expected",
    [
        ("evaluate", ["--config.evals.nll.num_samples=0"], "config.evals.nll.num_samples"),
        ("evaluate", ["--config.evals.nll.chunk=0"], "config.evals.nll.chunk"),
        ("evaluate", ["--config.evals.elbo.batch_size=0"], "config.evals.elbo.batch_size"),
    ],
)
def test_bad_evaluate_overrides_are_one_line(ten_steps, script, flags, expected):
    result = run_script(script, f"--workdir={ten_steps}", *flags, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(stderr_lines(result)) == 1 and expected in error_lines(result)[0], result.stderr


@pytest.mark.slow
def test_eval_batch_size_zero_is_refused_before_compiling(tmp_path):
    started = time.time()
    result = run_script(
        "train", *ARGS, "--config.evals.elbo.batch_size=0", f"--workdir={tmp_path}", check=False
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert error_lines(result) == ["error: config.evals.elbo.batch_size: must be >= 1, got 0"]
    assert not (tmp_path / "checkpoints").exists() and time.time() - started < HANG_GUARD


@pytest.mark.slow
@pytest.mark.parametrize("script", ["sample", "evaluate"])
def test_a_run_without_a_checkpoint_is_one_line(ten_steps, tmp_path, script):
    (tmp_path / "config.json").write_bytes((ten_steps / "config.json").read_bytes())
    result = run_script(script, f"--workdir={tmp_path}", check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(stderr_lines(result)) == 1, result.stderr[-3000:]
    assert "no readable checkpoint" in error_lines(result)[0]
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--config.model.hidden=(32,)"], "shapes: ['decoder_0']['bias'] (64,) not (32,)"),
        (["--config=configs/gan/mnist_mlp.py:smoke"], "missing ['discriminator']"),
    ],
)
def test_init_from_a_run_that_does_not_fit_is_one_line_naming_init_from(
    ten_steps, tmp_path, flags, expected
):
    args = [*ARGS, *flags] if flags[0].startswith("--config.") else flags
    result = run_script(
        "train", *args, f"--config.init_from={ten_steps}", f"--workdir={tmp_path}", check=False
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: config.init_from: the params of")
    assert expected in lines[0], lines
    assert committed(tmp_path) == []


def test_an_unprepared_catalog_dataset_offline_fails_in_seconds(monkeypatch, tmp_path):
    """No network: one DataError naming config.data.name, before TFDS starts its download
    retries (206 s before)."""

    def offline(address, timeout=None):
        raise OSError(-2, "Name or service not known")

    def download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(sources.socket, "create_connection", offline)
    builder = type(
        "Builder",
        (),
        {
            "info": type("Info", (), {"homepage": "https://www.cs.toronto.edu/~kriz/cifar.html"}),
            "download_and_prepare": download,
        },
    )()
    # No timing: the download stand-in raises if TFDS's retrying download is ever reached.
    with pytest.raises(DataError, match=r"config.data.name: .*'cifar10'.*www.cs.toronto.edu"):
        sources._check_online("cifar10", builder, tmp_path)
    assert sources._reachable("localhost", 0.5) is not None  # nothing listens on 443 here


def test_the_loop_keeps_few_steps_in_flight(tmp_path, monkeypatch):
    """XLA's CPU collectives abort the process with a few hundred data-parallel steps queued
    (a GPT :cpu run with log_every=2000 did): the loop waits for the step dispatched
    MAX_STEPS_IN_FLIGHT steps before, even when nothing else syncs. Here each step ends
    with ~20 ms of matmuls, so an unbounded host would queue every step."""
    config = load_config("configs/gpt/shakespeare_char.py", "smoke")
    config.train.num_steps = 40
    for name in ("log_every", "eval_every", "ckpt_every", "sample_every"):
        config.train[name] = 40
    real = parallel.Placement.compile_train_step
    outputs, queued = [], []

    def delay(step):  # step, after work that XLA cannot skip
        x = jax.lax.fori_loop(0, 40, lambda i, x: jnp.tanh(x @ x), jnp.ones((128, 128)) / 128)
        return step + (jnp.sum(x) > 1e30).astype(step.dtype)

    def slow_step(self, train_step, state):
        step = real(self, train_step, state)
        slow = jax.jit(delay)

        def run(state, batch):
            queued.append(sum(not leaf.is_ready() for leaf in outputs))
            state, metrics = step(state, batch)
            outputs.append(metrics["loss"])
            return state.replace(step=slow(state.step)), metrics

        return run

    monkeypatch.setattr(parallel.Placement, "compile_train_step", slow_step)
    loop.train(config, str(tmp_path))
    assert len(queued) == 40
    assert 2 <= max(queued) <= loop.MAX_STEPS_IN_FLIGHT, queued
