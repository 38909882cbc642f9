"""StyleGAN2 losses and the scalars of its training schedule (Karras et al. 2020, "Analyzing and
Improving the Image Quality of StyleGAN"; stylegan2-ada-pytorch's training/loss.py and
training_loop.py).

- the objective: the non-saturating logistic loss (losses.gan's, registered here too);
- R1 on real images (losses.gan.r1_penalty; the step weights it by γ / 2 times its interval);
- the path length penalty: (||J_w^T y||_2 - a)^2 with y ~ N(0, I) / sqrt(H W), a the running
  mean of the lengths (decay 0.01);
- lazy regularisation's correction of Adam (section 3.1 / appendix B): a penalty evaluated
  every k updates runs as an extra optimizer step, so the main lr and betas are rescaled by
  k / (k + 1);
- the EMA of the generator with a half-life in images (ema_kimg, with the optional ramp-up).
Nothing here sees params: the step passes functions of images and ws.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxgen.losses import gan
from jaxgen.registry import Registry

Metrics = dict[str, jax.Array]

LOSSES = Registry("loss", "config.loss.name")
LOSSES.register("non_saturating")(
    gan.GANLoss(gan.non_saturating_discriminator, gan.non_saturating_generator)
)

# R1 = E_x[||∇_x D(x)||^2] (Mescheder et al. 2018, eq. 9): the same penalty as the gan family.
r1_penalty = gan.r1_penalty


def path_length_penalty(
    synthesize: Callable[[jax.Array], jax.Array],
    ws: jax.Array,
    noise: jax.Array,
    pl_mean: jax.Array,
    decay: float = 0.01,
) -> tuple[jax.Array, jax.Array, Metrics]:
    """The path length penalty of Karras et al. 2020, eq. 4, as stylegan2-ada computes it.

    Args:
      synthesize: ws [B, num_ws, w_dim] -> images [B, H, W, C].
      ws: the ws to differentiate at.
      noise: y [B, H, W, C] ~ N(0, 1) / sqrt(H W) (the caller draws and scales it).
      pl_mean: a, the running mean of the path lengths (a scalar, 0 at the start).
      decay: a <- a + decay (mean length - a).

    Returns:
      (mean over the batch of (length - a_new)^2, a_new, metrics), where length =
      sqrt(mean over the num_ws layers of ||∂(sum images * y) / ∂w_l||^2); a_new is a constant
      for the gradient (stylegan2-ada detaches it).
    """
    grads = jax.grad(lambda w: jnp.sum(synthesize(w) * noise))(ws)  # [B, num_ws, w_dim]
    lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), axis=2), axis=1))  # [B]
    new_mean = jax.lax.stop_gradient(pl_mean + decay * (jnp.mean(lengths) - pl_mean))
    penalty = jnp.mean(jnp.square(lengths - new_mean))
    return penalty, new_mean, {"pl_length": jnp.mean(lengths)}


def lazy_adam(lr: float, b1: float, b2: float, interval: int) -> tuple[float, float, float]:
    """(lr, b1, b2) of a player whose penalty runs every `interval` updates as an extra step:
    ratio = interval / (interval + 1); lr * ratio, b1 ** ratio, b2 ** ratio (stylegan2-ada's
    training_loop.py; interval 0 or 1: unchanged, the penalty is part of every update)."""
    if interval <= 1:
        return lr, b1, b2
    ratio = interval / (interval + 1)
    return lr * ratio, b1**ratio, b2**ratio


def ema_beta(
    batch_size: int, ema_kimg: float, images_seen: jax.Array, ema_rampup: float = 0.0
) -> jax.Array:
    """The generator EMA's decay per step: 0.5 ** (batch / ema_nimg), a half-life of
    ema_nimg = 1000 ema_kimg images; with a ramp-up, ema_nimg <= images_seen * ema_rampup
    (so the EMA starts as a copy and lengthens its memory as training goes on)."""
    ema_nimg = jnp.asarray(ema_kimg * 1000.0, jnp.float32)
    if ema_rampup:
        ema_nimg = jnp.minimum(ema_nimg, jnp.asarray(images_seen, jnp.float32) * ema_rampup)
    return 0.5 ** (batch_size / jnp.maximum(ema_nimg, 1e-8))


def mixing_cutoff(rng: jax.Array, num_ws: int, prob: float) -> jax.Array:
    """The layer from which a second w takes over (stylegan2-ada: one draw for the batch):
    uniform on [1, num_ws) with probability `prob`, else num_ws (no mixing)."""
    cutoff_rng, coin_rng = jax.random.split(rng)
    cutoff = jax.random.randint(cutoff_rng, (), 1, num_ws)
    return jnp.where(jax.random.uniform(coin_rng) < prob, cutoff, num_ws)
