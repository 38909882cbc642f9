"""Stable Diffusion's U-Net (diffusers' UNet2DConditionModel, SD 1.x and 2.x), in Flax.

    eps = SDUNet(...)(z [B, h, w, 4], t [B], context [B, L, D])    # [B, h, w, out_channels]

What diffusers computes for the configurations SD 1.x (1.4, 1.5) and 2.x (2-base, 2.1) ship:
  - the timestep's sinusoidal embedding (Timesteps: flip_sin_to_cos, freq_shift = diffusers'
    downscale_freq_shift), then TimestepEmbedding (linear_1, SiLU, linear_2);
  - conv_in; down blocks (CrossAttnDownBlock2D: ResNet + Transformer2DModel per layer;
    DownBlock2D: ResNets only), each but the last ending in a stride-2 conv; the mid block
    (ResNet, transformer, ResNet); up blocks (UpBlock2D, CrossAttnUpBlock2D) taking the skip
    connections in reverse, each but the last ending in nearest-neighbour upsampling and a conv;
    GroupNorm, SiLU, conv_out;
  - `attention_heads`: the number of heads per down block. diffusers' config calls it
    attention_head_dim (an int or a list); SD's checkpoints mean the number of heads by it, and so
    does diffusers (models/sd_pretrained.py reads it so);
  - Transformer2DModel: GroupNorm (eps 1e-6), proj_in (a 1x1 conv, or a linear layer with
    use_linear_projection as in 2.x), BasicTransformerBlocks, proj_out, residual;
  - upcast_attention: attention in float32 (2.1's), a no-op in float32.
NHWC inside (the converter transposes diffusers' weights). The input size need not be a
multiple of 2 ** levels: upsampling resizes to the skip connection's size, as diffusers'
forward_upsample_size does. Left out: class/addition embeddings, time_cond_proj, dual/only
cross-attention, scale-shift time norm (no SD 1.x/2.x checkpoint uses them), dropout.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models.building import from_config
from jaxgen.models.sd_layers import (
    BasicTransformerBlock,
    Downsample,
    ResnetBlock,
    Upsample,
    conv,
    group_norm,
)

Dtype = Any
DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")


def timestep_embedding(t: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float):
    """diffusers' get_timestep_embedding (max_period 10000) of t [B]: float32 [B, dim]."""
    half = dim // 2
    exponent = -jnp.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    angles = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]  # [B, half]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class Transformer2D(nn.Module):
    """diffusers' Transformer2DModel over an image x [B, H, W, C] and the text context."""

    heads: int
    groups: int
    use_linear_projection: bool
    upcast: bool
    num_layers: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        b, height, width, channels = x.shape
        h = group_norm(self.groups, 1e-6, self.dtype, "norm")(x)
        if self.use_linear_projection:
            h = nn.Dense(channels, dtype=self.dtype, name="proj_in")(h)
        else:
            h = conv(channels, 1, self.dtype, "proj_in")(h)
        h = h.reshape(b, height * width, channels)  # tokens in row-major order, as diffusers'
        for k in range(self.num_layers):
            block = BasicTransformerBlock(
                self.heads, self.upcast, self.dtype, name=f"transformer_blocks_{k}"
            )
            h = block(h, context)
        h = h.reshape(b, height, width, channels)
        if self.use_linear_projection:
            h = nn.Dense(channels, dtype=self.dtype, name="proj_out")(h)
        else:
            h = conv(channels, 1, self.dtype, "proj_out")(h)
        return x + h


