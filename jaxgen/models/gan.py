"""GAN models: registered (generator, discriminator) pairs.

Every pair shares one interface:
  generator(z [B, D], label [B] int32, train) -> images [B, H, W, C] float32 in [-1, 1];
  discriminator(images [B, H, W, C], label [B] int32, train) -> logits [B] float32.
`label` is ignored unless the model is class-conditional (num_classes > 0): then the
generator sees one-hot(label) next to z (Mirza & Osindero 2014) and the discriminator
adds the projection <embed(label), features> to its logit (Miyato & Koyama 2018).

Non-parameter state lives in the "batch_stats" collection of each network: BatchNorm
running averages and the spectral-norm power-iteration vectors `u` (flax.linen.SpectralNorm,
updated only when train=True, i.e. in the step that updates that network). BatchNorm
normalises over the whole global batch: under the jit mesh the batch axis is one sharded
array and XLA reduces over all devices; under pmap `axis_name` makes the statistics global
too. So the update does not depend on the device count.
There is no randomness inside the models: the train step draws z per example.
"""

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models.building import config_fields, from_config
from jaxgen.registry import Registry

MODELS = Registry("model", "config.model.name")
NORMS = ("batch", "layer", "none")
# BatchNorm momentum as in the DCGAN reference code (TF's 0.9 = PyTorch's 0.1).
BN_MOMENTUM = 0.9


class GANPair(NamedTuple):
    generator: type
    discriminator: type


def _leaky(slope: float):
    return functools.partial(nn.leaky_relu, negative_slope=slope)


class _Conditional(nn.Module):
    """Helpers for class conditioning shared by generators and discriminators."""

    def _with_label(self, z, label):
        if not self.num_classes:
            return z
        return jnp.concatenate([z, jax.nn.one_hot(label, self.num_classes, dtype=z.dtype)], -1)

    def _head(self, h, label, spectral_norm, update_stats):
        """Linear logit of features h [B, F], plus the projection term if conditional."""
        dense = nn.Dense(1, dtype=jnp.float32, param_dtype=self.param_dtype, name="head")
        if spectral_norm:
            logit = nn.SpectralNorm(dense)(h, update_stats=update_stats)
        else:
            logit = dense(h)
        logit = logit[:, 0].astype(jnp.float32)  # [B]
        if self.num_classes:
            embed = nn.Embed(self.num_classes, h.shape[-1], param_dtype=self.param_dtype)
            logit = logit + jnp.sum(embed(label) * h, axis=-1).astype(jnp.float32)
        return logit


class MLPGenerator(_Conditional):
    """The seed's MLP generator: z (100-d) -> 256 -> 256 -> H*W*C, LeakyReLU 0.2, tanh."""

    image_shape: tuple[int, int, int]
    hidden: tuple[int, ...] = (256, 256)
    num_classes: int = 0
    axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z, label, train: bool):
        h = self._with_label(z, label).astype(self.dtype)
        for width in self.hidden:
            h = _leaky(0.2)(nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype)(h))
        out = nn.Dense(
            math.prod(self.image_shape), dtype=jnp.float32, param_dtype=self.param_dtype
        )(h)
        return jnp.tanh(out).reshape((z.shape[0],) + tuple(self.image_shape))


class MLPDiscriminator(_Conditional):
    """The seed's mirrored discriminator: flatten -> 256 -> 256 -> 1, LeakyReLU 0.2."""

    image_shape: tuple[int, int, int]
    hidden: tuple[int, ...] = (256, 256)
    spectral_norm: bool = False
    num_classes: int = 0
    axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, label, train: bool):
        h = x.reshape(x.shape[0], -1).astype(self.dtype)  # [B, H * W * C]
        for width in reversed(self.hidden):
            dense = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype)
            h = nn.SpectralNorm(dense)(h, update_stats=train) if self.spectral_norm else dense(h)
            h = _leaky(0.2)(h)
        return self._head(h, label, self.spectral_norm, train)


def num_stages(image_shape: tuple[int, ...]) -> int:
    """Stride-2 stages of the conv models: 28 = 7 * 2^2, 32 = 4 * 2^3."""
    return {28: 2, 32: 3}[image_shape[0]]


class DCGANGenerator(_Conditional):
    """DCGAN generator (Radford et al. 2016), also the SN-GAN "standard CNN" generator.

    z -> Dense(s*s*f*2^k) + BN + ReLU -> [ConvT4x4/2 + BN + ReLU] x k -> Conv3x3(C) -> tanh,
    with s = 7, k = 2 for 28x28 and s = 4, k = 3 for 32x32, halving the width each stage
    down to f = features (f = 64 at 32x32: 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64,
    Miyato et al. 2018, table 3). The last 3x3 conv to C channels follows SN-GAN; DCGAN's
    last transposed conv outputs the image directly.
    """

    image_shape: tuple[int, int, int]
    features: int = 64
    num_classes: int = 0
    axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z, label, train: bool):
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            axis_name=self.axis_name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        stages = num_stages(self.image_shape)
        size = self.image_shape[0] // 2**stages
        width = self.features * 2**stages
        h = self._with_label(z, label).astype(self.dtype)
        # No biases before BatchNorm: it subtracts them again, and Adam would turn their
        # (zero up to rounding) gradients into steps of size lr.
        dense = nn.Dense(
            size * size * width, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype
        )
        h = dense(h)
        h = nn.relu(norm()(h.reshape(z.shape[0], size, size, width)))  # [B, s, s, f * 2^k]
        for _ in range(stages):
            width //= 2
            h = nn.ConvTranspose(
                width,
                (4, 4),
                (2, 2),
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )(h)  # doubles H and W
            h = nn.relu(norm()(h))
        out = nn.Conv(self.image_shape[-1], (3, 3), dtype=jnp.float32, param_dtype=self.param_dtype)
        return jnp.tanh(out(h))  # [B, H, W, C]


