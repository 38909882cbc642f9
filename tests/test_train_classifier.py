"""Classifier steps: output shapes, learning on a fixed batch, masked accuracy sums."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.data import DatasetInfo
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
