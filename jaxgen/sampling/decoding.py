"""Autoregressive decoding for any family: filters, sampling and beam search over a decoder.

A family plugs its model in through a `Decoder`, three pure functions over a decoder state (a
pytree: a KV cache, plus whatever else each row needs, e.g. an encoder's output and source mask):

  prefill(params, inputs) -> (logits [B, V] float32 of the first new token, state)
      `inputs` is whatever the model needs (GPT: the left-padded prompts and their start
      slots; an encoder-decoder: the source tokens and mask), opaque to this module.
  extend(params, token [N] int32, state, step) -> (logits [N, V] of the next token, state)
      appends the token chosen at `step` (an int32 scalar, 0 for the first new token).
  take_rows(state, rows [N'] int32) -> the state of those rows, in that order
      beam search copies each prompt's state K times after the prefill and reorders rows by
      beam at every step; every per-row array of the state must follow. The default indexes
      axis 0 of every array leaf that has one (scalars, e.g. a shared cache length, are kept);
      a state with its batch elsewhere (GPT's KV cache: axis 1) passes its own. Row n of
      what beam search asks for always comes from prompt n // K, so arrays per prompt (an
      encoder's output: sampling/seq2seq.py) may stay [B, ...] and be left out.

`decode` then runs the whole generation as one `lax.while_loop` (sampling, greedy or beam
search), stopping as soon as every row has ended. Settings come from config.sample and are read
in Python when the function is built, never traced:

  max_new_tokens        new tokens per prompt (the fixed output width)
  temperature           0 = greedy (argmax); else sample from softmax(logits / temperature)
  top_k                 0 = off; else sample among the k most likely tokens
  top_p                 1.0 = off; else among the smallest set with probability >= top_p
                        (nucleus sampling, Holtzman et al. 2020; the top token is always kept)
  num_beams             1 = no beam search; else deterministic beam search (temperature, top_k
                        and top_p are then ignored)
  num_return_sequences  beam search: the best distinct hypotheses returned per prompt (HF's,
                        <= num_beams; rows b*R .. b*R + R - 1 of the output); 1 without beams
  length_penalty        beam hypotheses score sum(log p) / length**length_penalty (as in HF)
  early_stopping        beam search only (HF semantics): True stops a prompt once it has
                        num_beams finished hypotheses; False also waits until the best live beam,
                        scored at its current length, is no better than the worst finished one;
                        "never" uses the longest possible length instead, so it never stops
                        before a better hypothesis could still be found
  no_repeat_ngram_size  0 = off; else no n-gram occurs twice in a row's history + new tokens
  use_kv_cache          for the family's decoder: False recomputes the whole prefix each step

Filters (sampling/filters.py) apply in that order to the f32 logits: n-gram ban, temperature,
top-k, top-p; step t samples with fold_in(rng, t). "length" is the number of new tokens
including EOS (HF's generated length: the prompt is not counted). After EOS a row emits padding
(eos_id) and its length stops growing; with eos_id None rows never end early. `history`
(tokens [B, P] and the first real slot of each row, e.g. GPT's prompt) is what no_repeat_ngram
sees before the new tokens.

Left out: sampling with beams, repetition penalties, stop strings, and anything that needs the
host inside the loop (streaming). Model code (KV-cache layout, prompts, text) lives in the
family's sampling file, e.g. sampling/gpt.py.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.sampling.filters import banned_ngrams, top_k, top_k_filter, top_p_filter

PyTree = Any


class GenerateOutput(NamedTuple):
    tokens: jax.Array  # [B * R, max_new_tokens] int32; padding (eos_id, or 0) after EOS
    lengths: jax.Array  # [B * R] int32: new tokens up to and including EOS
    # [B * R] float32: beams, the length-penalised score of the hypothesis; otherwise the sum
    # of the model's log-probs (before temperature and filters) of the new tokens, EOS included
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
    num_return_sequences: int = 1  # optional: runs saved before it existed return one


def read_settings(sample_config: ConfigDict) -> Settings:
    """The decoding fields of config.sample; ConfigError naming the field if one cannot work."""
    values = {}
    for field in dataclasses.fields(Settings):
        if field.name in sample_config:
            values[field.name] = sample_config[field.name]
        elif field.default is dataclasses.MISSING:
            raise ConfigError(f"config.sample.{field.name}: missing")
    settings = Settings(**values)

    def fail(field, why):
        raise ConfigError(f"config.sample.{field}: {why}, got {getattr(settings, field)!r}")

    def integer(value):
        return isinstance(value, int) and not isinstance(value, bool)

    def number(value):
        return integer(value) or (isinstance(value, float) and math.isfinite(value))

    for field in ("max_new_tokens", "num_beams", "num_return_sequences"):
        if not integer(getattr(settings, field)) or getattr(settings, field) < 1:
            fail(field, "must be a positive integer")
    for field in ("top_k", "no_repeat_ngram_size"):
        if not integer(getattr(settings, field)) or getattr(settings, field) < 0:
            fail(field, "must be a non-negative integer (0 = off)")
    if not number(settings.temperature) or not settings.temperature >= 0.0:
        fail("temperature", "must be a finite number >= 0 (0 = greedy)")
    if not number(settings.top_p) or not 0.0 < settings.top_p <= 1.0:
        fail("top_p", "must be in (0, 1] (1 = off)")
    if not number(settings.length_penalty):
        fail("length_penalty", "must be a finite number")
    if settings.early_stopping not in (True, False, "never"):
        fail("early_stopping", 'must be True, False or "never"')
    if settings.num_return_sequences > settings.num_beams:
        fail("num_return_sequences", f"must be <= num_beams={settings.num_beams}")
    return settings


def output_rows(output: GenerateOutput, eos_id: int) -> jax.Array:
    """Output tokens with -1 at and after each row's end (the EOS and the padding after it)."""
    tokens = output.tokens
    positions = jnp.arange(tokens.shape[1])[None]
    return jnp.where((positions < output.lengths[:, None]) & (tokens != eos_id), tokens, -1)


