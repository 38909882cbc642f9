"""Faults, injected into the real experiments/train.py: each costs at most the steps since the
last checkpoint and never the last good checkpoint.

Kill points and signals are driven from outside the process, as a scheduler or a crash would.
"""

import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.conftest import need_shared_data
from tests.e2e import (
    HANG_GUARD,
    LONG,
    SMOKE,
    comparable_metrics,
    final_params,
    run_script,
    start_trainer,
    stderr_lines,
    wait_for,
)
from tests.helpers import tree_snapshot
from tests.hold import reached

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 60-step run."""
    workdir = tmp_path_factory.mktemp("reference")
    run_script("train", *LONG, f"--workdir={workdir}")
    return workdir


def metric_rows(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def assert_same_final_params(workdir, reference_dir, step=60):
    expected, actual = final_params(reference_dir, step), final_params(workdir, step)
    assert expected.keys() == actual.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def test_sigkill_at_seeded_kill_points(reference, tmp_path):
    """Seven kills: during a step, right after a log row (eval, sampling and saving follow it),
    while an async checkpoint is being written, and held before a seeded step (tests/hold.py:
    lands mid-run on any machine); the rerun matches the reference exactly."""
    rng = random.Random(7)
    triggers = [
        ("row", 15),  # after the train row at 15: mid-step
        ("row", 20),  # the eval, samples and checkpoint of step 20 follow this row
        ("saving", None),  # a temporary (uncommitted) checkpoint directory exists
        ("row", 30),  # samples at 30
        ("hold", rng.randint(1, 15)),
        ("saving", None),
        ("hold", rng.randint(1, 15)),
    ]
    workdir = tmp_path / "run"
    landed, lost = [], []
    for kind, value in triggers:
        hold = tmp_path / f"hold{len(lost)}"
        process = start_trainer(workdir, hold=(hold, value) if kind == "hold" else None)
        checkpoints = workdir / "checkpoints"
        if kind == "row":
            ok = wait_for(
                lambda v=value: any(r["step"] == v for r in metric_rows(workdir)), process
            )
        elif kind == "saving":
            ok = wait_for(
                lambda c=checkpoints: c.exists() and any("tmp" in n for n in os.listdir(c)),
                process,
            )
        else:
            ok = wait_for(lambda h=hold: reached(h), process)
            assert ok, "the run never reached its hold"
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            landed.append((kind, value, ok))
        process.wait()
        # The promise: a kill costs at most the steps since the last committed checkpoint.
        logged = max((r["step"] for r in metric_rows(workdir)), default=0)
        committed = (
            max((int(n) for n in os.listdir(checkpoints) if n.isdigit()), default=0)
            if checkpoints.exists()
            else 0
        )
        lost.append(logged - committed)
    print(f"kills landed mid-run: {landed}; steps lost per kill: {lost}")
    assert len(landed) >= 5, f"too few kills landed mid-run: {landed}"
    # Saves commit in the background while training goes on, and Orbax finishes one save
    # before starting the next: a kill costs the steps since the last *committed* save, at
    # most two checkpoint intervals.
    assert max(lost) <= 2 * 10, f"a kill lost {max(lost)} steps"
    run_script("train", *LONG, f"--workdir={workdir}")
    rows = [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in metric_rows(workdir)]
    reference_rows = [
        {k: v for k, v in r.items() if not k.startswith("perf/")} for r in metric_rows(reference)
    ]
    assert rows == reference_rows
    assert_same_final_params(workdir, reference)


def test_sigterm_saves_the_current_step_and_exits_zero(reference, tmp_path):
    hold = tmp_path / "hold"
    process = start_trainer(tmp_path / "run", hold=(hold, 23))  # held before step 24 of 60
    assert wait_for(lambda: reached(hold), process)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    hold.unlink()
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == 0, process.stderr.read()[-2000:]
    assert time.time() - sent < HANG_GUARD
    saved = sorted(int(n) for n in os.listdir(tmp_path / "run" / "checkpoints") if n.isdigit())
    last_row = max(r["step"] for r in metric_rows(tmp_path / "run"))
    assert saved and saved[-1] >= last_row and saved[-1] == 24
    assert last_row % 5 == 0, "no train row at the preemption step, only where one is due"
    run_script("train", *LONG, f"--workdir={tmp_path / 'run'}")
    assert_same_final_params(tmp_path / "run", reference)
    # The resumed run completes the window the preempted one began: the same rows.
    assert comparable_metrics(tmp_path / "run") == comparable_metrics(reference)


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    result = run_script(
        "train",
        f"--config={SMOKE}",
        "--config.train.fault_nan_step=13",
        f"--workdir={tmp_path}",
        check=False,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "at step 13" in lines[0], result.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]
    params = final_params(tmp_path, 10)
    assert all(np.all(np.isfinite(v)) for v in params.values())


def test_skip_nonfinite_skips_the_poisoned_update(tmp_path):
    run_script(
        "train",
        f"--config={SMOKE}",
        "--config.train.fault_nan_step=13",
        "--config.train.skip_nonfinite=True",
        f"--workdir={tmp_path}",
    )
    rows = {r["step"]: r for r in metric_rows(tmp_path) if r["split"] == "train"}
    assert rows[15]["nonfinite_steps"] == 1 and rows[10]["nonfinite_steps"] == 0
    assert np.isfinite(rows[15]["loss"]) and np.isfinite(rows[20]["loss"])
    params = final_params(tmp_path, 20)
    assert all(np.all(np.isfinite(v)) for k, v in params.items() if "params" in k)


def test_corrupt_latest_checkpoint_falls_back_and_continues(tmp_path):
    args = [f"--config={SMOKE}", "--config.train.sample_every=1000"]
    reference_dir, workdir = tmp_path / "reference", tmp_path / "run"
    run_script("train", *args, f"--workdir={reference_dir}")
    run_script("train", *args, "--config.train.num_steps=20", f"--workdir={workdir}")
    for folder, _, files in os.walk(workdir / "checkpoints" / "20"):
        for name in files:
            with open(os.path.join(folder, name), "r+b") as f:
                f.truncate(max(0, os.path.getsize(f.name) // 3))
    # The same command again: step 20 is unreadable, so it resumes from 10 and redoes 11-20.
    result = run_script("train", *args, f"--workdir={workdir}")
    assert "unreadable" in result.stderr
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
    assert len(os.listdir(workdir / "checkpoints_unreadable")) == 1
    assert_same_final_params(workdir, reference_dir, step=20)


def copy_mnist(target):
    (source,) = need_shared_data("mnist")
    shutil.copytree(source, target / "mnist")
    return target / "mnist"


@pytest.mark.parametrize("damage", ["truncated", "bad_md5"])
def test_bad_data_file_is_one_line_naming_the_file(tmp_path, damage):
    mnist = copy_mnist(tmp_path / "raw")
    path = mnist / "t10k-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:  # a valid gzip whose content differs in one pixel
        content = bytearray(gzip.decompress(raw))
        content[-1] ^= 0xFF
        path.write_bytes(gzip.compress(bytes(content)))
    result = run_script(
        "train",
        f"--config={SMOKE}",
        f"--workdir={tmp_path / 'run'}",
        check=False,
        env={"JAXGEN_DATA_DIR": str(tmp_path / "raw"), "JAXGEN_TFDS_DIR": str(tmp_path / "tfds")},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "t10k-images-idx3-ubyte.gz" in lines[0], result.stderr[-2000:]


@pytest.fixture
def small_filesystem(tmp_path):
    """A 6 MB tmpfs (needs root, as on CI and the dev machines)."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_no_space_left_while_saving_is_a_clear_error(small_filesystem):
    workdir = small_filesystem / "run"
    args = [f"--config={SMOKE}", "--config.train.sample_every=1000", f"--workdir={workdir}"]
    run_script("train", *args, "--config.train.num_steps=10")
    stat = os.statvfs(small_filesystem)
    with open(small_filesystem / "filler", "wb") as f:  # leave about 150 kB
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - 150_000))
    result = run_script("train", *args, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no space left" in lines[0], result.stderr[-3000:]
    assert "checkpoint" in lines[0]
    assert [n for n in os.listdir(workdir / "checkpoints") if n.isdigit()] == ["10"]
    params = final_params(workdir, 10)
    assert all(np.all(np.isfinite(v)) for v in params.values())


def test_unusable_workdir_is_one_line_naming_the_flag(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_script("train", f"--config={SMOKE}", f"--workdir={blocker / 'run'}", check=False)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: --workdir"), result.stderr[-2000:]


@pytest.fixture(scope="module")
def four_device_run(tmp_path_factory):
    """20 steps on 4 devices (jit), checkpoints at 10 and 20."""
    workdir = tmp_path_factory.mktemp("four")
    run_script("train", *DEVICE_ARGS, f"--workdir={workdir}", devices=4)
    return workdir


DEVICE_ARGS = [
    f"--config={SMOKE}",
    "--config.train.eval_every=1000",
    "--config.train.sample_every=1000",
    "--config.mesh.data=-1",
]


@pytest.mark.parametrize("devices", [1, 2])
def test_resume_on_fewer_devices_continues_the_four_device_run(four_device_run, tmp_path, devices):
    workdir = tmp_path / "run"
    shutil.copytree(four_device_run, workdir)
    shutil.rmtree(workdir / "checkpoints" / "20")  # as if the 4-device job stopped at 10
    run_script("train", *DEVICE_ARGS, f"--workdir={workdir}", devices=devices)
    expected, actual = final_params(four_device_run, 20), final_params(workdir, 20)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_a_second_trainer_is_refused_and_a_killed_one_does_not_block(reference, tmp_path):
    first = start_trainer(tmp_path)
    assert wait_for(lambda: any(r["step"] >= 5 for r in metric_rows(tmp_path)), first)
    first.send_signal(signal.SIGSTOP)  # holds the lock for as long as the test needs
    try:
        before = {name: (tmp_path / name).read_bytes() for name in ("config.json", "metrics.jsonl")}
        listing = sorted(os.listdir(tmp_path))
        second = run_script("train", *LONG, f"--workdir={tmp_path}", check=False)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = stderr_lines(second)
        assert len(lines) == 1, second.stderr[-2000:]
        assert lines[0].startswith(
            f"error: {tmp_path} is being trained by process {first.pid} (host "
        )
        assert sorted(os.listdir(tmp_path)) == listing
        assert {name: (tmp_path / name).read_bytes() for name in before} == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel dropped the killed trainer's lock: the same command resumes and finishes.
    run_script("train", *LONG, f"--workdir={tmp_path}")
    rows = [
        {k: v for k, v in r.items() if not k.startswith("perf/")} for r in metric_rows(tmp_path)
    ]
    reference_rows = [
        {k: v for k, v in r.items() if not k.startswith("perf/")} for r in metric_rows(reference)
    ]
    assert rows == reference_rows
    assert_same_final_params(tmp_path, reference)


def overwrite_middle_of_largest_array_file(step_dir, seed):
    """4 KiB of random bytes into the middle of the step's biggest array file (bit rot)."""
    files = [os.path.join(d, n) for d, _, names in os.walk(step_dir) for n in names if "/d" in d]
    path = max(files, key=os.path.getsize)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(np.random.default_rng(seed).bytes(min(4096, size - size // 2)))


def test_random_bytes_in_the_latest_checkpoint_fall_back_and_continue(tmp_path):
    args = [f"--config={SMOKE}", "--config.train.sample_every=1000"]
    reference_dir, workdir = tmp_path / "reference", tmp_path / "run"
    run_script("train", *args, f"--workdir={reference_dir}")
    run_script("train", *args, "--config.train.num_steps=20", f"--workdir={workdir}")
    overwrite_middle_of_largest_array_file(workdir / "checkpoints" / "20", seed=0)
    result = run_script("train", *args, f"--workdir={workdir}")
    warnings = [line for line in stderr_lines(result) if "checkpoint 20" in line]
    assert any("unreadable" in line and "logs/checkpoint.log" in line for line in warnings)
    assert "checkpoint 20" in (workdir / "logs" / "checkpoint.log").read_text()
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
    assert_same_final_params(workdir, reference_dir, step=20)


@pytest.mark.parametrize("script", ["sample", "train"])
def test_every_checkpoint_corrupt_is_one_error_line(tmp_path, script):
    args = [f"--config={SMOKE}", "--config.train.sample_every=1000", f"--workdir={tmp_path}"]
    run_script("train", *args)
    for step in ("10", "20"):
        overwrite_middle_of_largest_array_file(tmp_path / "checkpoints" / step, seed=0)
    flags = args if script == "train" else [f"--workdir={tmp_path}"]
    result = run_script(script, *flags, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in stderr_lines(result) if line.startswith("error:")]
    assert len(errors) == 1 and "no readable checkpoint" in errors[0], result.stderr[-3000:]
    assert "step 20:" in errors[0] and "step 10:" in errors[0]
    # One warning line per bad step, nothing else: the details are in the log file.
    assert len(stderr_lines(result)) <= 5, result.stderr[-3000:]


def process_state(pid):
    """The state letter of a process from /proc (R running, S sleeping, T stopped, ...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_sampling_a_live_run_leaves_it_untouched(reference, tmp_path):
    trainer = start_trainer(tmp_path)
    checkpoints = tmp_path / "checkpoints"

    def saving_after_a_commit():
        names = os.listdir(checkpoints) if checkpoints.exists() else []
        return any("tmp" in n for n in names) and any(n.isdigit() for n in names)

    assert wait_for(saving_after_a_commit, trainer)
    trainer.send_signal(signal.SIGSTOP)  # freeze the save in flight
    try:
        # The signal is delivered asynchronously: snapshot only once the trainer is stopped.
        assert wait_for(lambda: process_state(trainer.pid) == "T", trainer)
        before = tree_snapshot(checkpoints)
        assert any("tmp" in name for name in before)
        result = run_script("sample", f"--workdir={tmp_path}", check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        assert tree_snapshot(checkpoints) == before
    finally:
        trainer.send_signal(signal.SIGCONT)
    trainer.wait(timeout=300)
    assert trainer.returncode == 0, trainer.stderr.read()[-3000:]
    assert_same_final_params(tmp_path, reference)


def test_a_torn_last_metrics_row_is_cut_back_on_resume_with_one_warning(tmp_path):
    """Power lost during an append (`truncate -s -40 W/metrics.jsonl`): re-running the command
    continues, and the warning says what was lost."""
    short = [f"--config={SMOKE}", "--config.train.ckpt_every=5", f"--workdir={tmp_path}"]
    run_script("train", *short, "--config.train.num_steps=10")
    whole = (tmp_path / "metrics.jsonl").read_text().splitlines()
    with open(tmp_path / "metrics.jsonl", "r+") as f:
        f.truncate(len(f.read()) - 40)
    result = run_script("train", *short, "--config.train.num_steps=15")
    warnings = [line for line in result.stderr.splitlines() if "torn last line" in line]
    assert len(warnings) == 1 and f"cut back a torn last line {len(whole)}" in warnings[0]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[: len(whole) - 1] == [json.loads(line) for line in whole[:-1]]
    assert [(row["step"], row["split"]) for row in rows[len(whole) - 1 :]] == [
        (15, "train"),
        (15, "eval"),
    ]
