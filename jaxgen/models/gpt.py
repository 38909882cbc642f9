"""GPT-2 (Radford et al. 2019) as a Flax Linen module, with a fixed-shape KV cache for decoding.

    model = make_model(config.model, vocab_size)
    logits = model.apply({"params": params}, tokens)                     # [B, T, V], training
    cache = init_cache(config.model, batch_size, max_len)                # zeros, fixed shape
    logits, cache = model.apply({"params": params}, tokens, cache=cache)  # append T tokens

Pre-LayerNorm blocks, causal multi-head attention, a 4x GELU MLP, a final LayerNorm and an output
head tied to the token embedding; learned absolute positions (GPT-2) or rotary ones (Su et al.
2021). Initialisation follows GPT-2 / nanoGPT: N(0, 0.02) everywhere, residual output projections
N(0, 0.02 / sqrt(2 * num_layers)), zero biases.

Attention goes through `jax.nn.dot_product_attention` (cuDNN flash kernels on GPU in bf16, XLA
elsewhere) or, on CPU and with "einsum", the explicit softmax (the same maths; on CPU 0.93x the
step time of the XLA path, benchmarks/README.md). The q/k/v and output projections keep
DenseGeneral's parameters but run as 2-D dots (FlatDense). Attention dropout, which that
function does not do, uses the explicit softmax path; nanoGPT applies it too (`dropout_p` of
its flash call), so dropout > 0 trains the same model.

Decoding with a cache: rows may be left-padded (prompts of different lengths in one batch);
`cache.start[b]` is the first real slot of row b, positions count from there and keys before it
are masked out. Not here: the loss (losses/gpt.py) and decoding (sampling/gpt.py, decoding.py).
"""

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models.building import from_config

POSITIONS = ("learned", "rope")
ATTENTION = ("auto", "xla", "cudnn", "einsum")


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer for `max_len` slots, filled up to `length`.

    keys, values: [num_layers, B, max_len, heads, head_dim]; length: int32 scalar (slots written,
    the same for every row); start: int32 [B], the first real (non-padding) slot of each row.
    """

    keys: jax.Array
    values: jax.Array
    length: jax.Array
    start: jax.Array


def init_cache(
    model_config: ConfigDict, batch_size: int, max_len: int, start: jax.Array | None = None
) -> KVCache:
    """An empty cache; `start` [B] is the number of left-padding slots of each row (default 0)."""
    head_dim = model_config.width // model_config.num_heads
    shape = (model_config.num_layers, batch_size, max_len, model_config.num_heads, head_dim)
    dtype = jnp.dtype(model_config.dtype)
    if start is None:
        start = jnp.zeros((batch_size,), jnp.int32)
    return KVCache(
        keys=jnp.zeros(shape, dtype),
        values=jnp.zeros(shape, dtype),
        length=jnp.zeros((), jnp.int32),
        start=jnp.asarray(start, jnp.int32),
    )


def rotate(x: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotary embedding of x [B, T, heads, head_dim] at integer positions [B, T] (Su et al.)."""
    half = x.shape[-1] // 2
    freq = 1.0 / (10_000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))  # [half]
    angle = positions[..., None].astype(jnp.float32) * freq  # [B, T, half]
    sin, cos = jnp.sin(angle)[:, :, None], jnp.cos(angle)[:, :, None]  # [B, T, 1, half]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _attention_impl(choice: str, dtype: Any) -> str | None:
    """The implementation of `choice`; for "auto", cuDNN's flash kernels on GPU in bf16/fp16,
    the explicit softmax on CPU (0.93x the step time of XLA's path for the GPT :cpu config,
    benchmarks/README.md), else XLA."""
    if choice == "auto":
        backend = jax.default_backend()
        if backend == "cpu":
            return "einsum"
        fast = backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
        return "cudnn" if fast else "xla"
    return choice


