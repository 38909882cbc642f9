"""GPT text generation: the decoder over GPT's KV cache, prompts in and text out.

    generate = make_generate(model, config.model, config.sample, tokenizer.eos_id)
    prompt, prompt_lengths = encode_prompts(tokenizer, ["To be", "or not"])
    output = jax.jit(generate)(params, prompt, prompt_lengths, jax.random.key(config.sample.seed))
    texts = decode_outputs(tokenizer, output)  # the new text of each prompt (or beam)

`generate` is a pure function; the whole decode is one call: a prefill of the (left-padded)
prompts, then a `lax.while_loop` of one-token model calls that stops as soon as every row has
ended. The strategies (greedy, temperature, top-k, top-p, beam search, no_repeat_ngram) and
every config.sample field they read are sampling/decoding.py's; this file only implements its
decoder interface for GPT: `cached_decoder` (the KV cache of models/gpt.py, batch on axis 1)
and `uncached_decoder` (the model's training path on the whole buffer at every step, slow,
for checking the cache; config.sample.use_kv_cache=False).

Left out: tokenizers (jaxgen/tokenizers.py) and the model itself (models/gpt.py).
"""

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models import gpt
from jaxgen.sampling import decoding
from jaxgen.sampling.decoding import GenerateOutput, History, read_settings

if TYPE_CHECKING:
    from jaxgen.tokenizers import Tokenizer


def check_length(model_config: ConfigDict, prompt_width: int, max_new_tokens: int) -> None:
    """ConfigError if learned positions cannot reach prompt_width + max_new_tokens."""
    if model_config.position == "learned" and prompt_width + max_new_tokens > (
        model_config.block_size
    ):
        raise ConfigError(
            f"config.sample.max_new_tokens: {max_new_tokens} new tokens after prompts of "
            f"{prompt_width} tokens exceed config.model.block_size={model_config.block_size}"
        )


# --------------------------------------------------------------------------------------------
# Decoders. `inputs` is (prompt [B, P] int32 left-padded, start [B] int32: its padding slots).


def take_cache_rows(cache: gpt.KVCache, rows: jax.Array) -> gpt.KVCache:
    """The cache of rows [N'] (beam reordering): keys and values have their batch on axis 1."""
    return cache.replace(
        keys=cache.keys[:, rows], values=cache.values[:, rows], start=cache.start[rows]
    )


def cached_decoder(model: nn.Module, model_config: ConfigDict, max_len: int) -> decoding.Decoder:
    """One model call on the prompts fills a cache of max_len slots; then one call per token."""

    def prefill(params, inputs):
        prompt, start = inputs
        cache = gpt.init_cache(model_config, prompt.shape[0], max_len, start)
        logits, cache = model.apply({"params": params}, prompt, cache=cache, last_only=True)
        return logits[:, -1], cache

    def extend(params, token, cache, step):
        del step  # the cache knows its length
        logits, cache = model.apply({"params": params}, token[:, None], cache=cache)
        return logits[:, 0], cache

    return decoding.Decoder(prefill, extend, take_cache_rows)


def uncached_decoder(model: nn.Module, max_new_tokens: int) -> decoding.Decoder:
    """The model's plain causal call (the training path) on the whole buffer at every step.

    The state is (buffer [N, P + max_new_tokens], start [N], slot): each row is rotated left
    by its padding, so its real tokens start at position 0 exactly as in training; the padding
    moves to the end, where causality hides it. Nothing is reused between steps, so this checks
    the cache, its left-padding mask and its positions.
    """

    def logits_at(params, buffer, start, slot):
        num_rows, length = buffer.shape
        index = (jnp.arange(length)[None] + start[:, None]) % length  # [N, S]
        rotated = jnp.take_along_axis(buffer, index, axis=1)
        logits = model.apply({"params": params}, rotated)  # [N, S, V]
        return logits[jnp.arange(num_rows), slot - start]  # [N, V]

    def prefill(params, inputs):
        prompt, start = inputs
        width = prompt.shape[1]
        pad = jnp.zeros((prompt.shape[0], max_new_tokens), jnp.int32)
        buffer = jnp.concatenate([prompt, pad], axis=1)
        return logits_at(params, buffer, start, width - 1), (buffer, start)

    def extend(params, token, state, step):
        buffer, start = state
        slot = buffer.shape[1] - max_new_tokens + step
        buffer = jax.lax.dynamic_update_slice_in_dim(buffer, token[:, None], slot, axis=1)
        return logits_at(params, buffer, start, slot), (buffer, start)

    return decoding.Decoder(prefill, extend)


