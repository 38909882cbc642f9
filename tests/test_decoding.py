"""sampling/decoding.py with a decoder that is not GPT: the interface a new family implements.

A toy "copy" decoder whose state carries per-row arrays besides a counter, as an
encoder-decoder's does (its encoder output and source mask): the logits favour source[row,
position[row]] by a margin of 3 nats. Beam search reorders the state by beam with the default
take_rows, so every row must still copy its own source.
"""

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxgen.sampling import decoding, filters

VOCAB, MARGIN = 9, 3.0
SOURCES = np.array([[3, 1, 4, 1, 5], [2, 7, 1, 8, 2]], np.int32)


def copy_decoder():
    def logits_of(state):
        position = jnp.minimum(state["position"], state["source"].shape[1] - 1)
        target = jnp.take_along_axis(state["source"], position[:, None], axis=1)[:, 0]
        return jnp.where(jax.nn.one_hot(target, VOCAB) > 0, 0.0, -MARGIN)  # [N, V]

    def prefill(params, source):
        del params
        state = {
            "source": source,  # [B, S], per row: reordered by beam
            "mask": jnp.ones_like(source, bool),  # [B, S], per row
            "position": jnp.zeros((source.shape[0],), jnp.int32),  # [B], per row
            "calls": jnp.zeros((), jnp.int32),  # shared: kept as it is
        }
        return logits_of(state), state

    def extend(params, token, state, step):
        del params, token, step
        state = dict(state, position=state["position"] + 1, calls=state["calls"] + 1)
        return logits_of(state), state

    return decoding.Decoder(prefill, extend)


def settings(**overrides):
    fields = dict(
        max_new_tokens=SOURCES.shape[1],
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        num_beams=1,
        length_penalty=1.0,
        early_stopping=False,
        no_repeat_ngram_size=0,
        use_kv_cache=True,
    )
    return decoding.read_settings(ConfigDict(fields | overrides))


def test_every_row_copies_its_own_source_with_beams_and_greedy():
    log_p = -np.log1p((VOCAB - 1) * np.exp(-MARGIN))  # of the favoured token
    for num_beams in (1, 3):
        config = settings(num_beams=num_beams, num_return_sequences=min(num_beams, 2))

        def decode(source, config=config):
            return decoding.decode(copy_decoder(), config, None, {}, source, jax.random.key(0))

        output = jax.tree.map(np.asarray, jax.jit(decode)(jnp.asarray(SOURCES)))
        returned = config.num_return_sequences
        np.testing.assert_array_equal(output.tokens[::returned], SOURCES)
        best = SOURCES.shape[1] * log_p / (SOURCES.shape[1] if num_beams > 1 else 1)
        np.testing.assert_allclose(output.scores[::returned], best, rtol=1e-5)
        if returned == 2:  # the runner-up differs from the copy in one token
            assert ((output.tokens[1::2] != SOURCES).sum(axis=1) == 1).all()


def test_top_k_equals_lax_top_k_with_ties_and_infinities():
    """filters.top_k (beam search's candidates) gives lax.top_k's values, indices and order."""
    rng = np.random.default_rng(0)
    x = rng.integers(-5, 3, (6, 50)).astype(np.float32) / 2  # many ties
    x[0] = -np.inf  # a prompt's K - 1 copies at step 0
    x[1, :30] = -np.inf
    x[2, 3], x[2, 5] = -0.0, 0.0
    x[3, 7] = np.inf
    for k in (1, 8, 50):
        expected = jax.lax.top_k(jnp.asarray(x), k)
        values, indices = jax.jit(filters.top_k, static_argnums=1)(jnp.asarray(x), k)
        np.testing.assert_array_equal(values, expected[0])
        np.testing.assert_array_equal(indices, expected[1])
        assert indices.dtype == jnp.int32
