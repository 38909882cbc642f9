"""The training loop shared by every family.

init or resume -> compiled steps -> log / checkpoint / evaluate / sample on
their intervals. The loop owns every host-side concern (files, progress,
signals); the family supplies only pure functions (jaxgen.family.Steps).
Metrics are fetched from the device once per `log_every` steps.
"""

import collections
import logging
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxgen import checkpoint, data, metrics, parallel, rundir
from jaxgen.config import ConfigDict, ConfigError, load_workdir_config
from jaxgen.family import get_family
from jaxgen.rundir import INTERVALS
from jaxgen.train import state as train_state
from jaxgen.train.ahead import Ahead
from jaxgen.train.writer import MetricWriter
from jaxgen.workdir import check_resume, describe, has_checkpoint, record_changes

PyTree = Any
log = logging.getLogger("jaxgen")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the step."""


def check(config: ConfigDict, workdir: str | None = None) -> Any:
    """Every check that needs no compilation; returns the dataset info.

    Raises ConfigError naming the field for the first value that cannot work.
    """
    if workdir is not None:
        _check_writable(workdir)
    config = resolve_config(config, workdir)
    if workdir is not None and _is_run(workdir):  # before any data is prepared
        check_resume(load_workdir_config(workdir), config, workdir)
    info = rundir.check_config(config)
    steps = get_family(config.family).make_steps(config, info)
    num_devices = parallel.num_data_devices(config.mesh)
    metrics.check_config(config, steps, num_devices)
    return info


def resolve_config(config: ConfigDict, workdir: str | None = None) -> ConfigDict:
    """The config a run trains with: for a family that copies values into its config when a
    run starts (Family.resolve: latent diffusion's earlier stages), a resumed run's
    Family.resolved_fields come from W/config.json, and a new run's from Family.resolve."""
    family = get_family(config.family)
    if family.resolve is None:
        return config
    if workdir is None or not _is_run(workdir):
        return family.resolve(config)
    saved, config = load_workdir_config(workdir), config.copy_and_resolve_references()
    for field in family.resolved_fields:
        section, _, name = field.rpartition(".")
        source, target = saved, config
        for part in filter(None, section.split(".")):
            source, target = source[part], target[part]
        if name not in target and name in source:
            with target.unlocked():
                target[name] = source[name]
    return config


def _is_run(workdir: str) -> bool:
    """Whether `workdir` holds a run to resume: its config.json and a checkpoint."""
    return os.path.exists(os.path.join(workdir, "config.json")) and has_checkpoint(workdir)


def _check_writable(workdir: str) -> None:
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--workdir: {workdir!r} is not writable ({path} is not a writable folder)"
        )


class Interrupted(Exception):
    """Ctrl-C (SIGINT) stopped training after the current step was saved; exit 130."""


# Steps dispatched and not yet finished, at most. With tens of data-parallel steps queued,
# XLA's CPU collectives can abort the process (a rendezvous timeout): a GPT :cpu run with
# log_every=2000 did, and tests/test_loop_faults.py's slow step with 40. Four keep the host
# ahead of the devices (2 and 10 measured the same step time).
MAX_STEPS_IN_FLIGHT = 4

CHECKPOINT_NOTE = (
    "the latest committed checkpoint is kept whole (an unfinished save is only a tmp folder, "
    "which the next start removes)"
)


class _Preemption:
    """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the loop checks between steps.

    A second signal while the loop finishes its step exits at once (status 128 + signal):
    Orbax writes a step into a temporary folder and renames it when complete, so the
    latest committed checkpoint stays whole.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: int | None = None  # the signal received, if any
        self.saved_step: int | None = None  # the step of the last save begun
        self._previous = {}

    def __enter__(self):
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None:
            print(
                f"error: second {name}: exiting now without saving; {CHECKPOINT_NOTE}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(128 + signum)
        log.warning("%s: saving a checkpoint at the end of this step, then exiting", name)
        self.requested = signum

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _mean_metrics(window: list[dict], first_step: int, skip_nonfinite: bool) -> dict[str, float]:
    """Average a window of per-step metrics.

    A non-finite loss stops the run with an error naming the step, unless the
    run skips such updates: then the finite steps are averaged and the others
    counted in `nonfinite_steps`.
    """
    host = jax.device_get(window)
    finite = [bool(np.isfinite(row["loss"])) for row in host]
    if not skip_nonfinite and not all(finite):
        offset = finite.index(False)
        raise NonFiniteLossError(
            f"loss is {float(host[offset]['loss'])} at step {first_step + offset + 1}; "
            "the last checkpoint is from before it (config.train.skip_nonfinite=True skips such steps)"
        )
    kept = [row for row, ok in zip(host, finite, strict=True) if ok] or host
    means = {key: float(np.mean([row[key] for row in kept])) for key in host[0]}
    if skip_nonfinite:
        means["nonfinite_steps"] = float(len(host) - sum(finite))
    return means


def _poison(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch with every float array filled with NaN (config.train.fault_nan_step)."""
    return {
        key: np.full_like(value, np.nan) if np.issubdtype(value.dtype, np.floating) else value
        for key, value in batch.items()
    }


