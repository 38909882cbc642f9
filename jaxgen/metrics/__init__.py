"""Evaluators: the entries of `config.evals`, run during training and by experiments/evaluate.

An entry's `type` names either an eval step the family provides (the VAE's
"elbo" and "nll", the classifier's "accuracy") or an evaluator registered in
EVALUATORS (metrics/evaluators.py; metrics/generative.py: "fid", "kid", "is",
"class_accuracy"; metrics/text.py: "bleu", "rouge"). A family eval step returns per-batch sums with a "count";
`DatasetAverage` runs it over the eval split, divides, and applies the family's
Steps.finalize of that type if it has one (GPT's perplexity). Results are keyed
"<entry name>/<metric>".

A registered evaluator is `cls(config, entry, steps, placement)` -> callable
`evaluator(state) -> {metric: float}` (or a string for a label the score needs to be
reproduced, e.g. metrics/text.py's sacrebleu signatures). It takes what it runs from the
family's Steps (big_vision's predict_fns): `needs_generate = True` if it draws samples with
`steps.generate`, `needs = ("translate",)` for the Steps.predict_fns it calls; an evaluator
never builds a family's model itself. It may define a classmethod
`check(config, name, entry, num_devices)` for checks before compiling, and a dict
`defaults` of its entry fields (experiments.evaluate --evals starts from it); with
`shares_samples = True` it also gets `shared=` (one dict per build) and may define
`release()`, called after each `run`. Errors that
only show when it is built (a missing domain network) name the field
"config.evals.<name>.<field>"; `build` fills in the entry's name.
"""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxgen import data, parallel
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.metrics import generative, text
from jaxgen.metrics.evaluators import EVALUATORS
from jaxgen.parallel import Placement

__all__ = ["EVALUATORS", "DatasetAverage", "build", "check_config", "generative", "run", "text"]


def check_config(config: ConfigDict, steps: Any, num_devices: int) -> None:
    """ConfigError naming config.evals.<name>.<field> for an entry that cannot run.

    steps: the family's Steps (its eval steps, Steps.generate and Steps.predict_fns decide
    which evaluators it can run).
    """
    family_types = set(steps.eval_steps)
    for name, entry in config.evals.items():
        if "type" not in entry:
            raise ConfigError(f"config.evals.{name}.type: missing")
        if entry.type not in family_types and entry.type not in EVALUATORS:
            choices = sorted(family_types | set(EVALUATORS.names()))
            raise ConfigError(
                f"config.evals.{name}.type: unknown evaluator {entry.type!r}; choose from {', '.join(choices)}"
            )
        for field in ("batch_size", "num_samples", "chunk"):
            if field in entry and not (isinstance(entry[field], int) and entry[field] >= 1):
                raise ConfigError(f"config.evals.{name}.{field}: must be >= 1, got {entry[field]}")
        if entry.get("batch_size", num_devices) % num_devices:
            raise ConfigError(
                f"config.evals.{name}.batch_size: {entry.batch_size} is not divisible by the {num_devices} devices"
            )
        if entry.get("num_examples", 0) < 0:
            raise ConfigError(
                f"config.evals.{name}.num_examples: must be >= 0 (0 means the whole split)"
            )
        if entry.type in family_types:
            continue
        _check_needs(config, name, entry, steps)
        evaluator = EVALUATORS.get(entry.type)
        if hasattr(evaluator, "check"):
            evaluator.check(config, name, entry, num_devices)


def _check_needs(config: ConfigDict, name: str, entry: ConfigDict, steps: Any) -> None:
    """The family gives the evaluator what it runs: Steps.generate, its predict_fns."""
    evaluator = EVALUATORS.get(entry.type)
    if getattr(evaluator, "needs_generate", False) and steps.generate is None:
        raise ConfigError(
            f"config.evals.{name}.type: {entry.type!r} draws samples, but the "
            f"{config.family} family has no Steps.generate (see jaxgen/family.py)"
        )
    missing = [fn for fn in getattr(evaluator, "needs", ()) if fn not in steps.predict_fns]
    if missing:
        raise ConfigError(
            f"config.evals.{name}.type: {entry.type!r} needs the {missing[0]!r} function of a "
            f"family that has one; the {config.family} family has "
            f"{', '.join(sorted(steps.predict_fns)) or 'none'} (Steps.predict_fns)"
        )


