"""The blocks Stable Diffusion's U-Net and VAE share, computing what diffusers' blocks compute.

    h = ResnetBlock(out_channels, groups, eps)(x [B, H, W, C], temb [B, T] or None)
    h = Attention(heads, upcast=...)(x [B, N, C], context [B, L, D] or None)

NHWC throughout (diffusers is NCHW); each submodule is named as diffusers names it, with a
list index joined by "_" (resnets.0 -> resnets_0, to_out.0 -> to_out_0), so that the converter
(models/sd_pretrained.py) maps a diffusers weight name to our param path mechanically. The
epsilons are diffusers': GroupNorm 1e-5 in the U-Net's ResNets (its norm_eps), 1e-6 in the
transformer blocks' GroupNorm and throughout the VAE, LayerNorm 1e-5. Flax's defaults (1e-6)
are never relied on. Left out: the options SD 1.x/2.x checkpoints never use (scale-shift time
norm, spatial norm, dropout at inference, attention processors other than plain SDPA).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def group_norm(groups: int, eps: float, dtype: Dtype, name: str) -> nn.GroupNorm:
    """torch.nn.GroupNorm: statistics in float32 with the two-pass variance."""
    return nn.GroupNorm(groups, epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


def conv(features: int, kernel: int, dtype: Dtype, name: str, stride: int = 1, padding=None):
    """torch.nn.Conv2d(padding=kernel // 2) unless `padding` ((top, bottom), (left, right))."""
    pad = kernel // 2
    padding = ((pad, pad), (pad, pad)) if padding is None else padding
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding, dtype=dtype, name=name)


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """F.interpolate(mode="nearest") of x [B, H, W, C] to size: source index floor(i * H / h)."""
    rows = (jnp.arange(size[0]) * x.shape[1]) // size[0]
    cols = (jnp.arange(size[1]) * x.shape[2]) // size[1]
    return x[:, rows][:, :, cols]


class ResnetBlock(nn.Module):
    """diffusers' ResnetBlock2D (time_embedding_norm "default", output_scale_factor 1)."""

    out_channels: int
    groups: int
    eps: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm1")(x))
        h = conv(self.out_channels, 3, self.dtype, "conv1")(h)
        if temb is not None:
            proj = nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")
            h = h + proj(nn.silu(temb))[:, None, None, :]
        h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm2")(h))
        h = conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        return x + h


class Downsample(nn.Module):
    """Downsample2D: a stride-2 3x3 conv, padded 1 all round (U-Net) or (0, 1) (VAE encoder)."""

    channels: int
    asymmetric: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        padding = ((0, 1), (0, 1)) if self.asymmetric else ((1, 1), (1, 1))
        return conv(self.channels, 3, self.dtype, "conv", stride=2, padding=padding)(x)


class Upsample(nn.Module):
    """Upsample2D: nearest-neighbour to `size` (twice the input's by default), then a 3x3 conv."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
        size = (2 * x.shape[1], 2 * x.shape[2]) if size is None else size
        return conv(self.channels, 3, self.dtype, "conv")(resize_nearest(x, size))


class Attention(nn.Module):
    """diffusers' Attention: to_q/to_k/to_v (biases only if qkv_bias), to_out.0, softmax scaled by
    head_dim ** -0.5, through jax.nn.dot_product_attention. upcast: q, k and v in float32 (SD 2.1's
    upcast_attention, which keeps fp16 logits from overflowing)."""

    heads: int
    qkv_bias: bool = False
    upcast: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        context = x if context is None else context.astype(self.dtype)
        b, n, channels = x.shape
        head_dim = channels // self.heads

        def project(name, source):  # [B, T, heads, head_dim]
            dense = nn.Dense(channels, use_bias=self.qkv_bias, dtype=self.dtype, name=name)
            return dense(source).reshape(b, source.shape[1], self.heads, head_dim)

        q, k, v = project("to_q", x), project("to_k", context), project("to_v", context)
        if self.upcast:
            q, k, v = (a.astype(jnp.float32) for a in (q, k, v))
        h = jax.nn.dot_product_attention(q, k, v).astype(self.dtype).reshape(b, n, channels)
        return nn.Dense(channels, dtype=self.dtype, name="to_out_0")(h)


class GEGLU(nn.Module):
    """diffusers' GEGLU: proj to 2 * inner, value * gelu(gate) with the exact (erf) GELU."""

    inner: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        value, gate = jnp.split(nn.Dense(2 * self.inner, dtype=self.dtype, name="proj")(x), 2, -1)
        return value * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """net.0 = GEGLU(dim -> 4 dim), net.2 = Linear(4 dim -> dim) (net.1 is dropout)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = GEGLU(4 * x.shape[-1], self.dtype, name="net_0")(x)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="net_2")(h)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention to the text, GEGLU feed-forward."""

    heads: int
    upcast: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        def norm(name):
            return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)

        x = x + Attention(self.heads, upcast=self.upcast, dtype=self.dtype, name="attn1")(
            norm("norm1")(x)
        )
        x = x + Attention(self.heads, upcast=self.upcast, dtype=self.dtype, name="attn2")(
            norm("norm2")(x), context
        )
        return x + FeedForward(self.dtype, name="ff")(norm("norm3")(x))
