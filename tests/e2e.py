"""Running experiments/*.py in subprocesses, as a user would."""

import os
import subprocess
import sys
import time

import jax
import numpy as np

from jaxgen.train.writer import read_metrics
from tests.helpers import ROOT

SMOKE = "configs/vae/mnist.py:smoke"
# Seconds after which a test calls a subprocess hung. Only a guard against hangs: a loaded
# 2-core machine may be many times slower than an idle one; speed is measured in benchmarks/.
HANG_GUARD = 300
# A 60-step smoke run with steps slow enough that signals land mid-run; checkpoints every 10.
LONG = [
    f"--config={SMOKE}",
    "--config.train.num_steps=60",
    "--config.train.ckpt_every=10",
    "--config.train.log_every=5",
    "--config.train.eval_every=20",
    "--config.train.sample_every=30",
    "--config.model.hidden=(256,256)",
    "--config.train.batch_size=128",
]


def script_env(devices: int = 1, **overrides: str) -> dict:
    env = dict(os.environ) | overrides
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    # Pinned even at 1: otherwise experiments/*.py split the CPU one device per core.
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def command(script: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"experiments.{script}", *args]


def run_script(
    script: str, *args: str, devices: int = 1, check: bool = True, timeout: int = 600, env=None
):
    result = subprocess.run(
        command(script, *args),
        cwd=ROOT,
        env=script_env(devices, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{script} {args} exited {result.returncode}:\n{result.stderr[-4000:]}"
        )
    return result


def stderr_lines(result) -> list[str]:
    """The non-blank lines a script printed to stderr (a bad input must give exactly one)."""
    return [line for line in result.stderr.splitlines() if line.strip()]


def comparable_metrics(workdir) -> list[dict]:
    """metrics.jsonl without timings, which differ between any two runs."""
    return [
        {k: v for k, v in row.items() if not k.startswith("perf/")} for row in read_metrics(workdir)
    ]


def final_params(workdir, step: int) -> dict:
    """The state saved at `step`, as numpy (keyed by path), whatever job wrote it.

    Restores onto one local device: a checkpoint keeps the device ids of the job that
    saved it, and a multi-process job's ids need not exist in this process.
    """
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    )
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        manager.item_metadata(step)["state"],
    )
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
    manager.close()
    leaves = jax.tree_util.tree_flatten_with_path(restored.state)[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def start_trainer(workdir, *extra: str, hold=None) -> subprocess.Popen:
    """experiments.train of the LONG smoke run in the background (stderr piped). hold:
    (file, step) holds it before that step while the file exists (tests/hold.py)."""
    from tests.hold import hold_env

    args = [*LONG, *extra, f"--workdir={workdir}"]
    held = [sys.executable, "-m", "tests.hold", *args] if hold else None
    return subprocess.Popen(
        held or command("train", *args),
        cwd=ROOT,
        env=script_env(**(hold_env(*hold) if hold else {})),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, process, timeout: float = HANG_GUARD) -> bool:
    """Poll until `condition()` holds or the process ends; True if it held."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.005)
    return False