def is_deterministic(settings: Settings) -> bool:
    """Beam search and greedy decoding give the same output for every rng."""
    return settings.num_beams > 1 or settings.temperature == 0.0


# --------------------------------------------------------------------------------------------
# The decoder interface.


def take_rows(state: PyTree, rows: jax.Array) -> PyTree:
    """Rows [N'] of every array leaf with a batch axis 0; scalar leaves stay as they are."""
    return jax.tree.map(lambda x: x[rows] if jnp.ndim(x) else x, state)


class Decoder(NamedTuple):
    """A model seen one token at a time (see the module docstring for the contract)."""

    prefill: Callable[[PyTree, PyTree], tuple[jax.Array, PyTree]]
    extend: Callable[[PyTree, jax.Array, PyTree, jax.Array], tuple[jax.Array, PyTree]]
    take_rows: Callable[[PyTree, jax.Array], PyTree] = take_rows


def restrict_vocabulary(decoder: Decoder, vocab_size: int) -> Decoder:
    """Ids >= vocab_size get logit -inf: a vocabulary padded for speed (e.g. GPT-2's 50257 to
    50304) has untrained ids the tokenizer cannot decode."""

    def restrict(logits, state):
        return jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf), state

    return decoder._replace(
        prefill=lambda *args: restrict(*decoder.prefill(*args)),
        extend=lambda *args: restrict(*decoder.extend(*args)),
    )


class History(NamedTuple):
    """The tokens before the new ones that no_repeat_ngram sees (e.g. left-padded prompts)."""

    tokens: jax.Array  # [B, P] int32
    start: jax.Array  # [B] int32, the first real slot of each row


def _buffer(history: History | None, batch: int, settings: Settings, pad: int):
    """(buffer [B, P + max_new_tokens] int32: history then padding, start [B], P)."""
    if history is None:
        history = History(jnp.zeros((batch, 0), jnp.int32), jnp.zeros((batch,), jnp.int32))
    new = jnp.full((batch, settings.max_new_tokens), pad, jnp.int32)
    buffer = jnp.concatenate([jnp.asarray(history.tokens, jnp.int32), new], axis=1)
    return buffer, jnp.asarray(history.start, jnp.int32), history.tokens.shape[1]


def decode(
    decoder: Decoder,
    settings: Settings,
    eos_id: int | None,
    params: PyTree,
    inputs: PyTree,
    rng: jax.Array,
    history: History | None = None,
) -> GenerateOutput:
    """Beam search when settings.num_beams > 1, else sampling (greedy at temperature 0)."""
    if settings.num_beams > 1:
        return beam_search(decoder, settings, eos_id, params, inputs, history)
    return sample_loop(decoder, settings, eos_id, params, inputs, rng, history)


# --------------------------------------------------------------------------------------------
# Decoding loops.