class FlatDense(nn.Module):
    """nn.DenseGeneral over the last `in_dims` axes, with its parameters (shapes, names and
    initialisation, bit for bit), computed as one 2-D dot [rows, in] x [in, out] and returned
    2-D. On CPU a plain 2-D dot and its weight gradient skip the transposed copies of the n-D
    form, and slicing its output (q, k, v) transposes to a concatenation, not pads and adds
    of the whole tensor (benchmarks/README.md)."""

    features: tuple[int, ...]
    in_dims: int = 1
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[x.ndim - self.in_dims :]
        fan_in, fan_out = math.prod(in_shape), math.prod(self.features)

        def kernel_init(rng, shape, dtype):  # DenseGeneral draws the flat [in, out] matrix
            return self.kernel_init(rng, (fan_in, fan_out), dtype).reshape(shape)

        kernel = self.param("kernel", kernel_init, in_shape + self.features, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, self.features, self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = x.reshape(-1, fan_in) @ kernel.reshape(fan_in, fan_out)
        return y if bias is None else y + bias.reshape(fan_out)


class CausalSelfAttention(nn.Module):
    num_heads: int
    num_layers: int
    dropout: float
    bias: bool
    position: str
    attention: str
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x, positions, mask, train: bool, cache_kv=None):
        """x [B, T, C]; positions [B, T]; mask [B, 1, T, S] bool or None (plain causal).

        cache_kv: None, or (keys, values, length) of this layer: the T new keys are written at
        slots length .. length + T - 1 and attention runs over all max_len slots.
        Returns (y [B, T, C], (keys, values) or None).
        """
        batch, steps, width = x.shape
        head_dim = width // self.num_heads
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.bias)
        qkv = FlatDense(
            (3, self.num_heads, head_dim),
            kernel_init=nn.initializers.normal(0.02),
            name="qkv",
            **dense,
        )(x)  # [B * T, 3 * C]
        query, key, value = (
            part.reshape(batch, steps, self.num_heads, head_dim)
            for part in jnp.split(qkv, 3, axis=-1)
        )
        if self.position == "rope":
            query, key = rotate(query, positions), rotate(key, positions)

        new_kv = None
        if cache_kv is not None:
            keys, values, length = cache_kv
            keys = jax.lax.dynamic_update_slice_in_dim(keys, key.astype(keys.dtype), length, 1)
            values = jax.lax.dynamic_update_slice_in_dim(
                values, value.astype(keys.dtype), length, 1
            )
            key, value, new_kv = keys, values, (keys, values)

        use_dropout = train and self.dropout > 0
        explicit = use_dropout or _attention_impl(self.attention, self.dtype) == "einsum"
        if explicit:  # explicit softmax: droppable weights, and what CPU runs fastest
            scores = jnp.einsum("bthd,bshd->bhts", query, key) / math.sqrt(head_dim)
            if mask is None:
                mask = jnp.tril(jnp.ones((steps, key.shape[1]), bool))[None, None]
            scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
            weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
            weights = nn.Dropout(self.dropout)(weights, deterministic=not use_dropout)
            y = jnp.einsum("bhts,bshd->bthd", weights, value)  # [B, T, heads, head_dim]
        else:
            y = jax.nn.dot_product_attention(
                query,
                key,
                value,
                mask=mask,
                is_causal=mask is None,
                # Decoding (an explicit mask over the cache) stays on XLA: one query row per
                # step is memory-bound, and cuDNN's flash kernels want plain causal masks.
                implementation=_attention_impl(self.attention, self.dtype)
                if mask is None
                else "xla",
            )  # [B, T, heads, head_dim]
        residual_std = 0.02 / math.sqrt(2 * self.num_layers)
        y = FlatDense(
            (width,),
            in_dims=2,
            kernel_init=nn.initializers.normal(residual_std),
            name="proj",
            **dense,
        )(y).reshape(batch, steps, width)
        return nn.Dropout(self.dropout)(y, deterministic=not train), new_kv


class MLP(nn.Module):
    num_layers: int
    dropout: float
    bias: bool
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x, train: bool):
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.bias)
        shape, width = x.shape, x.shape[-1]
        x = x.reshape(-1, width)  # [B * T, C]: plain 2-D dots and weight gradients (fast on CPU)
        h = nn.Dense(4 * width, kernel_init=nn.initializers.normal(0.02), name="fc", **dense)(x)
        h = nn.gelu(h, approximate=True)  # GPT-2's tanh approximation
        residual_std = 0.02 / math.sqrt(2 * self.num_layers)
        h = nn.Dense(width, kernel_init=nn.initializers.normal(residual_std), name="proj", **dense)(
            h
        ).reshape(shape)
        return nn.Dropout(self.dropout)(h, deterministic=not train)


