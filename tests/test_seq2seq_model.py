"""The Transformer encoder-decoder: shapes, dtypes, masks, positions and the cached decode path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models import seq2seq
from jaxgen.sampling import decoding
from jaxgen.sampling import seq2seq as sampling

PAD = 30


def model_config(**overrides):
    config = ConfigDict(
        dict(
            num_layers=2,
            num_decoder_layers=2,
            num_heads=2,
            width=16,
            ff_width=32,
            dropout=0.0,
            norm="post",
            max_len=16,
            dtype="float32",
            param_dtype="float32",
        )
    )
    config.update(overrides)
    return config


def _init(config, source, target):
    model = seq2seq.make_model(config, 31, PAD)
    params = model.init(jax.random.key(0), source, target)["params"]
    return model, params


def _batch():
    rng = np.random.default_rng(0)
    source = rng.integers(0, PAD, (3, 7)).astype(np.int32)
    source[1, 5:] = PAD
    target = rng.integers(0, PAD, (3, 6)).astype(np.int32)
    return jnp.asarray(source), jnp.asarray(target)


def test_sinusoids_match_the_paper():
    table = seq2seq.sinusoids(10, 6)
    for p in range(10):
        for i in range(3):
            assert np.isclose(table[p, 2 * i], np.sin(p / 10000 ** (2 * i / 6)))
            assert np.isclose(table[p, 2 * i + 1], np.cos(p / 10000 ** (2 * i / 6)))


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_shapes_dtypes_and_tied_embedding(norm):
    source, target = _batch()
    config = model_config(norm=norm, dtype="bfloat16")
    model, params = _init(config, source, target)
    logits = model.apply({"params": params}, source, target)
    assert logits.shape == (3, 6, 31) and logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert "embed" in params and not any("head" in k for k in params)  # output tied


def test_causal_and_padding_masks():
    source, target = _batch()
    model, params = _init(model_config(), source, target)
    logits = model.apply({"params": params}, source, target)
    # Later target tokens do not change earlier logits.
    changed = target.at[:, 4:].set(3)
    np.testing.assert_allclose(
        model.apply({"params": params}, source, changed)[:, :4], logits[:, :4], atol=1e-5
    )
    # Extra source padding changes nothing.
    padded = jnp.concatenate([source, jnp.full((3, 3), PAD, jnp.int32)], axis=1)
    np.testing.assert_allclose(model.apply({"params": params}, padded, target), logits, atol=1e-5)
    # A real source token does.
    other = source.at[:, 0].set((source[:, 0] + 1) % PAD)
    assert not np.allclose(model.apply({"params": params}, other, target), logits, atol=1e-3)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_cached_decode_matches_the_full_forward(norm):
    source, target = _batch()
    model, params = _init(model_config(norm=norm), source, target)
    variables = {"params": params}
    full = model.apply(variables, source, target)
    memory = model.apply(variables, source, method=seq2seq.Transformer.encode)
    cache = model.apply(variables, source, memory, 8, method=seq2seq.Transformer.start_cache)
    assert len(cache.keys) == 2 and cache.keys[0].shape == (3, 2, 8, 8)  # [B, heads, slots, d]
    assert len(cache.cross_keys) == 2 and cache.cross_keys[0].shape == (3, 2, 7, 8)
    steps = []
    for t in range(target.shape[1]):
        logits, cache = model.apply(
            variables, target[:, t : t + 1], cache, method=seq2seq.Transformer.extend
        )
        steps.append(logits[:, 0])
    np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=1e-4)
    assert int(cache.length) == target.shape[1]


def test_dropout_only_in_training():
    source, target = _batch()
    model, params = _init(model_config(dropout=0.5), source, target)
    variables = {"params": params}
    a = model.apply(variables, source, target, train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply(variables, source, target, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)
    np.testing.assert_allclose(
        model.apply(variables, source, target), model.apply(variables, source, target)
    )


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"width": 15}, "width"),
        ({"norm": "sandwich"}, "norm"),
        ({"num_layers": 0}, "num_layers"),
        ({"max_len": 4}, "max_len"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_check_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"config.model.{field}"):
        seq2seq.check_config(model_config(**overrides), 8, 8)


def test_beams_share_the_cross_attention_keys_of_their_source():
    """A cache of N = B * R rows over one copy of each source's cross-attention keys gives the
    logits of a cache whose cross-attention arrays are copied per row."""
    source, target = _batch()
    model, params = _init(model_config(), source, target)
    variables = {"params": params}
    memory = model.apply(variables, source, method=seq2seq.Transformer.encode)
    shared = model.apply(variables, source, memory, 8, method=seq2seq.Transformer.start_cache)
    rows = jnp.repeat(jnp.arange(3), 2)  # two beams per source
    copied = jax.tree.map(lambda x: x[rows] if x.ndim else x, shared)
    shared = shared.replace(
        keys=tuple(k[rows] for k in shared.keys), values=tuple(v[rows] for v in shared.values)
    )
    assert shared.cross_keys[0].shape[0] == 3 and copied.cross_keys[0].shape[0] == 6
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, PAD, (6, 3)), jnp.int32)
    for t in range(tokens.shape[1]):  # one token per step, as decoding feeds them
        a, shared = model.apply(
            variables, tokens[:, t : t + 1], shared, method=seq2seq.Transformer.extend
        )
        b, copied = model.apply(
            variables, tokens[:, t : t + 1], copied, method=seq2seq.Transformer.extend
        )
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Several tokens a row at once (a prefill of a longer prefix) group the same way.
    a, _ = model.apply(variables, tokens, shared, method=seq2seq.Transformer.extend)
    b, _ = model.apply(variables, tokens, copied, method=seq2seq.Transformer.extend)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_beam_step_moves_less_memory_than_copying_the_whole_state():
    """XLA's cost analysis of one compiled beam step (take_rows + extend): leaving the
    cross-attention arrays out of take_rows reads and writes fewer bytes, for the same flops."""
    source = jnp.asarray(np.random.default_rng(2).integers(0, PAD, (3, 48)), jnp.int32)
    model, params = _init(model_config(max_len=48), source, source[:, :4])
    decoder = sampling.make_decoder(model, eos_id=1, pad_id=PAD, max_len=4)  # long sources
    _, state = decoder.prefill(params, source)
    rows = jnp.repeat(jnp.arange(3), 4)  # four beams per source
    tokens = jnp.zeros((12,), jnp.int32)
    parents = (rows * 4 + jnp.array([1, 0, 3, 2] * 3)).astype(jnp.int32)  # beams swap places

    def cost(take_rows):
        def step(params, state):
            return decoder.extend(params, tokens, take_rows(state, parents), jnp.int32(0))

        analysis = jax.jit(step).lower(params, take_rows(state, rows)).compile().cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        return analysis["flops"], analysis["bytes accessed"]

    (flops, moved), (copy_flops, copied) = cost(decoder.take_rows), cost(decoding.take_rows)
    assert flops == pytest.approx(copy_flops, rel=0.05) and moved < 0.75 * copied


def test_a_packed_row_gives_each_pair_its_own_logits():
    """Row [a | b] with segment ids and per-pair positions == a and b run alone, unpadded."""
    rng = np.random.default_rng(3)
    eos = 0
    a_source, b_source = rng.integers(1, PAD, 4).tolist() + [eos], rng.integers(1, PAD, 6).tolist()
    b_source += [eos]
    a_target, b_target = (
        [eos] + rng.integers(1, PAD, 3).tolist(),
        [eos] + rng.integers(1, PAD, 5).tolist(),
    )
    S, T = 14, 12  # room for both plus padding
    source = a_source + b_source + [PAD] * (S - 12)
    target_in = a_target + b_target + [PAD] * (T - 10)
    source_segment = [1] * 5 + [2] * 7 + [0] * (S - 12)
    target_segment = [1] * 4 + [2] * 6 + [0] * (T - 10)
    packing = dict(
        source_segment=jnp.asarray([source_segment]),
        source_position=jnp.asarray([list(range(5)) + list(range(7)) + [0] * (S - 12)]),
        target_segment=jnp.asarray([target_segment]),
        target_position=jnp.asarray([list(range(4)) + list(range(6)) + [0] * (T - 10)]),
    )
    for norm in ("post", "pre"):
        model, params = _init(
            model_config(norm=norm), jnp.asarray([source]), jnp.asarray([target_in])
        )
        packed = model.apply(
            {"params": params}, jnp.asarray([source]), jnp.asarray([target_in]), **packing
        )[0]
        alone_a = model.apply({"params": params}, jnp.asarray([a_source]), jnp.asarray([a_target]))[
            0
        ]
        alone_b = model.apply({"params": params}, jnp.asarray([b_source]), jnp.asarray([b_target]))[
            0
        ]
        np.testing.assert_allclose(packed[:4], alone_a, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(packed[4:10], alone_b, atol=1e-5, rtol=1e-5)
        assert np.isfinite(packed).all()


def numpy_layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]  # Flax's epsilon


def numpy_attention(p, x, context, mask):
    """Multi-head attention of x [B, T, C] over context [B, S, C]; mask [B, T, S] bool."""
    q, k, v = (
        np.einsum("btc,chd->bhtd", h, p[name]["kernel"]) + p[name]["bias"][:, None]
        for name, h in (("query", x), ("key", context), ("value", context))
    )  # [B, heads, T or S, head_dim]
    scores = np.einsum("bhtd,bhsd->bhts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask[:, None], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    y = np.einsum("bhts,bhsd->bthd", weights, v)
    return np.einsum("bthd,hdc->btc", y, p["out"]["kernel"]) + p["out"]["bias"]


def numpy_transformer(params, source, target_in, norm, layers):
    """Vaswani et al.'s encoder-decoder in NumPy: shared embeddings × √d plus sinusoids, the
    encoder masking padding keys, the decoder causal with cross-attention masking source
    padding; post-LN x = LN(x + F(x)) or pre-LN x = x + F(LN(x)) with a final LN per stack;
    logits x E^T."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    embedding = p["embed"]["embedding"]
    width = embedding.shape[1]

    def embed(tokens):
        position = np.arange(tokens.shape[1])[:, None]
        i = np.arange(width // 2)[None]
        table = np.zeros((tokens.shape[1], width))
        table[:, 0::2] = np.sin(position / 10000 ** (2 * i / width))
        table[:, 1::2] = np.cos(position / 10000 ** (2 * i / width))
        return embedding[tokens] * np.sqrt(width) + table

    def sublayer(x, layer, index, fn):
        if norm == "pre":
            return x + fn(numpy_layer_norm(x, layer[f"norms_{index}"]))
        return numpy_layer_norm(x + fn(x), layer[f"norms_{index}"])

    def feed_forward(layer, h):
        f = layer["feed_forward"]
        hidden = np.maximum(h @ f["fc"]["kernel"] + f["fc"]["bias"], 0)
        return hidden @ f["proj"]["kernel"] + f["proj"]["bias"]

    source_keys = np.broadcast_to((source != PAD)[:, None, :], source.shape + source.shape[1:])
    x = embed(source)
    for n in range(layers):
        layer = p[f"encoder_{n}"]
        x = sublayer(
            x,
            layer,
            0,
            lambda h, layer=layer: numpy_attention(layer["self_attention"], h, h, source_keys),
        )
        x = sublayer(x, layer, 1, lambda h, layer=layer: feed_forward(layer, h))
    memory = numpy_layer_norm(x, p["encoder_norm"]) if norm == "pre" else x

    steps = target_in.shape[1]
    causal = np.broadcast_to(np.tril(np.ones((steps, steps), bool)), (len(source), steps, steps))
    cross = np.broadcast_to((source != PAD)[:, None, :], (len(source), steps, source.shape[1]))
    x = embed(target_in)
    for n in range(layers):
        layer = p[f"decoder_{n}"]
        x = sublayer(
            x,
            layer,
            0,
            lambda h, layer=layer: numpy_attention(layer["self_attention"], h, h, causal),
        )
        x = sublayer(
            x,
            layer,
            1,
            lambda h, layer=layer: numpy_attention(layer["cross_attention"], h, memory, cross),
        )
        x = sublayer(x, layer, 2, lambda h, layer=layer: feed_forward(layer, h))
    if norm == "pre":
        x = numpy_layer_norm(x, p["decoder_norm"])
    return x @ embedding.T


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_forward_matches_a_numpy_transformer(norm):
    """Random (not initial) params: every bias, scale and weight counts; rows padded apart."""
    rng = np.random.default_rng(0)
    source = rng.integers(0, 30, (3, 7))
    source[0, 4:] = PAD
    source[2, 1:] = PAD
    target_in = rng.integers(0, 30, (3, 6))
    target_in[1, 3:] = PAD
    model, params = _init(model_config(norm=norm), jnp.asarray(source), jnp.asarray(target_in))
    params = jax.tree.map(lambda a: rng.normal(0, 0.4, a.shape).astype(np.float32), params)
    logits = model.apply({"params": params}, jnp.asarray(source), jnp.asarray(target_in))
    expected = numpy_transformer(params, source, target_in, norm, layers=2)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
