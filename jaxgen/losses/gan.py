"""GAN losses: one registered GANLoss per objective, plus the gradient penalty and R1.

A GANLoss is a pair of pure functions of discriminator outputs (logits, [B] float32):
  discriminator(real_logits, fake_logits) -> (loss, metrics)   minimised by D
  generator(fake_logits) -> (loss, metrics)                     minimised by G
and `gradient_penalty`, which says whether the objective needs the WGAN-GP penalty on
interpolates (its weight λ is config.loss.kw.gp_weight). A new objective is a new pair of
functions and one `register` line here; config.loss.name picks it.

The penalties take a critic function `critic(images [B, H, W, C]) -> logits [B]` (the
discriminator with its params closed over) and images, and differentiate it with respect
to the images. R1 (config.loss.kw.r1_gamma > 0) can be added to any objective.
The train step owns the randomness (the interpolation weights) and the models.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgen.registry import Registry

Metrics = dict[str, jax.Array]
Critic = Callable[[jax.Array], jax.Array]


class GANLoss(NamedTuple):
    discriminator: Callable[[jax.Array, jax.Array], tuple[jax.Array, Metrics]]
    generator: Callable[[jax.Array], tuple[jax.Array, Metrics]]
    gradient_penalty: bool = False  # add kw.gp_weight * gradient_penalty on interpolates


LOSSES = Registry("loss", "config.loss.name")


def _logit_metrics(real_logits: jax.Array, fake_logits: jax.Array) -> Metrics:
    return {"d_real": jnp.mean(real_logits), "d_fake": jnp.mean(fake_logits)}


def non_saturating_discriminator(real_logits, fake_logits):
    """Binary cross-entropy of D = sigmoid(logits) on real (label 1) and fake (label 0).

    loss = -E[log D(x)] - E[log(1 - D(G(z)))] = E[softplus(-l_real)] + E[softplus(l_fake)]
    (Goodfellow et al. 2014, "Generative Adversarial Nets", eq. 1); shared by the
    non-saturating and minimax objectives, which differ only in the generator's loss.
    """
    loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
    return loss, _logit_metrics(real_logits, fake_logits)


def non_saturating_generator(fake_logits):
    """loss = -E[log D(G(z))] = E[softplus(-l_fake)] (Goodfellow et al. 2014, section 3).

    Same fixed point as the minimax loss, but strong gradients while D rejects G's samples.
    """
    return jnp.mean(jax.nn.softplus(-fake_logits)), {}


def minimax_generator(fake_logits):
    """loss = E[log(1 - D(G(z)))] = -E[softplus(l_fake)] (Goodfellow et al. 2014, eq. 1).

    The original zero-sum game; it saturates (vanishing gradient) when D wins early.
    """
    return -jnp.mean(jax.nn.softplus(fake_logits)), {}


def wasserstein_discriminator(real_logits, fake_logits):
    """Critic loss E[C(G(z))] - E[C(x)], the negated Wasserstein-1 estimate.

    (Arjovsky et al. 2017, "Wasserstein GAN", eq. 3.) The Lipschitz constraint comes from
    the gradient penalty (Gulrajani et al. 2017); metrics add "wasserstein" = E[C(x)] - E[C(G(z))].
    """
    metrics = _logit_metrics(real_logits, fake_logits)
    metrics["wasserstein"] = metrics["d_real"] - metrics["d_fake"]
    return -metrics["wasserstein"], metrics


def wasserstein_generator(fake_logits):
    """loss = -E[C(G(z))] (Arjovsky et al. 2017; Gulrajani et al. 2017, algorithm 1)."""
    return -jnp.mean(fake_logits), {}


def hinge_discriminator(real_logits, fake_logits):
    """loss = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))].

    (Lim & Ye 2017, "Geometric GAN"; Miyato et al. 2018, "Spectral Normalization for
    GANs", eq. 16.)
    """
    loss = jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
    return loss, _logit_metrics(real_logits, fake_logits)


def hinge_generator(fake_logits):
    """loss = -E[D(G(z))] (Miyato et al. 2018, eq. 17)."""
    return -jnp.mean(fake_logits), {}


LOSSES.register("non_saturating")(GANLoss(non_saturating_discriminator, non_saturating_generator))
LOSSES.register("minimax")(GANLoss(non_saturating_discriminator, minimax_generator))
LOSSES.register("wgan_gp")(
    GANLoss(wasserstein_discriminator, wasserstein_generator, gradient_penalty=True)
)
LOSSES.register("hinge")(GANLoss(hinge_discriminator, hinge_generator))


def interpolate(real: jax.Array, fake: jax.Array, mix: jax.Array) -> jax.Array:
    """x̂ = mix * x + (1 - mix) * G(z), with one weight per example: mix [B] in [0, 1]."""
    mix = mix.reshape((-1,) + (1,) * (real.ndim - 1))  # [B, 1, 1, 1]
    return mix * real + (1.0 - mix) * fake


def _input_grad_norms(critic: Critic, images: jax.Array) -> jax.Array:
    """||∇_x C(x)||_2 per example, [B]: the critic is applied per example, so the
    gradient of the sum over the batch is each example's own gradient."""
    grads = jax.grad(lambda x: jnp.sum(critic(x)))(images)  # [B, H, W, C]
    return jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=1) + 1e-12)


def gradient_penalty(critic: Critic, interpolates: jax.Array) -> tuple[jax.Array, Metrics]:
    """GP = E_x̂[(||∇_x̂ C(x̂)||_2 - 1)^2] on random interpolates of real and fake images.

    (Gulrajani et al. 2017, "Improved Training of Wasserstein GANs", eq. 3; the caller
    multiplies by λ = 10 as in the paper.) The critic must treat examples independently
    (no BatchNorm), else the per-example gradient is not what the paper penalises.
    """
    norms = _input_grad_norms(critic, interpolates)
    return jnp.mean(jnp.square(norms - 1.0)), {"gp_grad_norm": jnp.mean(norms)}


def r1_penalty(critic: Critic, real: jax.Array) -> tuple[jax.Array, Metrics]:
    """R1 = E_x[||∇_x D(x)||_2^2] on real data; the caller multiplies by γ / 2.

    (Mescheder et al. 2018, "Which Training Methods for GANs do actually Converge?", eq. 9.)
    """
    norms = _input_grad_norms(critic, real)
    return jnp.mean(jnp.square(norms)), {"r1_grad_norm": jnp.mean(norms)}
