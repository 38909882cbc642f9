"""Stable Diffusion's VAE (diffusers' AutoencoderKL), in Flax.

    mean, logvar = vae.apply(variables, image [B, H, W, 3], method=vae.encode)  # [B, H/f, W/f, 4]
    image = vae.apply(variables, z [B, h, w, 4], method=vae.decode)             # [B, H, W, 3]

What diffusers computes for SD's VAE (f = 2 ** (levels - 1), 8 for SD):
  - Encoder: conv_in; per level DownEncoderBlock2D (ResNets without a time input, then a stride-2
    conv padded (0, 1) on the bottom/right as diffusers' Downsample2D(padding=0) pads, but at the
    last level); the mid block (ResNet, single-head self-attention with its own GroupNorm and
    biased q/k/v, ResNet); GroupNorm, SiLU, conv_out to 2 x latent_channels; then quant_conv.
    The moments split into mean and logvar, logvar clamped to [-30, 20] (DiagonalGaussian).
  - Decoder: post_quant_conv; conv_in; the mid block; per level (in reverse) UpDecoderBlock2D
    (layers_per_block + 1 ResNets, then nearest-neighbour x2 and a conv, but at the last level);
    GroupNorm, SiLU, conv_out.
Every GroupNorm has eps 1e-6 (diffusers' resnet_eps for the VAE). The latents here are unscaled,
as diffusers' encode/decode take them; the pipeline multiplies by the config's scaling_factor.
__call__(image, noise) is the jaxgen autoencoders' interface (a posterior draw, decoded).
Left out: tiling/slicing, the spatial norm of other decoders, SDXL's latents_mean/std.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models.building import from_config
from jaxgen.models.sd_layers import Downsample, ResnetBlock, Upsample, conv, group_norm

Dtype = Any
EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)  # DiagonalGaussianDistribution's clamp


class AutoencoderOutput(NamedTuple):  # models/autoencoder.py's fields
    reconstruction: jax.Array  # [B, H, W, C]
    mean: jax.Array  # [B, h, w, latent_channels]
    logvar: jax.Array  # [B, h, w, latent_channels]


class MidAttention(nn.Module):
    """The VAE mid block's attention: GroupNorm, one head over all pixels, residual."""

    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, channels = x.shape
        h = group_norm(self.groups, EPS, self.dtype, "group_norm")(x)
        h = h.reshape(b, height * width, 1, channels)  # [B, N, 1 head, C]
        q, k, v = (
            nn.Dense(channels, dtype=self.dtype, name=name)(h) for name in ("to_q", "to_k", "to_v")
        )
        h = jax.nn.dot_product_attention(q, k, v).reshape(b, height, width, channels)
        return x + nn.Dense(channels, dtype=self.dtype, name="to_out_0")(h)


def mid_block(module: nn.Module, h: jax.Array) -> jax.Array:
    """ResNet, attention, ResNet at the last level's width (names mid_block.*)."""
    channels = module.block_out_channels[-1]
    h = ResnetBlock(channels, module.groups, EPS, module.dtype, name="mid_block_resnets_0")(h)
    if module.mid_block_add_attention:
        h = MidAttention(module.groups, module.dtype, name="mid_block_attentions_0")(h)
    return ResnetBlock(channels, module.groups, EPS, module.dtype, name="mid_block_resnets_1")(h)


class Encoder(nn.Module):
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int
    groups: int
    mid_block_add_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        channels = self.block_out_channels
        h = conv(channels[0], 3, self.dtype, "conv_in")(image.astype(self.dtype))
        for i, width in enumerate(channels):
            for j in range(self.layers_per_block):
                name = f"down_blocks_{i}_resnets_{j}"
                h = ResnetBlock(width, self.groups, EPS, self.dtype, name=name)(h)
            if i < len(channels) - 1:
                name = f"down_blocks_{i}_downsamplers_0"
                h = Downsample(width, asymmetric=True, dtype=self.dtype, name=name)(h)
        h = mid_block(self, h)
        h = nn.silu(group_norm(self.groups, EPS, self.dtype, "conv_norm_out")(h))
        return conv(2 * self.latent_channels, 3, self.dtype, "conv_out")(h)


