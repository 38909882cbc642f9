"""StyleGAN2 networks (Karras et al. 2020, config F; stylegan2-ada-pytorch's training/networks.py).

Generator = MappingNetwork (z -> w) + SynthesisNetwork (ws [B, num_ws, w_dim] -> image):
- mapping: pixel-norm of z (and of the class embedding when conditional), `mapping_layers`
  equalized dense layers with lr multiplier 0.01, LeakyReLU;
- synthesis: a learned constant 4x4 input, per resolution two modulated 3x3 convolutions
  with demodulation (the first upsampling by 2 through the [1, 3, 3, 1] FIR filter), noise
  inputs with a learned per-layer strength, and the "skip" architecture: an RGB output per
  resolution (1x1 modulated conv without demodulation), summed up through FIR upsampling.
Discriminator: "resnet" (residual blocks with a 1x1 FIR-downsampled skip, both halves scaled by
sqrt(0.5)) or "orig" (plain blocks, the CIFAR-10 preset), minibatch standard deviation, a 4x4
epilogue; conditional by projection onto a mapped class embedding.

The w average (for truncation), the noise keys, style mixing and the truncation itself are not
state of these modules: the train step keeps w_avg in its state and passes it, and the
functions `truncate` and `mix_styles` below are pure. Channels per resolution:
min(channel_base / res, channel_max) (config F: 32768 and 512). Images are NHWC float32 in
[-1, 1] (the generator's output is not squashed, as in the paper).
"""

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models.building import config_fields, from_config
from jaxgen.models.stylegan2_ops import (
    EqualConv,
    EqualDense,
    lrelu,
    modulated_conv2d,
    setup_filter,
    upsample2d,
)

