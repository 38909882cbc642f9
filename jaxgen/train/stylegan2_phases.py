"""The StyleGAN2 family's train step: the four phases of stylegan2-ada's training loop, as
module-level pure functions of params and a `Setup` (train/stylegan2.py builds the Setup from the
config, checks the config and registers the family).

A train step, in the publisher's order (training_loop.py's phases):
  1. G main: the non-saturating loss of G(z) through D, one Adam step of G;
  2. G reg (every `pl_interval` steps): the path length penalty on batch / pl_batch_shrink
     samples, weight pl_weight * pl_interval, its own Adam step of G;
  3. D main: the logistic loss on the real batch and as many fakes, one Adam step of D;
  4. D reg (every `r1_interval` steps): R1 on the real batch, weight r1_gamma / 2 * r1_interval,
     its own Adam step of D;
then the EMA of the generator (half-life `train.ema_kimg` thousand images) and step + 1.
The lazy phases are lax.cond on step % interval inside the one compiled step (no second
compile, no host decision); a penalty whose weight is 0 is left out at trace time. As lazy
regularisation prescribes, each player's Adam lr and betas are rescaled by interval /
(interval + 1) when its penalty is on (losses.stylegan2.lazy_adam): config.optim holds the
paper's uncorrected values (lr 0.002, betas (0, 0.99)).

State besides params: w_avg (the running mean of the mapping network's w, β = train.w_avg_beta
= 0.995, updated by the G main phase from its batch; stylegan2-ada also updates it in the
phases that only generate fakes), pl_mean (the path length penalty's running mean) and
`penalties`, the last value of each lazy penalty (what the step reports between evaluations).
Style mixing (loss.kw.style_mixing_prob) applies to every generator forward of the step. The
step runs the generator's per-sample modulated convolution, sampling the configured one
(config.model.fused_modconv), as stylegan2-ada does; both compute the same function.
DiffAugment (train.diffaugment, e.g. "color,translation,cutout") transforms every image the
discriminator sees, real or fake, in every phase.
"""

import functools
import math
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from jaxgen import diffaugment
from jaxgen.losses import stylegan2 as losses
from jaxgen.models import stylegan2 as models
from jaxgen.sampling import stylegan2 as sampling
from jaxgen.train import state as train_state

PyTree = Any


@flax.struct.dataclass
class StyleGAN2State:
    step: jax.Array  # int32: train steps so far (each one G main update)
    params: PyTree  # {"generator": ..., "discriminator": ...}
    opt_state: PyTree  # {"generator": ..., "discriminator": ...}: main and lazy steps share it
    ema_params: PyTree  # {"generator": the EMA of the generator's params}
    w_avg: jax.Array  # [w_dim] running mean of w, the centre of truncation
    pl_mean: jax.Array  # [] running mean of the path lengths
    penalties: PyTree  # {"r1", "pl_penalty", "pl_length"}: the last value of each lazy penalty
    rng: jax.Array  # the run's base key; step keys are fold_in(rng, step)

    @property
    def eval_params(self) -> PyTree:
        """The generator params that sampling and evaluation use: the EMA."""
        return self.ema_params["generator"]


class Setup(NamedTuple):
    """The fixed parts of a StyleGAN2 step, built once from the config."""

    generator: models.Generator  # sampling and evaluation (config.model.fused_modconv)
    train_generator: models.Generator  # the same params, the per-sample modconv path
    discriminator: models.Discriminator
    gan_loss: Any  # a losses.LOSSES entry
    optimizers: dict[str, train_state.Optimizer]  # by player, lazy-corrected
    image_shape: tuple[int, int, int]  # the data's
    num_classes: int
    kw: dict  # config.loss.kw as a dict
    batch_size: int
    ema_kimg: float
    ema_rampup: float
    w_avg_beta: float
    augment: tuple[str, ...]


# -- images in and out of the model's resolution ------------------------------------------------
def _margin(setup: Setup) -> int:
    return (setup.generator.resolution - setup.image_shape[0]) // 2


def pad_to_model(images: jax.Array, setup: Setup) -> jax.Array:
    """Data-sized images [B, h, w, C] -> [B, R, R, C], padded with -1 (background)."""
    m = _margin(setup)
    if not m:
        return images
    return jnp.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), constant_values=-1.0)


