"""StyleGAN2 sampling: truncated samples, the style-mixing grids and w-space interpolations.

Pure functions of (generator, params, w_avg, arrays) returning NHWC float32 images at the
model's resolution (the family crops padded data sizes); the caller jits them.
- truncation (Karras et al. 2019, "A Style-Based Generator", 3.2 / stylegan2-ada's
  generate.py): w_avg + psi (w - w_avg) on the first `cutoff` ws (None: all of them);
- noise_mode: "random" (fresh noise), "const" (the same noise every call) or "none";
- the style-mixing figure (Karras et al. 2019, figure 3): a grid whose top row holds the column
  sources and left column the row sources; cell (i, j) takes row source i's ws and column
  source j's ws in one range of layers: coarse, middle or fine;
- an interpolation grid: each row goes linearly in W (after truncation) from one w to another.
"""

from typing import Any

import jax
import jax.numpy as jnp

from jaxgen.models import stylegan2 as models

PyTree = Any
RANGES = ("coarse", "middle", "fine")


def style_ranges(num_ws: int) -> dict[str, tuple[int, int]]:
    """[start, stop) of the ws of each range. The paper's: coarse = 4²-8² (ws 0-3), middle =
    16²-32² (ws 4-7), fine = 64² and up; a generator of 32² or less has no fine ws, so there
    the ws are split in thirds instead (32²: 0-2, 3-5, 6-7)."""
    if num_ws > 8:
        return {"coarse": (0, 4), "middle": (4, 8), "fine": (8, num_ws)}
    first, second = round(num_ws / 3), round(2 * num_ws / 3)
    return {"coarse": (0, first), "middle": (first, second), "fine": (second, num_ws)}


def mapped_ws(generator, params, w_avg, z, label, psi=1.0, cutoff=None):
    """Truncated ws [B, num_ws, w_dim] of z [B, z_dim]."""
    w = generator.apply({"params": params}, z, label, method="mapping")
    return models.truncate(models.broadcast_ws(w, generator.num_ws), w_avg, psi, cutoff)


def synthesize(generator, params, ws, rng, noise_mode="random"):
    return generator.apply({"params": params}, ws, rng, noise_mode, method="synthesis")


def generate(generator, params, w_avg, z, label, rng, psi=1.0, cutoff=None, noise_mode="random"):
    """G(z, label) [B, R, R, C] with truncation and the given noise mode."""
    ws = mapped_ws(generator, params, w_avg, z, label, psi, cutoff)
    return synthesize(generator, params, ws, rng, noise_mode)


def style_mixing_grid(
    generator,
    params,
    w_avg,
    rng,
    num_rows: int,
    num_cols: int,
    layers: tuple[int, int],
    label=None,
    psi=1.0,
    cutoff=None,
    noise_mode="const",
):
    """[num_rows + 1, num_cols + 1, R, R, C]: cell (0, 0) is blank (-1), row 0 the column
    sources, column 0 the row sources, cell (i, j) row source i with column source j's ws
    in [layers[0], layers[1])."""
    row_rng, col_rng, noise_rng = jax.random.split(rng, 3)
    z_dim = generator.z_dim
    num = num_rows + num_cols
    z = jnp.concatenate(
        [
            jax.random.normal(row_rng, (num_rows, z_dim)),
            jax.random.normal(col_rng, (num_cols, z_dim)),
        ]
    )
    label = jnp.zeros((num,), jnp.int32) if label is None else jnp.full((num,), label, jnp.int32)
    ws = mapped_ws(generator, params, w_avg, z, label, psi, cutoff)  # [rows + cols, n, w_dim]
    row_ws, col_ws = ws[:num_rows], ws[num_rows:]
    layer = jnp.arange(generator.num_ws)[None, None, :, None]
    in_range = (layer >= layers[0]) & (layer < layers[1])
    mixed = jnp.where(in_range, col_ws[None], row_ws[:, None])  # [rows, cols, n, w_dim]
    every = jnp.concatenate([ws, mixed.reshape((-1,) + ws.shape[1:])])
    images = synthesize(generator, params, every, noise_rng, noise_mode)
    sources, cells = images[:num], images[num:].reshape((num_rows, num_cols) + images.shape[1:])
    top = jnp.concatenate([-jnp.ones_like(sources[:1]), sources[num_rows:]])  # [1 + cols, ...]
    body = jnp.concatenate([sources[:num_rows, None], cells], axis=1)  # [rows, 1 + cols, ...]
    return jnp.concatenate([top[None], body])


def interpolation_grid(
    generator,
    params,
    w_avg,
    rng,
    num_rows: int,
    num_steps: int,
    label=None,
    psi=1.0,
    cutoff=None,
    noise_mode="const",
):
    """[num_rows, num_steps, R, R, C]: row i from w(z_a) to w(z_b) in equal steps in W."""
    a_rng, b_rng, noise_rng = jax.random.split(rng, 3)
    z_dim = generator.z_dim
    label = (
        jnp.zeros((num_rows,), jnp.int32)
        if label is None
        else jnp.full((num_rows,), label, jnp.int32)
    )
    start = mapped_ws(
        generator, params, w_avg, jax.random.normal(a_rng, (num_rows, z_dim)), label, psi, cutoff
    )
    stop = mapped_ws(
        generator, params, w_avg, jax.random.normal(b_rng, (num_rows, z_dim)), label, psi, cutoff
    )
    t = jnp.linspace(0.0, 1.0, num_steps)[None, :, None, None]
    ws = start[:, None] + t * (stop - start)[:, None]  # [rows, steps, n, w_dim]
    images = synthesize(generator, params, ws.reshape((-1,) + ws.shape[2:]), noise_rng, noise_mode)
    return images.reshape((num_rows, num_steps) + images.shape[1:])
