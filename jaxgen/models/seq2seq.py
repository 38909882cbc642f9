"""The Transformer encoder-decoder (Vaswani et al. 2017) as a Flax Linen module, for translation.

    model = make_model(config.model, vocab_size, pad_id)
    logits = model.apply({"params": params}, source, target_in, train=...)   # [B, T, V] f32
    memory = model.apply(variables, source, method=Transformer.encode)      # [B, S, C]
    cache = model.apply(variables, source, memory, max_len, method=Transformer.start_cache)
    logits, cache = model.apply(variables, tokens, cache, method=Transformer.extend)

As in the paper: token embeddings shared by encoder, decoder and the output layer (tied, logits
= x @ E^T), scaled by sqrt(d_model) and added to sinusoidal positions; each sublayer's output
and the embeddings go through dropout; post-LN sublayers x = LN(x + Dropout(F(x)))
(config.model.norm="post", the paper's) or pre-LN x = x + Dropout(F(LN(x))) with a final LN on
each stack ("pre", Xiong et al. 2020: trains without a long warm-up). The encoder masks padding
keys; the decoder's self-attention is causal and its cross-attention masks the source padding.
Packed rows (several pairs a row, with segment ids and per-pair positions) keep every
attention within its pair, as the Flax WMT example's segment masks do.
Attention goes through `jax.nn.dot_product_attention` (cuDNN flash kernels on GPU in bf16, XLA
elsewhere); the paper has no attention-weight dropout and neither has this module.

Decoding: the encoder runs once; start_cache computes each layer's cross-attention keys and
values of that output once, and an empty self-attention cache; extend appends tokens. The
self-attention cache may hold more rows than the encoder output (N = B * R: beam search's R
beams of each source, rows b*R .. b*R + R - 1): cross-attention then groups the queries of a
source's R rows against its one copy of keys and values, so beams never copy them.
Not here: the loss (losses/seq2seq.py) and decoding (sampling/seq2seq.py).
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models.building import from_config

NORMS = ("post", "pre")


@flax.struct.dataclass
class Cache:
    """Decoder state, one array per decoder layer in each tuple (a step updates each layer's
    cache in place: no slicing or stacking of a [layers, ...] array). keys, values:
    [N, heads, max_len, head_dim] each, slots < length written; cross_keys, cross_values:
    [B, heads, S, head_dim] each, with N = B * R (row n reads source n // R); source_mask:
    [B, S] bool; length: int32 scalar, the same for every row. Heads come before positions, the
    layout the attention's batched dot products read (no transpose of the cache per step).
    Reordering beams (rows of the same source) moves keys and values only."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    cross_keys: tuple[jax.Array, ...]
    cross_values: tuple[jax.Array, ...]
    source_mask: jax.Array
    length: jax.Array


def sinusoids(length: int, width: int) -> np.ndarray:
    """The paper's positions: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    positions = np.arange(length)[:, None]
    rates = 1.0 / 10_000.0 ** (np.arange(0, width, 2) / width)
    table = np.zeros((length, width), np.float32)
    table[:, 0::2] = np.sin(positions * rates)
    table[:, 1::2] = np.cos(positions * rates)[:, : width // 2]
    return table


class Attention(nn.Module):
    """Multi-head attention; keys and values computed by kv(), so they can be cached."""

    num_heads: int
    width: int
    dtype: Any
    param_dtype: Any

    def setup(self):
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = nn.initializers.xavier_uniform()
        heads = (self.num_heads, self.width // self.num_heads)
        self.query = nn.DenseGeneral(heads, kernel_init=init, **dense)
        self.key = nn.DenseGeneral(heads, kernel_init=init, **dense)
        self.value = nn.DenseGeneral(heads, kernel_init=init, **dense)
        self.out = nn.DenseGeneral(self.width, axis=(-2, -1), kernel_init=init, **dense)

    def kv(self, context):
        """context [B, S, C] -> keys, values [B, S, heads, head_dim]."""
        return self.key(context), self.value(context)

    def __call__(self, x, keys, values, mask):
        """x [N, T, C]; keys, values [B, S, heads, head_dim]; mask [B, 1, T, S] bool. N = B * R:
        the R rows n = b*R .. b*R + R - 1 of x attend to keys[b] (beams sharing one source's
        keys and values; R = 1 otherwise), and the mask then broadcasts over T (shape [B, 1, 1,
        S])."""
        rows, steps = x.shape[:2]
        query = self.query(x)  # [N, T, heads, head_dim]
        query = query.reshape(keys.shape[0], -1, *query.shape[2:])  # [B, R * T, heads, head_dim]
        y = jax.nn.dot_product_attention(
            query, keys.astype(query.dtype), values.astype(query.dtype), mask=mask
        )
        return self.out(y.reshape(rows, steps, *y.shape[2:]))  # [N, T, C]


class FeedForward(nn.Module):
    ff_width: int
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = nn.initializers.xavier_uniform()
        h = nn.relu(nn.Dense(self.ff_width, kernel_init=init, name="fc", **dense)(x))
        return nn.Dense(x.shape[-1], kernel_init=init, name="proj", **dense)(h)


class Sublayers(nn.Module):
    """One encoder (cross=False) or decoder layer: self-attention, [cross-attention], MLP."""

    num_heads: int
    width: int
    ff_width: int
    dropout: float
    norm: str
    cross: bool
    dtype: Any
    param_dtype: Any

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.self_attention = Attention(self.num_heads, self.width, **kw)
        if self.cross:
            self.cross_attention = Attention(self.num_heads, self.width, **kw)
        self.feed_forward = FeedForward(self.ff_width, **kw)
        self.norms = [nn.LayerNorm(**kw) for _ in range(3 if self.cross else 2)]
        self.drop = nn.Dropout(self.dropout)

    def cross_kv(self, memory):
        return self.cross_attention.kv(memory)

    def _residual(self, x, index, fn, train):
        if self.norm == "pre":
            return x + self.drop(fn(self.norms[index](x)), deterministic=not train)
        return self.norms[index](x + self.drop(fn(x), deterministic=not train))

    def __call__(self, x, mask, train, self_kv=None, cross=None):
        """x [B, T, C]; mask [B, 1, T, T'] of self-attention; self_kv: None (keys from x) or
        (keys, values, length) of a cache to write x's keys into; cross: (keys, values,
        mask [B, 1, T, S]) of the encoder output. Returns (x, (keys, values) or None)."""
        new_kv = None

        def attend(h):
            nonlocal new_kv
            keys, values = self.self_attention.kv(h)
            if self_kv is not None:
                cache_keys, cache_values, length = self_kv  # [N, heads, max_len, head_dim]
                new_kv = tuple(
                    jax.lax.dynamic_update_slice_in_dim(
                        cache, jnp.swapaxes(new, 1, 2).astype(cache.dtype), length, 2
                    )
                    for cache, new in ((cache_keys, keys), (cache_values, values))
                )
                keys, values = (jnp.swapaxes(cache, 1, 2) for cache in new_kv)
            return self.self_attention(h, keys, values, mask)

        x = self._residual(x, 0, attend, train)
        if self.cross:
            keys, values, cross_mask = cross
            x = self._residual(
                x, 1, lambda h: self.cross_attention(h, keys, values, cross_mask), train
            )
        x = self._residual(x, len(self.norms) - 1, self.feed_forward, train)
        return x, new_kv


class Transformer(nn.Module):
    """__call__(source [B, S], target_in [B, T]) -> logits [B, T, vocab] float32."""

    vocab_size: int
    pad_id: int
    num_layers: int = 6  # encoder layers
    num_decoder_layers: int = 6
    num_heads: int = 8
    width: int = 512
    ff_width: int = 2048
    dropout: float = 0.1
    norm: str = "post"
    max_len: int = 512  # the longest source or target (the position table)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embed = nn.Embed(
            self.vocab_size,
            self.width,
            embedding_init=nn.initializers.normal(self.width**-0.5),  # so sqrt(d) * E ~ N(0, 1)
            **kw,
        )
        layer = dict(
            num_heads=self.num_heads,
            width=self.width,
            ff_width=self.ff_width,
            dropout=self.dropout,
            norm=self.norm,
            **kw,
        )
        self.encoder = [Sublayers(cross=False, **layer) for _ in range(self.num_layers)]
        self.decoder = [Sublayers(cross=True, **layer) for _ in range(self.num_decoder_layers)]
        if self.norm == "pre":
            self.encoder_norm, self.decoder_norm = nn.LayerNorm(**kw), nn.LayerNorm(**kw)
        self.drop = nn.Dropout(self.dropout)

    def _embed(self, tokens, offset, train, positions=None):
        """tokens [B, T] at positions offset .. offset + T - 1, or at positions [B, T]."""
        table = jnp.asarray(sinusoids(self.max_len, self.width))
        if positions is None:
            positions = jax.lax.dynamic_slice_in_dim(table, offset, tokens.shape[1])  # [T, C]
        else:
            positions = table[positions]  # [B, T, C]
        x = self.embed(tokens) * jnp.sqrt(float(self.width)).astype(self.dtype) + positions
        return self.drop(x.astype(self.dtype), deterministic=not train)

    def encode(self, source, train: bool = False, segment=None, position=None):
        """source [B, S] -> the encoder output [B, S, C] (padding keys masked everywhere).

        Packed rows (data/pairs.py packed_rows) give segment [B, S] (1, 2, ... per pair, 0 for
        padding) and position [B, S]: a token then attends only to its own pair's tokens."""
        if segment is None:
            mask = (source != self.pad_id)[:, None, None, :]  # [B, 1, 1, S]
        else:
            # Padding attends to padding: no query row is fully masked.
            mask = (segment[:, :, None] == segment[:, None, :])[:, None]  # [B, 1, S, S]
        x = self._embed(source, 0, train, position)
        for layer in self.encoder:
            x, _ = layer(x, mask, train)
        return self.encoder_norm(x) if self.norm == "pre" else x

    def _logits(self, x):
        if self.norm == "pre":
            x = self.decoder_norm(x)
        return self.embed.attend(x).astype(jnp.float32)  # tied output; [B, T, V]

    def __call__(
        self,
        source,
        target_in,
        *,
        train: bool = False,
        source_segment=None,
        source_position=None,
        target_segment=None,
        target_position=None,
    ):
        """Packed rows pass all four segment/position arrays ([B, S] and [B, T]): every
        attention (encoder, causal decoder, cross) then stays within a pair, and positions
        restart with each pair; the logits of a pair are those of the pair alone."""
        memory = self.encode(source, train, source_segment, source_position)
        steps = target_in.shape[1]
        causal = jnp.tril(jnp.ones((steps, steps), bool))[None, None]  # [1, 1, T, T]
        if target_segment is None:
            cross_mask = (source != self.pad_id)[:, None, None, :]  # [B, 1, 1, S]
        else:
            same = target_segment[:, :, None] == source_segment[:, None, :]  # [B, T, S]
            # Target padding attends to the whole source: no query row is fully masked.
            cross_mask = (same | (target_segment == 0)[:, :, None])[:, None]  # [B, 1, T, S]
            causal = causal & (target_segment[:, :, None] == target_segment[:, None, :])[:, None]
        x = self._embed(target_in, 0, train, target_position)
        for layer in self.decoder:
            keys, values = layer.cross_kv(memory)
            x, _ = layer(x, causal, train, cross=(keys, values, cross_mask))
        return self._logits(x)

    def start_cache(self, source, memory, max_len: int) -> Cache:
        """The decoder state of `max_len` target tokens after encoding source [B, S]."""
        cross = [layer.cross_kv(memory) for layer in self.decoder]  # [B, S, heads, head_dim]
        cross = [(jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)) for k, v in cross]
        batch, heads, _, head_dim = cross[0][0].shape
        shape = (batch, heads, max_len, head_dim)
        empty = tuple(jnp.zeros(shape, self.dtype) for _ in self.decoder)
        return Cache(
            keys=empty,
            values=empty,
            cross_keys=tuple(keys for keys, _ in cross),
            cross_values=tuple(values for _, values in cross),
            source_mask=source != self.pad_id,
            length=jnp.zeros((), jnp.int32),
        )

    def extend(self, tokens, cache: Cache):
        """tokens [N, T] appended at slot cache.length -> (logits [N, T, V], new cache); N is
        the rows of the self-attention cache, a multiple of the encoder output's B."""
        steps, max_len = tokens.shape[1], cache.keys[0].shape[2]
        slots = cache.length + jnp.arange(steps)  # [T]
        mask = (jnp.arange(max_len)[None] <= slots[:, None])[None, None]  # [1, 1, T, max_len]
        cross_mask = cache.source_mask[:, None, None, :]
        x = self._embed(tokens, cache.length, False)
        new_keys, new_values = [], []
        for index, layer in enumerate(self.decoder):
            self_kv = (cache.keys[index], cache.values[index], cache.length)
            cross_keys, cross_values = cache.cross_keys[index], cache.cross_values[index]
            cross = (jnp.swapaxes(cross_keys, 1, 2), jnp.swapaxes(cross_values, 1, 2), cross_mask)
            x, (keys, values) = layer(x, mask, False, self_kv=self_kv, cross=cross)
            new_keys.append(keys)
            new_values.append(values)
        cache = cache.replace(
            keys=tuple(new_keys),
            values=tuple(new_values),
            length=cache.length + steps,
        )
        return self._logits(x), cache