def make_generate(
    model: nn.Module,
    model_config: ConfigDict,
    sample_config: ConfigDict,
    eos_id: int | None,
    vocab_size: int | None = None,
) -> Callable[..., GenerateOutput]:
    """generate(params, prompt [B, P] int32, prompt_lengths [B] int32, rng) -> GenerateOutput.

    Prompts are left-padded (row b's tokens are prompt[b, P - prompt_lengths[b]:], at least
    one each); the padding value does not matter. `rng` is used only when sampling. Pure: the
    caller jits it once (model, configs and eos_id are static). vocab_size: the tokenizer's;
    when the model's vocabulary is padded beyond it, the extra ids are never emitted (and
    log-probs are normalised over the real ids). With beam search the output has
    num_return_sequences rows per prompt (decoding.py).
    """
    settings = read_settings(sample_config)

    def generate(params, prompt, prompt_lengths, rng) -> GenerateOutput:
        prompt_width = prompt.shape[1]
        check_length(model_config, prompt_width, settings.max_new_tokens)
        if settings.use_kv_cache:
            max_len = prompt_width + settings.max_new_tokens
            decoder = cached_decoder(model, model_config, max_len)
        else:
            decoder = uncached_decoder(model, settings.max_new_tokens)
        if vocab_size is not None and vocab_size < model.vocab_size:
            decoder = decoding.restrict_vocabulary(decoder, vocab_size)
        prompt = jnp.asarray(prompt, jnp.int32)
        start = prompt_width - jnp.asarray(prompt_lengths, jnp.int32)  # [B], padding slots
        return decoding.decode(
            decoder, settings, eos_id, params, (prompt, start), rng, History(prompt, start)
        )

    return generate


# --------------------------------------------------------------------------------------------
# Host side: text in, text out.


def encode_prompts(
    tokenizer: "Tokenizer", prompts: Sequence[str], width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt ids [B, P] int32 and their lengths [B] int32.

    P is the longest prompt, or `width` if given (a fixed width compiles generate once for
    prompts of any length up to it). Padding is eos_id (0 without one). An empty prompt is an
    error: start unconditional samples with the EOS token (or e.g. a newline).
    """
    ids = [np.asarray(tokenizer.encode(text), np.int32).reshape(-1) for text in prompts]
    lengths = np.array([len(row) for row in ids], np.int32)
    if not len(ids) or lengths.min() == 0:
        raise ValueError("encode_prompts: every prompt needs at least one token")
    width = int(lengths.max()) if width is None else width
    if lengths.max() > width:
        raise ValueError(f"encode_prompts: a prompt of {lengths.max()} tokens exceeds {width}")
    pad = 0 if tokenizer.eos_id is None else tokenizer.eos_id
    prompt = np.full((len(ids), width), pad, np.int32)
    for row, tokens in enumerate(ids):
        prompt[row, width - len(tokens) :] = tokens
    return prompt, lengths


def decode_outputs(tokenizer: "Tokenizer", output: GenerateOutput) -> list[str]:
    """The text of each row's new tokens, up to and without EOS (the prompt is not included)."""
    tokens, lengths = np.asarray(output.tokens), np.asarray(output.lengths)
    texts = []
    for row, length in zip(tokens, lengths, strict=True):
        row = row[:length]
        if tokenizer.eos_id is not None and length and row[-1] == tokenizer.eos_id:
            row = row[:-1]
        texts.append(tokenizer.decode(row))
    return texts
