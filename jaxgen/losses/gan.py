"""GAN losses: one registered GANLoss per objective, and the regularizers (penalties).

A GANLoss is a pair of pure functions of discriminator outputs (logits, [B] float32):
  discriminator(real_logits, fake_logits) -> (loss, metrics)   minimised by D
  generator(fake_logits) -> (loss, metrics)                     minimised by G
and `requires`, the names of the regularizers the objective cannot do without (WGAN-GP's
critic needs the gradient penalty). A new objective is a new pair of functions and one
`register` line in LOSSES; config.loss.name picks it.

A Regularizer is a penalty added to one player's loss, registered by name in REGULARIZERS:
"gradient_penalty" (WGAN-GP, on interpolates of real and fake) and "r1" (on real data).
Each entry names the config.loss.kw keyword holding its weight (gp_weight, r1_gamma; 0
turns it off), so any objective takes any penalty, and says how the weight scales it, which
images it differentiates at, and how often it runs (`interval`, for StyleGAN2's lazy
regularization). A new penalty is a function and one `register` line in REGULARIZERS; the
train step (train/gan.py) applies every entry whose weight is > 0, without naming any.

The penalties take a critic function `critic(images [B, H, W, C]) -> logits [B]` (the
discriminator with its params closed over) and images, and differentiate it with respect
to the images. The train step owns the randomness (the interpolation weights) and the
models; nothing here sees params.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgen.config import ConfigError
from jaxgen.registry import Registry

Metrics = dict[str, jax.Array]
Critic = Callable[[jax.Array], jax.Array]


class GANLoss(NamedTuple):
    discriminator: Callable[[jax.Array, jax.Array], tuple[jax.Array, Metrics]]
    generator: Callable[[jax.Array], tuple[jax.Array, Metrics]]
    # Names of REGULARIZERS entries this objective needs with a weight > 0.
    requires: tuple[str, ...] = ()


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
    GANLoss(wasserstein_discriminator, wasserstein_generator, requires=("gradient_penalty",))
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


class Regularizer(NamedTuple):
    """A penalty on one player, weighted by a config.loss.kw keyword (0 turns it off).

    penalty(critic, images) -> (value, metrics): the unweighted penalty at `images`.
    inputs(real, fake, mix) -> images: where the penalty is evaluated, from the real and
        fake images [B, H, W, C] and the per-example interpolation weights mix [B] that the
        step draws: `interpolate` (WGAN-GP) or `real_images` (R1).
    keyword: the config.loss.kw field of its weight w (kept as "gp_weight" and "r1_gamma"
        so that every config and every saved run's config.json reads as before).
    metric: the name under which the step reports `value` ("gp", "r1").
    player: the network whose loss it enters: "discriminator" (the critic's input
        gradients); "generator" is reserved for StyleGAN2's path length regularization.
    scale: the loss gains scale * w * value (R1 is γ / 2 · R1, so scale 0.5).
    interval: lazy regularization (Karras et al. 2020, "Analyzing and Improving the Image
        Quality of StyleGAN", section 3.1): a family that schedules it evaluates the
        penalty only on every `interval`-th update of its player and multiplies its
        coefficient by `interval`, so that the expected penalty is unchanged (StyleGAN2:
        R1 every 16 D updates, path length every 4 G updates). 1 = every update, the only
        value the "gan" family applies (its validate rejects an active entry with another).
    """

    penalty: Callable[[Critic, jax.Array], tuple[jax.Array, Metrics]]
    inputs: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    keyword: str
    metric: str
    player: str = "discriminator"
    scale: float = 1.0
    interval: int = 1


REGULARIZERS = Registry("regularizer", "config.loss.kw")


def real_images(real: jax.Array, fake: jax.Array, mix: jax.Array) -> jax.Array:
    """The real images themselves (R1 penalises D's gradient on the data)."""
    del fake, mix
    return real


REGULARIZERS.register("gradient_penalty")(
    Regularizer(gradient_penalty, interpolate, keyword="gp_weight", metric="gp")
)
REGULARIZERS.register("r1")(
    Regularizer(r1_penalty, real_images, keyword="r1_gamma", metric="r1", scale=0.5)
)


def active_regularizers(loss_kw) -> tuple[tuple[Regularizer, float], ...]:
    """(entry, weight) of each registered regularizer whose config.loss.kw weight is > 0, in
    name order (the order the step adds them in)."""
    entries = [REGULARIZERS.get(name) for name in REGULARIZERS.names()]
    return tuple((entry, loss_kw[entry.keyword]) for entry in entries if loss_kw[entry.keyword] > 0)


def check_regularizers(loss_name: str, loss_kw) -> tuple[tuple[Regularizer, float], ...]:
    """The active regularizers of config.loss; ConfigError naming config.loss.kw.<keyword> for
    a weight that is missing (0 disables it), negative, or 0 where the loss requires it."""
    for name in REGULARIZERS.names():
        field = REGULARIZERS.get(name).keyword
        if field not in loss_kw:
            raise ConfigError(f"config.loss.kw.{field}: missing (0 disables it)")
        if not loss_kw[field] >= 0:
            raise ConfigError(f"config.loss.kw.{field}: must be >= 0, got {loss_kw[field]}")
    for name in LOSSES.get(loss_name).requires:
        field = REGULARIZERS.get(name).keyword
        if not loss_kw[field] > 0:
            raise ConfigError(
                f"config.loss.kw.{field}: {loss_name!r} needs a {name.replace('_', ' ')} weight > 0"
            )
    return active_regularizers(loss_kw)