NOISE_MODES = ("random", "const", "none")
ARCHITECTURES = ("resnet", "orig")
_CONST_NOISE_SEED = 0x51E  # noise_mode "const": the same noise for every call and run
_NOT_FROM_CONFIG = ("image_shape", "num_classes")  # from the data, not config.model


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    return min(channel_base // resolution, channel_max)


def log2_of(resolution: int) -> int:
    return int(round(math.log2(resolution)))


def num_ws_of(resolution: int) -> int:
    """ws the synthesis reads: 1 conv at 4x4, 2 per larger resolution, and the last toRGB."""
    return 2 * log2_of(resolution) - 2


def normalize_2nd_moment(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Pixel norm: x / sqrt(mean(x^2) + eps) over the features."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


class MappingNetwork(nn.Module):
    """z [B, z_dim] (and label [B] when num_classes > 0) -> w [B, w_dim]."""

    z_dim: int
    w_dim: int
    num_layers: int = 8
    num_classes: int = 0
    lr_multiplier: float = 0.01

    @nn.compact
    def __call__(self, z, label):
        parts = []
        if self.z_dim:
            parts.append(normalize_2nd_moment(z.astype(jnp.float32)))
        if self.num_classes:
            onehot = jax.nn.one_hot(label, self.num_classes, dtype=jnp.float32)
            parts.append(normalize_2nd_moment(EqualDense(self.w_dim, name="embed")(onehot)))
        x = jnp.concatenate(parts, axis=-1)
        for i in range(self.num_layers):
            x = EqualDense(
                self.w_dim, lr_multiplier=self.lr_multiplier, activation="lrelu", name=f"fc{i}"
            )(x)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ FIR upsampling), noise with learned strength, bias, LeakyReLU."""

    features: int
    up: int = 1
    fused: bool = True

    @nn.compact
    def __call__(self, x, w, noise):
        in_channels = x.shape[-1]
        styles = EqualDense(in_channels, bias_init=1.0, name="affine")(w)  # [B, Cin]
        weight = self.param(
            "weight", nn.initializers.normal(1.0), (3, 3, in_channels, self.features)
        )
        weight = weight / math.sqrt(in_channels * 9)
        x = modulated_conv2d(x, weight, styles, up=self.up, fused=self.fused)
        if noise is not None:  # [B or 1, H, W, 1]
            x = x + noise * self.param("noise_strength", nn.initializers.zeros, ())
        return lrelu(x + self.param("bias", nn.initializers.zeros, (self.features,)))


class ToRGB(nn.Module):
    """1x1 modulated conv to the image channels, without demodulation."""

    channels: int
    fused: bool = True

    @nn.compact
    def __call__(self, x, w):
        in_channels = x.shape[-1]
        styles = EqualDense(in_channels, bias_init=1.0, name="affine")(w) / math.sqrt(in_channels)
        weight = self.param(
            "weight", nn.initializers.normal(1.0), (1, 1, in_channels, self.channels)
        )
        x = modulated_conv2d(x, weight, styles, demodulate=False, fused=self.fused)
        return x + self.param("bias", nn.initializers.zeros, (self.channels,))


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> images [B, R, R, C] (skip architecture)."""

    resolution: int
    channels: int
    channel_base: int
    channel_max: int
    fused: bool = True

    @nn.compact
    def __call__(self, ws, rng, noise_mode: str = "random"):
        batch = ws.shape[0]
        filt = setup_filter()
        width = channels_at(4, self.channel_base, self.channel_max)
        const = self.param("const", nn.initializers.normal(1.0), (4, 4, width))
        x = jnp.broadcast_to(const, (batch, 4, 4, width))
        img = None
        w_index, layer = 0, 0
        for res_log2 in range(2, log2_of(self.resolution) + 1):
            res = 2**res_log2
            width = channels_at(res, self.channel_base, self.channel_max)
            for up in (1,) if res == 4 else (2, 1):
                noise = _noise(rng, layer, noise_mode, batch, res)
                x = SynthesisLayer(width, up=up, fused=self.fused, name=f"b{res}_conv{layer}")(
                    x, ws[:, w_index], noise
                )
                w_index, layer = w_index + 1, layer + 1
            # toRGB reads the w of the next block's first conv (the last one reads its own).
            y = ToRGB(self.channels, fused=self.fused, name=f"b{res}_torgb")(x, ws[:, w_index])
            img = y if img is None else upsample2d(img, filt) + y
        return img


def _noise(rng, layer: int, noise_mode: str, batch: int, res: int):
    if noise_mode == "none":
        return None
    if noise_mode == "const":  # one fixed image per layer, shared by the batch
        return jax.random.normal(jax.random.PRNGKey(_CONST_NOISE_SEED + layer), (1, res, res, 1))
    return jax.random.normal(jax.random.fold_in(rng, layer), (batch, res, res, 1))


class Generator(nn.Module):
    """mapping(z, label) -> w [B, w_dim]; synthesis(ws, rng, noise_mode) -> images."""

    image_shape: tuple[int, int, int]
    resolution: int
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    channel_base: int = 32768
    channel_max: int = 512
    num_classes: int = 0
    fused_modconv: bool = True

    def setup(self):
        self.mapping_network = MappingNetwork(
            self.z_dim,
            self.w_dim,
            self.mapping_layers,
            self.num_classes,
            self.mapping_lr_multiplier,
        )
        self.synthesis_network = SynthesisNetwork(
            self.resolution,
            self.image_shape[-1],
            self.channel_base,
            self.channel_max,
            self.fused_modconv,
        )

    @property
    def num_ws(self) -> int:
        return num_ws_of(self.resolution)

    def mapping(self, z, label):
        return self.mapping_network(z, label)

    def synthesis(self, ws, rng, noise_mode: str = "random"):
        return self.synthesis_network(ws, rng, noise_mode)

    def __call__(self, z, label, rng, noise_mode: str = "random"):
        w = self.mapping(z, label)
        return self.synthesis(broadcast_ws(w, self.num_ws), rng, noise_mode)


def broadcast_ws(w: jax.Array, num_ws: int) -> jax.Array:
    """w [B, w_dim] -> ws [B, num_ws, w_dim]: the same w for every layer."""
    return jnp.broadcast_to(w[:, None], (w.shape[0], num_ws, w.shape[-1]))


def truncate(ws: jax.Array, w_avg: jax.Array, psi: float, cutoff: int | None = None) -> jax.Array:
    """The truncation trick in W: w_avg + psi (w - w_avg) on the first `cutoff` ws (all: None)."""
    truncated = w_avg + psi * (ws - w_avg)
    if cutoff is None:
        return truncated
    layer = jnp.arange(ws.shape[1])[None, :, None]
    return jnp.where(layer < cutoff, truncated, ws)


def mix_styles(ws: jax.Array, ws_other: jax.Array, cutoff: jax.Array) -> jax.Array:
    """Style mixing: ws up to layer `cutoff` (exclusive), ws_other from it on; cutoff [] or [B]."""
    layer = jnp.arange(ws.shape[1])[None, :, None]
    cutoff = jnp.reshape(cutoff, (-1, 1, 1))
    return jnp.where(layer < cutoff, ws, ws_other)


def minibatch_std(x: jax.Array, group_size: int) -> jax.Array:
    """Appends one feature map: the std over groups of `group_size` examples (examples g, g + n,
    ... share a group, as in stylegan2-ada), averaged over the features and pixels."""
    batch, height, width, channels = x.shape
    group = min(group_size, batch)
    y = x.reshape(group, batch // group, height, width, channels)
    y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # [n, H, W, C]
    y = jnp.mean(y, axis=(1, 2, 3))  # [n]
    y = jnp.tile(y, group)[:, None, None, None]  # [B, 1, 1, 1]: example i gets group i mod n
    return jnp.concatenate([x, jnp.broadcast_to(y, (batch, height, width, 1))], axis=-1)


class Discriminator(nn.Module):
    """images [B, R, R, C] (and label [B]) -> logits [B]."""

    image_shape: tuple[int, int, int]
    resolution: int
    channel_base: int = 32768
    channel_max: int = 512
    architecture: str = "resnet"
    mbstd_group_size: int = 4
    num_classes: int = 0
    cmap_dim: int = 0  # 0: the channels at 4x4
    mapping_layers: int = 8

    @nn.compact
    def __call__(self, x, label):
        channels = lambda res: channels_at(res, self.channel_base, self.channel_max)  # noqa: E731
        top = self.resolution
        x = EqualConv(channels(top), kernel_size=1, activation="lrelu", name="fromrgb")(x)
        res = top
        while res > 4:
            out = channels(res // 2)
            gain = math.sqrt(0.5) if self.architecture == "resnet" else 1.0
            h = EqualConv(channels(res), activation="lrelu", name=f"b{res}_conv0")(x)
            h = EqualConv(out, down=2, activation="lrelu", gain=gain, name=f"b{res}_conv1")(h)
            if self.architecture == "resnet":
                skip = EqualConv(
                    out, kernel_size=1, bias=False, down=2, gain=gain, name=f"b{res}_skip"
                )
                h = skip(x) + h
            x, res = h, res // 2
        width = channels(4)
        if self.mbstd_group_size:
            x = minibatch_std(x, self.mbstd_group_size)
        x = EqualConv(width, activation="lrelu", name="b4_conv")(x)
        x = EqualDense(width, activation="lrelu", name="b4_fc")(x.reshape(x.shape[0], -1))
        if not self.num_classes:
            return EqualDense(1, name="b4_out")(x)[:, 0]
        cmap_dim = self.cmap_dim or width
        cmap = MappingNetwork(0, cmap_dim, self.mapping_layers, self.num_classes, name="mapping")(
            None, label
        )
        out = EqualDense(cmap_dim, name="b4_out")(x)
        return jnp.sum(out * cmap, axis=-1) / math.sqrt(cmap_dim)  # projection


class Networks(NamedTuple):
    generator: Generator
    discriminator: Discriminator


def check_config(model_config: ConfigDict, image_shape: tuple[int, ...]) -> None:
    """A one-line ConfigError naming the config.model field that cannot build these networks."""
    fields = {"conditional"} | set(config_fields(Generator, fixed=_NOT_FROM_CONFIG))
    for field in sorted(fields | set(config_fields(Discriminator, fixed=_NOT_FROM_CONFIG))):
        if field not in model_config:
            raise ConfigError(f"config.model.{field}: missing; the stylegan2 networks need it")
    res = model_config.resolution
    if not isinstance(res, int) or res < 4 or res & (res - 1):
        raise ConfigError(f"config.model.resolution: must be a power of 2 >= 4, got {res}")
    if len(image_shape) != 3 or image_shape[0] != image_shape[1] or image_shape[0] > res:
        raise ConfigError(
            f"config.model.resolution: {res} cannot hold the data's {image_shape} images "
            "(square, at most the resolution; smaller ones are padded)"
        )
    if (res - image_shape[0]) % 2:
        raise ConfigError(
            f"config.model.resolution: {res} - {image_shape[0]} must be even (equal padding)"
        )
    if model_config.architecture not in ARCHITECTURES:
        raise ConfigError(
            f"config.model.architecture: {model_config.architecture!r} is not one of "
            f"{', '.join(ARCHITECTURES)}"
        )
    for field in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max"):
        if not model_config[field] >= 1:
            raise ConfigError(f"config.model.{field}: must be >= 1, got {model_config[field]}")
    if model_config.channel_base // res < 1:
        raise ConfigError(
            f"config.model.channel_base: {model_config.channel_base} gives 0 channels at {res}px"
        )
    if model_config.mbstd_group_size < 0:
        raise ConfigError(
            f"config.model.mbstd_group_size: must be >= 0, got {model_config.mbstd_group_size}"
        )


def make_networks(
    model_config: ConfigDict, image_shape: tuple[int, int, int], num_classes: int = 0
) -> Networks:
    """(generator, discriminator) built from config.model; conditional when num_classes > 0."""
    check_config(model_config, image_shape)
    fixed = dict(image_shape=tuple(image_shape), num_classes=num_classes)
    return Networks(
        from_config(Generator, model_config, **fixed),
        from_config(Discriminator, model_config, **fixed),
    )