class DCGANDiscriminator(_Conditional):
    """DCGAN discriminator: [Conv4x4/2 + norm + LeakyReLU 0.2] x k -> Dense(1).

    Widths f, 2f, 4f (k = 2 stages at 28x28, 3 at 32x32); no norm after the first conv
    (Radford et al. 2016, section 3). `norm`: "batch" as in the paper; "layer" or "none"
    for losses with a per-example gradient penalty, which BatchNorm would couple.
    """

    image_shape: tuple[int, int, int]
    features: int = 64
    norm: str = "batch"
    spectral_norm: bool = False
    num_classes: int = 0
    axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, label, train: bool):
        h = x.astype(self.dtype)
        for stage in range(num_stages(self.image_shape)):
            batch_norm = stage > 0 and self.norm == "batch"
            conv = nn.Conv(
                self.features * 2**stage,
                (4, 4),
                (2, 2),
                use_bias=not batch_norm,  # BatchNorm subtracts a bias again
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
            h = nn.SpectralNorm(conv)(h, update_stats=train) if self.spectral_norm else conv(h)
            if batch_norm:
                h = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=BN_MOMENTUM,
                    axis_name=self.axis_name,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                )(h)
            elif stage > 0 and self.norm == "layer":
                h = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype)(h)
            h = _leaky(0.2)(h)
        h = h.reshape(h.shape[0], -1)  # [B, s * s * f * 2^(k-1)]
        return self._head(h, label, self.spectral_norm, train)


class SNGANDiscriminator(_Conditional):
    """The SN-GAN "standard CNN" discriminator (Miyato et al. 2018, table 3).

    Conv3x3 f, Conv4x4/2 f, Conv3x3 2f, Conv4x4/2 2f, Conv3x3 4f, Conv4x4/2 4f, Conv3x3 8f,
    each followed by LeakyReLU 0.1, then Dense(1); f = 64 in the paper. Every layer is
    spectrally normalised, one power iteration per update.
    """

    image_shape: tuple[int, int, int]
    features: int = 64
    num_classes: int = 0
    axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, label, train: bool):
        f = self.features
        layers = [(f, 3, 1), (f, 4, 2), (2 * f, 3, 1), (2 * f, 4, 2)]
        layers += [(4 * f, 3, 1), (4 * f, 4, 2), (8 * f, 3, 1)]
        h = x.astype(self.dtype)
        for width, kernel, stride in layers:
            conv = nn.Conv(
                width,
                (kernel, kernel),
                (stride, stride),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
            h = _leaky(0.1)(nn.SpectralNorm(conv)(h, update_stats=train))
        h = h.reshape(h.shape[0], -1)  # [B, H/8 * W/8 * 8f]
        return self._head(h, label, True, train)


MODELS.register("mlp")(GANPair(MLPGenerator, MLPDiscriminator))
MODELS.register("dcgan")(GANPair(DCGANGenerator, DCGANDiscriminator))
MODELS.register("sngan")(GANPair(DCGANGenerator, SNGANDiscriminator))

# The fields make_models passes itself; every other field comes from config.model.
_NOT_FROM_CONFIG = ("image_shape", "num_classes", "axis_name")


def check_config(model_config: ConfigDict, image_shape: tuple[int, ...]) -> None:
    """Raises a one-line ConfigError if config.model cannot be built for these images."""
    name = model_config.name
    pair = MODELS.get(name)
    for cls in pair:
        for field in config_fields(cls, fixed=_NOT_FROM_CONFIG):
            if field not in model_config:
                raise ConfigError(f"config.model.{field}: missing; model {name!r} needs it")
    if model_config.latent_dim < 1:
        raise ConfigError(f"config.model.latent_dim: must be >= 1, got {model_config.latent_dim}")
    if len(image_shape) != 3:
        raise ConfigError(f"config.model.name: {name!r} takes [H, W, C] images, got {image_shape}")
    if name in ("dcgan", "sngan") and (
        image_shape[0] != image_shape[1] or image_shape[0] not in (28, 32)
    ):
        raise ConfigError(
            f"config.model.name: {name!r} is built for 28x28 or 32x32 images, got "
            f"{image_shape[0]}x{image_shape[1]} (use 'mlp', or a dataset of those sizes)"
        )
    if "norm" in config_fields(pair.discriminator) and model_config.norm not in NORMS:
        raise ConfigError(
            f"config.model.norm: {model_config.norm!r} is not one of {', '.join(NORMS)}"
        )
    for field in ("hidden",):
        if field in model_config and not all(
            isinstance(size, int) and size > 0 for size in model_config[field]
        ):
            raise ConfigError(
                f"config.model.{field}: layer sizes must be positive integers, got {model_config[field]}"
            )
    if model_config.get("features", 1) < 1:
        raise ConfigError(f"config.model.features: must be >= 1, got {model_config.features}")


def make_models(
    model_config: ConfigDict,
    image_shape: tuple[int, int, int],
    num_classes: int = 0,
    axis_name: str | None = None,
) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) named by config.model.name, built from config.model.

    `num_classes` > 0 makes both class-conditional; `axis_name` is the pmap axis that
    BatchNorm reduces over (None under jit, where the batch is already global).
    """
    check_config(model_config, image_shape)
    pair = MODELS.get(model_config.name)
    fixed = dict(image_shape=image_shape, num_classes=num_classes, axis_name=axis_name)
    return (
        from_config(pair.generator, model_config, **fixed),
        from_config(pair.discriminator, model_config, **fixed),
    )
