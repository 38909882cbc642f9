"""GPT text generation on a KV cache: greedy, temperature, top-k, top-p and beam search.

    generate = make_generate(model, config.model, config.sample, tokenizer.eos_id)
    prompt, prompt_lengths = encode_prompts(tokenizer, ["To be", "or not"])
    output = jax.jit(generate)(params, prompt, prompt_lengths, jax.random.key(config.sample.seed))
    texts = decode_outputs(tokenizer, output)  # the new text of each prompt

`generate` is a pure function; the whole decode is one call: a prefill of the (left-padded)
prompts, then a `lax.while_loop` of one-token model calls that stops as soon as every row has
ended. Every setting is read from config.sample in Python when it is built, never traced:

  max_new_tokens        new tokens per prompt (the fixed output width)
  temperature           0 = greedy (argmax); else sample from softmax(logits / temperature)
  top_k                 0 = off; else sample among the k most likely tokens
  top_p                 1.0 = off; else among the smallest set with probability >= top_p
                        (nucleus sampling, Holtzman et al. 2020; the top token is always kept)
  num_beams             1 = no beam search; else deterministic beam search (temperature, top_k
                        and top_p are then ignored)
  length_penalty        beam hypotheses score sum(log p) / length**length_penalty (as in HF)
  early_stopping        beam search only (HF semantics): True stops a prompt once it has
                        num_beams finished hypotheses; False also waits until the best live beam,
                        scored at its current length, is no better than the worst finished one;
                        "never" uses the longest possible length instead, so it never stops
                        before a better hypothesis could still be found
  no_repeat_ngram_size  0 = off; else no n-gram occurs twice in a row's prompt + new tokens
  use_kv_cache          False runs the full model on the whole buffer at every step (the model's
                        training path, no cache at all): slow, for checking the cached path

Filters apply in that order to the f32 logits: n-gram ban, temperature, top-k, top-p; step t
samples with fold_in(rng, t). "length" is the number of new tokens including EOS. After EOS a
row emits padding (eos_id) and its length stops growing; with eos_id None rows never end early.

Left out: sampling with beams, repetition penalties, stop strings, and anything that needs
the host inside the loop (streaming). Tokenizers live in jaxgen/tokenizers.py.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models import gpt

if TYPE_CHECKING:
    from jaxgen.tokenizers import Tokenizer

PyTree = Any

FIELDS = (
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "num_beams",
    "length_penalty",
    "early_stopping",
    "no_repeat_ngram_size",
    "use_kv_cache",
)


class GenerateOutput(NamedTuple):
    tokens: jax.Array  # [B, max_new_tokens] int32; padding (eos_id, or 0) after EOS
    lengths: jax.Array  # [B] int32: new tokens up to and including EOS
    # [B] float32: beams, the length-penalised score of the hypothesis; otherwise the sum of
    # the model's log-probs (before temperature and filters) of the new tokens, EOS included
    scores: jax.Array
    steps: jax.Array  # int32 scalar: decode steps run (< max_new_tokens if every row ended)


@dataclasses.dataclass(frozen=True)
class Settings:
    """config.sample's decoding fields, checked (see the module docstring)."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    num_beams: int
    length_penalty: float
    early_stopping: bool | str
    no_repeat_ngram_size: int
    use_kv_cache: bool


def read_settings(sample_config: ConfigDict) -> Settings:
    """The decoding fields of config.sample; ConfigError naming the field if one cannot work."""
    values = {}
    for field in FIELDS:
        if field not in sample_config:
            raise ConfigError(f"config.sample.{field}: missing")
        values[field] = sample_config[field]
    settings = Settings(**values)

    def fail(field, why):
        raise ConfigError(f"config.sample.{field}: {why}, got {getattr(settings, field)!r}")

    for field in ("max_new_tokens", "num_beams"):
        if not isinstance(getattr(settings, field), int) or getattr(settings, field) < 1:
            fail(field, "must be a positive integer")
    for field in ("top_k", "no_repeat_ngram_size"):
        if not isinstance(getattr(settings, field), int) or getattr(settings, field) < 0:
            fail(field, "must be a non-negative integer (0 = off)")
    if not settings.temperature >= 0.0:
        fail("temperature", "must be >= 0 (0 = greedy)")
    if not 0.0 < settings.top_p <= 1.0:
        fail("top_p", "must be in (0, 1] (1 = off)")
    if settings.early_stopping not in (True, False, "never"):
        fail("early_stopping", 'must be True, False or "never"')
    return settings


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
# Logit filters: [N, V] float32 -> [N, V] float32 with -inf for the tokens that are ruled out.


