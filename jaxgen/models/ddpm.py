"""The U-Net of Ho et al. (2020), "Denoising Diffusion Probabilistic Models", appendix B.

    out = UNet(...)(x [B, H, W, C], t [B] int, label [B] int or None, dropout_rngs [B] keys or None)

A PixelCNN++-style U-Net: a 3x3 stem, per resolution `num_res_blocks` residual blocks
(GroupNorm, SiLU, 3x3 convs, the time embedding added in between, dropout before the
second conv) with single-head self-attention at the resolutions in
`attention_resolutions`, a stride-2 conv between resolutions; the middle is
res-attn-res; the decoder mirrors it with one extra block per resolution, each taking a
skip connection; GroupNorm, SiLU and a 3x3 conv give the output (zero-initialised, as
are the last conv of each block and the attention projection). The timestep goes in
through a sinusoidal embedding and a 2-layer MLP of width 4 * channels.

Class conditioning (num_classes > 0) adds a learned label embedding to the time
embedding; label `num_classes` is the extra "null" label that classifier-free guidance
uses for the unconditional model (Ho & Salimans 2022).

Dropout masks are drawn per example from `dropout_rngs` (one key per example, from
parallel.example_rngs), so a step does not depend on how the batch is split over
devices. GroupNorm normalises per example, so nothing here mixes examples.
With the CIFAR-10 settings (channels 128, multipliers (1, 2, 2, 2), 2 blocks, attention
at 16x16) it has 35.7M parameters, as in the paper; tests/test_ddpm_model.py checks it.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models.building import from_config
from jaxgen.registry import Registry

MODELS = Registry("model", "config.model.name")

Dtype = Any


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding [B, dim] of integer timesteps t [B] (Vaswani et al. 2017), as Ho et al."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    angles = t.astype(jnp.float32)[:, None] * frequencies[None, :]  # [B, half]
    embedding = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return jnp.pad(embedding, ((0, 0), (0, dim % 2)))


def example_dropout(x: jax.Array, rate: float, rngs: jax.Array | None, salt: int) -> jax.Array:
    """Dropout with one key per example: rngs [B] keys, `salt` tells the call sites apart."""
    if rngs is None or rate == 0.0:
        return x
    keep = jax.vmap(
        lambda key: jax.random.bernoulli(jax.random.fold_in(key, salt), 1.0 - rate, x.shape[1:])
    )(rngs)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class ResBlock(nn.Module):
    features: int
    dropout: float
    salt: int  # this block's index, so every block draws its own dropout mask
    groups: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x, temb, dropout_rngs):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(nn.GroupNorm(self.groups, **kw)(x))
        h = nn.Conv(self.features, (3, 3), **kw)(h)
        h = h + nn.Dense(self.features, **kw)(nn.silu(temb))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(self.groups, **kw)(h))
        h = example_dropout(h, self.dropout, dropout_rngs, self.salt)
        h = nn.Conv(self.features, (3, 3), kernel_init=nn.initializers.zeros, **kw)(h)
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), **kw)(x)  # Ho et al.'s "nin_shortcut"
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions, with a residual connection."""

    groups: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        batch, height, width, channels = x.shape
        h = nn.GroupNorm(self.groups, **kw)(x).reshape(batch, height * width, 1, channels)
        q, k, v = (nn.Dense(channels, name=name, **kw)(h) for name in ("q", "k", "v"))
        h = jax.nn.dot_product_attention(q, k, v)  # [B, HW, 1 head, C]
        h = nn.Dense(channels, kernel_init=nn.initializers.zeros, name="proj", **kw)(h)
        return x + h.reshape(x.shape)


