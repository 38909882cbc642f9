"""GPT generation (sampling/gpt.py over sampling/decoding.py) against references written here without a cache.

A tiny random GPT (2 layers, width 32, vocab 37) with sharpened weights, so that the tokens
differ from step to step. Every generate is jitted once per setting with XLA's backend
optimisations off (compiling, not running, is what costs time on CPU).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxgen.config import ConfigError
from jaxgen.models import gpt
from jaxgen.sampling import decoding
from jaxgen.sampling import gpt as sampling
from tests.helpers import gpt_model_config

VOCAB = 37
NEW = 8
# Left-padded prompts of different lengths, without a repeated bigram.
PROMPTS = ([5, 6, 7], [1, 2, 3, 4, 9], [30, 11])
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def model_config(**overrides):
    return gpt_model_config(**{"block_size": 16, "num_heads": 2, "attention": "xla", **overrides})


def sample_config(**overrides):
    fields = dict(
        max_new_tokens=NEW,
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        num_beams=1,
        num_return_sequences=1,
        length_penalty=1.0,
        early_stopping=False,
        no_repeat_ngram_size=0,
        use_kv_cache=True,
        seed=0,
    )
    fields.update(overrides)
    return ConfigDict(fields)


def setup(position="learned", vocab=VOCAB):
    """(model, model_config, params): random weights drawn with NumPy (no init to compile)."""
    return _setup(position, vocab)  # one cache key, however it is called


@functools.cache
def _setup(position, vocab):
    config = model_config(position=position)
    model = gpt.make_model(config, vocab)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    rng = np.random.default_rng(0)

    def draw(path, shape):
        name = jax.tree_util.keystr(path)
        if "scale" in name:  # LayerNorm
            return jnp.ones(shape.shape, jnp.float32)
        std = 0.02 if len(shape.shape) == 1 else 0.3
        return jnp.asarray(rng.normal(0.0, std, shape.shape).astype(np.float32))

    return model, config, jax.tree.map_with_path(draw, shapes["params"])


def generator(position="learned", vocab=VOCAB, eos_id=None, real_vocab=None, **settings):
    """Jitted generate(prompt, prompt_lengths, rng) of these settings, compiled once."""
    settings = tuple(sorted(sample_config(**settings).to_dict().items()))
    return _generator(position, vocab, eos_id, real_vocab, settings)


@functools.cache
def _generator(position, vocab, eos_id, real_vocab, settings):
    model, config, params = setup(position, vocab)
    generate = sampling.make_generate(
        model, config, sample_config(**dict(settings)), eos_id, vocab_size=real_vocab
    )
    return functools.partial(jax.jit(generate, compiler_options=FAST_COMPILE), params)


def batch(prompts=PROMPTS, width=5):
    """Left-padded prompts [B, width] (padding 0) and their lengths [B]."""
    prompt = np.zeros((len(prompts), width), np.int32)
    for row, tokens in enumerate(prompts):
        prompt[row, width - len(tokens) :] = tokens
    return jnp.asarray(prompt), jnp.asarray([len(p) for p in prompts], jnp.int32)


def run(prompts=PROMPTS, seed=0, **settings):
    output = generator(**settings)(*batch(prompts), jax.random.key(seed))
    return jax.tree.map(np.asarray, output)


def full_model(position="learned", vocab=VOCAB):
    """Uncached logits [N, T, V] of tokens [N, T] right-padded to block_size (one compile).

    The model is causal, so the padding after a sequence never changes its logits.
    """
    return _full_model(position, vocab)


@functools.cache
def _full_model(position, vocab):
    model, config, params = setup(position, vocab)
    apply = jax.jit(lambda tokens: model.apply({"params": params}, tokens))

    def logits(tokens):
        tokens = np.asarray(tokens, np.int32)
        padded = np.zeros((tokens.shape[0], config.block_size), np.int32)
        padded[:, : tokens.shape[1]] = tokens
        return np.asarray(apply(jnp.asarray(padded)), np.float64)[:, : tokens.shape[1]]

    return logits


def log_probs(sequence, position="learned", vocab=VOCAB):
    """Full-model (no cache) log-probs [T - 1, V] of each next token of one sequence."""
    logits = full_model(position, vocab)([sequence])[0, :-1]
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def sequence_log_prob(prompt, new_tokens, **kw):
    scores = log_probs(list(prompt) + list(new_tokens), **kw)[len(prompt) - 1 :]
    return float(sum(scores[t, token] for t, token in enumerate(new_tokens)))


def reference_greedy(prompt, steps, position="learned"):
    """argmax decoding by a plain Python loop over uncached model calls on the real tokens."""
    tokens = list(prompt)
    for _ in range(steps):
        tokens.append(int(np.argmax(full_model(position)([tokens])[0, -1])))
    return tokens[len(prompt) :]


def real_rows(output, prompts=PROMPTS):
    """Each row's prompt + new tokens up to its length, as lists."""
    return [
        list(p) + list(t[:n])
        for p, t, n in zip(prompts, output.tokens, output.lengths, strict=True)
    ]


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_greedy_equals_reference_loop(position):
    """Cached greedy == a Python loop of uncached model calls; learned: == the uncached path."""
    cached = run(position=position)
    assert cached.tokens.shape == (len(PROMPTS), NEW) and cached.tokens.dtype == np.int32
    np.testing.assert_array_equal(cached.lengths, NEW)
    assert int(cached.steps) == NEW
    assert len({tuple(row) for row in cached.tokens[:, :4]}) > 1  # the model is not degenerate
    for prompt, tokens, score in zip(PROMPTS, cached.tokens, cached.scores, strict=True):
        assert list(tokens) == reference_greedy(prompt, NEW, position)
        recomputed = sequence_log_prob(prompt, tokens, position=position)
        np.testing.assert_allclose(score, recomputed, rtol=1e-4)
    if position == "learned":  # rope is covered by the reference: one compile less
        uncached = run(position=position, use_kv_cache=False)
        np.testing.assert_array_equal(cached.tokens, uncached.tokens)
        np.testing.assert_allclose(cached.scores, uncached.scores, rtol=1e-5)