def train(config: ConfigDict, workdir: str, info: Any = None) -> PyTree:
    """Train (or resume) in `workdir`; returns the final state (global, replicated)."""
    config = resolve_config(config, workdir)
    info = info or check(config, workdir)
    family = get_family(config.family)
    placement = parallel.Placement(config.mesh, family.per_device_step)
    steps = family.make_steps(config, info, placement.axis_name)
    jit_steps = steps if placement.axis_name is None else family.make_steps(config, info, None)
    changes = _start_workdir(config, info, workdir)  # before anything is written

    train_iter = data.make_iterator(
        config.data, config.data.train_split, config.train.batch_size, config.seed, train=True
    )
    sample_host = rundir.sample_batch(config, jit_steps)
    example = rundir.example_batch(jit_steps)
    rng = jax.random.PRNGKey(config.seed)
    init = placement.compile_init(jit_steps.init)
    abstract = placement.abstract_state(jax.eval_shape(jit_steps.init, rng, example))

    ckpt = checkpoint.Checkpointer(workdir, config.ckpt)
    window = []  # per-step metrics since the last train row
    pending = []  # the evals and samples due at the restored step that a stop skipped
    resumed, params = ckpt.latest_step() is not None, None
    if resumed:
        state, data_state, start = ckpt.restore(abstract)
        if "train" in data_state:  # a run written by jaxgen.pretrained has no data stream yet
            train_iter.set_state(data_state["train"])
        window = window_from_json(data_state.get("window", []))
        pending = data_state.get("pending", [])
        log.info("resumed from step %d of %s", start, ckpt.directory)
        if changes and jax.process_index() == 0:
            log.info("config changes from config.json: %s", describe(changes))
            record_changes(workdir, start, changes)
    else:
        start = 0
        if config.init_from:  # read (and checked against this model) before compiling
            log_file = os.path.join(workdir, checkpoint.LOG_FILE)
            params = checkpoint.restore_params(config.init_from, abstract.params, log_file)
    # Rows of a pending eval that an earlier resume wrote and then lost are written again.
    writer = MetricWriter(workdir, start, redo=("eval",) if "eval_every" in pending else ())

    evaluators = metrics.build(config, jit_steps, placement)
    sample = placement.compile_eval(jit_steps.sample)
    sample_rng = jax.random.PRNGKey(config.sample.seed)
    sample_batch = placement.put_batch(sample_host, backend="jit")
    train_step = placement.compile_train_step(steps.train_step, abstract)
    first_batch = None
    with Ahead() as ahead:
        if start < config.train.num_steps:
            first_batch = next(train_iter)  # the first step's, for compiling the step ahead
            if placement.backend == "jit":  # pmap compiles for per-device shapes when called
                ahead.compile(train_step, abstract, placement.put_batch(first_batch))
            ahead.compile(sample, abstract, sample_batch, sample_rng)
            metrics.compile_ahead(evaluators, abstract, ahead)
        if not resumed:  # init compiles here meanwhile
            state = init(rng, example)
            if jit_steps.setup is not None:  # e.g. the frozen params of earlier stages
                state = jit_steps.setup(state)
            if params is not None:
                state = train_state.start_from_params(state, params)
                log.info("params from %s", config.init_from)
        state = placement.put_state(state)
        ahead.wait()

    every = {name: config.train[name] for name in INTERVALS}
    num_steps = config.train.num_steps
    window_start, window_time = start - len(window), time.perf_counter()
    in_flight = collections.deque()  # the metrics of the steps dispatched last
    bar = tqdm(
        total=num_steps,
        initial=start,
        desc="train",
        unit="step",
        mininterval=2.0,
        dynamic_ncols=True,
    )

    def write_evals_and_samples(done: int, state: PyTree, evals: bool, samples: bool) -> None:
        if evaluators and evals:
            writer.write(done, "eval", metrics.run(evaluators, placement.get_state(state)))
        if samples:
            paths = rundir.write_samples(
                sample,
                placement.get_state(state),
                sample_batch,
                sample_rng,
                workdir,
                done,
                config=config,
                family=family,
            )
            writer.write_images(done, paths)

    # Also while the last save commits (finally): a second signal then exits at once.
    with _Preemption() as preemption:
        try:
            if pending:  # a stop saved this step without its eval or samples: they come first
                write_evals_and_samples(
                    start, state, "eval_every" in pending, "sample_every" in pending
                )
                window_time = time.perf_counter()  # steps/s counts training only
            for step in range(start, num_steps):
                host_batch = next(train_iter) if step > start else first_batch
                if step + 1 == config.train.fault_nan_step:
                    host_batch = _poison(host_batch)
                batch = placement.put_batch(host_batch)
                state, step_metrics = train_step(state, batch)
                window.append(placement.first_metrics(step_metrics))
                in_flight.append(step_metrics)
                if len(in_flight) > MAX_STEPS_IN_FLIGHT:
                    jax.block_until_ready(in_flight.popleft())
                done = step + 1
                bar.update(1)
                due = {
                    name: done % interval == 0 or done == num_steps
                    for name, interval in every.items()
                }
                # A row only where an uninterrupted run writes one: a preempted run keeps
                # its partial window in the checkpoint and the resumed run completes it.
                row_due = due["log_every"] or due["ckpt_every"]
                # Read the flag once: a signal landing later in this iteration must not
                # stop the loop after a step that was not saved.
                stopping = preemption.requested
                skipped = []
                if stopping:  # save now and exit quickly: the eval and samples wait for resume
                    skipped = [name for name in ("eval_every", "sample_every") if due[name]]
                    due.update(ckpt_every=True, eval_every=False, sample_every=False)
                if window and row_due:
                    means = _mean_metrics(window, window_start, config.train.skip_nonfinite)
                    elapsed = time.perf_counter() - window_time
                    means["perf/steps_per_sec"] = len(window) / elapsed
                    writer.write(done, "train", means)
                    bar.set_postfix(loss=f"{means['loss']:.4g}")
                    window, window_start, window_time = [], done, time.perf_counter()
                write_evals_and_samples(done, state, due["eval_every"], due["sample_every"])
                if due["eval_every"] or due["sample_every"]:
                    window_time = time.perf_counter()  # steps/s counts training only
                # Saved last: a checkpoint at step s means everything logged for s is
                # written, or (a stop's) lists what it skipped as pending, so a resumed run
                # never skips an eval or a sample grid.
                if due["ckpt_every"]:
                    data_state = {"train": train_iter.get_state(), "window": window_to_json(window)}
                    if skipped:
                        data_state["pending"] = skipped
                    ckpt.save(done, placement.get_state(state), data_state)
                    preemption.saved_step = done
                if stopping:
                    break
        finally:
            # Also on errors: let an in-flight async save commit before the process
            # exits, so the last good checkpoint is always complete.
            bar.close()
            ckpt.close()
            writer.close()
    if preemption.requested == signal.SIGINT:
        raise Interrupted(
            f"interrupted (Ctrl-C): saved step {preemption.saved_step} in {ckpt.directory}; "
            "the same command resumes from it"
        )
    return placement.get_state(state)