class DatasetAverage:
    """Averages a family eval step over (the first `num_examples` of) the eval split."""

    def __init__(
        self,
        config: ConfigDict,
        entry: ConfigDict,
        make_step: Callable,
        placement: Placement,
        finalize: Callable[[dict], dict] | None = None,
    ):
        self.config, self.entry, self.placement = config, entry, placement
        # Optional host-side function of the averages, for non-linear metrics (perplexity).
        self.finalize = finalize
        self.step = placement.compile_eval(make_step(entry))
        self.rng = jax.random.PRNGKey(config.seed + 1)  # the same noise at every evaluation

    def compile_ahead(self, state: Any, ahead: Any) -> None:
        """Compile the eval step for `state` (abstract) and the first batch (train/ahead.py)."""
        batch = self.placement.put_batch(next(iter(self._batches())), backend="jit")
        ahead.compile(self.step, state, batch, jax.random.fold_in(self.rng, 0))

    def _batches(self):
        entry = self.entry
        return data.make_iterator(
            self.config.data,
            entry.get("split", self.config.data.eval_split),
            entry.batch_size,
            self.config.seed,
            train=False,
        )

    def __call__(self, state: Any) -> dict[str, float]:
        entry = self.entry
        totals, seen = None, 0
        for index, host_batch in enumerate(self._batches()):
            batch = self.placement.put_batch(host_batch, backend="jit")
            sums = self.step(state, batch, jax.random.fold_in(self.rng, index))
            totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
            seen += entry.batch_size
            if entry.get("num_examples", 0) and seen >= entry.num_examples:
                break
        totals = jax.device_get(totals)
        count = float(totals.pop("count"))
        means = {key: float(np.asarray(value) / count) for key, value in totals.items()}
        if self.finalize is not None:
            means = self.finalize(means)
        return means | {"count": count}


def build(config: ConfigDict, steps: Any, placement: Placement) -> dict[str, Callable[[Any], dict]]:
    """name -> evaluator(state) -> {metric: value} for every entry of config.evals.

    Checks the entries first (check_config): a bad one is a ConfigError before compiling.
    """
    num_devices = parallel.num_data_devices(config.mesh)
    check_config(config, steps, num_devices)
    evaluators, shared = {}, {}  # shared: the sample passes and references of equal entries
    for name, entry in config.evals.items():
        if entry.type in steps.eval_steps:
            finalize = steps.finalize.get(entry.type)
            evaluators[name] = DatasetAverage(
                config, entry, steps.eval_steps[entry.type], placement, finalize
            )
        else:
            try:
                cls = EVALUATORS.get(entry.type)
                kwargs = {"shared": shared} if getattr(cls, "shares_samples", False) else {}
                evaluators[name] = cls(config, entry, steps, placement, **kwargs)
            except ConfigError as error:
                # An evaluator does not know its entry's name; it writes config.evals.<name>.
                message = str(error).replace("config.evals.<name>", f"config.evals.{name}")
                raise ConfigError(message) from error
    return evaluators


def compile_ahead(evaluators: dict[str, Callable], state: Any, ahead: Any) -> None:
    """Start compiling the evaluators that can for `state` (abstract; train/ahead.py); the
    others compile at their first evaluation."""
    for evaluator in evaluators.values():
        if hasattr(evaluator, "compile_ahead"):
            evaluator.compile_ahead(state, ahead)


def run(evaluators: dict[str, Callable], state: Any) -> dict[str, float]:
    results = {}
    for name, evaluator in evaluators.items():
        for metric, value in evaluator(state).items():
            results[f"{name}/{metric}"] = value
    for evaluator in evaluators.values():
        if hasattr(evaluator, "release"):
            evaluator.release()  # a shared sample pass keeps its images only for this state
    return results
