"""Multi-host training on loopback: two processes x 2 fake CPU devices form one JAX job.

Each process runs the real experiments/train (through this module's __main__, which calls
jaxgen.distributed.initialize() first) in one shared workdir. The reference is one process
with 4 devices that reads, as its global batch, host 0's batch followed by host 1's: each host
shuffles and binarises its own shard with its own seeds (jaxgen.data.pipeline), so a plain
1-process run trains on different data. Everything else (per-example noise keys from the global
position, the gradient all-reduce) must make the two runs agree to float tolerance.
"""

import os
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from jaxgen import distributed
from jaxgen.config import ConfigError
from tests.e2e import SMOKE, comparable_metrics, final_params, script_env
from tests.helpers import ROOT
from tests.hold import hold_env, install, reached

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
EMULATED_HOSTS = "JAXGEN_TEST_EMULATED_HOSTS"  # for the reference run (see _emulate_hosts)
ARGS = [
    f"--config={SMOKE}",
    "--config.train.num_steps=30",  # checkpoints at 10, 20 and 30
    # Evaluate and sample at the end only: compiling them costs more than the 30 steps.
    "--config.train.eval_every=30",
    "--config.train.sample_every=30",
]
LAST_STEP = 30
# Seconds for one run of the whole job: a hang guard (a job that never forms waits forever),
# not a speed limit; a loaded 2-core machine runs the 2-process job many times slower.
TIMEOUT = 600


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_job(workdir, logs, *args: str, hold=None) -> list[subprocess.Popen]:
    """Start every process of one job; their output goes to logs/<workdir name>.<id>.log.
    hold: (file, step) holds every process before that step while the file exists."""
    coordinator = f"127.0.0.1:{free_port()}"
    processes = []
    for process_id in range(NUM_PROCESSES):
        env = script_env(DEVICES_PER_PROCESS)
        env.update(
            {
                distributed.COORDINATOR: coordinator,
                distributed.NUM_PROCESSES: str(NUM_PROCESSES),
                distributed.PROCESS_ID: str(process_id),
            }
        )
        if hold:
            env.update(hold_env(*hold))
        log = open(logs / f"{workdir.name}.{process_id}.log", "ab")  # appends across restarts
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.test_multihost",
                    *ARGS,
                    *args,
                    f"--workdir={workdir}",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()  # the child holds its own copy
    return processes


