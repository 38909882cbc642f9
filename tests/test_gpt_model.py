"""GPT-2 model: shapes, causality, initial loss, the KV cache and the 124M parameter count."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.config import ConfigError
from jaxgen.losses import gpt as losses
from jaxgen.models import gpt
from tests.helpers import gpt_model_config


def model_config(**overrides):
    return gpt_model_config(**overrides)


def init(config, vocab=37, batch=3, steps=12, seed=0):
    model = gpt.make_model(config, vocab)
    tokens = jax.random.randint(jax.random.PRNGKey(seed), (batch, steps), 0, vocab)
    params = model.init(jax.random.PRNGKey(seed + 1), tokens)["params"]
    return model, params, tokens


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_shapes_and_dtypes(position):
    config = model_config(position=position, dtype="bfloat16")
    model, params, tokens = init(config)
    logits = model.apply({"params": params}, tokens)
    assert logits.shape == (3, 12, 37) and logits.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))  # master params


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_future_tokens_never_change_earlier_logits(position):
    model, params, tokens = init(model_config(position=position))
    logits = model.apply({"params": params}, tokens)
    for cut in (1, 5, 11):
        changed = tokens.at[:, cut:].set((tokens[:, cut:] + 7) % 37)
        other = model.apply({"params": params}, changed)
        np.testing.assert_array_equal(np.asarray(other[:, :cut]), np.asarray(logits[:, :cut]))
        assert np.abs(np.asarray(other[:, cut:] - logits[:, cut:])).max() > 1e-4


def test_initial_loss_is_close_to_log_vocab():
    vocab = 257
    model, params, tokens = init(model_config(), vocab=vocab, batch=16, steps=32)
    logits = model.apply({"params": params}, tokens[:, :-1])
    loss, _ = losses.cross_entropy(logits, tokens[:, 1:])
    # N(0, 0.02) weights give near-uniform predictions: loss ~ log V = 5.549.
    assert abs(float(loss) - math.log(vocab)) < 0.05


def test_tied_head_and_gpt2_init_scales():
    config = model_config(num_layers=4, width=64)
    model, params, _ = init(config, vocab=500)
    assert "wte" in params and not any("head" in key for key in params)  # no separate head
    std = lambda x: float(np.std(np.asarray(x)))  # noqa: E731
    assert abs(std(params["wte"]["embedding"]) - 0.02) < 0.002
    assert abs(std(params["h_0"]["mlp"]["fc"]["kernel"]) - 0.02) < 0.002
    residual = 0.02 / math.sqrt(2 * 4)  # GPT-2: residual projections scaled by 1/sqrt(2 L)
    assert abs(std(params["h_0"]["mlp"]["proj"]["kernel"]) - residual) < 0.001
    assert abs(std(params["h_0"]["attn"]["proj"]["kernel"]) - residual) < 0.001
    assert not np.any(np.asarray(params["h_0"]["mlp"]["fc"]["bias"]))
    no_bias = init(model_config(bias=False))[1]
    assert not any("bias" in "/".join(map(str, path)) for path, _ in _paths(no_bias))


def _paths(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_cache_matches_full_forward_with_left_padding(position):
    config = model_config(position=position)
    model, params, tokens = init(config, steps=10)
    full = model.apply({"params": params}, tokens)
    # Row b is left-padded by pad[b] junk tokens; its logits must not depend on them.
    pad = np.array([0, 3, 1])
    width = 10
    rows = np.stack(
        [np.concatenate([np.full(p, 5), tokens[b, : width - p]]) for b, p in enumerate(pad)]
    )
    cache = gpt.init_cache(config, 3, 16, start=jnp.asarray(pad))
    prefix = 6
    first, cache = model.apply({"params": params}, jnp.asarray(rows[:, :prefix]), cache=cache)
    outs = [first]
    for slot in range(prefix, width):
        out, cache = model.apply(
            {"params": params}, jnp.asarray(rows[:, slot : slot + 1]), cache=cache
        )
        outs.append(out)
    cached = np.asarray(jnp.concatenate(outs, axis=1))
    assert int(cache.length) == width
    for b, p in enumerate(pad):
        np.testing.assert_allclose(cached[b, p:], np.asarray(full[b, : width - p]), atol=2e-5)


def test_dropout_only_in_training():
    config = model_config(dropout=0.5)
    model, params, tokens = init(config)
    eval_a = model.apply({"params": params}, tokens)
    eval_b = model.apply({"params": params}, tokens)
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    rngs = lambda k: {"dropout": jax.random.PRNGKey(k)}  # noqa: E731
    train_a = model.apply({"params": params}, tokens, train=True, rngs=rngs(0))
    train_b = model.apply({"params": params}, tokens, train=True, rngs=rngs(1))
    assert np.abs(np.asarray(train_a - train_b)).max() > 1e-3
    # The explicit-softmax path (used with attention dropout) equals the fused one at rate 0.
    zero = model_config(dropout=0.0)
    fused = gpt.make_model(zero, 37).apply({"params": params}, tokens, train=True)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(eval_a), atol=1e-5)


def test_gpt2_124m_parameter_count():
    config = model_config(
        vocab_size=50304, block_size=1024, num_layers=12, num_heads=12, width=768, bias=False
    )
    model = gpt.make_model(config, 50257)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    # Closed form: V C + T C + L (12 C^2 + 4 C) [+ biases] + C (final LayerNorm, bias-free).
    v, t, c, layers = 50304, 1024, 768, 12
    assert count == v * c + t * c + layers * (12 * c * c + 2 * c) + c
    # nanoGPT prints "number of parameters: 123.59M" (without wpe) for this configuration.
    assert round((count - t * c) / 1e6, 2) == 123.59


def test_check_config_names_the_field():
    with pytest.raises(ConfigError, match="config.model.width"):
        gpt.check_config(model_config(width=30), 37, 16)
    with pytest.raises(ConfigError, match="config.data.seq_len"):
        gpt.check_config(model_config(), 37, 64)
    with pytest.raises(ConfigError, match="config.model.vocab_size"):
        gpt.check_config(model_config(vocab_size=30), 37, 16)
    with pytest.raises(ConfigError, match="config.model.position"):
        gpt.check_config(model_config(position="alibi"), 37, 16)


def test_last_only_gives_the_last_positions_logits():
    config = model_config()
    model, params, tokens = init(config)
    full = model.apply({"params": params}, tokens)
    last = model.apply({"params": params}, tokens, last_only=True)
    assert last.shape == (3, 1, 37)
    np.testing.assert_allclose(np.asarray(last[:, 0]), np.asarray(full[:, -1]), atol=1e-6)


def test_einsum_attention_is_the_xla_path_in_values_and_gradients():
    """attention="einsum" (the explicit softmax) computes the same function as "xla"."""
    config = model_config(attention="xla")
    model, params, tokens = init(config)
    einsum = gpt.make_model(model_config(attention="einsum"), 37)

    def loss(params, model):
        return jnp.mean(model.apply({"params": params}, tokens) ** 2)

    np.testing.assert_allclose(
        einsum.apply({"params": params}, tokens), model.apply({"params": params}, tokens), atol=1e-5
    )
    grads = [jax.grad(loss)(params, m) for m in (model, einsum)]
    for a, b in zip(*map(jax.tree.leaves, grads), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def numpy_rotary_attention(x, params, positions, heads):
    """Causal self-attention with rotary positions (Su et al. 2021, eq. 16), in NumPy: the
    score of query t and key s is q_t · R(p_s - p_t) k_s / √d, R(Δ) rotating each pair of
    dims (i, i + d/2) by Δ θ_i, θ_i = 10000^(-2i/d): relative positions only."""
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    batch, steps, width = x.shape
    d = width // heads
    qkv = np.einsum("btc,cjhd->btjhd", x, p["qkv_kernel"]) + p["qkv_bias"]  # [B, T, 3, H, d]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, d]
    theta = 10000.0 ** (-2 * np.arange(d // 2) / d)
    out = np.zeros((batch, steps, heads, d))
    for b, t, h in np.ndindex(batch, steps, heads):
        scores = np.full(steps, -np.inf)
        for s in range(t + 1):
            angle = (positions[b, s] - positions[b, t]) * theta
            k1, k2 = k[b, s, h, : d // 2], k[b, s, h, d // 2 :]
            rotated = np.concatenate(
                [k1 * np.cos(angle) - k2 * np.sin(angle), k2 * np.cos(angle) + k1 * np.sin(angle)]
            )
            scores[s] = q[b, t, h] @ rotated / np.sqrt(d)
        weights = np.exp(scores - scores.max())
        out[b, t, h] = (weights / weights.sum()) @ v[b, :, h]
    return np.einsum("bthd,hdc->btc", out, p["proj_kernel"]) + p["proj_bias"]


@pytest.mark.parametrize("attention", ["einsum", "xla"])
def test_rotary_attention_matches_numpy(attention):
    """Rows start at positions 0, 5 and 100 (a cache's offsets): only differences count."""
    heads, width, steps = 2, 16, 6
    module = gpt.CausalSelfAttention(
        heads, num_layers=1, dropout=0.0, bias=True, position="rope", attention=attention,
        dtype=jnp.float32, param_dtype=jnp.float32,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, steps, width)).astype(np.float32)
    positions = np.arange(steps)[None] + np.array([0, 5, 100])[:, None]
    variables = module.init(jax.random.PRNGKey(0), x, positions, None, False)
    params = jax.tree.map(lambda p: rng.normal(0, 0.5, p.shape).astype(np.float32), variables)
    y, _ = module.apply(params, x, jnp.asarray(positions), None, False)
    flat = {
        "qkv_kernel": params["params"]["qkv"]["kernel"],  # [C, 3, heads, head_dim]
        "qkv_bias": params["params"]["qkv"]["bias"],
        "proj_kernel": params["params"]["proj"]["kernel"],  # [heads, head_dim, C]
        "proj_bias": params["params"]["proj"]["bias"],
    }
    expected = numpy_rotary_attention(x.astype(np.float64), flat, positions, heads)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
