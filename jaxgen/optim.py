"""Optax optimizers and learning-rate schedules built from `config.optim`.

Clipping, warmup + cosine decay and decoupled weight decay (on matrices and
kernels only, never on biases or norm scales) are chained here so that every
family gets the same optimizer from the same config lines.
"""

import jax
import jax.numpy as jnp
import optax

from jaxgen.config import ConfigDict, ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "rsqrt")


def check_config(optim: ConfigDict, field: str = "config.optim") -> None:
    """ConfigError naming `field` (the section's path, e.g. config.optim_d) for a bad value."""
    if optim.name not in OPTIMIZERS:
        raise ConfigError(
            f"{field}.name: unknown optimizer {optim.name!r}; choose from {', '.join(OPTIMIZERS)}"
        )
    if optim.schedule not in SCHEDULES:
        raise ConfigError(
            f"{field}.schedule: unknown schedule {optim.schedule!r}; choose from {', '.join(SCHEDULES)}"
        )
    if not optim.lr > 0:
        raise ConfigError(f"{field}.lr: must be > 0, got {optim.lr}")
    for name in ("weight_decay", "grad_clip_norm", "warmup_steps", "min_lr_ratio"):
        if optim[name] < 0:
            raise ConfigError(f"{field}.{name}: must be >= 0, got {optim[name]}")
    if optim.schedule == "rsqrt" and not optim.warmup_steps:
        raise ConfigError(f"{field}.warmup_steps: the rsqrt schedule needs a warmup, got 0")
    if not 0 <= optim.ema_decay < 1:
        raise ConfigError(f"{field}.ema_decay: must be in [0, 1), got {optim.ema_decay}")
    if not (0 <= optim.b1 < 1 and 0 <= optim.b2 < 1):
        raise ConfigError(f"{field}.b1/b2: must be in [0, 1), got {optim.b1}, {optim.b2}")


def rsqrt_schedule(lr: float, warmup_steps: int) -> optax.Schedule:
    """Vaswani et al. 2017, eq. 3, peaking at `lr` after warmup: lr * min(s / w, sqrt(w / s)).

    The paper's d_model^-0.5 * min(s^-0.5, s * w^-1.5) is this with lr = (d_model * w)^-0.5
    (7.0e-4 for d_model 512 and w 4000); s is the update count (0 at the first update).
    """

    def schedule(count):
        steps = jnp.maximum(jnp.asarray(count, jnp.float32), 1.0)
        rate = jnp.minimum(steps / warmup_steps, jnp.sqrt(warmup_steps / steps))
        return lr * jnp.where(count == 0, 0.0, rate)

    return schedule


def learning_rate(optim: ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warmup to `lr`, then constant or cosine decay to `min_lr_ratio * lr`; or the
    Transformer's inverse-square-root schedule ("rsqrt", rsqrt_schedule)."""
    if optim.schedule == "rsqrt":
        return rsqrt_schedule(optim.lr, optim.warmup_steps)
    if optim.schedule == "constant":
        decay = optax.constant_schedule(optim.lr)
    else:
        decay = optax.cosine_decay_schedule(
            optim.lr, max(num_steps - optim.warmup_steps, 1), alpha=optim.min_lr_ratio
        )
    if not optim.warmup_steps:
        return decay
    warmup = optax.linear_schedule(0.0, optim.lr, optim.warmup_steps)
    return optax.join_schedules([warmup, decay], [optim.warmup_steps])


def make_optimizer(
    optim: ConfigDict, num_steps: int, skip_nonfinite: bool = False
) -> optax.GradientTransformation:
    """The configured optimizer; with `skip_nonfinite` a NaN/Inf gradient leaves params as they are."""
    update = _make_update(optim, num_steps)
    if skip_nonfinite:
        # apply_if_finite lets updates through after max_consecutive_errors skips;
        # we never want that, so the bound is effectively infinite.
        return optax.apply_if_finite(update, max_consecutive_errors=2**31 - 1)
    return update


def _make_update(optim: ConfigDict, num_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate(optim, num_steps)
    if optim.name == "sgd":
        update = optax.sgd(schedule, momentum=optim.b1 or None)
    elif optim.name == "adam":
        update = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
    else:
        update = optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
        )
    if optim.grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), update)
    return update
