"""VAE models: an encoder to a diagonal Gaussian q(z|x) and a decoder to p(x|z).

Two registered modules share one interface:
  encode(x [B, H, W, C]) -> (mean, logvar), each [B, D] float32;
  decode(z [..., D]) -> out [..., H, W, C'] float32, the parameters of p(x|z):
    likelihood "bernoulli": C' = C logits (images are binarised {0, 1} pixels);
    likelihood "gaussian": C' = 2C, per-pixel mean then log-scale (images in [-1, 1]);
  __call__(x, z_noise) encodes, draws z = mean + exp(logvar / 2) * z_noise and
  decodes; it exists so that `init` touches every parameter.
There is no randomness inside the models: the train step draws z_noise per example,
so results do not depend on the device count. Losses live in jaxgen/losses/vae.py.
The output heads compute in float32 even under bf16 compute, because log-likelihoods
summed over hundreds of pixels need more than bf16's 8 bits of mantissa.
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models.building import config_fields, from_config
from jaxgen.registry import Registry

MODELS = Registry("model", "config.model.name")

LIKELIHOODS = ("bernoulli", "gaussian")
# A Gaussian narrower than one 8-bit level (2 / 255 on [-1, 1]) means nothing for
# quantised pixels, and on constant pixels (MNIST's background) the density would grow
# without bound, so the decoder's log-scale is softly floored there.
MIN_LOG_SCALE = math.log(2 / 255)
# SiLU (swish) over ReLU: 2-4 nats better test ELBO on binarised MNIST at equal steps
# (GELU is as good; tanh and ReLU are worse).
ACTIVATION: Callable[[jax.Array], jax.Array] = nn.silu


class VAEOutput(NamedTuple):
    out: jax.Array  # [B, ..., H, W, C'] parameters of p(x|z), float32
    mean: jax.Array  # [B, D] float32
    logvar: jax.Array  # [B, D] float32
    z: jax.Array  # [B, ..., D] float32, the latents that were decoded


def output_channels(likelihood: str, channels: int) -> int:
    """Channels of the decoder output: logits (C) or mean and log-scale (2C)."""
    return channels if likelihood == "bernoulli" else 2 * channels


class _VAE(nn.Module):
    """The interface shared by the registered VAEs; subclasses define the networks."""

    def _encode(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError  # [B, H, W, C] -> [B, 2D]

    def _decode(self, z: jax.Array) -> jax.Array:
        raise NotImplementedError  # [N, D] -> [N, H, W, C']

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Parameters of q(z|x): x [B, H, W, C] -> (mean, logvar), each [B, D] float32."""
        h = self._encode(x)  # [B, 2D] float32 from the head
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, logvar

    def decode(self, z: jax.Array) -> jax.Array:
        """Parameters of p(x|z): z [..., D] -> out [..., H, W, C'] float32."""
        leading = z.shape[:-1]
        out = self._decode(z.reshape(-1, z.shape[-1]))  # [N, H, W, C'] float32 from the head
        if self.likelihood == "gaussian":
            mean, log_scale = jnp.split(out, 2, axis=-1)
            log_scale = MIN_LOG_SCALE + nn.softplus(log_scale - MIN_LOG_SCALE)
            out = jnp.concatenate([mean, log_scale], axis=-1)
        return out.reshape(*leading, *out.shape[1:])

    def __call__(self, x: jax.Array, z_noise: jax.Array) -> VAEOutput:
        """Encodes x [B, H, W, C] and decodes z for noise [B, D] or [B, K, D]."""
        mean, logvar = self.encode(x)
        expand = (1,) * (z_noise.ndim - 2)  # broadcast over the K sample axis, if any
        shape = (mean.shape[0], *expand, mean.shape[1])
        z = mean.reshape(shape) + jnp.exp(0.5 * logvar).reshape(shape) * z_noise
        return VAEOutput(self.decode(z), mean, logvar, z)


@MODELS.register("mlp")
class MLPVAE(_VAE):
    """The MLP VAE of Kingma & Welling (2014, arXiv:1312.6114), appendix C.

    Encoder: flatten -> Dense(hidden[i]) + SiLU ... -> Dense(2D) = (mean, logvar).
    Decoder: Dense(hidden[::-1][i]) + SiLU ... -> Dense(H * W * C') -> [H, W, C'].
    (The paper used tanh and one hidden layer; SiLU and two layers train faster.)
    """

    image_shape: tuple[int, int, int]
    latent_dim: int = 50
    hidden: tuple[int, ...] = (500, 500)
    likelihood: str = "bernoulli"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        dense = functools.partial(nn.Dense, param_dtype=self.param_dtype)
        height, width, channels = self.image_shape
        num_out = height * width * output_channels(self.likelihood, channels)
        self.encoder = [dense(w, dtype=self.dtype) for w in self.hidden]
        self.encoder_head = dense(2 * self.latent_dim, dtype=jnp.float32)
        self.decoder = [dense(w, dtype=self.dtype) for w in reversed(self.hidden)]
        self.decoder_head = dense(num_out, dtype=jnp.float32)

    def _encode(self, x):
        h = x.reshape(x.shape[0], -1).astype(self.dtype)  # [B, H * W * C]
        for layer in self.encoder:
            h = ACTIVATION(layer(h))
        return self.encoder_head(h)

    def _decode(self, z):
        h = z.astype(self.dtype)
        for layer in self.decoder:
            h = ACTIVATION(layer(h))
        height, width, channels = self.image_shape
        out = self.decoder_head(h)  # [N, H * W * C']
        return out.reshape(z.shape[0], height, width, output_channels(self.likelihood, channels))


