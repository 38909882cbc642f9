"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"):
differentiable augmentations applied to every image the discriminator sees, real or fake.

The three policies of the paper's code (DiffAugment_pytorch.py), each drawn per example:
  color: brightness + U(-0.5, 0.5), saturation * U(0, 2), contrast * U(0.5, 1.5);
  translation: a shift of up to 1/8 of the size in each direction, zero fill;
  cutout: a zeroed square of half the size at a random centre (clipped at the borders).
Images are NHWC in [-1, 1] (zero fill is mid-grey there, as in the paper's code). Pure
functions of (rng, images); gradients flow to the images.
"""

import jax
import jax.numpy as jnp

POLICIES = ("color", "translation", "cutout")


def color(rng: jax.Array, x: jax.Array) -> jax.Array:
    batch = x.shape[0]
    b_rng, s_rng, c_rng = jax.random.split(rng, 3)
    x = x + (jax.random.uniform(b_rng, (batch, 1, 1, 1)) - 0.5)
    mean = jnp.mean(x, axis=3, keepdims=True)
    x = (x - mean) * (jax.random.uniform(s_rng, (batch, 1, 1, 1)) * 2.0) + mean
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * (jax.random.uniform(c_rng, (batch, 1, 1, 1)) + 0.5) + mean


def _shift_mask(size: int, shift: jax.Array):
    """source index and validity [B, size] of a shift by `shift` [B] with zero fill."""
    source = jnp.arange(size)[None, :] - shift[:, None]
    return jnp.clip(source, 0, size - 1), (source >= 0) & (source < size)


def translation(rng: jax.Array, x: jax.Array, ratio: float = 0.125) -> jax.Array:
    batch, height, width, _ = x.shape
    sy, sx = int(height * ratio + 0.5), int(width * ratio + 0.5)
    y_rng, x_rng = jax.random.split(rng)
    ty = jax.random.randint(y_rng, (batch,), -sy, sy + 1)
    tx = jax.random.randint(x_rng, (batch,), -sx, sx + 1)
    rows, row_ok = _shift_mask(height, ty)  # [B, H]
    cols, col_ok = _shift_mask(width, tx)  # [B, W]
    x = jnp.take_along_axis(x, rows[:, :, None, None], axis=1)
    x = jnp.take_along_axis(x, cols[:, None, :, None], axis=2)
    mask = (row_ok[:, :, None] & col_ok[:, None, :])[..., None]
    return jnp.where(mask, x, 0.0)


def cutout(rng: jax.Array, x: jax.Array, ratio: float = 0.5) -> jax.Array:
    batch, height, width, _ = x.shape
    ch, cw = int(height * ratio + 0.5), int(width * ratio + 0.5)
    y_rng, x_rng = jax.random.split(rng)
    oy = jax.random.randint(y_rng, (batch,), 0, height + (1 - ch % 2))
    ox = jax.random.randint(x_rng, (batch,), 0, width + (1 - cw % 2))
    rows = jnp.arange(height)[None, :] - (oy[:, None] - ch // 2)  # [B, H]
    cols = jnp.arange(width)[None, :] - (ox[:, None] - cw // 2)
    inside = ((rows >= 0) & (rows < ch))[:, :, None] & ((cols >= 0) & (cols < cw))[:, None, :]
    return jnp.where(inside[..., None], 0.0, x)


_FUNCTIONS = {"color": color, "translation": translation, "cutout": cutout}


def augment(rng: jax.Array, x: jax.Array, policies: tuple[str, ...]) -> jax.Array:
    """x with each of `policies` applied in order (the paper's order: color, translation,
    cutout), each with its own key."""
    for index, name in enumerate(policies):
        x = _FUNCTIONS[name](jax.random.fold_in(rng, index), x)
    return x


def parse(policy: str) -> tuple[str, ...]:
    """ "color,translation,cutout" -> its names in the paper's order; "" -> ()."""
    names = {name.strip() for name in policy.split(",") if name.strip()}
    unknown = names - set(POLICIES)
    if unknown:
        raise ValueError(f"unknown DiffAugment policies {sorted(unknown)}; choose from {POLICIES}")
    return tuple(name for name in POLICIES if name in names)
