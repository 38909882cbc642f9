"""The train state shared by single-model families, and its EMA update."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree  # a copy of params when config.optim.ema_decay > 0, else {}
    rng: jax.Array  # the run's base key; step keys are fold_in(rng, step)

    @property
    def eval_params(self) -> PyTree:
        """EMA params when the run keeps them: what evaluation and sampling use."""
        return self.ema_params if self.ema_params else self.params


def create(
    params: PyTree, optimizer: optax.GradientTransformation, rng: jax.Array, ema: bool
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema else {},
        rng=rng,
    )


def apply_gradients(
    state: TrainState, grads: PyTree, optimizer: optax.GradientTransformation, ema_decay: float
) -> TrainState:
    """One optimizer update, then the EMA of params."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params:
        # Warm-up as in TF's ExponentialMovingAverage(num_updates): early on the
        # average follows the params instead of remembering the initialisation.
        step = state.step.astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
        ema_params = optax.incremental_update(params, ema_params, step_size=1.0 - decay)
    return state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params
    )
