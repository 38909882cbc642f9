"""Multi-process start-up: joins this process to a JAX job described by environment variables.

Every process of a job runs the same command; each learns its role from three variables:

    JAXGEN_COORDINATOR    host:port where process 0 serves the coordinator, e.g. 10.0.0.1:1234
    JAXGEN_NUM_PROCESSES  how many processes form the job
    JAXGEN_PROCESS_ID     this process's index, 0 .. JAXGEN_NUM_PROCESSES - 1

For example, two processes on one machine, two fake CPU devices each (one global mesh of 4):

    export XLA_FLAGS=--xla_force_host_platform_device_count=2
    export JAXGEN_COORDINATOR=127.0.0.1:12355 JAXGEN_NUM_PROCESSES=2
    JAXGEN_PROCESS_ID=0 python -m experiments.train --config=C --workdir=W &
    JAXGEN_PROCESS_ID=1 python -m experiments.train --config=C --workdir=W

All processes share the workdir (a shared file system across machines): Orbax writes
checkpoints from every process, metrics, config.json and samples come from process 0 only,
and each process reads its own shard of the data (see jaxgen.data.pipeline).

`initialize()` must run before anything starts a JAX backend (jax.devices(), the first
array). With none of the variables set it does nothing, so single-process runs are unchanged.
Cross-process collectives on CPU use gloo, the default of `jax_cpu_collectives_implementation`
(checked in jax 0.10.2), so nothing needs setting; GPUs and TPUs use their own.

On a cluster that JAX recognises (Slurm, Open MPI, TPU pods) set JAXGEN_DISTRIBUTED=1
instead, and jax.distributed.initialize() reads the cluster's own description.

Deliberately not here: launching the processes.
"""

import os

import jax

from jaxgen.config import ConfigError

COORDINATOR = "JAXGEN_COORDINATOR"
NUM_PROCESSES = "JAXGEN_NUM_PROCESSES"
PROCESS_ID = "JAXGEN_PROCESS_ID"
VARIABLES = (COORDINATOR, NUM_PROCESSES, PROCESS_ID)
# JAXGEN_DISTRIBUTED=1: call jax.distributed.initialize() with no arguments, so that JAX
# detects the cluster itself (one process per task under srun, every host of a TPU pod).
AUTO = "JAXGEN_DISTRIBUTED"
# A process whose peers never show up (a typo in the port, a crashed launch) gives up after
# this many seconds instead of jax's default of five minutes.
INITIALIZATION_TIMEOUT = 120


def settings(environ: dict | None = None) -> tuple[str, int, int] | None:
    """(coordinator, num_processes, process_id) from the environment, or None when unset.

    Raises ConfigError naming the variable when only some are set or one is malformed.
    """
    environ = os.environ if environ is None else environ
    values = {name: environ.get(name, "").strip() for name in VARIABLES}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ConfigError(
            f"{missing[0]}: not set, but {', '.join(n for n in VARIABLES if values[n])} is; "
            f"a multi-process job needs all of {', '.join(VARIABLES)}"
        )
    coordinator = values[COORDINATOR]
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{COORDINATOR}: {coordinator!r} is not host:port")
    numbers = {}
    for name in (NUM_PROCESSES, PROCESS_ID):
        try:
            numbers[name] = int(values[name])
        except ValueError:
            raise ConfigError(f"{name}: {values[name]!r} is not an integer") from None
    if numbers[NUM_PROCESSES] < 1:
        raise ConfigError(f"{NUM_PROCESSES}: must be >= 1, got {numbers[NUM_PROCESSES]}")
    if not 0 <= numbers[PROCESS_ID] < numbers[NUM_PROCESSES]:
        raise ConfigError(
            f"{PROCESS_ID}: {numbers[PROCESS_ID]} is not in 0..{numbers[NUM_PROCESSES] - 1}"
        )
    return coordinator, numbers[NUM_PROCESSES], numbers[PROCESS_ID]


def initialize() -> bool:
    """Join the job named by the JAXGEN_* variables; returns whether this is a multi-process job.

    Does nothing when the variables are unset or this process has already joined.
    """
    if os.environ.get(AUTO, "").strip() == "1":
        # Let JAX read the cluster's own description (Slurm, Open MPI, TPU pod metadata).
        if not jax.distributed.is_initialized():
            jax.distributed.initialize(initialization_timeout=INITIALIZATION_TIMEOUT)
        return True
    found = settings()
    if found is None:
        return False
    if jax.distributed.is_initialized():
        return True
    coordinator, num_processes, process_id = found
    host, _, port = coordinator.rpartition(":")
    # jax binds the coordinator to every interface ([::]:port) unless told otherwise; a
    # loopback job should stay on loopback.
    loopback = host in ("127.0.0.1", "localhost", "[::1]")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=INITIALIZATION_TIMEOUT,
        coordinator_bind_address=f"{host}:{port}" if loopback else None,
    )
    return True
