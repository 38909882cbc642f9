"""Translation with the encoder-decoder: decoding.py's Decoder over models/seq2seq.py's cache.

    translate = make_translate(model, config.sample, eos_id, pad_id)
    output = jax.jit(translate)(params, source, rng)    # source int32 [B, S], pad-filled
    texts = decode_outputs(tokenizer, output)            # one translation per row (or beam)

prefill encodes the source once, computes every decoder layer's cross-attention keys and values
of it once (models/seq2seq.Transformer.start_cache), and feeds the decoder's start token (eos,
as the targets of data/pairs_kind.py begin); extend appends one token through the cached
self-attention. take_rows copies and reorders only the self-attention cache: the encoder
output's keys and values and its mask stay [B, ...], one copy shared by the beams of a source
(beam search never moves a beam to another source), so a beam step neither gathers nor
recomputes them. The padding id is never generated. Greedy, sampling and beam search
(num_beams, length_penalty, early_stopping, no_repeat_ngram_size, max_new_tokens) and their
checks are decoding.py's; the whole translation is one compiled call.
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models import seq2seq
from jaxgen.sampling import decoding
from jaxgen.sampling.decoding import GenerateOutput, output_rows
from jaxgen.tokenizers import Tokenizer


def make_decoder(model: nn.Module, eos_id: int, pad_id: int, max_len: int) -> decoding.Decoder:
    """A Decoder whose state is the model's Cache of `max_len` target slots."""

    def no_pad(logits):
        return logits.at[:, pad_id].set(-jnp.inf)

    def prefill(params, source):
        variables = {"params": params}
        memory = model.apply(variables, source, method=seq2seq.Transformer.encode)
        cache = model.apply(
            variables, source, memory, max_len, method=seq2seq.Transformer.start_cache
        )
        start = jnp.full((source.shape[0], 1), eos_id, jnp.int32)
        logits, cache = model.apply(variables, start, cache, method=seq2seq.Transformer.extend)
        return no_pad(logits[:, 0]), cache

    def extend(params, token, cache, step):
        del step  # the cache knows its length
        logits, cache = model.apply(
            {"params": params}, token[:, None], cache, method=seq2seq.Transformer.extend
        )
        return no_pad(logits[:, 0]), cache

    return decoding.Decoder(prefill, extend, take_rows)


def take_rows(cache: seq2seq.Cache, rows: jax.Array) -> seq2seq.Cache:
    """The cache of decoder rows [N'] (beams of the sources they came from, in source order):
    the self-attention keys and values follow; the per-source cross-attention arrays stay."""
    return cache.replace(
        keys=tuple(keys[rows] for keys in cache.keys),
        values=tuple(values[rows] for values in cache.values),
    )


def check_length(model_config: ConfigDict, max_new_tokens: int) -> None:
    """ConfigError if the start token and max_new_tokens outrun the position table."""
    if max_new_tokens + 1 > model_config.max_len:
        raise ConfigError(
            f"config.sample.max_new_tokens: {max_new_tokens} new tokens after the start token "
            f"exceed config.model.max_len={model_config.max_len}"
        )


def translate(params, source, rng, *, model, eos_id: int, pad_id: int, settings):
    """GenerateOutput ([B * R, max_new_tokens]) of source [B, S] under the decoding settings
    (decoding.Settings; R = settings.num_return_sequences). The seq2seq family's "translate"
    predict function, with model, eos_id and pad_id bound."""
    decoder = make_decoder(model, eos_id, pad_id, settings.max_new_tokens + 1)
    return decoding.decode(decoder, settings, eos_id, params, source, rng)


def make_translate(
    model: nn.Module, sample_config: ConfigDict, eos_id: int, pad_id: int
) -> Callable[..., GenerateOutput]:
    """translate(params, source [B, S], rng) -> GenerateOutput ([B * R, max_new_tokens])."""
    settings = decoding.read_settings(sample_config)
    return functools.partial(
        translate, model=model, eos_id=eos_id, pad_id=pad_id, settings=settings
    )


def encode_sources(tokenizer: Tokenizer, texts: Sequence[str], length: int, pad_id: int):
    """int32 [N, length]: each text's ids then eos, cut to `length`, pad-filled."""
    rows = np.full((len(texts), length), pad_id, np.int32)
    for row, text in enumerate(texts):
        ids = [*tokenizer.encode(text).tolist(), tokenizer.eos_id][:length]
        rows[row, : len(ids)] = ids
    return rows


def decode_outputs(tokenizer: Tokenizer, output: GenerateOutput) -> list[str]:
    """The text of each output row, up to its EOS."""
    rows = np.asarray(output_rows(output, tokenizer.eos_id))
    return [tokenizer.decode(row[row >= 0]) for row in rows]
