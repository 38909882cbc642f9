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

make_players gives the two halves of the step separately (tests run each alone);
make_steps composes them; generate feeds the FID/IS evaluators. Left out: gradient
accumulation (config.train.microbatches must be 1: BatchNorm sees whole batches).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxgen import optim
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.losses import gan as losses
from jaxgen.models import gan as models
from jaxgen.parallel import example_rngs, num_data_devices
from jaxgen.sampling import gan as sampling
from jaxgen.train import FAMILIES, Family, Steps
from jaxgen.train.gradients import split_microbatches

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
    gan_loss = losses.LOSSES.get(config.loss.name)
    for field in ("gp_weight", "r1_gamma"):
        if field not in config.loss.kw:
            raise ConfigError(f"config.loss.kw.{field}: missing (0 disables it)")
        if not config.loss.kw[field] >= 0:
            raise ConfigError(f"config.loss.kw.{field}: must be >= 0, got {config.loss.kw[field]}")
    if gan_loss.gradient_penalty and not config.loss.kw.gp_weight > 0:
        raise ConfigError(
            f"config.loss.kw.gp_weight: {config.loss.name!r} needs a gradient penalty weight > 0"
        )
    penalised = gan_loss.gradient_penalty or config.loss.kw.r1_gamma > 0
    if penalised and config.model.get("norm") == "batch":
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
    """The two halves of a train step, exposed so tests can run each alone."""

    init: Callable[..., GANState]  # (rng, batch) -> state
    # (state, batch) -> (state, metrics): the n_critic discriminator updates; only the
    # discriminator's params, opt_state and model_state change.
    discriminator_updates: Callable[..., tuple[GANState, dict]]
    # (state, batch_size) -> (state, metrics): one generator update, its EMA and step + 1;
    # nothing of the discriminator changes.
    generator_update: Callable[..., tuple[GANState, dict]]
    generator: nn.Module
    discriminator: nn.Module
    draw: Callable[
        ..., tuple[jax.Array, jax.Array, jax.Array]
    ]  # (rng, size, axis) -> z, label, mix


