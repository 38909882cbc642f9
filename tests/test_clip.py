"""CLIP: model shapes and pooling, InfoNCE and CLIP score against NumPy, the steps, the configs."""

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
