"""The train state shared by single-model families, its optimizer set-up, its update and its step.

Every family opens with the same set-up (an optax optimizer, its learning-rate schedule and
the EMA decay from one `config.optim` section: `Optimizer`) and ends its step with the same
update (`gradient_step`: mean gradients over microbatches and devices, one optimizer update,
the EMA of params). `train_step` is the whole step of every single-model family: the step key
fold_in(state.rng, state.step), the family's `inputs_of(state, batch, rng)` (its per-example
draws: noise, timesteps, dropout keys) and the gradient step of its `loss_of(params, inputs)`;
make_steps binds it to the family's two functions with functools.partial. The GAN keeps its
own two-player state and step but uses the same pieces.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from jaxgen import optim
from jaxgen.config import ConfigDict
from jaxgen.train.gradients import grads_and_metrics

PyTree = Any


class Optimizer(NamedTuple):
    """What one `config.optim` section builds."""

    transform: optax.GradientTransformation
    lr: optax.Schedule  # update count -> learning rate, logged as metrics["lr"]
    ema_decay: float  # 0: no EMA of params


def make_optimizer(optim_config: ConfigDict, num_steps: int, skip_nonfinite: bool) -> Optimizer:
    """The optimizer of `optim_config` whose schedule spans `num_steps` updates."""
    return Optimizer(
        transform=optim.make_optimizer(optim_config, num_steps, skip_nonfinite),
        lr=optim.learning_rate(optim_config, num_steps),
        ema_decay=optim_config.ema_decay,
    )


def from_config(config: ConfigDict) -> Optimizer:
    """config.optim over config.train.num_steps: the optimizer of every single-model family."""
    return make_optimizer(config.optim, config.train.num_steps, config.train.skip_nonfinite)


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


def create(params: PyTree, optimizer: Optimizer, rng: jax.Array) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.transform.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if optimizer.ema_decay > 0 else {},
        rng=rng,
    )


def optimizer_update(
    transform: optax.GradientTransformation, params: PyTree, opt_state: PyTree, grads: PyTree
) -> tuple[PyTree, PyTree]:
    """(new params, new opt_state) after one update of `transform`."""
    updates, opt_state = transform.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def ema_update(params: PyTree, ema_params: PyTree, step: jax.Array, decay: float) -> PyTree:
    """The EMA after update number `step` (0-based) with warm-up, as TF's
    ExponentialMovingAverage(num_updates): early on the average follows the params
    instead of remembering the initialisation."""
    step = step.astype(jnp.float32)
    decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return optax.incremental_update(params, ema_params, step_size=1.0 - decay)


def apply_gradients(state: TrainState, grads: PyTree, optimizer: Optimizer) -> TrainState:
    """One optimizer update, then the EMA of params."""
    params, opt_state = optimizer_update(optimizer.transform, state.params, state.opt_state, grads)
    ema_params = state.ema_params
    if ema_params:
        ema_params = ema_update(params, ema_params, state.step, optimizer.ema_decay)
    return state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params
    )


def gradient_step(
    state: TrainState,
    batch: PyTree,
    *,
    loss_fn: Callable[[PyTree, PyTree], tuple[jax.Array, dict]],
    optimizer: Optimizer,
    microbatches: int = 1,
    axis_name: str | None = None,
) -> tuple[TrainState, dict]:
    """The update of `loss_fn(params, batch) -> (loss, metrics)` on a prepared batch."""
    grads, metrics = grads_and_metrics(loss_fn, state.params, batch, microbatches, axis_name)
    metrics["lr"] = optimizer.lr(state.step)
    return apply_gradients(state, grads, optimizer), metrics


def train_step(
    state: TrainState,
    batch: PyTree,
    *,
    inputs_of: Callable[[TrainState, PyTree, jax.Array], PyTree],
    loss_of: Callable[[PyTree, PyTree], tuple[jax.Array, dict]],
    optimizer: Optimizer,
    microbatches: int = 1,
    axis_name: str | None = None,
) -> tuple[TrainState, dict]:
    """One update: the gradient step of `loss_of` on `inputs_of(state, batch, rng)`.

    rng is fold_in(state.rng, state.step), the step's key; `inputs_of` takes the arguments of
    an eval step (state for what it carries besides params, e.g. latent diffusion's frozen
    encoders) and returns the prepared batch that `loss_of(params, inputs)` differentiates and
    microbatching splits along its first axis.
    """
    inputs = inputs_of(state, batch, jax.random.fold_in(state.rng, state.step))
    return gradient_step(
        state,
        inputs,
        loss_fn=loss_of,
        optimizer=optimizer,
        microbatches=microbatches,
        axis_name=axis_name,
    )


def on_eval_params(fn: Callable[..., dict]) -> Callable[..., dict]:
    """An eval step (state, batch, rng) -> sums from fn(params, batch, rng) on state.eval_params."""

    def eval_step(state, batch, rng):
        return fn(state.eval_params, batch, rng)

    return eval_step


def start_from_params(state: PyTree, params: PyTree) -> PyTree:
    """`state` with another run's params; its EMA restarts from them.

    The EMA covers the top-level entries of params that the family's EMA covers (all of
    them for a VAE, {"generator"} for a GAN, none when ema_params is {}). It gets its own
    buffers: the step donates both, and a buffer cannot be donated twice.
    """
    ema = jax.tree.map(jnp.copy, {key: params[key] for key in state.ema_params})
    return state.replace(params=params, ema_params=ema)
