"""NumPy transcriptions of the layers that independent model references are built from (float64,
written from the papers' definitions, never calling jaxgen)."""

import numpy as np


def numpy_conv(x, p, stride=1):
    """Flax/TF "SAME" cross-correlation: out = ceil(in / stride), the padding's odd pixel at the
    end (LDM's Downsample pads (0, 1) before its stride-2 conv: the same)."""
    kernel, bias = p["kernel"], p["bias"]
    k = kernel.shape[0]
    batch, height, width, _ = x.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + k - height, 0)
    pad_w = max((out_w - 1) * stride + k - width, 0)
    x = np.pad(
        x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    out = np.zeros((batch, out_h, out_w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            window = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
            out += np.einsum("bhwc,cd->bhwd", window, kernel[i, j])
    return out + bias


def numpy_group_norm(x, p, groups):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + 1e-6)).reshape(x.shape) * p["scale"] + p["bias"]


def numpy_swish(x):
    return x / (1 + np.exp(-x))


def numpy_layer_norm(x, p, epsilon=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * p["scale"] + p["bias"]


def numpy_gelu_tanh(x):
    """GELU's tanh approximation (Hendrycks & Gimpel 2016), Flax's nn.gelu default."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def numpy_softmax_attention(q, k, v, mask):
    """q [B, T, H, d], k, v [B, S, H, d], mask [B or 1, T, S] bool -> [B, T, H, d]."""
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask[:, None], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", weights, v)