def kill(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
    for process in processes:
        process.wait()


def log_tails(workdir, logs) -> str:
    tails = []
    for path in sorted(logs.glob(f"{workdir.name}.*.log")):
        text = path.read_text(errors="replace")
        tails.append(f"--- {path.name}\n{text[-3000:]}")
    return "\n".join(tails)


def wait(processes, workdir, logs, timeout: float = TIMEOUT) -> None:
    """Wait for every process to exit 0; kill them all on a failure or at the timeout."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            codes = [process.poll() for process in processes]
            if any(code not in (None, 0) for code in codes):
                raise AssertionError(f"a process failed, exit codes {codes}")
            if all(code == 0 for code in codes):
                return
            time.sleep(0.1)
        raise AssertionError(f"the job did not finish within {timeout}s")
    except AssertionError as error:
        kill(processes)
        raise AssertionError(f"{error}\n{log_tails(workdir, logs)}") from None


def run_job(workdir, logs, *args: str) -> float:
    start = time.perf_counter()
    wait(start_job(workdir, logs, *args), workdir, logs)
    return time.perf_counter() - start


def assert_same_run(workdir, reference) -> None:
    expected, actual = comparable_metrics(reference), comparable_metrics(workdir)
    assert [(r["step"], r["split"]) for r in actual] == [(r["step"], r["split"]) for r in expected]
    for row, want in zip(actual, expected, strict=True):
        assert row.keys() == want.keys()
        for key in row.keys() - {"step", "split"}:
            np.testing.assert_allclose(row[key], want[key], rtol=1e-4, err_msg=f"{row} {key}")
    expected, actual = final_params(reference, LAST_STEP), final_params(workdir, LAST_STEP)
    assert expected.keys() == actual.keys()
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, logs):
    """One process, 4 devices, reading the 2 hosts' batches side by side."""
    workdir = tmp_path_factory.mktemp("reference")
    env = script_env(NUM_PROCESSES * DEVICES_PER_PROCESS) | {EMULATED_HOSTS: str(NUM_PROCESSES)}
    for name in distributed.VARIABLES:  # a single process, whatever the caller's shell says
        env.pop(name, None)
    with open(logs / f"{workdir.name}.0.log", "wb") as log:
        result = subprocess.run(
            [sys.executable, "-m", "tests.test_multihost", *ARGS, f"--workdir={workdir}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT,
        )
    assert result.returncode == 0, log_tails(workdir, logs)
    return workdir


@pytest.fixture(scope="module")
def multihost_run(tmp_path_factory, logs):
    workdir = tmp_path_factory.mktemp("multihost")
    return workdir, run_job(workdir, logs)


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_same_global_batch(
    multihost_run, reference, logs
):
    workdir, seconds = multihost_run
    # A hang guard only (a job that never forms waits forever); speed lives in benchmarks/.
    assert seconds < 300, f"the 2-process run took {seconds:.0f}s"
    log = (logs / f"{workdir.name}.0.log").read_text(errors="replace")
    assert "process 0 of 2, 4 devices" in log  # the job really formed (see __main__ below)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20", "30"]
    samples = os.listdir(workdir / "samples")
    assert "prior_0000030.png" in samples and "interpolation_0000030.png" in samples
    # Only process 0 writes metrics: every (step, split) row appears once.
    rows = [(row["step"], row["split"]) for row in comparable_metrics(workdir)]
    assert len(rows) == len(set(rows)) and (LAST_STEP, "eval") in rows
    assert_same_run(workdir, reference)


@pytest.mark.slow
def test_sigkill_both_processes_then_restart_under_pmap_resumes(tmp_path, logs, reference):
    """Killed under jit, resumed under pmap: the checkpoint does not depend on the backend, and
    the pmap path gathers its per-process state for saving and evaluation."""
    workdir = tmp_path / "killed"
    hold = tmp_path / "hold"
    processes = start_job(workdir, logs, hold=(hold, 15))  # held before step 16 of 30
    try:
        # Kill once the save at 10 is committed (Orbax renames its folder into place; saves
        # are asynchronous, so a logged step 15 does not mean that yet), while held at 15.
        saved = workdir / "checkpoints" / "10"
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and all(p.poll() is None for p in processes):
            if saved.is_dir() and reached(hold):
                break
            time.sleep(0.01)
        running = [process.poll() is None for process in processes]
    finally:
        kill(processes)
    assert all(running), f"not killed mid-run: {running}\n{log_tails(workdir, logs)}"
    assert not (workdir / "checkpoints" / str(LAST_STEP)).exists()
    run_job(workdir, logs, "--config.mesh.backend=pmap")
    log = (logs / f"{workdir.name}.1.log").read_text(errors="replace")
    assert "resumed from step" in log
    assert_same_run(workdir, reference)


@pytest.mark.parametrize(
    "coordinator,num_processes,process_id,bad",
    [
        ("127.0.0.1:1234", "2", "", "JAXGEN_PROCESS_ID"),  # all three or none
        ("127.0.0.1", "2", "1", "JAXGEN_COORDINATOR"),  # no port
        ("127.0.0.1:1234", "two", "1", "JAXGEN_NUM_PROCESSES"),
        ("127.0.0.1:1234", "2", "2", "JAXGEN_PROCESS_ID"),  # ids are 0 .. N-1
    ],
)
def test_bad_job_variables_are_one_line_naming_the_variable(
    coordinator, num_processes, process_id, bad
):
    environ = {
        distributed.COORDINATOR: coordinator,
        distributed.NUM_PROCESSES: num_processes,
        distributed.PROCESS_ID: process_id,
    }
    with pytest.raises(ConfigError, match=f"^{bad}: "):
        distributed.settings(environ)


def test_job_variables_unset_mean_a_single_process():
    assert distributed.settings({}) is None
    environ = {
        distributed.COORDINATOR: "127.0.0.1:1234",
        distributed.NUM_PROCESSES: "2",
        distributed.PROCESS_ID: "1",
    }
    assert distributed.settings(environ) == ("127.0.0.1:1234", 2, 1)


def _emulate_hosts(num_hosts: int) -> None:
    """Make data.make_iterator return, in this one process, the batches of `num_hosts` hosts.

    Host h's iterator is built with the pipeline believing it is process h of num_hosts;
    batches are concatenated in host order, which is how a multi-process job lays them out
    (the mesh lists process 0's devices first).
    """
    import jax

    from jaxgen import data
    from jaxgen.data import pipeline

    make_iterator = pipeline.make_iterator

    class Hosts:
        def __init__(self, iterators):
            self.iterators = iterators

        def __iter__(self):
            return self

        def __next__(self):
            batches = [next(iterator) for iterator in self.iterators]
            return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}

        def get_state(self):
            return self.iterators[0].get_state()  # every host is at the same batch

        def set_state(self, state):
            for iterator in self.iterators:
                iterator.set_state(state)

    def emulated(data_config, split, batch_size, seed, *, train):
        iterators = []
        for host in range(num_hosts):
            pipeline.jax = types.SimpleNamespace(
                process_count=lambda: num_hosts, process_index=lambda host=host: host
            )
            try:
                iterators.append(make_iterator(data_config, split, batch_size, seed, train=train))
            finally:
                pipeline.jax = jax
        return Hosts(iterators)

    data.make_iterator = emulated


if __name__ == "__main__":
    # `python -m tests.test_multihost <experiments.train flags>`: experiments/train as a process
    # of the job named by the JAXGEN_* variables (or a single process without them).
    import runpy

    if distributed.initialize():
        import jax

        print(
            f"process {jax.process_index()} of {jax.process_count()}, "
            f"{jax.device_count()} devices ({jax.local_device_count()} local)",
            flush=True,
        )
    if os.environ.get(EMULATED_HOSTS):
        _emulate_hosts(int(os.environ[EMULATED_HOSTS]))
    install()  # tests/hold.py: only when the JAXGEN_TEST_HOLD variables are set
    runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
