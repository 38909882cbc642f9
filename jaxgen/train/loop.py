"""The training loop shared by every family.

init or resume -> compiled steps -> log / checkpoint / evaluate / sample on
their intervals. The loop owns every host-side concern (files, progress,
signals); the family supplies only pure functions (jaxgen.train.Steps).
Metrics are fetched from the device once per `log_every` steps.
"""

import logging
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxgen import checkpoint, data, metrics, parallel, runs
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.runs import INTERVALS
from jaxgen.train import get_family
from jaxgen.train.writer import MetricWriter

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
    info = runs.check_config(config)
    steps = get_family(config.family).make_steps(config, info)
    num_devices = parallel.num_data_devices(config.mesh)
    metrics.check_config(
        config, set(steps.eval_steps), num_devices, can_generate=steps.generate is not None
    )
    return info


def _check_writable(workdir: str) -> None:
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--workdir: {workdir!r} is not writable ({path} is not a writable folder)"
        )


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint at the end of this step, then exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


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
    info = info or check(config, workdir)
    family = get_family(config.family)
    placement = parallel.Placement(config.mesh)
    steps = family.make_steps(config, info, placement.axis_name)
    jit_steps = steps if placement.axis_name is None else family.make_steps(config, info, None)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
        runs.save_tokenizers(config.data, workdir)  # the workdir alone decodes the run's tokens

    train_iter = data.make_iterator(
        config.data, config.data.train_split, config.train.batch_size, config.seed, train=True
    )
    sample_batch = runs.first_eval_batch(config, config.sample.num_samples)
    rng = jax.random.PRNGKey(config.seed)
    init = placement.compile_init(jit_steps.init)
    abstract = placement.abstract_state(jax.eval_shape(jit_steps.init, rng, sample_batch))

    ckpt = checkpoint.Checkpointer(workdir, config.ckpt)
    if ckpt.latest_step() is not None:
        state, data_state, start = ckpt.restore(abstract)
        train_iter.set_state(data_state["train"])
        log.info("resumed from step %d of %s", start, ckpt.directory)
    else:
        state, start = init(rng, sample_batch), 0
        if config.init_from:
            params = checkpoint.restore_params(config.init_from, abstract.params)
            state = start_from_params(state, params)
            log.info("params from %s", config.init_from)

    evaluators = metrics.build(config, jit_steps, placement)
    sample = placement.compile_eval(jit_steps.sample)
    sample_rng = jax.random.PRNGKey(config.sample.seed)
    sample_batch = placement.put_batch(sample_batch, backend="jit")
    writer = MetricWriter(workdir, start)
    train_step = placement.compile_train_step(steps.train_step, state)
    state = placement.put_state(state)

    every = {name: config.train[name] for name in INTERVALS}
    num_steps = config.train.num_steps
    window, window_start, window_time = [], start, time.perf_counter()
    bar = tqdm(
        total=num_steps,
        initial=start,
        desc="train",
        unit="step",
        mininterval=2.0,
        dynamic_ncols=True,
    )
    try:
        with _Preemption() as preemption:
            for step in range(start, num_steps):
                host_batch = next(train_iter)
                if step + 1 == config.train.fault_nan_step:
                    host_batch = _poison(host_batch)
                batch = placement.put_batch(host_batch)
                state, step_metrics = train_step(state, batch)
                window.append(placement.first_metrics(step_metrics))
                done = step + 1
                bar.update(1)
                due = {
                    name: done % interval == 0 or done == num_steps
                    for name, interval in every.items()
                }
                # Read the flag once: a SIGTERM landing later in this iteration must not
                # stop the loop after a step that was not saved.
                stopping = preemption.requested
                if stopping:  # save now and exit quickly: no eval or samples
                    due.update(ckpt_every=True, eval_every=False, sample_every=False)
                if window and (due["log_every"] or due["ckpt_every"]):
                    means = _mean_metrics(window, window_start, config.train.skip_nonfinite)
                    elapsed = time.perf_counter() - window_time
                    means["perf/steps_per_sec"] = len(window) / elapsed
                    writer.write(done, "train", means)
                    bar.set_postfix(loss=f"{means['loss']:.4g}")
                    window, window_start, window_time = [], done, time.perf_counter()
                if evaluators and due["eval_every"]:
                    results = metrics.run(evaluators, placement.get_state(state))
                    writer.write(done, "eval", results)
                if due["sample_every"]:
                    paths = runs.write_samples(
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
                if due["eval_every"] or due["sample_every"]:
                    window_time = time.perf_counter()  # steps/s counts training only
                # Saved last: a checkpoint at step s means everything logged for s is
                # written, so a resumed run never skips an eval or a sample grid.
                if due["ckpt_every"]:
                    ckpt.save(done, placement.get_state(state), {"train": train_iter.get_state()})
                if stopping:
                    break
    finally:
        # Also on errors: let an in-flight async save commit before the process
        # exits, so the last good checkpoint is always complete.
        bar.close()
        ckpt.close()
        writer.close()
    return placement.get_state(state)


def start_from_params(state: PyTree, params: PyTree) -> PyTree:
    """`state` with another run's params; its EMA restarts from them.

    The EMA covers the top-level entries of params that the family's EMA covers (all of
    them for a VAE, {"generator"} for a GAN, none when ema_params is {}). It gets its own
    buffers: the step donates both, and a buffer cannot be donated twice.
    """
    ema = jax.tree.map(jnp.copy, {key: params[key] for key in state.ema_params})
    return state.replace(params=params, ema_params=ema)