@MODELS.register("conv")
class ConvVAE(_VAE):
    """A convolutional VAE: two stride-2 convs (H/4 x W/4), dense layers to the latent.

    Encoder: Conv3x3/2(features[0]) -> Conv3x3/2(features[1]) -> flatten
      -> Dense(hidden[i]) ... -> Dense(2D).
    Decoder mirrors it: Dense(hidden[::-1][i]) ... -> Dense(H/4 * W/4 * features[1])
      -> ConvT3x3/2(features[0]) -> ConvT3x3/2(C'). SiLU between layers.
    Requires H and W divisible by 4 (see check_image_shape).
    """

    image_shape: tuple[int, int, int]
    latent_dim: int = 50
    # Narrow convs keep it affordable on CPU; the dense layer carries the capacity.
    features: tuple[int, int] = (16, 32)
    hidden: tuple[int, ...] = (512,)
    likelihood: str = "bernoulli"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        kernel = dict(kernel_size=(3, 3), strides=(2, 2), param_dtype=self.param_dtype)
        conv = functools.partial(nn.Conv, dtype=self.dtype, **kernel)
        conv_t = functools.partial(nn.ConvTranspose, **kernel)
        dense = functools.partial(nn.Dense, param_dtype=self.param_dtype)
        height, width, channels = self.image_shape
        first, last = self.features
        self.encoder_convs = [conv(first), conv(last)]
        self.encoder_dense = [dense(w, dtype=self.dtype) for w in self.hidden]
        self.encoder_head = dense(2 * self.latent_dim, dtype=jnp.float32)
        self.decoder_dense = [dense(w, dtype=self.dtype) for w in reversed(self.hidden)]
        self.decoder_project = dense(height // 4 * width // 4 * last, dtype=self.dtype)
        self.decoder_conv = conv_t(first, dtype=self.dtype)
        self.decoder_head = conv_t(output_channels(self.likelihood, channels), dtype=jnp.float32)

    def _encode(self, x):
        h = x.astype(self.dtype)
        for layer in self.encoder_convs:
            h = ACTIVATION(layer(h))  # [B, H/2, W/2, f0] then [B, H/4, W/4, f1]
        h = h.reshape(h.shape[0], -1)  # [B, H/4 * W/4 * f1]
        for layer in self.encoder_dense:
            h = ACTIVATION(layer(h))
        return self.encoder_head(h)

    def _decode(self, z):
        h = z.astype(self.dtype)
        for layer in self.decoder_dense:
            h = ACTIVATION(layer(h))
        height, width, _ = self.image_shape
        h = ACTIVATION(self.decoder_project(h))
        h = h.reshape(z.shape[0], height // 4, width // 4, self.features[1])  # [N, H/4, W/4, f1]
        h = ACTIVATION(self.decoder_conv(h))  # [N, H/2, W/2, f0]
        return self.decoder_head(h)  # [N, H, W, C']


def check_image_shape(model_config: ConfigDict, image_shape: tuple[int, ...]) -> None:
    """Raises a one-line ConfigError if config.model cannot be built for this image shape."""
    name = model_config.name
    cls = MODELS.get(name)
    for field in config_fields(cls, fixed=("image_shape",)):
        if field not in model_config:
            raise ConfigError(f"config.model.{field}: missing; model {name!r} needs it")
    if model_config.likelihood not in LIKELIHOODS:
        raise ConfigError(
            f"config.model.likelihood: {model_config.likelihood!r} is not one of "
            f"{', '.join(LIKELIHOODS)}"
        )
    if len(image_shape) != 3:
        raise ConfigError(f"config.model.name: {name!r} takes [H, W, C] images, got {image_shape}")
    height, width, _ = image_shape
    if cls is ConvVAE and (height % 4 or width % 4):
        raise ConfigError(
            f"config.model.name: 'conv' downsamples by 4, so H and W must be divisible by 4; "
            f"got {height}x{width} (use 'mlp' or pad the images)"
        )
    if cls is ConvVAE and len(model_config.features) != 2:
        raise ConfigError(
            f"config.model.features: 'conv' takes two conv widths, got {model_config.features}"
        )


def make_model(model_config: ConfigDict, image_shape: tuple[int, int, int]) -> nn.Module:
    """Builds the model named by config.model.name from config.model's fields.

    Every hyperparameter field of the module must be in config.model (the module's
    defaults are documentation, not fallbacks); lists become tuples so the module hashes.
    """
    check_image_shape(model_config, image_shape)
    return from_config(MODELS.get(model_config.name), model_config, image_shape=image_shape)
