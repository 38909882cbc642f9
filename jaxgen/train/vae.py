"""VAE family: pure init / train / eval / sample steps for the generic loop.

The encoder's noise is drawn per example from the example's index in the
global batch (parallel.example_rngs), so the update does not depend on the
device count or the number of microbatches. Dynamic binarisation happens in the
data pipeline, not here.
"""

from typing import Any

import jax
import jax.numpy as jnp

from jaxgen import optim
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.losses import vae as losses
from jaxgen.models import vae as models
from jaxgen.parallel import example_rngs
from jaxgen.sampling import vae as sampling
from jaxgen.train import FAMILIES, Family, Steps
from jaxgen.train import state as train_state
from jaxgen.train.gradients import grads_and_metrics

PyTree = Any


def validate(config: ConfigDict, info: Any) -> None:
    models.MODELS.get(config.model.name)
    models.check_image_shape(config.model, info.image_shape)
    losses.LOSSES.get(config.loss.name)
    if config.model.likelihood == "bernoulli" and config.data.pixels != "binary":
        raise ConfigError(
            "config.data.pixels: a Bernoulli decoder needs binary pixels, got "
            f"{config.data.pixels!r} (set config.data.pixels='binary' or "
            "config.model.likelihood='gaussian')"
        )
    for field in ("hidden", "features"):
        sizes = config.model.get(field, ())
        if not all(isinstance(size, int) and size > 0 for size in sizes):
            raise ConfigError(
                f"config.model.{field}: layer sizes must be positive integers, got {sizes}"
            )
    if config.model.latent_dim < 1:
        raise ConfigError(f"config.model.latent_dim: must be >= 1, got {config.model.latent_dim}")
    if config.loss.num_samples < 1:
        raise ConfigError(f"config.loss.num_samples: must be >= 1, got {config.loss.num_samples}")
    for name, entry in config.evals.items():
        if entry.type == "nll" and entry.num_samples % min(entry.chunk, entry.num_samples):
            raise ConfigError(
                f"config.evals.{name}.chunk: {entry.chunk} does not divide num_samples {entry.num_samples}"
            )


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    model = models.make_model(config.model, info.image_shape)
    loss_fn = losses.LOSSES.get(config.loss.name)
    loss_kw = config.loss.kw.to_dict()
    likelihood = config.model.likelihood
    num_samples = config.loss.num_samples
    latent_dim = config.model.latent_dim
    optimizer = optim.make_optimizer(
        config.optim, config.train.num_steps, config.train.skip_nonfinite
    )
    schedule = optim.learning_rate(config.optim, config.train.num_steps)
    ema_decay = config.optim.ema_decay
    microbatches = config.train.microbatches

    def encode_decode(params, image, noise):
        mean, logvar = model.apply({"params": params}, image, method=model.encode)  # [B, D] each
        z = mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * noise  # [B, K, D]
        out = model.apply({"params": params}, z, method=model.decode)  # [B, K, H, W, C']
        return out, z, mean, logvar

    def draw_noise(rng, batch_size, count, axis=None):
        keys = example_rngs(rng, batch_size, axis)
        return jax.vmap(lambda key: jax.random.normal(key, (count, latent_dim)))(keys)

    def init(rng, batch):
        params_rng, state_rng = jax.random.split(rng)
        image = batch["image"][:1]
        params = model.init(params_rng, image, jnp.zeros((1, 1, latent_dim)))["params"]
        return train_state.create(params, optimizer, state_rng, ema=ema_decay > 0)

    def train_step(state, batch):
        noise_rng = jax.random.fold_in(state.rng, state.step)
        image = batch["image"]
        noise = draw_noise(noise_rng, image.shape[0], num_samples, axis_name)

        def loss_of(params, mb):
            out, z, mean, logvar = encode_decode(params, mb["image"], mb["noise"])
            return loss_fn(mb["image"], out, z, mean, logvar, likelihood=likelihood, **loss_kw)

        grads, metrics = grads_and_metrics(
            loss_of, state.params, {"image": image, "noise": noise}, microbatches, axis_name
        )
        metrics["lr"] = schedule(state.step)
        return train_state.apply_gradients(state, grads, optimizer, ema_decay), metrics

    def make_elbo_eval(entry):
        """Sums of −ELBO, KL and reconstruction NLL (nats per example), one sample each."""

        def elbo_step(state, batch, rng):
            image, mask = batch["image"], batch["mask"]
            noise = draw_noise(rng, image.shape[0], 1)
            out, z, mean, logvar = encode_decode(state.eval_params, image, noise)
            recon = -losses.log_likelihood(image[:, None], out, likelihood)[:, 0]  # [B]
            kl = losses.gaussian_kl(mean, logvar)  # [B]
            return {
                "neg_elbo": jnp.sum((recon + kl) * mask),
                "kl": jnp.sum(kl * mask),
                "recon": jnp.sum(recon * mask),
                "count": jnp.sum(mask),
            }

        return elbo_step

    def make_nll_eval(entry):
        """Importance-sampled −log p(x) (Burda et al. 2016) with `num_samples` draws in chunks."""
        chunk = min(entry.chunk, entry.num_samples)
        num_chunks = entry.num_samples // chunk

        def nll_step(state, batch, rng):
            image, mask = batch["image"], batch["mask"]
            params = state.eval_params
            mean, logvar = model.apply({"params": params}, image, method=model.encode)

            def one_chunk(running, index):
                noise = draw_noise(jax.random.fold_in(rng, index), image.shape[0], chunk)
                z = mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * noise
                out = model.apply({"params": params}, z, method=model.decode)
                log_w = losses.log_weights(image, out, z, mean, logvar, likelihood)  # [B, chunk]
                return jnp.logaddexp(running, jax.nn.logsumexp(log_w, axis=1)), None

            start = jnp.full(image.shape[:1], -jnp.inf)
            total, _ = jax.lax.scan(one_chunk, start, jnp.arange(num_chunks))
            log_px = total - jnp.log(entry.num_samples)  # [B]
            return {"nll": jnp.sum(-log_px * mask), "count": jnp.sum(mask)}

        return nll_step

    def sample(state, batch, rng):
        params = state.eval_params
        num = config.sample.num_samples
        image = batch["image"]
        data_pixels = 2.0 * image - 1.0 if likelihood == "bernoulli" else image
        pairs = max(8, min(64, image.shape[0]) // 8 * 8)  # a multiple of 8: rows of 16 images
        pairs_image = jnp.resize(image, (pairs,) + image.shape[1:])
        pairs_pixels = jnp.resize(data_pixels, (pairs,) + image.shape[1:])
        reconstruction = jnp.stack(  # columns alternate input, reconstruction
            [pairs_pixels, sampling.reconstructions(model, params, pairs_image)], axis=1
        ).reshape((pairs // 8, 16) + image.shape[1:])
        half = image.shape[0] // 2
        rows = max(1, min(config.sample.num_interpolations, half))
        return {
            "prior": sampling.prior_samples(model, params, rng, num),
            "reconstruction": reconstruction,
            "interpolation": sampling.interpolations(
                model,
                params,
                image[:rows],
                image[half : half + rows],
                config.sample.interpolation_steps,
            ),
        }

    def generate(state, rng, num, labels=None):
        del labels  # an unconditional model
        return sampling.prior_samples(model, state.eval_params, rng, num)

    return Steps(
        init=init,
        train_step=train_step,
        eval_steps={"elbo": make_elbo_eval, "nll": make_nll_eval},
        sample=sample,
        generate=generate,
    )


FAMILIES.register("vae")(
    Family(validate, make_steps, losses=losses.LOSSES, passed_loss_keywords=("likelihood",))
)