@MODELS.register("unet")
class UNet(nn.Module):
    channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    groups: int = 32  # GroupNorm groups
    num_classes: int = 0  # > 0: class-conditional, with label num_classes as "null"
    out_channels: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, label=None, dropout_rngs=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        block_kw = dict(groups=self.groups, **kw)
        salt = iter(range(10_000))

        def res(h, features):
            return ResBlock(features, self.dropout, next(salt), **block_kw)(h, temb, dropout_rngs)

        temb = timestep_embedding(t, self.channels)  # [B, ch]
        temb = nn.Dense(4 * self.channels, **kw)(temb)
        temb = nn.Dense(4 * self.channels, **kw)(nn.silu(temb))  # [B, 4ch]
        if self.num_classes:
            temb = temb + nn.Embed(self.num_classes + 1, 4 * self.channels, **kw)(label)

        h = nn.Conv(self.channels, (3, 3), **kw)(x.astype(self.dtype))
        skips = [h]
        for level, multiplier in enumerate(self.channel_multipliers):
            for _ in range(self.num_res_blocks):
                h = res(h, self.channels * multiplier)
                if h.shape[1] in self.attention_resolutions:
                    h = AttentionBlock(**block_kw)(h)
                skips.append(h)
            if level != len(self.channel_multipliers) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), **kw)(h)  # [B, H/2, W/2, C]
                skips.append(h)

        h = res(h, h.shape[-1])
        h = AttentionBlock(**block_kw)(h)
        h = res(h, h.shape[-1])

        for level, multiplier in reversed(list(enumerate(self.channel_multipliers))):
            for _ in range(self.num_res_blocks + 1):
                h = res(jnp.concatenate([h, skips.pop()], axis=-1), self.channels * multiplier)
                if h.shape[1] in self.attention_resolutions:
                    h = AttentionBlock(**block_kw)(h)
            if level != 0:
                batch, height, width, channels = h.shape
                h = jax.image.resize(h, (batch, 2 * height, 2 * width, channels), "nearest")
                h = nn.Conv(channels, (3, 3), **kw)(h)

        h = nn.silu(nn.GroupNorm(self.groups, **kw)(h))
        h = nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros, **kw)(h)
        return h.astype(jnp.float32)  # losses and samplers work in float32


def init_params(model: UNet, rng: jax.Array, x: jax.Array, t: jax.Array, label=None) -> Any:
    """model.init(...)["params"] with the params drawn by the "rbg" PRNG.

    Threefry keys for the U-Net's ~60 initialisers take ~40 s to compile on a CPU; XLA's
    RngBitGenerator a few. `rng` is an ordinary (threefry) key; call this under jit.
    """
    key = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")
    return model.init(key, x, t, label)["params"]


def resolutions(model_config: ConfigDict, image_shape: tuple[int, int, int]) -> list[int]:
    """The feature-map heights the U-Net visits, from the input down."""
    height = image_shape[0]
    sizes = [height]
    for _ in model_config.channel_multipliers[1:]:
        height = (height - 1) // 2 + 1  # a stride-2 SAME conv
        sizes.append(height)
    return sizes


def check_model_config(model_config: ConfigDict, image_shape: tuple[int, int, int]) -> None:
    """ConfigError naming the field for a U-Net that cannot be built on these images."""
    height, width, _ = image_shape
    levels = len(model_config.channel_multipliers)
    if height != width:
        raise ConfigError(f"config.model: the U-Net takes square images, got {image_shape}")
    if height % 2 ** (levels - 1):
        raise ConfigError(
            f"config.model.channel_multipliers: {levels} levels halve {height}x{height} "
            f"{levels - 1} times, which needs a multiple of {2 ** (levels - 1)}"
        )
    sizes = resolutions(model_config, image_shape)
    missing = set(model_config.attention_resolutions) - set(sizes)
    if missing:
        raise ConfigError(
            f"config.model.attention_resolutions: {sorted(missing)} not reached; "
            f"the U-Net visits {sizes}"
        )
    for field in ("channels", "num_res_blocks", "groups"):
        if not isinstance(model_config[field], int) or model_config[field] < 1:
            raise ConfigError(f"config.model.{field}: must be a positive integer")
    widths = [model_config.channels * m for m in model_config.channel_multipliers]
    if any(width % model_config.groups for width in widths):
        raise ConfigError(
            f"config.model.groups: {model_config.groups} does not divide the widths {widths}"
        )
    if not 0.0 <= model_config.dropout < 1.0:
        raise ConfigError(f"config.model.dropout: must be in [0, 1), got {model_config.dropout}")


def make_model(model_config: ConfigDict, image_shape: tuple[int, int, int], num_classes: int):
    """The registered model of config.model; num_classes > 0 makes it class-conditional."""
    return from_config(
        MODELS.get(model_config.name),
        model_config,
        num_classes=num_classes,
        out_channels=image_shape[-1],
    )
