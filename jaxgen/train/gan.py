"""GAN family: alternating discriminator / generator updates in one pure train step.

One train_step = `config.train.n_critic` discriminator updates (a lax.scan), then one
generator update, each player with its own optax optimizer (config.optim for the
generator, config.optim_d for the discriminator: TTUR is two learning rates). The
global batch holds n_critic * b real examples; discriminator update k sees its own
slice of b (examples k, k + n_critic, ... as in gradients.split_microbatches), so each
critic step draws a fresh real batch as in WGAN-GP and SN-GAN (algorithm 1 of both
papers), and the generator update uses b fakes. With n_critic = 1 this is the usual
DCGAN step on the whole batch.

Fakes for a discriminator update come from the generator in train mode (BatchNorm on
batch statistics) and are constants for that update; the generator's BatchNorm running
averages are updated by its own update only. The discriminator is always applied in
train mode; its non-parameter state (BatchNorm averages, spectral-norm vectors) is
updated by its own updates and read, not written, in the generator update. `state.step`
counts generator updates; the discriminator's optimizer counts its own.

Randomness: per-example keys (parallel.example_rngs) from fold_in(state.rng, state.step),
so 1 device, 4 under jit and 4 under pmap give the same step. Metrics are scalar means;
"loss" is the discriminator's loss (the one the loop checks for NaN).

Regularizers come from losses.REGULARIZERS, not from this file: validate checks each
entry's config.loss.kw weight (present, >= 0, > 0 where the loss `requires` it) and
make_setup keeps those with a weight > 0, in name order, as Setup.regularizers;
discriminator_loss adds scale * weight * penalty of each one and reports it under its
metric name. The family's loss keywords are the entries' keywords. Only discriminator
penalties applied on every update are run here (lazy and generator entries, StyleGAN2's,
need a step that schedules them).

The pieces are module-level pure functions of a `Setup` (networks, loss, optimizers, built
once from the config): discriminator_loss and discriminator_update (one critic step),
generator_loss and generator_update. make_players binds the two halves (tests run each
alone); make_steps composes them; generate feeds the FID/IS evaluators. Left out: gradient
accumulation (config.train.microbatches must be 1: BatchNorm sees whole batches).
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxgen import optim
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.family import FAMILIES, Family, Steps
from jaxgen.losses import gan as losses
from jaxgen.models import gan as models
from jaxgen.parallel import example_rngs, num_data_devices
from jaxgen.sampling import gan as sampling
from jaxgen.train import state as train_state
from jaxgen.train.gradients import pmean_flat, split_microbatches

PyTree = Any
PLAYERS = ("generator", "discriminator")


@flax.struct.dataclass
class GANState:
    step: jax.Array  # int32 scalar: generator updates (train steps) so far
    params: PyTree  # {"generator": ..., "discriminator": ...}
    opt_state: PyTree  # {"generator": ..., "discriminator": ...}
    # Non-parameter collections of each network ({"batch_stats": ...} or {}).
    model_state: PyTree
    ema_params: PyTree  # {"generator": EMA params} when config.optim.ema_decay > 0, else {}
    rng: jax.Array  # the run's base key; step keys are fold_in(rng, step)

    @property
    def generator_params(self) -> PyTree:
        """The generator params that sampling and evaluation use (the EMA when kept)."""
        return self.ema_params["generator"] if self.ema_params else self.params["generator"]


def validate(config: ConfigDict, info: Any) -> None:
    models.check_config(config.model, info.image_shape)
    active = losses.check_regularizers(config.loss.name, config.loss.kw)
    for regularizer, _ in active:
        if regularizer.player != "discriminator" or regularizer.interval != 1:
            raise ConfigError(
                f"config.loss.kw.{regularizer.keyword}: the gan family applies discriminator "
                f"penalties on every update; this one regularises the {regularizer.player} "
                f"every {regularizer.interval} updates"
            )
    if active and config.model.get("norm") == "batch":
        raise ConfigError(
            "config.model.norm: a gradient penalty needs each example's own gradient, which "
            "BatchNorm in the discriminator couples; use 'layer' or 'none'"
        )
    if "optim_d" not in config:
        raise ConfigError("config.optim_d: missing (the discriminator's optimizer)")
    optim.check_config(config.optim_d, "config.optim_d")
    if config.optim_d.ema_decay:
        raise ConfigError(
            "config.optim_d.ema_decay: must be 0; only the generator keeps an EMA "
            "(config.optim.ema_decay)"
        )
    n_critic = config.train.n_critic
    if not isinstance(n_critic, int) or n_critic < 1:
        raise ConfigError(f"config.train.n_critic: must be an integer >= 1, got {n_critic}")
    if config.train.microbatches != 1:
        raise ConfigError(
            "config.train.microbatches: GAN steps take no accumulation (BatchNorm and the "
            f"critic slices see whole batches); got {config.train.microbatches}"
        )
    devices = num_data_devices(config.mesh)
    if config.train.batch_size % (n_critic * devices):
        raise ConfigError(
            f"config.train.batch_size: {config.train.batch_size} must split into n_critic="
            f"{n_critic} equal slices on each of the {devices} devices"
        )
    if config.model.conditional and info.num_classes < 1:
        raise ConfigError(f"config.model.conditional: {config.data.name} has no class labels")


class Players(NamedTuple):
    """The two halves of a train step bound to one config (tests run each alone)."""

    init: Callable[..., GANState]  # (rng, batch) -> state
    discriminator_updates: Callable[..., tuple[GANState, dict]]  # (state, batch)
    generator_update: Callable[..., tuple[GANState, dict]]  # (state, batch_size)
    generator: nn.Module
    discriminator: nn.Module
    draw: Callable[..., tuple]  # (rng, size, axis) -> z, label, mix


class Setup(NamedTuple):
    """The fixed parts of a GAN step, built once from the config."""

    generator: nn.Module
    discriminator: nn.Module
    gan_loss: losses.GANLoss  # a losses.LOSSES entry
    optimizers: dict[str, train_state.Optimizer]  # by player
    latent_dim: int
    num_classes: int  # 0: unconditional
    n_critic: int
    # (losses.REGULARIZERS entry, its config.loss.kw weight > 0), added in this order.
    regularizers: tuple[tuple[losses.Regularizer, float], ...]
    axis_name: str | None = None  # the pmap axis, None under jit


def make_setup(config: ConfigDict, info: Any, axis_name: str | None = None) -> Setup:
    num_classes = info.num_classes if config.model.conditional else 0
    generator, discriminator = models.make_models(
        config.model, info.image_shape, num_classes, axis_name
    )
    num_steps, skip = config.train.num_steps, config.train.skip_nonfinite
    n_critic = config.train.n_critic
    return Setup(
        generator=generator,
        discriminator=discriminator,
        gan_loss=losses.LOSSES.get(config.loss.name),
        optimizers={
            "generator": train_state.make_optimizer(config.optim, num_steps, skip),
            # The discriminator's schedule runs over its own n_critic * num_steps updates.
            "discriminator": train_state.make_optimizer(config.optim_d, num_steps * n_critic, skip),
        },
        latent_dim=config.model.latent_dim,
        num_classes=num_classes,
        n_critic=n_critic,
        regularizers=losses.active_regularizers(config.loss.kw),
        axis_name=axis_name,
    )


def draw_latents(setup: Setup, rng, batch_size, axis_name=None):
    """Per-example noise z [B, D], fake labels [B] and interpolation weights [B]."""

    def one(key):
        z_rng, label_rng, mix_rng = jax.random.split(key, 3)
        z = jax.random.normal(z_rng, (setup.latent_dim,))
        label = jax.random.randint(label_rng, (), 0, max(setup.num_classes, 1))
        return z, label, jax.random.uniform(mix_rng)

    return jax.vmap(one)(example_rngs(rng, batch_size, axis_name))


def run_network(module, params, state, *args):
    """A network in train mode: (outputs, its updated non-parameter state)."""
    if not state:
        return module.apply({"params": params}, *args, train=True), state
    return module.apply({"params": params, **state}, *args, train=True, mutable=list(state))


def step_rngs(state: GANState) -> jax.Array:
    """(discriminator rng, generator rng) of this step; the step advances after G."""
    return jax.random.split(jax.random.fold_in(state.rng, state.step))


def init(rng, batch, *, setup: Setup) -> GANState:
    g_rng, d_rng, state_rng = jax.random.split(rng, 3)
    image = jnp.asarray(batch["image"][:1])
    label = jnp.zeros((1,), jnp.int32)
    variables = {
        "generator": setup.generator.init(
            g_rng, jnp.zeros((1, setup.latent_dim)), label, train=False
        ),
        "discriminator": setup.discriminator.init(d_rng, image, label, train=False),
    }
    params = {name: variables[name]["params"] for name in PLAYERS}
    ema = setup.optimizers["generator"].ema_decay > 0
    return GANState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={name: setup.optimizers[name].transform.init(params[name]) for name in PLAYERS},
        model_state={
            name: {k: v for k, v in variables[name].items() if k != "params"} for name in PLAYERS
        },
        ema_params={"generator": jax.tree.map(jnp.copy, params["generator"])} if ema else {},
        rng=state_rng,
    )


def discriminator_loss(params, model_state, real, fake, *, setup: Setup):
    """(loss, (metrics, new model_state)) of D on real {"image", "label"} and fake
    {"image", "label", "mix"} (mix: the interpolation weights of the gradient penalty),
    with setup.regularizers added: loss + scale * weight * penalty, one after another."""
    discriminator = setup.discriminator
    image, real_label = real["image"], real["label"]
    real_logits, new_state = run_network(discriminator, params, model_state, image, real_label)
    fake_logits, new_state = run_network(
        discriminator, params, new_state, fake["image"], fake["label"]
    )
    loss, metrics = setup.gan_loss.discriminator(real_logits, fake_logits)
    metrics = dict(metrics)

    def critic(x):  # C(x) per example; penalties ignore its state updates
        return run_network(discriminator, params, model_state, x, real_label)[0]

    for regularizer, weight in setup.regularizers:
        images = regularizer.inputs(image, fake["image"], fake["mix"])
        value, extra = regularizer.penalty(critic, images)
        # scale * weight is a Python float (0.5 * γ for R1), as it was before the registry.
        loss = loss + regularizer.scale * weight * value
        metrics = metrics | extra | {regularizer.metric: value}
    return loss, (metrics | {"d_loss": loss}, new_state)


def discriminator_update(carry, inputs, *, g_params, g_state, setup: Setup):
    """One discriminator update (a lax.scan body): carry (params, opt_state, model_state),
    inputs (real slice {"image", "label"}, rng)."""
    d_params, d_opt_state, d_state = carry
    real, rng = inputs
    z, fake_label, mix = draw_latents(setup, rng, real["image"].shape[0], setup.axis_name)
    fake, _ = run_network(setup.generator, g_params, g_state, z, fake_label)  # G's state: kept
    fake = {"image": fake, "label": fake_label, "mix": mix}
    loss_of = functools.partial(discriminator_loss, setup=setup)
    grads, (metrics, d_state) = jax.grad(loss_of, has_aux=True)(d_params, d_state, real, fake)
    if setup.axis_name is not None:
        grads, metrics = pmean_flat((grads, metrics), setup.axis_name)
    metrics["d_grad_norm"] = optax.global_norm(grads)
    d_params, d_opt_state = train_state.optimizer_update(
        setup.optimizers["discriminator"].transform, d_params, d_opt_state, grads
    )
    return (d_params, d_opt_state, d_state), metrics


def discriminator_updates(state: GANState, batch: dict, *, setup: Setup):
    """The n_critic discriminator updates, each on its own slice of the real batch."""
    d_rng, _ = step_rngs(state)
    real = split_microbatches({"image": batch["image"], "label": batch["label"]}, setup.n_critic)
    one_update = functools.partial(
        discriminator_update,
        g_params=state.params["generator"],
        g_state=state.model_state["generator"],
        setup=setup,
    )
    carry = (
        state.params["discriminator"],
        state.opt_state["discriminator"],
        state.model_state["discriminator"],
    )
    (d_params, d_opt_state, d_state), metrics = jax.lax.scan(
        one_update, carry, (real, jax.random.split(d_rng, setup.n_critic))
    )
    metrics = jax.tree.map(jnp.mean, metrics)  # means over the n_critic updates
    metrics["d_lr"] = setup.optimizers["discriminator"].lr(state.step * setup.n_critic)
    state = state.replace(
        params=state.params | {"discriminator": d_params},
        opt_state=state.opt_state | {"discriminator": d_opt_state},
        model_state=state.model_state | {"discriminator": d_state},
    )
    return state, metrics


def generator_loss(params, model_state, z, fake_label, *, d_params, d_state, setup: Setup):
    """(loss, (metrics, new model_state)) of G through a fixed D."""
    fake, new_state = run_network(setup.generator, params, model_state, z, fake_label)
    fake_logits, _ = run_network(setup.discriminator, d_params, d_state, fake, fake_label)
    loss, metrics = setup.gan_loss.generator(fake_logits)
    return loss, (dict(metrics) | {"g_loss": loss}, new_state)


def generator_update(state: GANState, batch_size: int, *, setup: Setup):
    """One generator update on batch_size fakes, its EMA, and step + 1."""
    _, g_rng = step_rngs(state)
    z, fake_label, _ = draw_latents(setup, g_rng, batch_size, setup.axis_name)
    loss_of = functools.partial(
        generator_loss,
        d_params=state.params["discriminator"],
        d_state=state.model_state["discriminator"],
        setup=setup,
    )
    grads, (metrics, g_state) = jax.grad(loss_of, has_aux=True)(
        state.params["generator"], state.model_state["generator"], z, fake_label
    )
    if setup.axis_name is not None:
        grads, metrics = pmean_flat((grads, metrics), setup.axis_name)
    metrics["g_grad_norm"] = optax.global_norm(grads)
    optimizer = setup.optimizers["generator"]
    metrics["g_lr"] = optimizer.lr(state.step)
    g_params, g_opt_state = train_state.optimizer_update(
        optimizer.transform, state.params["generator"], state.opt_state["generator"], grads
    )
    ema_params = state.ema_params
    if ema_params:
        ema = train_state.ema_update(
            g_params, ema_params["generator"], state.step, optimizer.ema_decay
        )
        ema_params = ema_params | {"generator": ema}
    state = state.replace(
        step=state.step + 1,
        params=state.params | {"generator": g_params},
        opt_state=state.opt_state | {"generator": g_opt_state},
        model_state=state.model_state | {"generator": g_state},
        ema_params=ema_params,
    )
    return state, metrics


def make_players(config: ConfigDict, info: Any, axis_name: str | None = None) -> Players:
    setup = make_setup(config, info, axis_name)
    return Players(
        init=functools.partial(init, setup=setup),
        discriminator_updates=functools.partial(discriminator_updates, setup=setup),
        generator_update=functools.partial(generator_update, setup=setup),
        generator=setup.generator,
        discriminator=setup.discriminator,
        draw=lambda rng, size, axis=axis_name: draw_latents(setup, rng, size, axis),
    )


def train_step(state: GANState, batch: dict, *, setup: Setup):
    state, metrics = discriminator_updates(state, batch, setup=setup)
    batch_size = batch["image"].shape[0] // setup.n_critic
    state, g_metrics = generator_update(state, batch_size, setup=setup)
    return state, metrics | g_metrics | {"loss": metrics["d_loss"]}


def generator_variables(state: GANState) -> PyTree:
    return {"params": state.generator_params, **state.model_state["generator"]}


def discriminator_sums(state, batch, rng, *, setup: Setup):
    """Sums of D's logits on real test images and on as many samples of the generator."""
    image, mask, label = batch["image"], batch["mask"], batch["label"]
    z, fake_label, _ = draw_latents(setup, rng, image.shape[0], None)
    fake = sampling.generate(setup.generator, generator_variables(state), z, fake_label)
    variables = {"params": state.params["discriminator"], **state.model_state["discriminator"]}
    real_logits = setup.discriminator.apply(variables, image, label, train=False)
    fake_logits = setup.discriminator.apply(variables, fake, fake_label, train=False)
    return {
        "d_real": jnp.sum(real_logits * mask),
        "d_fake": jnp.sum(fake_logits * mask),
        "count": jnp.sum(mask),
    }


