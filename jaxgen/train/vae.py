"""VAE family: pure init / train / eval / sample steps for the generic loop.

The encoder's noise is drawn per example from the example's index in the
global batch (parallel.example_rngs), so the update does not depend on the
device count or the number of microbatches. Dynamic binarisation happens in the
data pipeline, not here. The train step is train_state.train_step over two module-level
functions, train_inputs (the noise draw) and vae_loss, that make_steps binds with
functools.partial.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError, is_count
from jaxgen.family import FAMILIES, Family, Steps
from jaxgen.losses import vae as losses
from jaxgen.models import vae as models
from jaxgen.parallel import example_rngs
from jaxgen.sampling import vae as sampling
from jaxgen.train import state as train_state

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
    for field, least in (("num_interpolations", 1), ("interpolation_steps", 2)):
        value = config.sample[field]
        if not is_count(value) or value < least:
            raise ConfigError(
                f"config.sample.{field}: must be an integer >= {least}, got {value!r}"
            )
    for name, entry in config.evals.items():
        for field in ("num_samples", "chunk") if entry.type == "nll" else ():
            if entry[field] < 1:
                raise ConfigError(f"config.evals.{name}.{field}: must be >= 1, got {entry[field]}")
        if entry.type == "nll" and entry.num_samples % min(entry.chunk, entry.num_samples):
            raise ConfigError(
                f"config.evals.{name}.chunk: {entry.chunk} does not divide num_samples {entry.num_samples}"
            )


def encode_decode(params, image, noise, *, model):
    """(decoder outputs [B, K, H, W, C'], z [B, K, D], mean [B, D], logvar [B, D]) for K
    reparameterised draws z = mean + σ noise, noise [B, K, D]."""
    mean, logvar = model.apply({"params": params}, image, method=model.encode)  # [B, D] each
    z = mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * noise  # [B, K, D]
    out = model.apply({"params": params}, z, method=model.decode)  # [B, K, H, W, C']
    return out, z, mean, logvar


def draw_noise(rng, batch_size, count, *, latent_dim, axis_name=None):
    """ε [B, count, D], each example's from its own key (parallel.example_rngs)."""
    keys = example_rngs(rng, batch_size, axis_name)
    return jax.vmap(lambda key: jax.random.normal(key, (count, latent_dim)))(keys)


def vae_loss(params, batch, *, model, loss_fn, likelihood, loss_kw):
    """(loss, metrics) of `loss_fn` (ELBO or IWAE) on {"image", "noise" [B, K, D]}."""
    out, z, mean, logvar = encode_decode(params, batch["image"], batch["noise"], model=model)
    return loss_fn(batch["image"], out, z, mean, logvar, likelihood=likelihood, **loss_kw)


def init(rng, batch, *, model, latent_dim, optimizer):
    params_rng, state_rng = jax.random.split(rng)
    image = batch["image"][:1]
    params = model.init(params_rng, image, jnp.zeros((1, 1, latent_dim)))["params"]
    return train_state.create(params, optimizer, state_rng)


def train_inputs(state, batch, rng, *, num_samples, latent_dim, axis_name=None):
    """{"image", "noise" [B, num_samples, D]}: the step's encoder noise (state unused)."""
    del state
    image = batch["image"]
    noise = draw_noise(rng, image.shape[0], num_samples, latent_dim=latent_dim, axis_name=axis_name)
    return {"image": image, "noise": noise}


def elbo_sums(params, batch, rng, *, model, likelihood, latent_dim):
    """Sums of −ELBO, KL and reconstruction NLL (nats per example), one sample each."""
    image, mask = batch["image"], batch["mask"]
    noise = draw_noise(rng, image.shape[0], 1, latent_dim=latent_dim)
    out, z, mean, logvar = encode_decode(params, image, noise, model=model)
    recon = -losses.log_likelihood(image[:, None], out, likelihood)[:, 0]  # [B]
    kl = losses.gaussian_kl(mean, logvar)  # [B]
    return {
        "neg_elbo": jnp.sum((recon + kl) * mask),
        "kl": jnp.sum(kl * mask),
        "recon": jnp.sum(recon * mask),
        "count": jnp.sum(mask),
    }


def nll_sums(params, batch, rng, *, model, likelihood, latent_dim, num_samples, chunk):
    """Sum of importance-sampled −log p(x) (Burda et al. 2016), `num_samples` draws in chunks."""
    image, mask = batch["image"], batch["mask"]
    mean, logvar = model.apply({"params": params}, image, method=model.encode)

    def one_chunk(running, index):
        key = jax.random.fold_in(rng, index)
        noise = draw_noise(key, image.shape[0], chunk, latent_dim=latent_dim)
        z = mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * noise
        out = model.apply({"params": params}, z, method=model.decode)
        log_w = losses.log_weights(image, out, z, mean, logvar, likelihood)  # [B, chunk]
        return jnp.logaddexp(running, jax.nn.logsumexp(log_w, axis=1)), None

    start = jnp.full(image.shape[:1], -jnp.inf)
    total, _ = jax.lax.scan(one_chunk, start, jnp.arange(num_samples // chunk))
    log_px = total - jnp.log(num_samples)  # [B]
    return {"nll": jnp.sum(-log_px * mask), "count": jnp.sum(mask)}


def sample_grids(params, batch, rng, *, model, likelihood, settings):
    """Prior samples, input/reconstruction pairs and latent interpolations of a fixed batch."""
    num = settings.num_samples
    image = batch["image"]
    data_pixels = 2.0 * image - 1.0 if likelihood == "bernoulli" else image
    pairs = max(8, min(64, image.shape[0]) // 8 * 8)  # a multiple of 8: rows of 16 images
    pairs_image = jnp.resize(image, (pairs,) + image.shape[1:])
    pairs_pixels = jnp.resize(data_pixels, (pairs,) + image.shape[1:])
    reconstruction = jnp.stack(  # columns alternate input, reconstruction
        [pairs_pixels, sampling.reconstructions(model, params, pairs_image)], axis=1
    ).reshape((pairs // 8, 16) + image.shape[1:])
    half = image.shape[0] // 2
    rows = max(1, min(settings.num_interpolations, half))
    return {
        "prior": sampling.prior_samples(model, params, rng, num),
        "reconstruction": reconstruction,
        "interpolation": sampling.interpolations(
            model,
            params,
            image[:rows],
            image[half : half + rows],
            settings.interpolation_steps,
        ),
    }


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    model = models.make_model(config.model, info.image_shape)
    likelihood, latent_dim = config.model.likelihood, config.model.latent_dim
    optimizer = train_state.from_config(config)
    loss_of = functools.partial(
        vae_loss,
        model=model,
        loss_fn=losses.LOSSES.get(config.loss.name),
        likelihood=likelihood,
        loss_kw=config.loss.kw.to_dict(),
    )
    decoding = dict(model=model, likelihood=likelihood)
    sample = functools.partial(sample_grids, **decoding, settings=config.sample)

    def make_nll_eval(entry):
        chunk = min(entry.chunk, entry.num_samples)
        nll = functools.partial(
            nll_sums, **decoding, latent_dim=latent_dim, num_samples=entry.num_samples, chunk=chunk
        )
        return train_state.on_eval_params(nll)

    def generate(state, rng, num, labels=None):
        del labels  # an unconditional model
        return sampling.prior_samples(model, state.eval_params, rng, num)

    elbo = train_state.on_eval_params(
        functools.partial(elbo_sums, **decoding, latent_dim=latent_dim)
    )
    return Steps(
        init=functools.partial(init, model=model, latent_dim=latent_dim, optimizer=optimizer),
        train_step=functools.partial(
            train_state.train_step,
            inputs_of=functools.partial(
                train_inputs,
                num_samples=config.loss.num_samples,
                latent_dim=latent_dim,
                axis_name=axis_name,
            ),
            loss_of=loss_of,
            optimizer=optimizer,
            microbatches=config.train.microbatches,
            axis_name=axis_name,
        ),
        eval_steps={"elbo": lambda entry: elbo, "nll": make_nll_eval},
        sample=lambda state, batch, rng: sample(state.eval_params, batch, rng),
        batch_spec={"image": jax.ShapeDtypeStruct((1, *info.image_shape), jnp.float32)},
        sample_reads_data=True,  # reconstructions and interpolations of eval images
        generate=generate,
    )


FAMILIES.register("vae")(
    Family(validate, make_steps, losses=losses.LOSSES, passed_loss_keywords=("likelihood",))
)
