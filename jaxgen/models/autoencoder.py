"""The KL-regularised convolutional autoencoder of latent diffusion (Rombach et al. 2022, sec. 3).

The encoder maps an image [B, H, W, C] to the mean and log-variance of a diagonal Gaussian
posterior over latents [B, H/f, W/f, latent_channels], f = 2 ** (len(channels) - 1); the decoder
maps latents back to an image. Shaped as LDM's Encoder/Decoder (ldm/modules/diffusionmodules/
model.py) at a small size: per level a residual block (GroupNorm, swish, 3x3 conv, twice) then a
stride-2 conv (encoder) or nearest-neighbour upsampling and a conv (decoder), a residual block in
the middle, GroupNorm + swish + 3x3 conv out. Left out: LDM's attention in the middle block and
the GAN/perceptual terms of its loss (too costly for these CPUs; the loss is L1/L2 + KL).
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models import sd_vae
from jaxgen.models.building import from_config

LOGVAR_RANGE = (-30.0, 20.0)  # LDM's DiagonalGaussianDistribution clamps logvar to this


class AutoencoderOutput(NamedTuple):
    reconstruction: jax.Array  # [B, H, W, C]
    mean: jax.Array  # [B, h, w, latent_channels]
    logvar: jax.Array  # [B, h, w, latent_channels]


class ResBlock(nn.Module):
    features: int
    groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.Conv(self.features, (3, 3))(nn.swish(nn.GroupNorm(self.groups)(x)))
        h = nn.Conv(self.features, (3, 3))(nn.swish(nn.GroupNorm(self.groups)(h)))
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1))(x)
        return x + h


class Encoder(nn.Module):
    channels: tuple[int, ...]
    latent_channels: int
    groups: int = 8

    @nn.compact
    def __call__(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = nn.Conv(self.channels[0], (3, 3))(image)
        for level, features in enumerate(self.channels):
            h = ResBlock(features, self.groups)(h)
            if level < len(self.channels) - 1:
                h = nn.Conv(features, (3, 3), strides=(2, 2))(h)  # [B, H/2, W/2, features]
        h = ResBlock(self.channels[-1], self.groups)(h)
        h = nn.Conv(2 * self.latent_channels, (3, 3))(nn.swish(nn.GroupNorm(self.groups)(h)))
        mean, logvar = jnp.split(h, 2, axis=-1)  # [B, h, w, latent_channels] each
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class Decoder(nn.Module):
    channels: tuple[int, ...]
    out_channels: int
    groups: int = 8

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = nn.Conv(self.channels[-1], (3, 3))(z)
        h = ResBlock(self.channels[-1], self.groups)(h)
        for level, features in reversed(list(enumerate(self.channels))):
            h = ResBlock(features, self.groups)(h)
            if level > 0:
                b, height, width, c = h.shape
                h = jax.image.resize(h, (b, 2 * height, 2 * width, c), "nearest")
                h = nn.Conv(features, (3, 3))(h)
        return nn.Conv(self.out_channels, (3, 3))(nn.swish(nn.GroupNorm(self.groups)(h)))


class KLAutoencoder(nn.Module):
    """encode(image) -> (mean, logvar); decode(z) -> image; __call__(image, noise) -> output."""

    channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    out_channels: int = 3
    groups: int = 8

    def setup(self):
        self.encoder = Encoder(self.channels, self.latent_channels, self.groups)
        self.decoder = Decoder(self.channels, self.out_channels, self.groups)

    def encode(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(image)

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)

    def __call__(self, image: jax.Array, noise: jax.Array) -> AutoencoderOutput:
        """A reparameterised posterior draw z = mean + exp(logvar / 2) * noise, decoded."""
        mean, logvar = self.encode(image)
        z = mean + jnp.exp(0.5 * logvar) * noise
        return AutoencoderOutput(self.decode(z), mean, logvar)


# config.model.name of Stable Diffusion's VAE (models/sd_vae.py, imported by
# experiments/import_diffusers); any other name is this file's KLAutoencoder.
SD_VAE = "sd_vae"


def is_sd_vae(model_config: ConfigDict) -> bool:
    return model_config.get("name") == SD_VAE


def downsampling(model_config: ConfigDict) -> int:
    if is_sd_vae(model_config):
        return sd_vae.downsampling(model_config)
    return 2 ** (len(model_config.channels) - 1)


def latent_shape(model_config: ConfigDict, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if is_sd_vae(model_config):
        return sd_vae.latent_shape(model_config, image_shape)
    f = downsampling(model_config)
    return image_shape[0] // f, image_shape[1] // f, model_config.latent_channels


def check_config(model_config: ConfigDict, image_shape: tuple[int, ...]) -> None:
    """ConfigError naming the field for a model that cannot take `image_shape`."""
    if is_sd_vae(model_config):
        return sd_vae.check_config(model_config, image_shape)
    channels = model_config.channels
    if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
        raise ConfigError(f"config.model.channels: positive integers, got {channels}")
    if any(c % model_config.groups for c in channels):
        raise ConfigError(
            f"config.model.groups: {model_config.groups} must divide every channel count {channels}"
        )
    if not isinstance(model_config.latent_channels, int) or model_config.latent_channels < 1:
        raise ConfigError(f"config.model.latent_channels: {model_config.latent_channels!r}, >= 1")
    f = downsampling(model_config)
    if len(image_shape) != 3 or image_shape[0] % f or image_shape[1] % f:
        raise ConfigError(
            f"config.model.channels: {len(channels)} levels downsample by {f}, which does not "
            f"divide the image shape {tuple(image_shape)}"
        )


def make_model(model_config: ConfigDict, image_shape: tuple[int, ...]) -> nn.Module:
    """KLAutoencoder, or SD's AutoencoderKL when config.model.name is "sd_vae"."""
    if is_sd_vae(model_config):
        return sd_vae.make_model(model_config)
    return from_config(KLAutoencoder, model_config, out_channels=image_shape[-1])