class Decoder(nn.Module):
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    out_channels: int
    groups: int
    mid_block_add_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        channels = self.block_out_channels
        h = conv(channels[-1], 3, self.dtype, "conv_in")(z)
        h = mid_block(self, h)
        for i, width in enumerate(reversed(channels)):
            for j in range(self.layers_per_block + 1):
                name = f"up_blocks_{i}_resnets_{j}"
                h = ResnetBlock(width, self.groups, EPS, self.dtype, name=name)(h)
            if i < len(channels) - 1:
                h = Upsample(width, self.dtype, name=f"up_blocks_{i}_upsamplers_0")(h)
        h = nn.silu(group_norm(self.groups, EPS, self.dtype, "conv_norm_out")(h))
        return conv(self.out_channels, 3, self.dtype, "conv_out")(h)


class SDAutoencoderKL(nn.Module):
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    out_channels: int = 3
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    dtype: Dtype = jnp.float32

    def setup(self):
        common = dict(
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            groups=self.norm_num_groups,
            mid_block_add_attention=self.mid_block_add_attention,
            dtype=self.dtype,
        )
        self.encoder = Encoder(latent_channels=self.latent_channels, **common)
        self.decoder = Decoder(out_channels=self.out_channels, **common)
        width = 2 * self.latent_channels
        if self.use_quant_conv:
            self.quant_conv = nn.Conv(width, (1, 1), dtype=self.dtype)
        if self.use_post_quant_conv:
            self.post_quant_conv = nn.Conv(self.latent_channels, (1, 1), dtype=self.dtype)

    def encode(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mean, logvar) of the posterior, float32 [B, H/f, W/f, latent_channels] each."""
        moments = self.encoder(image)
        if self.use_quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: jax.Array) -> jax.Array:
        """The image [B, H, W, out_channels] (about [-1, 1]) of unscaled latents z, float32."""
        z = z.astype(self.dtype)
        if self.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, image: jax.Array, noise: jax.Array) -> AutoencoderOutput:
        mean, logvar = self.encode(image)
        reconstruction = self.decode(mean + jnp.exp(0.5 * logvar) * noise)
        return AutoencoderOutput(reconstruction, mean, logvar)


def downsampling(model_config: ConfigDict) -> int:
    return 2 ** (len(model_config.block_out_channels) - 1)


def latent_shape(model_config: ConfigDict, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Latents [h, w, c] of images [H, W, C]: the stride-2 convs of (0, 1) padding floor-halve
    odd sizes, as diffusers' do."""
    height, width = image_shape[:2]
    for _ in range(len(model_config.block_out_channels) - 1):
        height, width = (height - 2) // 2 + 1, (width - 2) // 2 + 1
    return (height, width, model_config.latent_channels)


def check_config(model_config: ConfigDict, image_shape: tuple[int, ...] | None = None) -> None:
    """ConfigError naming the field SDAutoencoderKL cannot build (for images of image_shape)."""
    if image_shape is not None:
        f = downsampling(model_config)
        if len(image_shape) != 3 or image_shape[0] % f or image_shape[1] % f:
            raise ConfigError(
                f"config.model.block_out_channels: {len(model_config.block_out_channels)} levels "
                f"downsample by {f}, which does not divide the image shape {tuple(image_shape)}"
            )
        if image_shape[-1] != model_config.out_channels:
            raise ConfigError(
                f"config.model.out_channels: {model_config.out_channels}, the images have "
                f"{image_shape[-1]} channels"
            )
    groups = model_config.norm_num_groups
    for channels in model_config.block_out_channels:
        if channels % groups:
            raise ConfigError(
                f"config.model.block_out_channels: {channels} is not divisible by "
                f"norm_num_groups={groups}"
            )


def make_model(model_config: ConfigDict) -> SDAutoencoderKL:
    check_config(model_config)
    return from_config(SDAutoencoderKL, model_config)
