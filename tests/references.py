"""NumPy transcriptions of the layers that independent model references are built from (float64,
written from the papers' definitions, never calling jaxgen)."""

import jax
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


class NumpyUNet:
    """Ho et al.'s U-Net (appendix B; the reference code's model.py) in NumPy, walking the
    Flax parameter tree in creation order: the sinusoidal timestep embedding through a 2-layer
    SiLU MLP (+ the label embedding), a 3x3 stem; per level ResBlocks (GroupNorm, SiLU, conv,
    + Dense(SiLU(temb)), GroupNorm, SiLU, conv, 1x1 shortcut when widths change) with
    single-head attention at the listed resolutions and a stride-2 conv; res-attn-res; the
    mirrored decoder over skip connections with nearest 2x upsampling; GroupNorm, SiLU, conv."""

    def __init__(self, params, channels, multipliers, num_res_blocks, attention, groups):
        self.p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        self.channels, self.multipliers = channels, multipliers
        self.num_res_blocks, self.attention, self.groups = num_res_blocks, attention, groups
        self.counts = {}

    def take(self, kind):
        index = self.counts.get(kind, 0)
        self.counts[kind] = index + 1
        return self.p[f"{kind}_{index}"]

    def res(self, x, temb):
        p = self.take("ResBlock")
        h = numpy_conv(numpy_swish(numpy_group_norm(x, p["GroupNorm_0"], self.groups)), p["Conv_0"])
        h = h + (numpy_swish(temb) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])[:, None, None]
        h = numpy_conv(numpy_swish(numpy_group_norm(h, p["GroupNorm_1"], self.groups)), p["Conv_1"])
        return (numpy_conv(x, p["Conv_2"]) if "Conv_2" in p else x) + h

    def attend(self, x):
        p = self.take("AttentionBlock")
        b, height, width, c = x.shape
        h = numpy_group_norm(x, p["GroupNorm_0"], self.groups).reshape(b, height * width, 1, c)
        q, k, v = (h @ p[name]["kernel"] + p[name]["bias"] for name in ("q", "k", "v"))
        h = numpy_softmax_attention(q, k, v, np.ones((1, height * width, height * width), bool))
        return x + (h @ p["proj"]["kernel"] + p["proj"]["bias"]).reshape(x.shape)

    def __call__(self, x, t, label):
        half = self.channels // 2
        frequencies = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))
        angles = t[:, None] * frequencies[None]
        temb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
        d0, d1 = self.take("Dense"), self.take("Dense")
        temb = numpy_swish(temb @ d0["kernel"] + d0["bias"]) @ d1["kernel"] + d1["bias"]
        temb = temb + self.take("Embed")["embedding"][label]
        h = numpy_conv(x, self.take("Conv"))
        skips = [h]
        for level in range(len(self.multipliers)):
            for _ in range(self.num_res_blocks):
                h = self.res(h, temb)
                h = self.attend(h) if h.shape[1] in self.attention else h
                skips.append(h)
            if level != len(self.multipliers) - 1:
                h = numpy_conv(h, self.take("Conv"), stride=2)
                skips.append(h)
        h = self.res(self.attend(self.res(h, temb)), temb)
        for level in reversed(range(len(self.multipliers))):
            for _ in range(self.num_res_blocks + 1):
                h = self.res(np.concatenate([h, skips.pop()], axis=-1), temb)
                h = self.attend(h) if h.shape[1] in self.attention else h
            if level != 0:
                h = numpy_conv(h.repeat(2, axis=1).repeat(2, axis=2), self.take("Conv"))
        h = numpy_swish(numpy_group_norm(h, self.take("GroupNorm"), self.groups))
        return numpy_conv(h, self.take("Conv"))


def numpy_nearest_resize(x, height, width):
    """Nearest-neighbour resize with half-pixel centres (jax.image.resize "nearest")."""
    rows = np.floor((np.arange(height) + 0.5) * x.shape[1] / height).astype(int)
    cols = np.floor((np.arange(width) + 0.5) * x.shape[2] / width).astype(int)
    return x[:, rows][:, :, cols]