class SDUNet(nn.Module):
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: int = 2
    attention_heads: tuple[int, ...] = (
        8,
        8,
        8,
        8,
    )  # per down block (diffusers' attention_head_dim)
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    upcast_attention: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    transformer_layers_per_block: int = 1
    out_channels: int = 4
    dtype: Dtype = jnp.float32

    def _resnet(self, channels: int, name: str) -> ResnetBlock:
        return ResnetBlock(channels, self.norm_num_groups, self.norm_eps, self.dtype, name=name)

    def _transformer(self, heads: int, name: str) -> Transformer2D:
        return Transformer2D(
            heads,
            self.norm_num_groups,
            self.use_linear_projection,
            self.upcast_attention,
            self.transformer_layers_per_block,
            self.dtype,
            name=name,
        )

    @nn.compact
    def __call__(self, x, t, context, dropout_rngs=None):
        """x [B, h, w, c], t [B] (int or float timesteps), context [B, L, D] -> [B, h, w, out].
        dropout_rngs: accepted for the latent-diffusion family's signature; SD has no dropout."""
        del dropout_rngs
        channels = self.block_out_channels
        t = jnp.broadcast_to(t, (x.shape[0],))
        emb = timestep_embedding(t, channels[0], self.flip_sin_to_cos, self.freq_shift)
        emb = nn.Dense(4 * channels[0], dtype=self.dtype, name="time_embedding_linear_1")(emb)
        temb = nn.Dense(4 * channels[0], dtype=self.dtype, name="time_embedding_linear_2")(
            nn.silu(emb)
        )
        context = context.astype(self.dtype)

        h = conv(channels[0], 3, self.dtype, "conv_in")(x.astype(self.dtype))
        skips = [h]
        last = len(channels) - 1
        for i, block_type in enumerate(self.down_block_types):
            prefix = f"down_blocks_{i}"
            for j in range(self.layers_per_block):
                h = self._resnet(channels[i], f"{prefix}_resnets_{j}")(h, temb)
                if block_type == "CrossAttnDownBlock2D":
                    heads = self.attention_heads[i]
                    h = self._transformer(heads, f"{prefix}_attentions_{j}")(h, context)
                skips.append(h)
            if i < last:
                h = Downsample(channels[i], dtype=self.dtype, name=f"{prefix}_downsamplers_0")(h)
                skips.append(h)

        h = self._resnet(channels[-1], "mid_block_resnets_0")(h, temb)
        h = self._transformer(self.attention_heads[-1], "mid_block_attentions_0")(h, context)
        h = self._resnet(channels[-1], "mid_block_resnets_1")(h, temb)

        for i, block_type in enumerate(self.up_block_types):
            prefix, level = f"up_blocks_{i}", last - i
            for j in range(self.layers_per_block + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = self._resnet(channels[level], f"{prefix}_resnets_{j}")(h, temb)
                if block_type == "CrossAttnUpBlock2D":
                    heads = self.attention_heads[level]
                    h = self._transformer(heads, f"{prefix}_attentions_{j}")(h, context)
            if i < last:
                size = skips[-1].shape[1:3]  # the next skip's size (odd sizes round up)
                upsample = Upsample(channels[level], self.dtype, name=f"{prefix}_upsamplers_0")
                h = upsample(h, size)

        h = nn.silu(group_norm(self.norm_num_groups, self.norm_eps, self.dtype, "conv_norm_out")(h))
        return conv(self.out_channels, 3, self.dtype, "conv_out")(h).astype(jnp.float32)


def check_config(model_config: ConfigDict) -> None:
    """ConfigError naming the field whose value SDUNet cannot build."""
    levels = len(model_config.block_out_channels)
    for field, known in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
        types = tuple(model_config[field])
        if len(types) != levels:
            raise ConfigError(
                f"config.model.{field}: {len(types)} blocks for {levels} block_out_channels"
            )
        for block_type in types:
            if block_type not in known:
                raise ConfigError(
                    f"config.model.{field}: {block_type!r} is not supported; known: "
                    f"{', '.join(known)}"
                )
    heads = tuple(model_config.attention_heads)
    if len(heads) != levels:
        raise ConfigError(f"config.model.attention_heads: {len(heads)} values for {levels} levels")
    groups = model_config.norm_num_groups
    for i, channels in enumerate(model_config.block_out_channels):
        if channels % groups or channels % heads[i]:
            raise ConfigError(
                f"config.model.block_out_channels: {channels} is not divisible by "
                f"norm_num_groups={groups} and attention_heads[{i}]={heads[i]}"
            )


def make_model(model_config: ConfigDict, latent_channels: int | None = None) -> SDUNet:
    """SDUNet from config.model (latent_channels: the latents' channels, checked if given)."""
    check_config(model_config)
    if latent_channels is not None and model_config.out_channels != latent_channels:
        raise ConfigError(
            f"config.model.out_channels: {model_config.out_channels}, the latents have "
            f"{latent_channels} channels"
        )
    return from_config(SDUNet, model_config)
