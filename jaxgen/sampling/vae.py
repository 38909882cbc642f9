"""VAE sampling: prior samples, reconstructions and latent interpolations as images.

Pure functions of (model, params, arrays) returning NHWC float32 images in [-1, 1];
the caller jits them if it wants (model is static). `params` is the "params"
collection of a model from jaxgen/models/vae.py. Writing image files is left to the
sampling script.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.config import ConfigError

PyTree = Any


def to_pixels(out: jax.Array, likelihood: str) -> jax.Array:
    """Maps decoder outputs [..., H, W, C'] to images [..., H, W, C] in [-1, 1].

    "bernoulli": the pixel probabilities p = sigmoid(logits), shown as 2p - 1 (the
    mean of p(x|z), not a binary draw); "gaussian": the mean, clipped to [-1, 1].
    """
    if likelihood == "bernoulli":
        return 2.0 * jax.nn.sigmoid(out) - 1.0
    if likelihood == "gaussian":
        mean, _ = jnp.split(out, 2, axis=-1)
        return jnp.clip(mean, -1.0, 1.0)
    raise ConfigError(f"config.model.likelihood: unknown likelihood {likelihood!r}")


def _decode_pixels(model: nn.Module, params: PyTree, z: jax.Array) -> jax.Array:
    out = model.apply({"params": params}, z, method=model.decode)  # [..., H, W, C']
    return to_pixels(out, model.likelihood)


def _posterior_mean(model: nn.Module, params: PyTree, image: jax.Array) -> jax.Array:
    mean, _ = model.apply({"params": params}, image, method=model.encode)  # [B, D]
    return mean


def prior_samples(model: nn.Module, params: PyTree, rng: jax.Array, num: int) -> jax.Array:
    """Decodes `num` draws z ~ N(0, I) to images [num, H, W, C] in [-1, 1]."""
    z = jax.random.normal(rng, (num, model.latent_dim))
    return _decode_pixels(model, params, z)


def reconstructions(model: nn.Module, params: PyTree, image: jax.Array) -> jax.Array:
    """Decodes the posterior mean of each image [B, H, W, C] to [B, H, W, C] in [-1, 1]."""
    return _decode_pixels(model, params, _posterior_mean(model, params, image))


def interpolations(
    model: nn.Module, params: PyTree, image_a: jax.Array, image_b: jax.Array, num_steps: int
) -> jax.Array:
    """Decodes straight lines between posterior means: [N, num_steps, H, W, C] in [-1, 1].

    Step 0 is the reconstruction of image_a [N, H, W, C], the last that of image_b.
    """
    mean_a = _posterior_mean(model, params, image_a)  # [N, D]
    mean_b = _posterior_mean(model, params, image_b)  # [N, D]
    t = jnp.linspace(0.0, 1.0, num_steps)[None, :, None]  # [1, S, 1]
    z = (1.0 - t) * mean_a[:, None] + t * mean_b[:, None]  # [N, S, D]
    return _decode_pixels(model, params, z)