@pytest.mark.parametrize(
    "settings", [dict(temperature=1.0, top_k=1), dict(temperature=1.0, top_p=1e-4)]
)
def test_top_k_1_and_tiny_top_p_are_greedy(settings):
    np.testing.assert_array_equal(run(**settings).tokens, run().tokens)


def test_one_beam_is_greedy():
    """Called directly: make_generate sends num_beams=1 to the greedy loop."""
    model, config, params = setup()
    settings = sampling.read_settings(sample_config(num_beams=1))
    prompt, lengths = batch()
    width = prompt.shape[1]
    inputs = (prompt, width - lengths)
    decoder = sampling.cached_decoder(model, config, width + NEW)

    def beam(params):
        history = decoding.History(*inputs)
        return decoding.beam_search(decoder, settings, None, params, inputs, history)

    output = jax.jit(beam, compiler_options=FAST_COMPILE)(params)
    greedy = run()
    np.testing.assert_array_equal(np.asarray(output.tokens), greedy.tokens)
    np.testing.assert_allclose(np.asarray(output.scores), greedy.scores / NEW, rtol=1e-5)


def test_beam_search_scores_and_beats_greedy():
    """The reported score is the uncached model's (so the cache rows follow their beams)."""
    beams, greedy = run(num_beams=4), run()
    for prompt, beam_tokens, beam_score, greedy_tokens in zip(
        PROMPTS, beams.tokens, beams.scores, greedy.tokens, strict=True
    ):
        recomputed = sequence_log_prob(prompt, beam_tokens) / NEW  # length_penalty 1
        np.testing.assert_allclose(beam_score, recomputed, rtol=1e-4)
        assert recomputed >= sequence_log_prob(prompt, greedy_tokens) / NEW - 1e-6


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, True), (-1.0, False)])
def test_beam_search_is_exhaustive_with_enough_beams(length_penalty, early_stopping):
    """Vocab 5, 3 new tokens, EOS 2 and 25 beams >= 5**2: beam search finds the best sequence.

    The hypotheses are every sequence of 3 tokens or fewer that has EOS only at its end,
    scored sum(log p) / length**length_penalty with EOS counted in the length.
    """
    vocab, eos, new, prompt = 5, 2, 3, [1, 4, 3]
    continuations = np.array(list(itertools.product(range(vocab), repeat=new)), np.int32)
    sequences = np.concatenate([np.tile(prompt, (len(continuations), 1)), continuations], 1)
    logits = full_model(vocab=vocab)(sequences)[:, len(prompt) - 1 : -1]  # [125, 3, V]
    log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    token_log_probs = np.take_along_axis(log_probs, continuations[..., None], -1)[..., 0]
    scores = {}
    for tokens, step_log_probs in zip(continuations, token_log_probs, strict=True):
        ends = [t + 1 for t in range(new) if tokens[t] == eos]
        length = ends[0] if ends else new
        scores[tuple(tokens[:length])] = step_log_probs[:length].sum() / length**length_penalty
    best, second = sorted(scores, key=scores.get, reverse=True)[:2]
    assert scores[best] - scores[second] > 1e-4  # a unique answer

    generate = generator(
        vocab=vocab,
        eos_id=eos,
        max_new_tokens=new,
        num_beams=25,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    output = jax.tree.map(np.asarray, generate(*batch([prompt], 3), jax.random.key(0)))
    length = int(output.lengths[0])
    assert tuple(output.tokens[0, :length]) == best
    np.testing.assert_array_equal(output.tokens[0, length:], eos)
    np.testing.assert_allclose(output.scores[0], scores[best], rtol=1e-4)


def test_beam_early_stopping():
    """True stops first, "never" last; a later stop only adds hypotheses, so scores only rise."""
    eos = 5  # common in this model's beams: hypotheses finish early
    outputs = [run(eos_id=eos, num_beams=2, early_stopping=e) for e in (True, False, "never")]
    steps = [int(output.steps) for output in outputs]
    assert steps[0] <= steps[1] <= steps[2] and steps[0] < NEW == steps[2]
    for earlier, later in itertools.pairwise(outputs):
        assert (earlier.scores <= later.scores + 1e-6).all()
    for output in outputs:
        for prompt, tokens, length, score in zip(
            PROMPTS, output.tokens, output.lengths, output.scores, strict=True
        ):
            assert (tokens[: length - 1] != eos).all() and (tokens[length:] == eos).all()
            recomputed = sequence_log_prob(prompt, tokens[:length]) / length  # length_penalty 1
            np.testing.assert_allclose(score, recomputed, rtol=1e-4)


def reference_beam_search(prompt, beams, new, eos, length_penalty, early_stopping, vocab):
    """HF generate's beam search (transformers >= 4.50 `_beam_search`) for one prompt, by plain
    Python over uncached model calls: the finished hypotheses [(score, tokens)], best first.

    Each step ranks every (beam, token) extension and keeps the first 2K. Of the first K, those
    that hit a stopping criterion (EOS, or the max length on the last step) join the finished
    list unless the search has stopped (HF: early_stopping=True and the list was already full
    before this step, or the heuristic below held after an earlier step); the K best of the 2K
    that do not end in EOS go on.
    """
    live, finished, stopped = [(0.0, ())], [], False
    for step in range(new):
        candidates = []
        for total, tokens in live:
            next_log_probs = log_probs([*prompt, *tokens, 0], vocab=vocab)[-1]
            candidates += [(total + next_log_probs[v], (*tokens, v)) for v in range(vocab)]
        candidates = sorted(candidates, key=lambda c: -c[0])[: 2 * beams]
        ends = [tokens[-1] == eos or step == new - 1 for _, tokens in candidates]
        if not stopped:
            finished += [
                (total / (step + 1) ** length_penalty, tokens)
                for (total, tokens), end in zip(candidates[:beams], ends, strict=False)
                if end
            ]
            finished = sorted(finished, reverse=True)[:beams]
        live = [c for c, end in zip(candidates, ends, strict=True) if not end][:beams]
        if len(finished) == beams and live:
            longest = early_stopping == "never" and length_penalty > 0
            reachable = live[0][0] / (new if longest else step + 1) ** length_penalty
            stopped = early_stopping is True or reachable <= finished[-1][0]
        if stopped:
            break
    return finished


@pytest.mark.parametrize(
    "early_stopping,length_penalty", [(True, 1.0), (False, 1.0), ("never", 2.0), (False, -1.0)]
)
def test_beam_search_equals_hf_reference(early_stopping, length_penalty):
    """Vocab 5, EOS 1, 2 beams, 4 new tokens: both returned hypotheses and their scores.

    Prompt [0, 3, 4] with early_stopping=True is the case where ending only the EOS candidates
    on the last step differs: (1,) finishes at step 0, (4, 4, 4, 1) fills the list on the last
    step, and HF also finishes the live (4, 4, 4, 4) there, which scores best.
    """
    vocab, eos, new, beams = 5, 1, 4, 2
    prompts = [[0, 3, 4], [0, 2, 4], [2, 0, 3], [3, 3, 1]]
    generate = generator(
        vocab=vocab,
        eos_id=eos,
        max_new_tokens=new,
        num_beams=beams,
        num_return_sequences=beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    output = jax.tree.map(np.asarray, generate(*batch(prompts, 3), jax.random.key(0)))
    assert output.tokens.shape == (len(prompts) * beams, new)
    for row, prompt in enumerate(prompts):
        expected = reference_beam_search(
            prompt, beams, new, eos, length_penalty, early_stopping, vocab
        )
        for k, (score, tokens) in enumerate(expected):
            got = row * beams + k
            length = int(output.lengths[got])
            assert tuple(output.tokens[got, :length]) == tokens, (prompt, k)
            np.testing.assert_array_equal(output.tokens[got, length:], eos)
            np.testing.assert_allclose(output.scores[got], score, rtol=1e-4)
    if early_stopping is True:
        np.testing.assert_array_equal(output.tokens[:2], [[4, 4, 4, 4], [4, 4, 4, 1]])


def test_num_return_sequences_are_the_best_distinct_beams():
    output = run(num_beams=4, num_return_sequences=3, eos_id=5)
    assert output.tokens.shape == (3 * len(PROMPTS), NEW)
    best = run(num_beams=4, eos_id=5)
    for row, prompt in enumerate(PROMPTS):
        rows = slice(3 * row, 3 * row + 3)
        texts = [
            tuple(t[:n]) for t, n in zip(output.tokens[rows], output.lengths[rows], strict=True)
        ]
        assert len(set(texts)) == 3 and texts[0] == tuple(best.tokens[row, : best.lengths[row]])
        assert (np.diff(output.scores[rows]) <= 0).all()  # best first
        for tokens, score in zip(texts, output.scores[rows], strict=True):
            recomputed = sequence_log_prob(prompt, tokens) / len(tokens)  # length_penalty 1
            np.testing.assert_allclose(score, recomputed, rtol=1e-4)


SAMPLE_TOP_K = dict(temperature=1.5, top_k=3)
SAMPLE_TOP_P = dict(temperature=1.5, top_p=0.5)


@pytest.mark.parametrize(
    "plain,n",
    [(dict(), 2), (SAMPLE_TOP_K, 1), (dict(num_beams=4), 3)],
    ids=["greedy", "sampling", "beams"],
)
def test_no_repeat_ngram(plain, n):
    def repeats(rows):
        grams = [[tuple(row[i : i + n]) for i in range(len(row) - n + 1)] for row in rows]
        return sum(len(row) - len(set(row)) for row in grams)

    assert repeats(real_rows(run(**plain))) > 0  # the ban has something to do
    # Beams also run uncached here, the one check of beam search without the cache.
    banned = dict(plain, no_repeat_ngram_size=n, use_kv_cache="num_beams" not in plain)
    assert repeats(real_rows(run(**banned))) == 0


def test_eos_ends_rows_and_stops_the_loop():
    plain = run()
    eos = int(plain.tokens[0, 2])  # row 0 ends at or before its third token

    def expected(tokens):
        hits = np.flatnonzero(tokens == eos)
        return NEW if not len(hits) else int(hits[0]) + 1

    same = PROMPTS[:1] * len(PROMPTS)  # the same prompt in every row: all end together
    for prompts, rows in ((PROMPTS, plain.tokens), (same, plain.tokens[[0, 0, 0]])):
        output = run(prompts, eos_id=eos)
        lengths = [expected(tokens) for tokens in rows]
        np.testing.assert_array_equal(output.lengths, lengths)
        assert int(output.steps) == max(lengths)
        for tokens, reference, length in zip(output.tokens, rows, lengths, strict=True):
            np.testing.assert_array_equal(tokens[:length], reference[:length])
            np.testing.assert_array_equal(tokens[length:], eos)  # padding after EOS
    assert int(output.steps) < NEW  # every row ended: the loop stopped early


def test_sampling_seeds():
    first, again, other = (run(seed=seed, **SAMPLE_TOP_K) for seed in (0, 0, 1))
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert (first.tokens != other.tokens).mean() > 0.3


@pytest.mark.parametrize("settings", [SAMPLE_TOP_K, SAMPLE_TOP_P], ids=["top_k", "top_p"])
def test_samples_stay_in_the_filtered_set(settings):
    """Every sampled token is allowed by the filter on the uncached model's logits."""
    prompts = [[3, 1, 4, 1, 5], [2, 7, 1, 8, 2], [9, 9, 8, 7, 6]]  # equal lengths
    for seed in range(4):
        output = run(prompts, seed, **settings)
        sequences = np.concatenate([prompts, output.tokens], 1)
        logits = full_model()(sequences)[:, len(prompts[0]) - 1 : -1] / 1.5  # [B, NEW, V]
        chosen = np.take_along_axis(logits, output.tokens[..., None], -1)  # [B, NEW, 1]
        if "top_k" in settings:
            assert ((logits > chosen).sum(-1) < settings["top_k"]).all()
        else:
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            above = np.where(logits > chosen, probs, 0.0).sum(-1)  # mass ranked above it
            assert (above < settings["top_p"] + 1e-5).all()


def test_padded_vocabulary_ids_are_never_emitted():
    """A model vocabulary padded beyond the tokenizer's (37 > 20): the extra ids never come."""
    output = run(seed=0, real_vocab=20, temperature=3.0)  # hot: each of 37 ids is likely
    assert output.tokens.max() < 20  # by chance: (20 / 37) ** 24 < 1e-6


def test_decode_is_one_while_loop_and_block_size_is_checked():
    model, config, params = setup()
    calls = []

    class CountingModel:  # counts the model calls traced
        def apply(self, *args, **kwargs):
            calls.append(1)
            return model.apply(*args, **kwargs)

    for num_beams in (1, 2):
        calls.clear()
        generate = sampling.make_generate(
            CountingModel(), config, sample_config(num_beams=num_beams), None
        )
        text = jax.jit(generate).lower(params, *batch(), jax.random.key(0)).as_text()
        assert text.count("stablehlo.while") == 1
        assert len(calls) == 2  # the prefill and the loop body's one-token call, for 8 tokens
    long = sampling.make_generate(model, config, sample_config(max_new_tokens=12), None)
    with pytest.raises(ValueError, match="config.sample.max_new_tokens"):
        jax.eval_shape(long, params, *batch(), jax.random.key(0))  # 5 + 12 > block_size 16
    setup_rope = setup("rope")  # rope has no position table: no limit
    long = sampling.make_generate(
        setup_rope[0], setup_rope[1], sample_config(max_new_tokens=12), None
    )
    jax.eval_shape(long, setup_rope[2], *batch(), jax.random.key(0))


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_new_tokens", 0),
        ("temperature", -1.0),
        ("top_k", -1),
        ("top_p", 0.0),
        ("num_beams", 0),
        ("early_stopping", "sometimes"),
        ("no_repeat_ngram_size", -2),
        ("num_return_sequences", 2),  # > num_beams = 1
    ],
)
def test_bad_settings_name_the_field(field, value):
    model, config, _ = setup()
    with pytest.raises(ConfigError, match=f"config.sample.{field}:"):
        sampling.make_generate(model, config, sample_config(**{field: value}), None)


class FakeTokenizer:
    """Characters a-z as ids 1..26; id 0 is EOS."""

    vocab_size, eos_id = 27, 0

    def encode(self, text):
        return np.array([ord(c) - ord("a") + 1 for c in text], np.int32)

    def decode(self, ids):
        return "".join(chr(int(i) + ord("a") - 1) for i in ids)


def test_encode_prompts_and_decode_outputs():
    tokenizer = FakeTokenizer()
    prompt, lengths = sampling.encode_prompts(tokenizer, ["abc", "z"])
    np.testing.assert_array_equal(prompt, [[1, 2, 3], [0, 0, 26]])
    np.testing.assert_array_equal(lengths, [3, 1])
    assert sampling.encode_prompts(tokenizer, ["ab"], width=4)[0].tolist() == [[0, 0, 1, 2]]
    with pytest.raises(ValueError):
        sampling.encode_prompts(tokenizer, ["abc", ""])
    output = sampling.GenerateOutput(
        tokens=np.array([[4, 5, 0, 0], [6, 7, 8, 9]]),
        lengths=np.array([3, 4]),
        scores=np.zeros(2),
        steps=np.int32(4),
    )
    assert sampling.decode_outputs(tokenizer, output) == ["de", "fghi"]