class Block(nn.Module):
    num_heads: int
    num_layers: int
    dropout: float
    bias: bool
    position: str
    attention: str
    dtype: Any
    param_dtype: Any
    layer_norm_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, positions, mask, train: bool, cache_kv=None):
        norm = dict(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            use_bias=self.bias,
        )
        common = dict(
            num_layers=self.num_layers,
            dropout=self.dropout,
            bias=self.bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        attention = CausalSelfAttention(
            self.num_heads, position=self.position, attention=self.attention, name="attn", **common
        )
        y, new_kv = attention(
            nn.LayerNorm(name="ln_1", **norm)(x), positions, mask, train, cache_kv
        )
        x = x + y
        x = x + MLP(name="mlp", **common)(nn.LayerNorm(name="ln_2", **norm)(x), train)
        return x, new_kv


class GPT(nn.Module):
    """GPT-2. __call__(tokens [B, T] int32) -> logits [B, T, vocab] float32."""

    vocab_size: int
    block_size: int  # the longest context (learned position table size)
    num_layers: int
    num_heads: int
    width: int
    dropout: float = 0.0
    bias: bool = True
    position: str = "learned"
    attention: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    layer_norm_epsilon: float = 1e-5  # GPT-2's and nanoGPT's (Flax's default is 1e-6)

    @nn.compact
    def __call__(
        self,
        tokens,
        *,
        train: bool = False,
        cache: KVCache | None = None,
        last_only: bool = False,
    ):
        """Logits of the next token at every position (only the last one with last_only, which
        spares a prompt prefill the [B, T, vocab] logits).

        Without a cache: tokens [B, T] start at position 0 (training, scoring).
        With one: tokens [B, T] are appended at slot cache.length; returns (logits, new cache).
        """
        batch, steps = tokens.shape
        embed = nn.Embed(
            self.vocab_size,
            self.width,
            embedding_init=nn.initializers.normal(0.02),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="wte",
        )
        slots = jnp.arange(steps)[None]  # [1, T]
        if cache is None:
            positions, mask = jnp.broadcast_to(slots, (batch, steps)), None
        else:
            slots = cache.length + slots
            positions = jnp.maximum(slots - cache.start[:, None], 0)  # [B, T]
            keys = jnp.arange(cache.keys.shape[2])  # [S]
            mask = (keys[None, None] <= slots[..., None]) & (
                keys[None, None] >= cache.start[:, None, None]
            )  # [B, T, S]
            # A padding slot's query sees at least itself: no fully masked softmax rows.
            mask = mask | (keys[None, None] == slots[..., None])
            mask = mask[:, None]  # [B, 1, T, S]
        x = embed(tokens)  # [B, T, C]
        if self.position == "learned":
            wpe = nn.Embed(
                self.block_size,
                self.width,
                embedding_init=nn.initializers.normal(0.02),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="wpe",
            )
            x = x + wpe(positions)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)

        new_keys, new_values = [], []
        for layer in range(self.num_layers):
            cache_kv = None
            if cache is not None:
                cache_kv = (cache.keys[layer], cache.values[layer], cache.length)
            x, kv = Block(
                self.num_heads,
                self.num_layers,
                self.dropout,
                self.bias,
                self.position,
                self.attention,
                self.dtype,
                self.param_dtype,
                self.layer_norm_epsilon,
                name=f"h_{layer}",
            )(x, positions, mask, train, cache_kv)
            if kv is not None:
                new_keys.append(kv[0])
                new_values.append(kv[1])
        if last_only:
            x = x[:, -1:]
        x = nn.LayerNorm(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            use_bias=self.bias,
        )(x)
        logits = embed.attend(x).astype(jnp.float32)  # tied head; [B, T, vocab]
        if cache is None:
            return logits
        new_cache = cache.replace(
            keys=jnp.stack(new_keys), values=jnp.stack(new_values), length=cache.length + steps
        )
        return logits, new_cache


def check_config(model_config: ConfigDict, vocab_size: int, seq_len: int) -> None:
    """ConfigError naming the field for model settings that cannot work."""
    for field in ("num_layers", "num_heads", "width", "block_size"):
        value = model_config[field]
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.model.{field}: must be a positive integer, got {value!r}")
    if model_config.width % model_config.num_heads:
        raise ConfigError(
            f"config.model.width: {model_config.width} is not divisible by "
            f"num_heads={model_config.num_heads}"
        )
    if model_config.position == "rope" and (model_config.width // model_config.num_heads) % 2:
        raise ConfigError("config.model.position: rope needs an even head width")
    if model_config.position not in POSITIONS:
        raise ConfigError(
            f"config.model.position: {model_config.position!r} is not one of {', '.join(POSITIONS)}"
        )
    if model_config.attention not in ATTENTION:
        raise ConfigError(
            f"config.model.attention: {model_config.attention!r} is not one of {', '.join(ATTENTION)}"
        )
    if not model_config.get("layer_norm_epsilon", 1e-5) > 0:
        raise ConfigError(
            f"config.model.layer_norm_epsilon: must be > 0, got {model_config.layer_norm_epsilon}"
        )
    if not 0.0 <= model_config.dropout < 1.0:
        raise ConfigError(f"config.model.dropout: must be in [0, 1), got {model_config.dropout}")
    if model_config.vocab_size and model_config.vocab_size < vocab_size:
        raise ConfigError(
            f"config.model.vocab_size: {model_config.vocab_size} is smaller than the tokenizer's "
            f"{vocab_size} tokens"
        )
    if seq_len > model_config.block_size:
        raise ConfigError(
            f"config.data.seq_len: {seq_len} is longer than config.model.block_size="
            f"{model_config.block_size}"
        )


def make_model(model_config: ConfigDict, vocab_size: int) -> GPT:
    """The GPT of config.model; its vocabulary is config.model.vocab_size if set (e.g. 50304,
    GPT-2's 50257 padded to a multiple of 64 for faster matmuls), else the tokenizer's."""
    return from_config(
        GPT,
        model_config,
        # Runs saved before the field existed have none: GPT-2's value.
        defaults={"layer_norm_epsilon": 1e-5},
        vocab_size=model_config.vocab_size or vocab_size,
    )
