"""CLIP: model shapes and pooling, InfoNCE and CLIP score against NumPy, the steps, the configs."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen.config import ConfigError, base_config
from jaxgen.data import DatasetInfo
from jaxgen.losses import clip as losses
from jaxgen.metrics.clip_score import clip_score
from jaxgen.models import clip as models
from jaxgen.train import clip as family
from tests.helpers import load_config
from tests.references import (
    numpy_conv,
    numpy_gelu_tanh,
    numpy_group_norm,
    numpy_layer_norm,
    numpy_softmax_attention,
    numpy_swish,
)

MODEL = dict(name="clip", embed_dim=8, channels=(8, 16), width=16, depth=1, heads=2, groups=4)


def _config():
    config = base_config()
    config.family = "clip"
    config.data.caption_len = 6
    config.model.update(MODEL)
    config.loss.name = "infonce"
    config.optim.lr = 3e-3
    config.train.num_steps = 50
    return config


def _log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_infonce_matches_numpy():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(5, 3))
    text = rng.normal(size=(5, 3))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    scale = np.log(10.0)
    logits = 10.0 * image @ text.T
    expected = -0.5 * (
        np.trace(_log_softmax(logits, 1)) / 5 + np.trace(_log_softmax(logits, 0)) / 5
    )
    loss, metrics = losses.symmetric_infonce(
        jnp.asarray(image, jnp.float32), jnp.asarray(text, jnp.float32), jnp.float32(scale)
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["temperature"]) == pytest.approx(0.1)
    # Perfectly separated pairs at a high scale give a loss near 0 and accuracy 1.
    eye = jnp.eye(4)
    loss, metrics = losses.symmetric_infonce(eye, eye, jnp.float32(np.log(100.0)))
    assert float(loss) < 1e-10 + 4 * np.exp(-100) * 2 and float(metrics["accuracy"]) == 1.0


def test_clip_score_is_torchmetrics_definition():
    image = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]], np.float32)
    text = np.array([[2.0, 0.0], [-1.0, 0.0], [4.0, 3.0]], np.float32)
    np.testing.assert_allclose(clip_score(image, text), [100.0, 0.0, 96.0], rtol=1e-6)


def test_model_shapes_and_last_real_token_pooling():
    model = models.make_model(ml_collections.ConfigDict(MODEL), vocab_size=11, caption_len=6)
    image = jnp.zeros((3, 16, 16, 3))
    tokens = jnp.array([[3, 4, 5, 0, 0, 0], [3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0]], jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), image, tokens)
    out = model.apply(variables, image, tokens)
    assert out.image_embeds.shape == (3, 8) and out.text_embeds.shape == (3, 8)
    np.testing.assert_allclose(jnp.linalg.norm(out.text_embeds, axis=1), 1.0, rtol=1e-5)
    assert float(out.logit_scale) == pytest.approx(np.log(1 / 0.07))
    _, features = model.apply(variables, tokens, method=model.encode_text)
    assert features.hidden.shape == (3, 6, 16)
    np.testing.assert_allclose(features.pooled[0], features.hidden[0, 2])
    np.testing.assert_allclose(features.pooled[1], features.hidden[1, 5])
    np.testing.assert_allclose(features.pooled[2], features.hidden[2, 0])
    # The causal mask: the real tokens of caption 0 do not see the padding after them.
    _, shorter = model.apply(variables, tokens[:, :3], method=model.encode_text)
    np.testing.assert_allclose(shorter.pooled[0], features.pooled[0], atol=1e-5)


def test_steps_lower_the_loss_and_evaluate():
    config = _config()
    info = DatasetInfo((16, 16, 3), 0, {"train": 8, "test": 8}, vocab_size=11)
    family.validate(config, info)
    steps = family.make_steps(config, info)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
        "caption": rng.integers(1, 11, (8, 6)).astype(np.int32),
    }
    state = steps.init(jax.random.PRNGKey(0), batch)
    train_step = jax.jit(steps.train_step)
    seen = []
    for _ in range(30):
        state, metrics = train_step(state, batch)
        seen.append(float(metrics["loss"]))
    assert np.isfinite(seen).all() and seen[-1] < 0.5 * seen[0]
    mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
    sums = steps.eval_steps["clip_score"](None)(state, {**batch, "mask": mask}, None)
    assert float(sums["count"]) == 6
    assert float(sums["score"]) / 6 > float(sums["mismatched_score"]) / 6
    assert float(sums["retrieval"]) == 6  # memorised pairs


def test_validate_refuses_what_changes_the_loss():
    config = _config()
    info = DatasetInfo((16, 16, 3), 0, {"train": 8, "test": 8}, vocab_size=11)
    config.train.microbatches = 2
    with pytest.raises(ConfigError, match="config.train.microbatches"):
        family.validate(config, info)
    with pytest.raises(ConfigError, match="config.data.name"):
        family.validate(_config(), DatasetInfo((16, 16, 3), 10, {"train": 8}))


@pytest.mark.parametrize("name", ["mnist", "emoji"])
def test_configs_load_and_smoke_shrinks(name):
    config = load_config(f"configs/clip/{name}.py", "smoke")
    assert config.family == "clip" and config.train.num_steps == 20


def _train_on(devices, per_device_step, batches):
    """(losses, params) of the CLIP step on `devices` data-parallel devices, as the loop
    places it (parallel.Placement, the family's own per_device_step)."""
    from jaxgen import parallel

    config = _config()
    config.mesh.backend, config.mesh.data = "jit", devices
    # SGD: the update is the gradient itself. Adam would turn the text attention's key-bias
    # gradient, zero in exact arithmetic (softmax ignores a shift shared by all keys), into
    # steps of ±lr from rounding noise that differs between 1 and 4 devices.
    config.optim.name, config.optim.b1, config.optim.lr = "sgd", 0.0, 0.5
    info = DatasetInfo((16, 16, 3), 0, {"train": 8, "test": 8}, vocab_size=11)
    placement = parallel.Placement(config.mesh, per_device_step)
    assert placement.num_devices == devices
    steps = family.make_steps(config, info, placement.axis_name)
    state = placement.compile_init(steps.init)(jax.random.PRNGKey(0), batches[0])
    step = placement.compile_train_step(steps.train_step, state)
    state, losses_seen = placement.put_state(state), []
    for batch in batches:
        state, metrics = step(state, placement.put_batch(batch))
        losses_seen.append(float(placement.first_metrics(metrics)["loss"]))
    return losses_seen, jax.device_get(placement.get_state(state).params)


def test_loss_and_gradients_on_four_devices_equal_one_device():
    """The contrast is over the global batch: 4 devices give one device's loss and update,
    and both differ from the mean of four 2-example contrasts (what a per-device loss does)."""
    from jaxgen.family import get_family

    rng = np.random.default_rng(1)
    batches = [
        {
            "image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
            "caption": rng.integers(1, 11, (8, 6)).astype(np.int32),
        }
        for _ in range(2)
    ]
    per_device_step = get_family("clip").per_device_step
    one_losses, one_params = _train_on(1, per_device_step, batches)
    four_losses, four_params = _train_on(4, per_device_step, batches)
    np.testing.assert_allclose(four_losses, one_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(four_params), jax.tree.leaves(one_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    # The full-batch loss and gradient, against the mean of per-shard ones.
    config = _config()
    model = models.make_model(config.model, 11, 6)
    params = model.init(jax.random.PRNGKey(0), batches[0]["image"][:1], batches[0]["caption"][:1])
    loss_fn = functools.partial(family.clip_loss, model=model, loss_fn=losses.LOSSES.get("infonce"))
    grad = jax.jit(jax.grad(lambda p, b: loss_fn(p, b)[0]))
    full = grad(params["params"], batches[0])
    shards = [
        grad(params["params"], {k: v[i : i + 2] for k, v in batches[0].items()})
        for i in range(0, 8, 2)
    ]
    local = jax.tree.map(lambda *g: sum(g) / 4, *shards)
    difference = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(local), strict=True)
    )
    assert difference > 1e-3  # so the 1-vs-4 comparison above could tell them apart


def test_model_forward_matches_numpy():
    """Image tower: per level 3x3 conv + GroupNorm + swish, stride-2 conv; GroupNorm + swish,
    global average pool, projection. Text tower: token + learned positions, pre-LN causal
    blocks (4x GELU MLP), final LN, the last real token, projection. Both unit-normalised;
    logit_scale clipped at log 100. NumPy, random params."""
    model = models.make_model(ml_collections.ConfigDict(MODEL), vocab_size=11, caption_len=6)
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 8, 12, 3)).astype(np.float32)
    tokens = np.array([[3, 4, 5, 0, 0, 0], [3, 9, 5, 6, 7, 8]], np.int32)
    variables = model.init(jax.random.PRNGKey(0), image, tokens)
    params = jax.tree.map(lambda a: rng.normal(0, 0.3, a.shape).astype(np.float32), variables)
    params["params"]["logit_scale"] = np.float32(5.0)  # above log 100: clipped
    out = model.apply(params, image, tokens)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])

    t = p["image_tower"]
    h = image.astype(np.float64)
    for level in range(2):
        h = numpy_conv(h, t[f"Conv_{2 * level}"])
        h = numpy_swish(numpy_group_norm(h, t[f"GroupNorm_{level}"], 4))
        h = numpy_conv(h, t[f"Conv_{2 * level + 1}"], stride=2)
    pooled = numpy_swish(numpy_group_norm(h, t["GroupNorm_2"], 4)).mean(axis=(1, 2))
    image_embeds = pooled @ p["image_projection"]["kernel"]

    t = p["text_tower"]
    h = t["Embed_0"]["embedding"][tokens] + t["position"][:6]
    causal = np.tril(np.ones((6, 6), bool))[None]
    for index in range(MODEL["depth"]):
        b = t[f"Block_{index}"]
        qkv = numpy_layer_norm(h, b["LayerNorm_0"]) @ b["Dense_0"]["kernel"] + b["Dense_0"]["bias"]
        q, k, v = (part.reshape(2, 6, 2, 8) for part in np.split(qkv, 3, axis=-1))
        attended = numpy_softmax_attention(q, k, v, causal).reshape(2, 6, 16)
        h = h + attended @ b["Dense_1"]["kernel"] + b["Dense_1"]["bias"]
        hidden = (
            numpy_layer_norm(h, b["LayerNorm_1"]) @ b["Dense_2"]["kernel"] + b["Dense_2"]["bias"]
        )
        h = h + numpy_gelu_tanh(hidden) @ b["Dense_3"]["kernel"] + b["Dense_3"]["bias"]
    h = numpy_layer_norm(h, t["LayerNorm_0"])
    text_embeds = h[[0, 1], [2, 5]] @ p["text_projection"]["kernel"]

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    np.testing.assert_allclose(out.image_embeds, unit(image_embeds), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.text_embeds, unit(text_embeds), rtol=1e-4, atol=1e-5)
    assert float(out.logit_scale) == pytest.approx(np.log(100.0))
