"""Autoencoder family (the first stage of latent diffusion): pure init / train / eval / sample steps.

Trains the KL autoencoder (models/autoencoder.py) on L1/L2 + KL (losses/autoencoder.py). The
posterior noise is drawn per example from its index in the global batch (parallel.example_rngs),
so the update does not depend on the device count or the number of microbatches. The train step
is train_state.train_step over train_inputs (the noise draw) and autoencoder_loss.

Evaluations:
  "reconstruction": per-pixel L1 and MSE of the posterior-mean reconstruction, and
      the KL per example, over the eval split;
  "latent_scale": Stable Diffusion's latent scale factor, 1 / std of posterior draws z over the
      eval examples it sees (SD computed 0.18215 this way on one batch), logged as
      <eval name>/scale_factor with the run's metrics (metrics.jsonl) at every evaluation, the
      last one at the end of training; `python -m experiments.evaluate --workdir=W` recomputes
      it on demand. A later stage multiplies latents by it before diffusion (unit variance).
Samples: a grid of columns alternating input and reconstruction.
"""

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.family import FAMILIES, Family, Steps
from jaxgen.losses import autoencoder as losses
from jaxgen.models import autoencoder as models
from jaxgen.parallel import example_rngs
from jaxgen.train import state as train_state
from jaxgen.workdir import read_jsonl


def validate(config: ConfigDict, info: Any) -> None:
    models.check_config(config.model, info.image_shape)
    losses.LOSSES.get(config.loss.name)
    if config.data.pixels != "symmetric":
        raise ConfigError("config.data.pixels: the autoencoder reconstructs 'symmetric' pixels")


def draw_noise(rng, batch_size, shape, axis_name=None):
    """ε [B, *shape], each example's from its own key."""
    keys = example_rngs(rng, batch_size, axis_name)
    return jax.vmap(lambda key: jax.random.normal(key, shape))(keys)


def autoencoder_loss(params, batch, *, model, loss_fn, loss_kw):
    """(loss, metrics) of `loss_fn` on {"image", "noise" [B, h, w, c]}."""
    out = model.apply({"params": params}, batch["image"], batch["noise"])
    return loss_fn(batch["image"], out.reconstruction, out.mean, out.logvar, **loss_kw)


def init(rng, batch, *, model, latent_shape, optimizer):
    params_rng, state_rng = jax.random.split(rng)
    image = batch["image"][:1]
    params = model.init(params_rng, image, jnp.zeros((1, *latent_shape)))["params"]
    return train_state.create(params, optimizer, state_rng)


def train_inputs(state, batch, rng, *, latent_shape, axis_name=None):
    """{"image", "noise" [B, h, w, c]}: the step's posterior noise (state unused)."""
    del state
    image = batch["image"]
    return {"image": image, "noise": draw_noise(rng, image.shape[0], latent_shape, axis_name)}


def reconstruct(params, image, *, model):
    """The decoded posterior mean [B, H, W, C] (the deterministic reconstruction)."""
    mean, _ = model.apply({"params": params}, image, method=model.encode)
    return model.apply({"params": params}, mean, method=model.decode)


def reconstruction_sums(params, batch, rng, *, model):
    """Sums over examples of per-pixel L1, MSE and the KL, with "count"."""
    del rng
    image, mask = batch["image"], batch["mask"]
    mean, logvar = model.apply({"params": params}, image, method=model.encode)
    error = model.apply({"params": params}, mean, method=model.decode) - image
    return {
        "l1": jnp.sum(jnp.mean(jnp.abs(error), axis=(1, 2, 3)) * mask),
        "mse": jnp.sum(jnp.mean(jnp.square(error), axis=(1, 2, 3)) * mask),
        "kl": jnp.sum(losses.latent_kl(mean, logvar) * mask),
        "count": jnp.sum(mask),
    }


def latent_moment_sums(params, batch, rng, *, model):
    """Sums over examples of the mean of z and of z^2 over each example's latent (z a posterior
    draw): their averages give the std of z over every latent element."""
    image, mask = batch["image"], batch["mask"]
    mean, logvar = model.apply({"params": params}, image, method=model.encode)
    z = mean + jnp.exp(0.5 * logvar) * draw_noise(rng, image.shape[0], mean.shape[1:])
    return {
        "z_mean": jnp.sum(jnp.mean(z, axis=(1, 2, 3)) * mask),
        "z_square": jnp.sum(jnp.mean(jnp.square(z), axis=(1, 2, 3)) * mask),
        "count": jnp.sum(mask),
    }


def scale_factor(means: dict[str, float]) -> dict[str, float]:
    """Adds scale_factor = 1 / std(z) = 1 / sqrt(E[z^2] - E[z]^2) to the latent moments."""
    variance = max(means["z_square"] - means["z_mean"] ** 2, 1e-12)
    return {**means, "z_std": variance**0.5, "scale_factor": variance**-0.5}


def read_scale_factor(workdir: str, eval_name: str = "latent_scale") -> float:
    """The run's last logged <eval_name>/scale_factor (metrics.jsonl); ConfigError if none."""
    path, key, found = os.path.join(workdir, "metrics.jsonl"), f"{eval_name}/scale_factor", None
    if os.path.isfile(path):
        for row in read_jsonl(path)[0]:  # a torn last row: left out with a warning
            found = row.get(key, found)
    if found is None:
        raise ConfigError(
            f"{path}: no {key} logged; evaluate the autoencoder run first "
            f"(python -m experiments.evaluate --workdir={workdir})"
        )
    return float(found)


def reconstruction_grid(params, batch, *, model):
    """[rows, 16, H, W, C]: columns alternate input and reconstruction."""
    image = batch["image"]
    pairs = max(8, min(64, image.shape[0]) // 8 * 8)  # a multiple of 8: rows of 16 images
    image = jnp.resize(image, (pairs,) + image.shape[1:])
    grid = jnp.stack([image, jnp.clip(reconstruct(params, image, model=model), -1, 1)], axis=1)
    return grid.reshape((pairs // 8, 16) + image.shape[1:])


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    model = models.make_model(config.model, info.image_shape)
    latent_shape = models.latent_shape(config.model, info.image_shape)
    optimizer = train_state.from_config(config)
    loss_of = functools.partial(
        autoencoder_loss,
        model=model,
        loss_fn=losses.LOSSES.get(config.loss.name),
        loss_kw=config.loss.kw.to_dict(),
    )
    recon = train_state.on_eval_params(functools.partial(reconstruction_sums, model=model))
    moments = train_state.on_eval_params(functools.partial(latent_moment_sums, model=model))
    grid = functools.partial(reconstruction_grid, model=model)
    return Steps(
        init=functools.partial(init, model=model, latent_shape=latent_shape, optimizer=optimizer),
        train_step=functools.partial(
            train_state.train_step,
            inputs_of=functools.partial(
                train_inputs, latent_shape=latent_shape, axis_name=axis_name
            ),
            loss_of=loss_of,
            optimizer=optimizer,
            microbatches=config.train.microbatches,
            axis_name=axis_name,
        ),
        eval_steps={"reconstruction": lambda entry: recon, "latent_scale": lambda entry: moments},
        sample=lambda state, batch, rng: {"reconstruction": grid(state.eval_params, batch)},
        batch_spec={"image": jax.ShapeDtypeStruct((1, *info.image_shape), jnp.float32)},
        sample_reads_data=True,  # reconstructions of eval images
        finalize={"latent_scale": scale_factor},
    )


FAMILIES.register("autoencoder")(Family(validate, make_steps, losses=losses.LOSSES))