def sample_grid(state, batch, rng, *, setup: Setup, num_samples: int):
    del batch
    grid = sampling.sample_grid(
        setup.generator,
        generator_variables(state),
        rng,
        num_samples,
        setup.latent_dim,
        setup.num_classes,
    )
    return {"samples": grid}


def generate(state, rng, num, labels=None, *, setup: Setup):
    """For the sample evaluators (FID, ...): G(z) with fresh noise; a conditional model
    without given labels draws them uniformly."""
    z_rng, label_rng = jax.random.split(rng)
    z = jax.random.normal(z_rng, (num, setup.latent_dim))
    if labels is None:  # all 0 for an unconditional model
        labels = jax.random.randint(label_rng, (num,), 0, max(setup.num_classes, 1))
    return sampling.generate(setup.generator, generator_variables(state), z, labels)


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    setup = make_setup(config, info, axis_name)
    discriminator = functools.partial(discriminator_sums, setup=setup)
    return Steps(
        init=functools.partial(init, setup=setup),
        train_step=functools.partial(train_step, setup=setup),
        eval_steps={"discriminator": lambda entry: discriminator},
        sample=functools.partial(sample_grid, setup=setup, num_samples=config.sample.num_samples),
        batch_spec={"image": jax.ShapeDtypeStruct((1, *info.image_shape), jnp.float32)},
        generate=functools.partial(generate, setup=setup),
    )


FAMILIES.register("gan")(
    Family(
        validate,
        make_steps,
        losses=losses.LOSSES,
        loss_keywords=tuple(
            losses.REGULARIZERS.get(n).keyword for n in losses.REGULARIZERS.names()
        ),
    )
)