def crop_to_data(images: jax.Array, setup: Setup) -> jax.Array:
    """[B, R, R, C] -> the data's [B, h, w, C] (the centre)."""
    m = _margin(setup)
    return images[:, m : images.shape[1] - m, m : images.shape[2] - m] if m else images


# -- the networks in training --------------------------------------------------------------------
def draw_ws(g_params, rng, num: int, *, setup: Setup):
    """(ws [num, num_ws, w_dim] with style mixing, w [num, w_dim] before mixing, labels [num])."""
    z_rng, other_rng, label_rng, mix_rng = jax.random.split(rng, 4)
    generator = setup.generator
    label = jax.random.randint(label_rng, (num,), 0, max(setup.num_classes, 1))

    def mapping(key):
        z = jax.random.normal(key, (num, generator.z_dim))
        return generator.apply({"params": g_params}, z, label, method="mapping")

    w = mapping(z_rng)
    ws = models.broadcast_ws(w, generator.num_ws)
    prob = setup.kw["style_mixing_prob"]
    if prob > 0:
        cutoff = losses.mixing_cutoff(mix_rng, generator.num_ws, prob)
        other = models.broadcast_ws(mapping(other_rng), generator.num_ws)
        ws = models.mix_styles(ws, other, cutoff)
    return ws, w, label


def synthesize(g_params, ws, rng, *, setup: Setup):
    """G's images for ws, at the data's size but padded to the model's (as reals are)."""
    images = sampling.synthesize(setup.train_generator, g_params, ws, rng, "random")
    return pad_to_model(crop_to_data(images, setup), setup)


def critic(d_params, images, label, rng, *, setup: Setup):
    """D(augment(images)) [B] (no augmentation unless train.diffaugment names some)."""
    if setup.augment:
        images = diffaugment.augment(rng, images, setup.augment)
    return setup.discriminator.apply({"params": d_params}, images, label)


# -- the four phases -----------------------------------------------------------------------------
def generator_main_loss(g_params, d_params, rng, *, setup: Setup):
    ws_rng, noise_rng, augment_rng = jax.random.split(rng, 3)
    ws, w, label = draw_ws(g_params, ws_rng, setup.batch_size, setup=setup)
    fake = synthesize(g_params, ws, noise_rng, setup=setup)
    loss, metrics = setup.gan_loss.generator(
        critic(d_params, fake, label, augment_rng, setup=setup)
    )
    return loss, (dict(metrics) | {"g_loss": loss}, jnp.mean(w, axis=0))


def generator_reg_loss(g_params, pl_mean, rng, *, setup: Setup):
    ws_rng, noise_rng, pl_rng = jax.random.split(rng, 3)
    num = setup.batch_size // setup.kw["pl_batch_shrink"]
    ws, _, _ = draw_ws(g_params, ws_rng, num, setup=setup)
    height, width, channels = setup.image_shape
    pl_noise = jax.random.normal(pl_rng, (num, height, width, channels)) / math.sqrt(height * width)

    def images_of(ws):
        images = sampling.synthesize(setup.train_generator, g_params, ws, noise_rng, "random")
        return crop_to_data(images, setup)

    penalty, new_mean, metrics = losses.path_length_penalty(
        images_of, ws, pl_noise, pl_mean, setup.kw["pl_decay"]
    )
    loss = penalty * setup.kw["pl_weight"] * setup.kw["pl_interval"]
    return loss, (metrics | {"pl_penalty": penalty}, new_mean)


def discriminator_main_loss(d_params, g_params, real, rng, *, setup: Setup):
    ws_rng, noise_rng, fake_rng, real_rng = jax.random.split(rng, 4)
    ws, _, fake_label = draw_ws(g_params, ws_rng, real["image"].shape[0], setup=setup)
    fake = jax.lax.stop_gradient(synthesize(g_params, ws, noise_rng, setup=setup))
    fake_logits = critic(d_params, fake, fake_label, fake_rng, setup=setup)
    real_logits = critic(d_params, real["image"], real["label"], real_rng, setup=setup)
    loss, metrics = setup.gan_loss.discriminator(real_logits, fake_logits)
    return loss, dict(metrics) | {"d_loss": loss}


def discriminator_reg_loss(d_params, real, rng, *, setup: Setup):
    def critic_of(images):
        return critic(d_params, images, real["label"], rng, setup=setup)

    value, metrics = losses.r1_penalty(critic_of, real["image"])
    loss = value * (setup.kw["r1_gamma"] / 2) * setup.kw["r1_interval"]
    return loss, dict(metrics) | {"r1": value}


