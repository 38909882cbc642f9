"""Training: the generic loop (loop.py) and one file per family (vae.py, ...).

A family module provides two functions, and the loop needs nothing else:

    validate(config, info)                 # ConfigError for values it cannot take
    make_steps(config, info, axis_name)    # -> Steps of pure functions

The loop compiles the steps once for the mesh (jaxgen.parallel); families
never call jax.jit themselves.
"""

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

from jaxgen.config import ConfigError

FAMILIES = ("vae", "gan", "gpt", "ddpm", "classifier")


class Steps(NamedTuple):
    """The pure functions a family gives the loop.

    init(rng, batch) -> state
    train_step(state, batch) -> (state, metrics)     # metrics: scalar means
    eval_steps: {eval type: make(eval_config) -> fn(state, batch, rng) -> metric sums,
                 with "count"}; evaluation divides sums by the count
    sample(state, batch, rng) -> {name: images [N, H, W, C] or [rows, cols, H, W, C]}
                 in [-1, 1]; `batch` is a fixed batch of eval data ({} writes nothing)
    generate(state, rng, num, labels=None) -> images [num, H, W, C] in [-1, 1]
                 optional (None: the family draws no samples). `num` new samples from
                 the model, for sample-quality evaluators (metrics/generative.py: fid,
                 kid, is, class_accuracy). `labels` int32 [num] asks a class-conditional
                 model for those classes; an unconditional family ignores it (and
                 class_accuracy then measures nothing useful). Pure and jittable, with
                 `num` static: the evaluator compiles it once per batch size, runs it
                 under jit on a data-sharded mesh, and keeps the batch count fixed.
                 Use state.eval_params (EMA when kept). Images must be in the data's
                 [-1, 1] range whatever the training pixels are (a Bernoulli VAE returns
                 2p - 1, the mean of p(x|z)).
    """

    init: Callable[..., Any]
    train_step: Callable[..., Any]
    eval_steps: dict[str, Callable[..., Any]]
    sample: Callable[..., Any]
    generate: Callable[..., Any] | None = None


def get_family(name: str):
    """The module jaxgen.train.<name>."""
    if name not in FAMILIES:
        raise ConfigError(
            f"config.family: unknown family {name!r}; choose from {', '.join(FAMILIES)}"
        )
    return importlib.import_module(f"jaxgen.train.{name}")