def banned_ngrams(
    tokens: jax.Array, start: jax.Array, slot: jax.Array, n: int, vocab_size: int
) -> jax.Array:
    """[N, V] bool: the tokens that would complete an n-gram already in tokens[b, start[b]:slot].

    tokens [N, S] is the fixed buffer, start [N] the first real slot of each row, slot (traced)
    the slot about to be written. Vectorised over all n-gram start slots j: the n - 1 tokens
    from j must equal the last n - 1 before `slot`; then tokens[j + n - 1] is banned.
    """
    num_rows, length = tokens.shape
    windows = length - n + 1
    j = jnp.arange(windows)[None]  # [1, W], the first slot of each n-gram
    match = (j >= start[:, None]) & (j + n - 1 < slot)  # [N, W], n-grams inside the row
    if n > 1:
        # Clamped when the row has fewer than n - 1 tokens; such rows ban nothing.
        last = jax.lax.dynamic_slice_in_dim(tokens, slot - (n - 1), n - 1, axis=1)  # [N, n-1]
        match &= (slot - (n - 1) >= start)[:, None]
        for k in range(n - 1):
            match &= tokens[:, k : k + windows] == last[:, k : k + 1]
    following = tokens[:, n - 1 :]  # [N, W], the token that completes each n-gram
    rows = jnp.arange(num_rows)[:, None]
    counts = (
        jnp.zeros((num_rows, vocab_size), jnp.int32)
        .at[rows, following]
        .add(match.astype(jnp.int32))
    )
    return counts > 0


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits of each row (more on ties)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][:, -1:]  # [N, 1]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Keeps the smallest set of most likely tokens whose probability is >= p, and the top one."""
    if p >= 1.0:
        return logits
    descending = -jnp.sort(-logits, axis=-1)  # [N, V]
    probs = jax.nn.softmax(descending, axis=-1)
    above = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked higher
    cutoff = jnp.min(jnp.where(above < p, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


# --------------------------------------------------------------------------------------------
# Decoders: the model calls, with a KV cache or without. `carry` is the cache, or `start` [N].


class Decoder(NamedTuple):
    # (params, buffer [N, S], start [N]) -> (logits [N, V] of the first new token, carry)
    prefill: Callable
    # (params, buffer, carry, step) -> (logits [N, V] for slot P + step + 1, carry), once the
    # token of step `step` is in buffer[:, P + step]
    extend: Callable


def cached_decoder(model: nn.Module, model_config: ConfigDict, prompt_width: int) -> Decoder:
    """One model call on the prompts fills the cache; then one call per new token."""

    def prefill(params, buffer, start):
        cache = gpt.init_cache(model_config, buffer.shape[0], buffer.shape[1], start)
        logits, cache = model.apply(
            {"params": params}, buffer[:, :prompt_width], cache=cache, last_only=True
        )
        return logits[:, -1], cache

    def extend(params, buffer, cache, step):
        token = jax.lax.dynamic_slice_in_dim(buffer, prompt_width + step, 1, axis=1)  # [N, 1]
        logits, cache = model.apply({"params": params}, token, cache=cache)
        return logits[:, 0], cache

    return Decoder(prefill, extend)


def uncached_decoder(model: nn.Module, prompt_width: int) -> Decoder:
    """The model's plain causal call (the training path) on the whole buffer at every step.

    Each row is rotated left by its padding, so its real tokens start at position 0 exactly as
    in training; the padding moves to the end, where causality hides it. Nothing is reused
    between steps, so this checks the cache, its left-padding mask and its positions.
    """

    def logits_at(params, buffer, start, slot):
        num_rows, length = buffer.shape
        index = (jnp.arange(length)[None] + start[:, None]) % length  # [N, S]
        rotated = jnp.take_along_axis(buffer, index, axis=1)
        logits = model.apply({"params": params}, rotated)  # [N, S, V]
        return logits[jnp.arange(num_rows), slot - start]  # [N, V]

    def prefill(params, buffer, start):
        return logits_at(params, buffer, start, prompt_width - 1), start

    def extend(params, buffer, start, step):
        return logits_at(params, buffer, start, prompt_width + step), start

    return Decoder(prefill, extend)


def restrict_vocabulary(decoder: Decoder, vocab_size: int) -> Decoder:
    """Ids >= vocab_size get logit -inf: a vocabulary padded for speed (e.g. GPT-2's 50257 to
    50304) has untrained ids the tokenizer cannot decode."""

    def restrict(logits, carry):
        return jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf), carry

    return Decoder(
        prefill=lambda *args: restrict(*decoder.prefill(*args)),
        extend=lambda *args: restrict(*decoder.extend(*args)),
    )


def take_rows(carry: PyTree, rows: jax.Array) -> PyTree:
    """The decoder carry of rows [N'] (beam reordering); the cache has its batch on axis 1."""
    if isinstance(carry, gpt.KVCache):
        return carry.replace(
            keys=carry.keys[:, rows], values=carry.values[:, rows], start=carry.start[rows]
        )
    return carry[rows]


# --------------------------------------------------------------------------------------------
# Decoding loops.


class SampleState(NamedTuple):
    step: jax.Array  # int32 scalar
    buffer: jax.Array  # [B, S] int32, prompts then new tokens
    logits: jax.Array  # [B, V] float32, for the token of this step
    carry: PyTree
    done: jax.Array  # [B] bool, the row has emitted EOS
    lengths: jax.Array  # [B] int32
    scores: jax.Array  # [B] float32


def sample_loop(
    decoder: Decoder,
    settings: Settings,
    eos_id: int | None,
    params: PyTree,
    buffer: jax.Array,
    start: jax.Array,
    prompt_width: int,
    rng: jax.Array,
) -> GenerateOutput:
    """Greedy (temperature 0) or sampled decoding of buffer [B, S] after its prompts."""
    batch = buffer.shape[0]
    pad = 0 if eos_id is None else eos_id
    logits, carry = decoder.prefill(params, buffer, start)
    init = SampleState(
        step=jnp.zeros((), jnp.int32),
        buffer=buffer,
        logits=logits,
        carry=carry,
        done=jnp.zeros((batch,), bool),
        lengths=jnp.zeros((batch,), jnp.int32),
        scores=jnp.zeros((batch,), jnp.float32),
    )

    def choose(logits, buffer, step):
        slot = prompt_width + step
        if settings.no_repeat_ngram_size:
            ban = banned_ngrams(
                buffer, start, slot, settings.no_repeat_ngram_size, logits.shape[-1]
            )
            logits = jnp.where(ban, -jnp.inf, logits)
        if settings.temperature == 0.0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits = logits / settings.temperature
        logits = top_p_filter(top_k_filter(logits, settings.top_k), settings.top_p)
        step_rng = jax.random.fold_in(rng, step)
        return jax.random.categorical(step_rng, logits, axis=-1).astype(jnp.int32)

    def cond(state):
        return (state.step < settings.max_new_tokens) & ~jnp.all(state.done)

    def body(state):
        token = choose(state.logits, state.buffer, state.step)  # [B]
        log_probs = jax.nn.log_softmax(state.logits, axis=-1)
        log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
        scores = state.scores + jnp.where(state.done, 0.0, log_prob)
        lengths = state.lengths + (~state.done).astype(jnp.int32)
        token = jnp.where(state.done, pad, token)
        done = state.done if eos_id is None else state.done | (token == eos_id)
        buffer = jax.lax.dynamic_update_slice_in_dim(
            state.buffer, token[:, None], prompt_width + state.step, axis=1
        )
        logits, carry = decoder.extend(params, buffer, state.carry, state.step)
        return SampleState(state.step + 1, buffer, logits, carry, done, lengths, scores)

    final = jax.lax.while_loop(cond, body, init)
    return GenerateOutput(
        tokens=final.buffer[:, prompt_width:],
        lengths=final.lengths,
        scores=final.scores,
        steps=final.step,
    )


class Hypotheses(NamedTuple):
    """The K best finished hypotheses of each prompt, best first (HF's heap, fixed-size)."""

    tokens: jax.Array  # [B, K, max_new_tokens] int32, padding after EOS
    scores: jax.Array  # [B, K] float32, length-penalised; -inf: an empty place
    lengths: jax.Array  # [B, K] int32


def best_of(old: Hypotheses, new: Hypotheses) -> Hypotheses:
    """The K best of old and new hypotheses [B, K'] (a new one with score -inf is none)."""
    scores, keep = jax.lax.top_k(
        jnp.concatenate([old.scores, new.scores], axis=1), old.scores.shape[1]
    )  # [B, K]
    tokens = jnp.concatenate([old.tokens, new.tokens], axis=1)
    lengths = jnp.concatenate([old.lengths, new.lengths], axis=1)
    return Hypotheses(
        tokens=jnp.take_along_axis(tokens, keep[..., None], axis=1),
        scores=scores,
        lengths=jnp.take_along_axis(lengths, keep, axis=1),
    )


class BeamState(NamedTuple):
    step: jax.Array  # int32 scalar
    buffer: jax.Array  # [B * K, S] int32, the live beams (prompt b's beams are rows bK .. bK+K-1)
    logits: jax.Array  # [B * K, V] float32
    carry: PyTree
    beam_scores: jax.Array  # [B, K] float32, sum of log-probs of the live beams, best first
    done: jax.Array  # [B] bool, the prompt's search is over
    finished: Hypotheses


def beam_search(
    decoder: Decoder,
    settings: Settings,
    eos_id: int | None,
    params: PyTree,
    buffer: jax.Array,
    start: jax.Array,
    prompt_width: int,
) -> GenerateOutput:
    """Beam search after the prompts of buffer [B, S]: HF's (transformers >= 4.50), vectorised.

    Each step takes the 2K best (beam, token) extensions of each prompt; those that end in EOS
    and rank among the first K join the finished hypotheses, the K best others go on. A prompt
    ends by `early_stopping`; at max_new_tokens the live beams of prompts still going join the
    hypotheses. Returns the best hypothesis of each prompt. Unlike HF, the K - 1 copies of the
    prompt at step 0 start at -inf (HF: -1e9), so with K > V they never become hypotheses.
    """
    batch, length = buffer.shape
    beams, new_tokens = settings.num_beams, settings.max_new_tokens
    rows = batch * beams
    pad = 0 if eos_id is None else eos_id
    penalty = settings.length_penalty

    logits, carry = decoder.prefill(params, buffer, start)  # prefill B rows, then copy K times
    expand = jnp.repeat(jnp.arange(batch), beams)  # [B * K]
    carry, logits, buffer, start = (
        take_rows(carry, expand),
        logits[expand],
        buffer[expand],
        start[expand],
    )
    first = jnp.arange(batch)[:, None] * beams  # [B, 1], each prompt's first row
    # The K copies are the same beam: only the first may extend at step 0.
    beam_scores = jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf) * jnp.ones((batch, 1))
    init = BeamState(
        step=jnp.zeros((), jnp.int32),
        buffer=buffer,
        logits=logits,
        carry=carry,
        beam_scores=beam_scores.astype(jnp.float32),
        done=jnp.zeros((batch,), bool),
        finished=Hypotheses(
            tokens=jnp.full((batch, beams, new_tokens), pad, jnp.int32),
            scores=jnp.full((batch, beams), -jnp.inf, jnp.float32),
            lengths=jnp.zeros((batch, beams), jnp.int32),
        ),
    )

    def cond(state):
        return (state.step < new_tokens) & ~jnp.all(state.done)

    def body(state):
        step, finished = state.step, state.finished
        generated = (step + 1).astype(jnp.float32)  # new tokens, the one chosen now included
        log_probs = jax.nn.log_softmax(state.logits, axis=-1)  # [B * K, V]
        vocab = log_probs.shape[-1]
        if settings.no_repeat_ngram_size:
            ban = banned_ngrams(
                state.buffer, start, prompt_width + step, settings.no_repeat_ngram_size, vocab
            )
            log_probs = jnp.where(ban, -jnp.inf, log_probs)
        candidates = state.beam_scores.reshape(rows, 1) + log_probs  # [B * K, V]
        top_scores, top = jax.lax.top_k(candidates.reshape(batch, beams * vocab), 2 * beams)
        source, token = top // vocab, top % vocab  # [B, 2K] each, best first

        is_eos = jnp.zeros_like(token, bool)
        if eos_id is not None:
            is_eos = token == eos_id
            # As HF: only an EOS ranked among the first K makes a hypothesis.
            add = is_eos[:, :beams] & jnp.isfinite(top_scores[:, :beams]) & ~state.done[:, None]
            tokens = state.buffer[first + source[:, :beams], prompt_width:]  # [B, K, new]
            new = Hypotheses(
                tokens=tokens.at[:, :, step].set(eos_id),
                scores=jnp.where(add, top_scores[:, :beams] / generated**penalty, -jnp.inf),
                lengths=jnp.full_like(token[:, :beams], step + 1),
            )
            finished = best_of(finished, new)

        # The K best extensions that do not end in EOS go on (in rank order).
        rank = jnp.arange(2 * beams)
        order = jnp.argsort(jnp.where(is_eos, rank + 2 * beams, rank), axis=1)[:, :beams]
        beam_scores = jnp.take_along_axis(top_scores, order, axis=1)  # [B, K]
        parents = (first + jnp.take_along_axis(source, order, axis=1)).reshape(rows)
        next_tokens = jnp.take_along_axis(token, order, axis=1).reshape(rows, 1)
        buffer = jax.lax.dynamic_update_slice_in_dim(
            state.buffer[parents], next_tokens, prompt_width + step, axis=1
        )
        logits, carry = decoder.extend(params, buffer, take_rows(state.carry, parents), step)

        full = jnp.all(jnp.isfinite(finished.scores), axis=1)  # K hypotheses
        if settings.early_stopping is True:
            done = state.done | full
        else:
            # HF's test: could the best live beam still beat the worst hypothesis? False
            # scores it at its current length, "never" at the longest one if that is better.
            longest = settings.early_stopping == "never" and penalty > 0
            best_length = jnp.float32(new_tokens) if longest else generated
            reachable = beam_scores[:, 0] / best_length**penalty
            done = state.done | (full & (reachable <= finished.scores[:, -1]))
        return BeamState(step + 1, buffer, logits, carry, beam_scores, done, finished)

    final = jax.lax.while_loop(cond, body, init)
    # Prompts still searching at max_new_tokens: their live beams become hypotheses too.
    live = Hypotheses(
        tokens=final.buffer.reshape(batch, beams, length)[:, :, prompt_width:],
        scores=jnp.where(
            final.done[:, None], -jnp.inf, final.beam_scores / jnp.float32(new_tokens) ** penalty
        ),
        lengths=jnp.full((batch, beams), new_tokens, jnp.int32),
    )
    best = best_of(final.finished, live)  # sorted: hypothesis 0 is the best
    return GenerateOutput(
        tokens=best.tokens[:, 0],
        lengths=best.lengths[:, 0],
        scores=best.scores[:, 0],
        steps=final.step,
    )


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
    log-probs are normalised over the real ids).
    """
    settings = read_settings(sample_config)

    def generate(params, prompt, prompt_lengths, rng) -> GenerateOutput:
        batch, prompt_width = prompt.shape
        check_length(model_config, prompt_width, settings.max_new_tokens)
        if settings.use_kv_cache:
            decoder = cached_decoder(model, model_config, prompt_width)
        else:
            decoder = uncached_decoder(model, prompt_width)
        if vocab_size is not None and vocab_size < model.vocab_size:
            decoder = restrict_vocabulary(decoder, vocab_size)
        pad = 0 if eos_id is None else eos_id
        buffer = jnp.concatenate(
            [
                jnp.asarray(prompt, jnp.int32),
                jnp.full((batch, settings.max_new_tokens), pad, jnp.int32),
            ],
            axis=1,
        )  # [B, S]
        start = prompt_width - jnp.asarray(prompt_lengths, jnp.int32)  # [B], padding slots
        if settings.num_beams > 1:
            return beam_search(decoder, settings, eos_id, params, buffer, start, prompt_width)
        return sample_loop(decoder, settings, eos_id, params, buffer, start, prompt_width, rng)

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
