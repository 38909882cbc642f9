"""GAN sampling: images from a generator for fixed noise, as a grid.

Pure functions of (generator, variables, arrays) returning NHWC float32 images in
[-1, 1]; the caller jits them. `variables` holds the generator's "params" (the EMA
params when the run keeps them) and its "batch_stats".

BatchNorm at sampling time normalises with the statistics of the sample batch itself,
not the running averages: the running averages were collected with the live params,
and the EMA params' activations have other statistics ("standing statistics", Brock et
al. 2019, section 3, computed here from the samples being drawn). The sample batch
should therefore not be tiny (config.sample.num_samples >= 16).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any


def generate(generator: nn.Module, variables: PyTree, z: jax.Array, label: jax.Array) -> jax.Array:
    """G(z, label) [B, H, W, C] with batch statistics of this batch (no state is kept)."""
    if "batch_stats" not in variables:
        return generator.apply(variables, z, label, train=False)
    images, _ = generator.apply(variables, z, label, train=True, mutable=["batch_stats"])
    return images


def sample_grid(
    generator: nn.Module,
    variables: PyTree,
    rng: jax.Array,
    num: int,
    latent_dim: int,
    num_classes: int = 0,
) -> jax.Array:
    """`num` samples [num, H, W, C], or for a conditional model one row per class.

    Conditional: [num_classes, num // num_classes, H, W, C]; column j uses the same z in
    every row, so a column shows one "style" across the classes.
    """
    if not num_classes:
        z = jax.random.normal(rng, (num, latent_dim))
        return generate(generator, variables, z, jnp.zeros((num,), jnp.int32))
    cols = max(1, num // num_classes)
    z = jax.random.normal(rng, (cols, latent_dim))
    z = jnp.tile(z, (num_classes, 1))  # [classes * cols, D], row-major: class, then column
    label = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), cols)
    images = generate(generator, variables, z, label)
    return images.reshape((num_classes, cols) + images.shape[1:])