class NumpyLatentUNet(NumpyUNet):
    """Stable Diffusion's U-Net at a small size (ldm/modules/diffusionmodules/openaimodel.py,
    ldm/modules/attention.py): NumpyUNet's ResBlocks and path, with a SpatialTransformer after
    the ResBlocks at the listed resolutions and in the middle: GroupNorm, a linear projection
    to tokens, self-attention, cross-attention to the context, a GEGLU feed-forward (each
    pre-LayerNorm, residual, attention without biases on q, k, v), a linear projection back, a
    residual. Upsampling resizes to the skip connection's size."""

    def __init__(self, params, channels, multipliers, num_res_blocks, attention, groups, heads):
        super().__init__(params, channels, multipliers, num_res_blocks, attention, groups)
        self.heads = heads

    def cross_attention(self, p, x, context):
        b, n, c = x.shape
        q = (x @ p["q"]["kernel"]).reshape(b, n, self.heads, -1)
        k, v = (
            (context @ p[name]["kernel"]).reshape(b, len(context[0]), self.heads, -1)
            for name in "kv"
        )
        h = numpy_softmax_attention(q, k, v, np.ones((1, n, k.shape[1]), bool)).reshape(b, n, c)
        return h @ p["out"]["kernel"] + p["out"]["bias"]

    def transformer(self, x, context):
        p = self.take("SpatialTransformer")
        b, height, width, c = x.shape
        h = numpy_group_norm(x, p["GroupNorm_0"], self.groups)
        h = (h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]).reshape(b, height * width, c)
        h = h + self.cross_attention(
            p["CrossAttention_0"], *[numpy_layer_norm(h, p["LayerNorm_0"])] * 2
        )
        h = h + self.cross_attention(
            p["CrossAttention_1"], numpy_layer_norm(h, p["LayerNorm_1"]), context
        )
        projected = (
            numpy_layer_norm(h, p["LayerNorm_2"]) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
        )
        gate, value = np.split(projected, 2, axis=-1)
        h = h + (value * numpy_gelu_tanh(gate)) @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
        h = h @ p["Dense_3"]["kernel"] + p["Dense_3"]["bias"]
        return x + h.reshape(x.shape)

    def __call__(self, x, t, context):
        half = self.channels // 2
        frequencies = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))
        angles = t[:, None] * frequencies[None]
        temb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
        d0, d1 = self.take("Dense"), self.take("Dense")
        temb = numpy_swish(temb @ d0["kernel"] + d0["bias"]) @ d1["kernel"] + d1["bias"]

        def attend(h):
            return self.transformer(h, context) if h.shape[1] in self.attention else h

        h = numpy_conv(x, self.take("Conv"))
        skips = [h]
        for level in range(len(self.multipliers)):
            for _ in range(self.num_res_blocks):
                h = attend(self.res(h, temb))
                skips.append(h)
            if level != len(self.multipliers) - 1:
                h = numpy_conv(h, self.take("Conv"), stride=2)
                skips.append(h)
        h = self.res(self.transformer(self.res(h, temb), context), temb)
        for level in reversed(range(len(self.multipliers))):
            for _ in range(self.num_res_blocks + 1):
                h = attend(self.res(np.concatenate([h, skips.pop()], axis=-1), temb))
            if level != 0:
                h = numpy_nearest_resize(h, *skips[-1].shape[1:3])
                h = numpy_conv(h, self.take("Conv"))
        h = numpy_swish(numpy_group_norm(h, self.take("GroupNorm"), self.groups))
        return numpy_conv(h, self.take("Conv"))


def numpy_conv_transpose(x, p, stride=2):
    """Flax's ConvTranspose with "SAME" padding (lax.conv_transpose, kernel not flipped): the
    input dilated by `stride` (zeros between pixels), padded (a, b), a k x k cross-correlation;
    out = stride * in. a = k - 1 if stride > k - 1 else ceil((k + stride - 2) / 2)."""
    kernel = p["kernel"]
    k = kernel.shape[0]
    batch, height, width, channels = x.shape
    total = k + stride - 2
    before = k - 1 if stride > k - 1 else -(-total // 2)
    dilated = np.zeros((batch, stride * (height - 1) + 1, stride * (width - 1) + 1, channels))
    dilated[:, ::stride, ::stride] = x
    padded = np.pad(dilated, ((0, 0), (before, total - before), (before, total - before), (0, 0)))
    out = np.zeros((batch, stride * height, stride * width, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            window = padded[:, i : i + stride * height, j : j + stride * width]
            out += np.einsum("bhwc,cd->bhwd", window, kernel[i, j])
    return out + p.get("bias", 0.0)


def numpy_batch_norm_inference(x, params, stats, epsilon=1e-5):
    """BatchNorm with the running statistics (Ioffe & Szegedy 2015, the inference form)."""
    scaled = (x - stats["mean"]) / np.sqrt(stats["var"] + epsilon)
    return scaled * params["scale"] + params["bias"]