def _apply(state: StyleGAN2State, player: str, grads, *, setup: Setup) -> StyleGAN2State:
    params, opt_state = train_state.optimizer_update(
        setup.optimizers[player].transform,
        state.params[player],
        state.opt_state[player],
        grads,
    )
    return state.replace(
        params=state.params | {player: params}, opt_state=state.opt_state | {player: opt_state}
    )


def generator_main(state, rng, *, setup: Setup):
    loss_of = functools.partial(generator_main_loss, setup=setup)
    grads, (metrics, w_mean) = jax.grad(loss_of, has_aux=True)(
        state.params["generator"], state.params["discriminator"], rng
    )
    metrics["g_grad_norm"] = optax.global_norm(grads)
    # w_avg <- lerp(mean w, w_avg, beta), stylegan2-ada's MappingNetwork.
    w_avg = w_mean + setup.w_avg_beta * (state.w_avg - w_mean)
    return _apply(state, "generator", grads, setup=setup).replace(w_avg=w_avg), metrics


def generator_reg(state, rng, *, setup: Setup):
    loss_of = functools.partial(generator_reg_loss, setup=setup)
    grads, (metrics, pl_mean) = jax.grad(loss_of, has_aux=True)(
        state.params["generator"], state.pl_mean, rng
    )
    state = _apply(state, "generator", grads, setup=setup)
    penalties = state.penalties | {k: metrics[k] for k in ("pl_penalty", "pl_length")}
    return state.replace(pl_mean=pl_mean, penalties=penalties)


def discriminator_main(state, real, rng, *, setup: Setup):
    loss_of = functools.partial(discriminator_main_loss, setup=setup)
    grads, metrics = jax.grad(loss_of, has_aux=True)(
        state.params["discriminator"], state.params["generator"], real, rng
    )
    metrics["d_grad_norm"] = optax.global_norm(grads)
    return _apply(state, "discriminator", grads, setup=setup), metrics


def discriminator_reg(state, real, rng, *, setup: Setup):
    loss_of = functools.partial(discriminator_reg_loss, setup=setup)
    grads, metrics = jax.grad(loss_of, has_aux=True)(state.params["discriminator"], real, rng)
    state = _apply(state, "discriminator", grads, setup=setup)
    return state.replace(penalties=state.penalties | {"r1": metrics["r1"]})


def _every(interval: int, step, phase, state):
    """phase(state) on steps 0, interval, 2 interval, ...; state unchanged otherwise."""
    if interval == 1:
        return phase(state)
    return jax.lax.cond(step % interval == 0, phase, lambda s: s, state)


def update_ema(state: StyleGAN2State, *, setup: Setup) -> tuple[StyleGAN2State, jax.Array]:
    beta = losses.ema_beta(
        setup.batch_size, setup.ema_kimg, state.step * setup.batch_size, setup.ema_rampup
    )
    ema = optax.incremental_update(
        state.params["generator"], state.ema_params["generator"], step_size=1.0 - beta
    )
    return state.replace(ema_params={"generator": ema}), beta


def train_step(state: StyleGAN2State, batch: dict, *, setup: Setup):
    g_rng, pl_rng, d_rng, r1_rng = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)
    step, kw = state.step, setup.kw
    real = {"image": pad_to_model(batch["image"], setup), "label": batch["label"]}
    state, metrics = generator_main(state, g_rng, setup=setup)
    if kw["pl_weight"] > 0:
        phase = functools.partial(generator_reg, rng=pl_rng, setup=setup)
        state = _every(kw["pl_interval"], step, phase, state)
    state, d_metrics = discriminator_main(state, real, d_rng, setup=setup)
    if kw["r1_gamma"] > 0:
        phase = functools.partial(discriminator_reg, real=real, rng=r1_rng, setup=setup)
        state = _every(kw["r1_interval"], step, phase, state)
    state, beta = update_ema(state, setup=setup)
    metrics = metrics | d_metrics | dict(state.penalties)
    metrics |= {
        "loss": d_metrics["d_loss"],
        "pl_mean": state.pl_mean,
        "ema_beta": beta,
        "g_lr": setup.optimizers["generator"].lr(step),
        "d_lr": setup.optimizers["discriminator"].lr(step),
    }
    return state.replace(step=step + 1), metrics
