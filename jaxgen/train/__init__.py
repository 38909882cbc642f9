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

FAMILIES = ("gan", "vae")


class Steps(NamedTuple):
    """The pure functions a family gives the loop.

    init(rng, batch) -> state
    train_step(state, batch) -> (state, metrics)     # metrics: scalar means
    eval_steps: {eval type: make(eval_config) -> fn(state, batch, rng) -> metric sums,
                 with "count"}; evaluation divides sums by the count
    sample(state, batch, rng) -> {name: images [N, H, W, C] or [rows, cols, H, W, C]}
                 in [-1, 1]; `batch` is a fixed batch of eval data
    """

    init: Callable[..., Any]
    train_step: Callable[..., Any]
    eval_steps: dict[str, Callable[..., Any]]
    sample: Callable[..., Any]


def get_family(name: str):
    """The module jaxgen.train.<name>."""
    if name not in FAMILIES:
        raise ConfigError(
            f"config.family: unknown family {name!r}; choose from {', '.join(FAMILIES)}"
        )
    return importlib.import_module(f"jaxgen.train.{name}")