def make_players(config: ConfigDict, info: Any, axis_name: str | None = None) -> Players:
    num_classes = info.num_classes if config.model.conditional else 0
    generator, discriminator = models.make_models(
        config.model, info.image_shape, num_classes, axis_name
    )
    gan_loss = losses.LOSSES.get(config.loss.name)
    gp_weight, r1_gamma = config.loss.kw.gp_weight, config.loss.kw.r1_gamma
    n_critic, latent_dim = config.train.n_critic, config.model.latent_dim
    num_steps, skip = config.train.num_steps, config.train.skip_nonfinite
    optimizers = {
        "generator": optim.make_optimizer(config.optim, num_steps, skip),
        # The discriminator's schedule runs over its own n_critic * num_steps updates.
        "discriminator": optim.make_optimizer(config.optim_d, num_steps * n_critic, skip),
    }
    g_schedule = optim.learning_rate(config.optim, num_steps)
    d_schedule = optim.learning_rate(config.optim_d, num_steps * n_critic)
    ema_decay = config.optim.ema_decay

    def draw(rng, batch_size, axis=axis_name):
        """Per-example noise z [B, D], fake labels [B] and interpolation weights [B]."""

        def one(key):
            z_rng, label_rng, mix_rng = jax.random.split(key, 3)
            z = jax.random.normal(z_rng, (latent_dim,))
            label = jax.random.randint(label_rng, (), 0, max(num_classes, 1))
            return z, label, jax.random.uniform(mix_rng)

        return jax.vmap(one)(example_rngs(rng, batch_size, axis))

    def run(module, params, state, *args):
        """A network in train mode: (outputs, its updated non-parameter state)."""
        if not state:
            return module.apply({"params": params}, *args, train=True), state
        return module.apply({"params": params, **state}, *args, train=True, mutable=list(state))

    def step_rngs(state):
        """(discriminator rng, generator rng) of this step; the step advances after G."""
        return jax.random.split(jax.random.fold_in(state.rng, state.step))

    def init(rng, batch):
        g_rng, d_rng, state_rng = jax.random.split(rng, 3)
        image = jnp.asarray(batch["image"][:1])
        label = jnp.zeros((1,), jnp.int32)
        variables = {
            "generator": generator.init(g_rng, jnp.zeros((1, latent_dim)), label, train=False),
            "discriminator": discriminator.init(d_rng, image, label, train=False),
        }
        params = {name: variables[name]["params"] for name in PLAYERS}
        return GANState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state={name: optimizers[name].init(params[name]) for name in PLAYERS},
            model_state={
                name: {k: v for k, v in variables[name].items() if k != "params"}
                for name in PLAYERS
            },
            ema_params={"generator": jax.tree.map(jnp.copy, params["generator"])}
            if ema_decay > 0
            else {},
            rng=state_rng,
        )

    def update(name, params, opt_state, grads):
        updates, opt_state = optimizers[name].update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def discriminator_updates(state, batch):
        d_rng, _ = step_rngs(state)
        g_params, g_state = state.params["generator"], state.model_state["generator"]
        real = split_microbatches({"image": batch["image"], "label": batch["label"]}, n_critic)

        def one_update(carry, inputs):
            d_params, d_opt_state, d_state = carry
            real_slice, rng = inputs
            image, real_label = real_slice["image"], real_slice["label"]
            z, fake_label, mix = draw(rng, image.shape[0])
            fake, _ = run(generator, g_params, g_state, z, fake_label)  # G's state: unchanged

            def loss_of(params):
                real_logits, new_state = run(discriminator, params, d_state, image, real_label)
                fake_logits, new_state = run(discriminator, params, new_state, fake, fake_label)
                loss, metrics = gan_loss.discriminator(real_logits, fake_logits)
                metrics = dict(metrics)

                def critic(x):  # C(x) per example; penalties ignore its state updates
                    return run(discriminator, params, d_state, x, real_label)[0]

                if gan_loss.gradient_penalty:
                    interpolates = losses.interpolate(image, fake, mix)
                    gp, extra = losses.gradient_penalty(critic, interpolates)
                    loss, metrics = loss + gp_weight * gp, metrics | extra | {"gp": gp}
                if r1_gamma:
                    r1, extra = losses.r1_penalty(critic, image)
                    loss, metrics = loss + 0.5 * r1_gamma * r1, metrics | extra | {"r1": r1}
                return loss, (metrics | {"d_loss": loss}, new_state)

            grads, (metrics, d_state) = jax.grad(loss_of, has_aux=True)(d_params)
            if axis_name is not None:
                grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
            metrics["d_grad_norm"] = optax.global_norm(grads)
            d_params, d_opt_state = update("discriminator", d_params, d_opt_state, grads)
            return (d_params, d_opt_state, d_state), metrics

        carry = (
            state.params["discriminator"],
            state.opt_state["discriminator"],
            state.model_state["discriminator"],
        )
        (d_params, d_opt_state, d_state), metrics = jax.lax.scan(
            one_update, carry, (real, jax.random.split(d_rng, n_critic))
        )
        metrics = jax.tree.map(jnp.mean, metrics)  # means over the n_critic updates
        metrics["d_lr"] = d_schedule(state.step * n_critic)
        state = state.replace(
            params=state.params | {"discriminator": d_params},
            opt_state=state.opt_state | {"discriminator": d_opt_state},
            model_state=state.model_state | {"discriminator": d_state},
        )
        return state, metrics

    def generator_update(state, batch_size):
        _, g_rng = step_rngs(state)
        d_params, d_state = state.params["discriminator"], state.model_state["discriminator"]
        z, fake_label, _ = draw(g_rng, batch_size)

        def loss_of(params):
            fake, new_state = run(generator, params, state.model_state["generator"], z, fake_label)
            fake_logits, _ = run(discriminator, d_params, d_state, fake, fake_label)
            loss, metrics = gan_loss.generator(fake_logits)
            return loss, (dict(metrics) | {"g_loss": loss}, new_state)

        g_params = state.params["generator"]
        grads, (metrics, g_state) = jax.grad(loss_of, has_aux=True)(g_params)
        if axis_name is not None:
            grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
        metrics["g_grad_norm"] = optax.global_norm(grads)
        metrics["g_lr"] = g_schedule(state.step)
        g_params, g_opt_state = update("generator", g_params, state.opt_state["generator"], grads)
        ema_params = state.ema_params
        if ema_params:
            # Warm-up as in train/state.py: early on the average follows the params.
            step = state.step.astype(jnp.float32)
            decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
            ema_params = ema_params | {
                "generator": optax.incremental_update(
                    g_params, ema_params["generator"], step_size=1.0 - decay
                )
            }
        state = state.replace(
            step=state.step + 1,
            params=state.params | {"generator": g_params},
            opt_state=state.opt_state | {"generator": g_opt_state},
            model_state=state.model_state | {"generator": g_state},
            ema_params=ema_params,
        )
        return state, metrics

    return Players(init, discriminator_updates, generator_update, generator, discriminator, draw)


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    players = make_players(config, info, axis_name)
    generator, discriminator, draw = players.generator, players.discriminator, players.draw
    n_critic, latent_dim = config.train.n_critic, config.model.latent_dim
    num_classes = generator.num_classes

    def train_step(state, batch):
        state, metrics = players.discriminator_updates(state, batch)
        state, g_metrics = players.generator_update(state, batch["image"].shape[0] // n_critic)
        return state, metrics | g_metrics | {"loss": metrics["d_loss"]}

    def generator_variables(state):
        return {"params": state.generator_params, **state.model_state["generator"]}

    def make_discriminator_eval(entry):
        """Sums of D's logits on real test images and on as many samples of the generator."""

        def discriminator_step(state, batch, rng):
            image, mask, label = batch["image"], batch["mask"], batch["label"]
            z, fake_label, _ = draw(rng, image.shape[0], None)
            fake = sampling.generate(generator, generator_variables(state), z, fake_label)
            variables = {
                "params": state.params["discriminator"],
                **state.model_state["discriminator"],
            }
            real_logits = discriminator.apply(variables, image, label, train=False)
            fake_logits = discriminator.apply(variables, fake, fake_label, train=False)
            return {
                "d_real": jnp.sum(real_logits * mask),
                "d_fake": jnp.sum(fake_logits * mask),
                "count": jnp.sum(mask),
            }

        return discriminator_step

    def sample(state, batch, rng):
        del batch
        grid = sampling.sample_grid(
            generator,
            generator_variables(state),
            rng,
            config.sample.num_samples,
            latent_dim,
            num_classes,
        )
        return {"samples": grid}

    def generate(state, rng, num, labels=None):
        """For the sample evaluators (FID, ...): G(z) with fresh noise; a conditional model
        without given labels draws them uniformly."""
        z_rng, label_rng = jax.random.split(rng)
        z = jax.random.normal(z_rng, (num, latent_dim))
        if labels is None:
            labels = (
                jax.random.randint(label_rng, (num,), 0, num_classes)
                if num_classes
                else jnp.zeros((num,), jnp.int32)
            )
        return sampling.generate(generator, generator_variables(state), z, labels)

    return Steps(
        init=players.init,
        train_step=train_step,
        eval_steps={"discriminator": make_discriminator_eval},
        sample=sample,
        generate=generate,
    )


FAMILIES.register("gan")(
    Family(validate, make_steps, losses=losses.LOSSES, loss_keywords=("gp_weight", "r1_gamma"))
)