class SampleState(NamedTuple):
    step: jax.Array  # int32 scalar
    buffer: jax.Array  # [B, S] int32, history then new tokens
    logits: jax.Array  # [B, V] float32, for the token of this step
    state: PyTree  # the decoder's
    done: jax.Array  # [B] bool, the row has emitted EOS
    lengths: jax.Array  # [B] int32
    scores: jax.Array  # [B] float32


def _filtered_choice(settings, logits, buffer, start, slot, rng, step):
    """The token [B] of one sampling step: n-gram ban, then argmax or a filtered draw."""
    if settings.no_repeat_ngram_size:
        ban = banned_ngrams(buffer, start, slot, settings.no_repeat_ngram_size, logits.shape[-1])
        logits = jnp.where(ban, -jnp.inf, logits)
    if settings.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / settings.temperature
    logits = top_p_filter(top_k_filter(logits, settings.top_k), settings.top_p)
    step_rng = jax.random.fold_in(rng, step)
    return jax.random.categorical(step_rng, logits, axis=-1).astype(jnp.int32)


def sample_loop(
    decoder: Decoder,
    settings: Settings,
    eos_id: int | None,
    params: PyTree,
    inputs: PyTree,
    rng: jax.Array,
    history: History | None = None,
) -> GenerateOutput:
    """Greedy (temperature 0) or sampled decoding, one new token per row and step."""
    pad = 0 if eos_id is None else eos_id
    logits, state = decoder.prefill(params, inputs)
    batch = logits.shape[0]
    buffer, start, width = _buffer(history, batch, settings, pad)
    init = SampleState(
        step=jnp.zeros((), jnp.int32),
        buffer=buffer,
        logits=logits,
        state=state,
        done=jnp.zeros((batch,), bool),
        lengths=jnp.zeros((batch,), jnp.int32),
        scores=jnp.zeros((batch,), jnp.float32),
    )

    def cond(carry):
        return (carry.step < settings.max_new_tokens) & ~jnp.all(carry.done)

    def body(carry):
        slot = width + carry.step
        token = _filtered_choice(settings, carry.logits, carry.buffer, start, slot, rng, carry.step)
        log_probs = jax.nn.log_softmax(carry.logits, axis=-1)
        log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
        scores = carry.scores + jnp.where(carry.done, 0.0, log_prob)
        lengths = carry.lengths + (~carry.done).astype(jnp.int32)
        token = jnp.where(carry.done, pad, token)
        done = carry.done if eos_id is None else carry.done | (token == eos_id)
        buffer = jax.lax.dynamic_update_slice_in_dim(carry.buffer, token[:, None], slot, axis=1)
        logits, state = decoder.extend(params, token, carry.state, carry.step)
        return SampleState(carry.step + 1, buffer, logits, state, done, lengths, scores)

    final = jax.lax.while_loop(cond, body, init)
    return GenerateOutput(
        tokens=final.buffer[:, width:],
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
    state: PyTree  # the decoder's, rows as buffer's
    beam_scores: jax.Array  # [B, K] float32, sum of log-probs of the live beams, best first
    done: jax.Array  # [B] bool, the prompt's search is over
    finished: Hypotheses


def _stop(settings: Settings, done, finished: Hypotheses, beam_scores, generated):
    """HF's per-prompt stop after a step: K hypotheses and, unless early_stopping is True, no
    live beam that could still beat the worst of them (scored at its current length for False,
    at the longest one for "never" when that is better)."""
    full = jnp.all(jnp.isfinite(finished.scores), axis=1)  # K hypotheses
    if settings.early_stopping is True:
        return done | full
    penalty = settings.length_penalty
    longest = settings.early_stopping == "never" and penalty > 0
    best_length = jnp.float32(settings.max_new_tokens) if longest else generated
    reachable = beam_scores[:, 0] / best_length**penalty
    return done | (full & (reachable <= finished.scores[:, -1]))


def beam_search(
    decoder: Decoder,
    settings: Settings,
    eos_id: int | None,
    params: PyTree,
    inputs: PyTree,
    history: History | None = None,
) -> GenerateOutput:
    """Beam search: HF generate's (transformers >= 4.50 `_beam_search`), vectorised.

    Each step takes the 2K best (beam, token) extensions of each prompt. Of the first K, those
    that end (in EOS, or at any token on the step that reaches max_new_tokens, as HF's
    max-length stopping criterion ends them) become finished hypotheses of prompts still
    searching, and the K best that do not end in EOS go on. A prompt stops by `early_stopping`
    (_stop). Returns the R = num_return_sequences best hypotheses of each prompt, best first.
    (HF's older BeamSearchScorer, before 4.50, ended only the EOS candidates on the last step
    and dropped the live beams of a prompt whose list they filled; this follows today's.)
    Unlike HF, the K - 1 copies of the prompt at step 0 start at -inf (HF: -1e9), so with
    K > V they never become hypotheses.
    """
    beams, new_tokens = settings.num_beams, settings.max_new_tokens
    pad = 0 if eos_id is None else eos_id
    penalty = settings.length_penalty

    logits, state = decoder.prefill(params, inputs)  # prefill B rows, then copy K times
    batch = logits.shape[0]
    rows = batch * beams
    buffer, start, width = _buffer(history, batch, settings, pad)
    expand = jnp.repeat(jnp.arange(batch), beams)  # [B * K]
    state, logits, buffer, start = (
        decoder.take_rows(state, expand),
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
        state=state,
        beam_scores=beam_scores.astype(jnp.float32),
        done=jnp.zeros((batch,), bool),
        finished=Hypotheses(
            tokens=jnp.full((batch, beams, new_tokens), pad, jnp.int32),
            scores=jnp.full((batch, beams), -jnp.inf, jnp.float32),
            lengths=jnp.zeros((batch, beams), jnp.int32),
        ),
    )

    def cond(carry):
        return (carry.step < new_tokens) & ~jnp.all(carry.done)

    def body(carry):
        step = carry.step
        generated = (step + 1).astype(jnp.float32)  # new tokens, the one chosen now included
        log_probs = jax.nn.log_softmax(carry.logits, axis=-1)  # [B * K, V]
        vocab = log_probs.shape[-1]
        if settings.no_repeat_ngram_size:
            ngram = settings.no_repeat_ngram_size
            ban = banned_ngrams(carry.buffer, start, width + step, ngram, vocab)
            log_probs = jnp.where(ban, -jnp.inf, log_probs)
        candidates = carry.beam_scores.reshape(rows, 1) + log_probs  # [B * K, V]
        top_scores, top = top_k(candidates.reshape(batch, beams * vocab), 2 * beams)
        source, token = top // vocab, top % vocab  # [B, 2K] each, best first
        is_eos = jnp.zeros_like(token, bool) if eos_id is None else token == eos_id

        # As HF: only a candidate ranked among the first K makes a hypothesis.
        ends = is_eos[:, :beams] | (step == new_tokens - 1)
        add = ends & jnp.isfinite(top_scores[:, :beams]) & ~carry.done[:, None]
        tokens = carry.buffer[first + source[:, :beams], width:]  # [B, K, new]
        new = Hypotheses(
            tokens=tokens.at[:, :, step].set(token[:, :beams]),
            scores=jnp.where(add, top_scores[:, :beams] / generated**penalty, -jnp.inf),
            lengths=jnp.full_like(token[:, :beams], step + 1),
        )
        finished = best_of(carry.finished, new)

        # The K best extensions that do not end in EOS go on (in rank order).
        rank = jnp.arange(2 * beams)
        order = jnp.argsort(jnp.where(is_eos, rank + 2 * beams, rank), axis=1)[:, :beams]
        beam_scores = jnp.take_along_axis(top_scores, order, axis=1)  # [B, K]
        parents = (first + jnp.take_along_axis(source, order, axis=1)).reshape(rows)
        next_tokens = jnp.take_along_axis(token, order, axis=1).reshape(rows)
        buffer = jax.lax.dynamic_update_slice_in_dim(
            carry.buffer[parents], next_tokens[:, None], width + step, axis=1
        )
        state = decoder.take_rows(carry.state, parents)
        logits, state = decoder.extend(params, next_tokens, state, step)
        done = _stop(settings, carry.done, finished, beam_scores, generated)
        return BeamState(step + 1, buffer, logits, state, beam_scores, done, finished)

    final = jax.lax.while_loop(cond, body, init)
    best, returned = final.finished, settings.num_return_sequences  # sorted: 0 is the best
    return GenerateOutput(
        tokens=best.tokens[:, :returned].reshape(batch * returned, new_tokens),
        lengths=best.lengths[:, :returned].reshape(-1),
        scores=best.scores[:, :returned].reshape(-1),
        steps=final.step,
    )
