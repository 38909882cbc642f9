"""The latent U-Net of Stable Diffusion at a small size: DDPM's U-Net with cross-attention to text.

    out = LatentUNet(...)(z [B, h, w, c], t [B] int, context [B, L, D], dropout_rngs or None)

The residual blocks, timestep embedding and down/up path are jaxgen.models.ddpm's (Ho et al.
2020); at the resolutions in `attention_resolutions` each residual block is followed by a
SpatialTransformer (Rombach et al. 2022, ldm/modules/attention.py): GroupNorm, a 1x1 projection
to tokens, a transformer block (self-attention, cross-attention whose keys and values come from
the text `context`, a GEGLU feed-forward, each pre-LayerNorm and residual), a zero-initialised
1x1 projection back, and a residual connection. As in SD the cross-attention sees every token of
the context, padding included (the text tower's outputs at padding positions are part of the
prompt's encoding; the empty prompt is all padding). Upsampling resizes to the skip connection's
size, so odd latent sizes work (MNIST's 28x28 -> 7x7 latents go 7 -> 4 -> 7).
Not here: the text encoder (models/clip.py) and the autoencoder (models/autoencoder.py).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models import sd_unet
from jaxgen.models.building import from_config
from jaxgen.models.ddpm import ResBlock, timestep_embedding

Dtype = Any


class CrossAttention(nn.Module):
    """Multi-head attention of x [B, N, C] over context [B, L, D] (x itself when None)."""

    heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        context = x if context is None else context
        b, n, channels = x.shape
        head_dim = channels // self.heads
        q = nn.Dense(channels, use_bias=False, dtype=self.dtype, name="q")(x)
        k = nn.Dense(channels, use_bias=False, dtype=self.dtype, name="k")(context)
        v = nn.Dense(channels, use_bias=False, dtype=self.dtype, name="v")(context)
        q = q.reshape(b, n, self.heads, head_dim)  # [B, N, heads, head_dim]
        k, v = (a.reshape(b, context.shape[1], self.heads, head_dim) for a in (k, v))
        h = jax.nn.dot_product_attention(q, k, v).reshape(b, n, channels)
        return nn.Dense(channels, dtype=self.dtype, name="out")(h)


class SpatialTransformer(nn.Module):
    heads: int
    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        b, height, width, channels = x.shape
        h = nn.GroupNorm(self.groups, dtype=self.dtype)(x)
        h = nn.Dense(channels, dtype=self.dtype)(h).reshape(b, height * width, channels)
        h = h + CrossAttention(self.heads, self.dtype)(nn.LayerNorm(dtype=self.dtype)(h))
        h = h + CrossAttention(self.heads, self.dtype)(
            nn.LayerNorm(dtype=self.dtype)(h), context.astype(self.dtype)
        )
        gate, value = jnp.split(
            nn.Dense(8 * channels, dtype=self.dtype)(nn.LayerNorm(dtype=self.dtype)(h)), 2, -1
        )
        h = h + nn.Dense(channels, dtype=self.dtype)(value * nn.gelu(gate))  # GEGLU
        h = nn.Dense(channels, kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
        return x + h.reshape(x.shape)


class LatentUNet(nn.Module):
    channels: int = 64
    channel_multipliers: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (8, 7, 4)
    heads: int = 4
    dropout: float = 0.0
    groups: int = 8
    out_channels: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, context, dropout_rngs=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        salt = iter(range(10_000))

        def res(h, features):
            block = ResBlock(features, self.dropout, next(salt), self.groups, **kw)
            return block(h, temb, dropout_rngs)

        def attend(h):
            if h.shape[1] not in self.attention_resolutions:
                return h
            return SpatialTransformer(self.heads, self.groups, self.dtype)(h, context)

        temb = timestep_embedding(t, self.channels)  # [B, ch]
        temb = nn.Dense(4 * self.channels, **kw)(temb)
        temb = nn.Dense(4 * self.channels, **kw)(nn.silu(temb))  # [B, 4ch]

        h = nn.Conv(self.channels, (3, 3), **kw)(x.astype(self.dtype))
        skips = [h]
        for level, multiplier in enumerate(self.channel_multipliers):
            for _ in range(self.num_res_blocks):
                h = attend(res(h, self.channels * multiplier))
                skips.append(h)
            if level != len(self.channel_multipliers) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), **kw)(h)  # [B, ~H/2, ~W/2, C]
                skips.append(h)

        h = res(h, h.shape[-1])
        h = SpatialTransformer(self.heads, self.groups, self.dtype)(h, context)
        h = res(h, h.shape[-1])

        for level, multiplier in reversed(list(enumerate(self.channel_multipliers))):
            for _ in range(self.num_res_blocks + 1):
                h = attend(res(jnp.concatenate([h, skips.pop()], -1), self.channels * multiplier))
            if level != 0:
                height, width = skips[-1].shape[1:3]  # the size this level came from
                h = jax.image.resize(h, (h.shape[0], height, width, h.shape[-1]), "nearest")
                h = nn.Conv(h.shape[-1], (3, 3), **kw)(h)

        h = nn.silu(nn.GroupNorm(self.groups, **kw)(h))
        h = nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros, **kw)(h)
        return h.astype(jnp.float32)


# config.model.name of Stable Diffusion's U-Net (models/sd_unet.py, imported by
# experiments/import_diffusers); any other name is this file's LatentUNet.
SD_UNET = "sd_unet"


def check_config(model_config: ConfigDict) -> None:
    """ConfigError naming the field for U-Net settings that cannot build."""
    if model_config.get("name") == SD_UNET:
        return sd_unet.check_config(model_config)
    for field in ("channels", "num_res_blocks", "heads", "groups"):
        value = model_config[field]
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.model.{field}: {value!r}, must be a positive integer")
    widths = [model_config.channels * m for m in model_config.channel_multipliers]
    for width in widths:
        if width % model_config.groups or width % model_config.heads:
            raise ConfigError(
                f"config.model.channel_multipliers: width {width} must be a multiple of "
                f"groups {model_config.groups} and heads {model_config.heads}"
            )


def make_model(model_config: ConfigDict, latent_channels: int) -> nn.Module:
    """LatentUNet, or SD's UNet2DConditionModel when config.model.name is "sd_unet"."""
    if model_config.get("name") == SD_UNET:
        return sd_unet.make_model(model_config, latent_channels)
    return from_config(LatentUNet, model_config, out_channels=latent_channels)