def _start_workdir(config: ConfigDict, info: Any, workdir: str) -> dict:
    """The allowed config changes of a resume, or {} for a new run, whose config.json, data
    info and tokenizers it writes (jaxgen.rundir.write_run_files).

    Runs before anything else is written: a resume whose config differs from W/config.json
    in a field its checkpoints depend on is a ConfigError listing them, and W stays as it
    was. A resume never rewrites config.json; its allowed changes go to config_changes.jsonl.
    """
    if _is_run(workdir):
        changes = check_resume(load_workdir_config(workdir), config, workdir)
        if rundir.load_info(workdir) is None and jax.process_index() == 0:
            rundir.save_info(info, workdir)  # a run saved before data_info.json existed
        return changes
    rundir.write_run_files(config, info, workdir)
    return {}


def window_to_json(window: list[dict]) -> list[dict]:
    """Per-step metrics as JSON for a checkpoint's data_state: {name: [value, dtype]}."""
    rows = []
    for row in jax.device_get(window):
        rows.append({key: [str(float(v)), str(np.asarray(v).dtype)] for key, v in row.items()})
    return rows


def window_from_json(rows: list[dict]) -> list[dict]:
    """The inverse of window_to_json, with each value in its original dtype."""
    return [
        {key: np.asarray(float(value), jnp.dtype(dtype)) for key, (value, dtype) in row.items()}
        for row in rows
    ]
