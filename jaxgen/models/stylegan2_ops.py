"""StyleGAN2's building blocks: FIR resampling, modulated convolution, equalized learning rate.

Semantics follow NVlabs/stylegan2-ada-pytorch (torch_utils/ops/upfirdn2d.py,
conv2d_resample.py and training/networks.py), written for NHWC arrays:
- upfirdn2d: upsample by zero insertion, pad (negative pads crop), convolve with a 2-D FIR
  filter, keep every `down`-th pixel. The filter [1, 3, 3, 1] is made 2-D as the outer
  product normalised to sum 1; upsampling multiplies it by up^2 so that a constant image
  keeps its value.
- equalized learning rate (Karras et al. 2018, "Progressive Growing of GANs", 4.1): params are
  stored N(0, 1) / lr_multiplier and scaled at run time by lr_multiplier / sqrt(fan_in), so
  Adam's step is the same relative size for every layer (and 100x smaller for the mapping
  network's lr_multiplier 0.01).
- modulated convolution (Karras et al. 2020, "Analyzing and Improving the Image Quality of
  StyleGAN", eq. 1-3): the weights are scaled per input channel by the sample's style and,
  with demodulation, each output channel is renormalised to unit expected norm. Two paths give
  the same numbers: one grouped convolution with a weight per sample (`fused=True`), or
  scaling the activations before and after one shared convolution (`fused=False`).

Left out: the fp16 paths and conv_clamp, and the weight flips that matter only to load the
publisher's weights (our convolutions are correlations: with trained-from-scratch weights a
flip is a relabelling).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SQRT2 = math.sqrt(2.0)
DEFAULT_FILTER = (1, 3, 3, 1)


def setup_filter(taps=DEFAULT_FILTER) -> np.ndarray:
    """The 2-D FIR filter [k, k]: the outer product of `taps`, normalised to sum 1."""
    f = np.asarray(taps, np.float32)
    f = np.outer(f, f)
    return f / f.sum()


def upfirdn2d(
    x: jax.Array,
    f: np.ndarray,
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> jax.Array:
    """Upsample, pad, FIR-filter, downsample x [B, H, W, C] (upfirdn2d of stylegan2-ada).

    padding = (x_before, x_after, y_before, y_after) in upsampled pixels; negative crops.
    The filter is applied as a true convolution (flipped), per channel.
    """
    batch, height, width, channels = x.shape
    if up > 1:  # zero insertion: each pixel followed by up - 1 zeros, in both directions
        x = x.reshape(batch, height, 1, width, 1, channels)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, up - 1), (0, 0), (0, up - 1), (0, 0)))
        x = x.reshape(batch, height * up, width * up, channels)
    px0, px1, py0, py1 = padding
    x = jnp.pad(x, ((0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0)), (0, 0)))
    x = x[:, max(-py0, 0) : x.shape[1] - max(-py1, 0), max(-px0, 0) : x.shape[2] - max(-px1, 0)]
    kernel = jnp.asarray(f[::-1, ::-1] * gain, x.dtype)  # flipped: convolution, not correlation
    kernel = jnp.tile(kernel[:, :, None, None], (1, 1, 1, channels))  # [kh, kw, 1, C] depthwise
    x = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(down, down),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )
    return x


def upsample2d(x: jax.Array, f: np.ndarray, up: int = 2) -> jax.Array:
    """x [B, H, W, C] -> [B, up H, up W, C] through the FIR filter, gain up^2."""
    k = f.shape[0]
    p0, p1 = (k + up - 1) // 2, (k - up) // 2
    return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up**2)


def downsample2d(x: jax.Array, f: np.ndarray, down: int = 2) -> jax.Array:
    """x [B, H, W, C] -> [B, H / down, W / down, C] through the FIR filter."""
    k = f.shape[0]
    p0, p1 = (k - down + 1) // 2, (k - down) // 2
    return upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1))


def _conv(x, w, stride=1, groups=1):
    """VALID correlation, x [B, H, W, Cin], w [kh, kw, Cin / groups, Cout]."""
    return jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=(stride, stride),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def conv2d_resample(
    x: jax.Array, w: jax.Array, f: np.ndarray, up: int = 1, down: int = 1, groups: int = 1
) -> jax.Array:
    """A 'same' convolution x [B, H, W, Cin] * w [k, k, Cin / groups, Cout] with FIR up- or
    downsampling by 2 (conv2d_resample of stylegan2-ada, padding k // 2).

    up: zero insertion + FIR (gain 4), then the convolution, as the publisher's reference path
    (its transposed-convolution fast path is the same linear map). down: FIR, then a strided
    convolution; a 1x1 kernel is applied after the FIR downsampling.
    """
    k = w.shape[0]
    pad = k // 2
    fk = f.shape[0]
    if up > 1:
        p0, p1 = pad + (fk + up - 1) // 2, pad + (fk - up) // 2
        x = upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up**2)
        return _conv(x, w, groups=groups)
    if down > 1:
        p0, p1 = pad + (fk - down + 1) // 2, pad + (fk - down) // 2
        if k == 1:
            return _conv(upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1)), w, groups=groups)
        x = upfirdn2d(x, f, padding=(p0, p1, p0, p1))
        return _conv(x, w, stride=down, groups=groups)
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return _conv(x, w, groups=groups)


def modulated_conv2d(
    x: jax.Array,
    weight: jax.Array,
    styles: jax.Array,
    *,
    demodulate: bool = True,
    up: int = 1,
    f: np.ndarray | None = None,
    fused: bool = True,
) -> jax.Array:
    """Modulated convolution of x [B, H, W, Cin] with weight [k, k, Cin, Cout] (already
    multiplied by its equalized-lr gain) and per-sample styles [B, Cin].

    w'_b = weight * s_b (per input channel); with demodulation each output channel is divided
    by sqrt(sum over k, k, Cin of w'_b^2 + 1e-8). fused=True: one grouped convolution with the
    B weights w'_b; fused=False: (x * s_b) convolved with the shared weight, times the
    demodulation coefficients: the same linear map.
    """
    batch, _, _, in_channels = x.shape
    k, _, _, out_channels = weight.shape
    f = setup_filter() if f is None else f
    w = weight[None] * styles[:, None, None, :, None]  # [B, k, k, Cin, Cout]
    if demodulate:
        dcoefs = jax.lax.rsqrt(jnp.sum(jnp.square(w), axis=(1, 2, 3)) + 1e-8)  # [B, Cout]
    if not fused:
        x = x * styles[:, None, None, :]
        x = conv2d_resample(x, weight, f, up=up)
        return x * dcoefs[:, None, None, :] if demodulate else x
    if demodulate:
        w = w * dcoefs[:, None, None, None, :]
    # Batch folded into channels: [1, H, W, B * Cin] against [k, k, Cin, B * Cout], B groups.
    x = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, x.shape[1], x.shape[2], batch * in_channels)
    w = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(k, k, in_channels, batch * out_channels)
    x = conv2d_resample(x, w, f, up=up, groups=batch)  # [1, H', W', B * Cout]
    x = x.reshape(x.shape[1], x.shape[2], batch, out_channels)
    return jnp.transpose(x, (2, 0, 1, 3))


def lrelu(x: jax.Array, gain: float = SQRT2) -> jax.Array:
    """Leaky ReLU 0.2 times sqrt(2), StyleGAN's activation (it keeps the signal's scale)."""
    return jax.nn.leaky_relu(x, 0.2) * gain


class EqualDense(nn.Module):
    """A dense layer with equalized learning rate (stylegan2-ada's FullyConnectedLayer).

    Stored weight [in, out] ~ N(0, 1) / lr_multiplier, used times lr_multiplier / sqrt(in);
    stored bias = bias_init, used times lr_multiplier. activation: "linear" or "lrelu".
    """

    features: int
    bias: bool = True
    bias_init: float = 0.0
    lr_multiplier: float = 1.0
    activation: str = "linear"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        lr = self.lr_multiplier
        weight = self.param(
            "weight",
            lambda rng, shape: jax.random.normal(rng, shape) / lr,
            (in_features, self.features),
        )
        y = x @ (weight * (lr / math.sqrt(in_features)))
        if self.bias:
            b = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
            y = y + b * lr
        return lrelu(y) if self.activation == "lrelu" else y


class EqualConv(nn.Module):
    """A 'same' convolution with equalized learning rate and optional FIR resampling
    (stylegan2-ada's Conv2dLayer). `gain` multiplies the output after the activation (the
    residual discriminator's sqrt(0.5))."""

    features: int
    kernel_size: int = 3
    bias: bool = True
    up: int = 1
    down: int = 1
    activation: str = "linear"
    gain: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_channels, k = x.shape[-1], self.kernel_size
        weight = self.param(
            "weight", nn.initializers.normal(1.0), (k, k, in_channels, self.features)
        )
        w = weight * (1.0 / math.sqrt(in_channels * k * k))
        y = conv2d_resample(x, w, setup_filter(), up=self.up, down=self.down)
        if self.bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        y = lrelu(y) if self.activation == "lrelu" else y
        return y * self.gain if self.gain != 1.0 else y