def check_config(model_config: ConfigDict, source_len: int, target_len: int) -> None:
    """ConfigError naming the field for model settings that cannot work."""
    fields = ("num_layers", "num_decoder_layers", "num_heads", "width", "ff_width", "max_len")
    for field in fields:
        value = model_config[field]
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.model.{field}: must be a positive integer, got {value!r}")
    if model_config.width % model_config.num_heads or model_config.width % 2:
        raise ConfigError(
            f"config.model.width: {model_config.width} must be even and divisible by "
            f"num_heads={model_config.num_heads}"
        )
    if model_config.norm not in NORMS:
        raise ConfigError(f"config.model.norm: {model_config.norm!r} is not one of post, pre")
    if not 0.0 <= model_config.dropout < 1.0:
        raise ConfigError(f"config.model.dropout: must be in [0, 1), got {model_config.dropout}")
    longest = max(source_len, target_len + 1)
    if longest > model_config.max_len:
        raise ConfigError(
            f"config.model.max_len: {model_config.max_len} is shorter than the longest sequence "
            f"({longest}: config.data.source_len / target_len + 1)"
        )


def make_model(model_config: ConfigDict, vocab_size: int, pad_id: int) -> Transformer:
    """The Transformer of config.model over the shared vocabulary of `vocab_size` ids."""
    return from_config(Transformer, model_config, vocab_size=vocab_size, pad_id=pad_id)
