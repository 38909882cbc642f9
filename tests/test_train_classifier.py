"""Classifier steps: output shapes, learning on a fixed batch, masked accuracy sums."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.data import DatasetInfo
from jaxgen.losses import classifier as losses
from jaxgen.models import classifier as models
from jaxgen.train import classifier
from tests.helpers import load_config

INFO = DatasetInfo(image_shape=(28, 28, 1), num_classes=10, num_examples={"train": 64, "test": 64})


def fixed_batch(batch_size=32, seed=0):
    rng = np.random.default_rng(seed)
    label = np.arange(batch_size) % 10
    # Class k is a bright horizontal bar at rows 2k..2k+2 on noise: easy to learn.
    image = rng.uniform(-1, 1, (batch_size, 28, 28, 1)).astype(np.float32) * 0.3
    for i, k in enumerate(label):
        image[i, 2 * k : 2 * k + 3] = 1.0
    return {"image": jnp.asarray(image), "label": jnp.asarray(label, jnp.int32)}


def smoke_steps():
    config = load_config("configs/classifier/mnist.py", "smoke")
    config.optim.schedule = "constant"
    config.optim.lr = 2e-3  # slow enough that 10 steps leave some of the fixed batch wrong
    return config, classifier.make_steps(config, INFO)


def test_model_gives_logits_and_features():
    config = load_config("configs/classifier/mnist.py", "smoke")
    model = models.make_model(config.model, 10)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    out = model.apply({"params": params}, jnp.zeros((3, 28, 28, 1)))
    assert out.logits.shape == (3, 10) and out.features.shape == (3, config.model.hidden)
    assert out.logits.dtype == jnp.float32 and out.features.dtype == jnp.float32


def test_steps_on_a_fixed_batch_learn_it_and_eval_counts_only_real_examples():
    _, steps = smoke_steps()
    batch = fixed_batch()
    state = jax.jit(steps.init)(jax.random.PRNGKey(0), batch)
    step = jax.jit(steps.train_step)
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert steps.sample(state, batch, jax.random.PRNGKey(0)) == {}
    mask = jnp.asarray((np.arange(32) < 20).astype(np.float32))
    sums = jax.jit(steps.eval_steps["accuracy"]({}))(
        state, batch | {"mask": mask}, jax.random.PRNGKey(0)
    )
    assert float(sums["count"]) == 20
    assert 0 <= float(sums["accuracy"]) <= 20 and float(sums["xent"]) > 0
    assert float(sums["accuracy"]) >= 15  # learned the bars


def numpy_log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_eval_sums_equal_numpy_softmax_over_the_real_examples():
    """accuracy and xent sums against argmax and -log softmax in NumPy over the 20 real rows;
    the 12 padding rows are labelled with the model's own predictions, so they would count."""
    config, steps = smoke_steps()
    batch = fixed_batch()
    state = jax.jit(steps.init)(jax.random.PRNGKey(0), batch)
    step = jax.jit(steps.train_step)
    for _ in range(10):  # part-trained: some right, some wrong
        state, _ = step(state, batch)
    model = models.make_model(config.model, 10)
    logits = np.asarray(model.apply({"params": state.params}, batch["image"]).logits, np.float64)
    mask = (np.arange(32) < 20).astype(np.float32)
    labels = np.asarray(batch["label"]).copy()
    labels[20:] = logits[20:].argmax(-1)
    evaluate = batch | {"label": jnp.asarray(labels), "mask": jnp.asarray(mask)}
    sums = jax.jit(steps.eval_steps["accuracy"]({}))(state, evaluate, jax.random.PRNGKey(0))

    real = mask > 0
    log_p = numpy_log_softmax(logits)[np.arange(32), labels]
    correct = logits.argmax(-1) == labels
    assert float(sums["count"]) == 20
    assert float(sums["accuracy"]) == correct[real].sum() < 20
    assert float(sums["xent"]) == pytest.approx(-log_p[real].sum(), rel=1e-5)


def test_label_smoothed_loss_equals_numpy():
    """-Σ_k q_k log softmax_k with q = (1 - s) one-hot + s / K (Szegedy et al. 2016, sec. 7)."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 10)) * 3
    labels = rng.integers(0, 10, 6)
    q = np.full((6, 10), 0.1 / 10)
    q[np.arange(6), labels] += 0.9
    expected = -np.mean(np.sum(q * numpy_log_softmax(logits), axis=1))
    loss, metrics = losses.cross_entropy(
        jnp.asarray(logits, jnp.float32), jnp.asarray(labels), label_smoothing=0.1
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean(logits.argmax(-1) == labels))


def numpy_conv3x3_same(x, kernel, bias):
    """Cross-correlation with zero padding 1 (Flax's "SAME" for 3x3, stride 1), in loops."""
    batch, height, width, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((batch, height, width, kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += np.einsum(
                "bhwc,cd->bhwd", padded[:, i : i + height, j : j + width], kernel[i, j]
            )
    return out + bias


def test_cnn_forward_matches_numpy():
    """Two stages of 3x3 conv + ReLU + 2x2 max-pool, Dense + ReLU features, Dense logits."""
    config = load_config("configs/classifier/mnist.py", "smoke")
    model = models.make_model(config.model, 10)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 12, 8, 1)).astype(np.float32)  # H != W catches swapped axes
    variables = model.init(jax.random.PRNGKey(0), x)
    params = jax.tree.map(lambda a: rng.normal(0, 0.5, a.shape).astype(np.float32), variables)
    out = model.apply(params, x)

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    h = x.astype(np.float64)
    for stage in range(2):
        conv = p[f"Conv_{stage}"]
        h = np.maximum(numpy_conv3x3_same(h, conv["kernel"], conv["bias"]), 0)
        b, height, width, c = h.shape
        h = h.reshape(b, height // 2, 2, width // 2, 2, c).max(axis=(2, 4))
    features = np.maximum(h.reshape(2, -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    logits = features @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    np.testing.assert_allclose(out.features, features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.logits, logits, rtol=1e-4, atol=1e-4)
