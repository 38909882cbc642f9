"""VAE steps: structure, finiteness, learning on a fixed batch, bf16, EMA, masked eval sums."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.data import DatasetInfo
from jaxgen.train import vae
from tests.helpers import vae_smoke_config

INFO = DatasetInfo(image_shape=(28, 28, 1), num_classes=10, num_examples={"train": 64, "test": 64})


def fixed_batch(batch_size=32, seed=0):
    rng = np.random.default_rng(seed)
    image = (rng.random((batch_size, 28, 28, 1)) < 0.2).astype(np.float32)
    return {"image": jnp.asarray(image), "label": jnp.zeros(batch_size, jnp.int32)}


def build(**overrides):
    config = vae_smoke_config()
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    steps = vae.make_steps(config, INFO)
    state = jax.jit(steps.init)(jax.random.PRNGKey(0), fixed_batch())
    return config, steps, state


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_one_step_keeps_structure_and_gives_finite_metrics(model):
    _, steps, state = build(**{"model.name": model})
    new_state, metrics = jax.jit(steps.train_step)(state, fixed_batch())
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
        assert old.shape == new.shape and old.dtype == new.dtype
    assert int(new_state.step) == 1
    assert set(metrics) >= {"loss", "elbo", "kl", "recon", "grad_norm", "lr"}
    assert all(np.isfinite(float(v)) and np.ndim(v) == 0 for v in metrics.values())


@pytest.mark.parametrize("loss,num_samples", [("elbo", 1), ("iwae", 4)])
def test_steps_on_a_fixed_batch_lower_the_loss(loss, num_samples):
    config = vae_smoke_config()
    config.optim.schedule = "constant"
    config.loss.update(name=loss, num_samples=num_samples)
    if loss == "iwae":
        config.loss.kw = type(config.loss.kw)()  # the IWAE bound takes no beta
    steps = vae.make_steps(config, INFO)
    state = jax.jit(steps.init)(jax.random.PRNGKey(0), fixed_batch())
    step = jax.jit(steps.train_step)
    batch = fixed_batch()
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    # Random pixels with p = 0.2: the bound can fall towards 784·H(0.2) ≈ 392 nats.
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])


def test_bfloat16_compute_keeps_float32_params():
    _, steps, state = build(**{"model.dtype": "bfloat16"})
    state, metrics = jax.jit(steps.train_step)(state, fixed_batch())
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    assert np.isfinite(float(metrics["loss"]))


def test_ema_follows_the_warmed_up_decay():
    _, steps, state = build(**{"optim.ema_decay": 0.999})
    new_state, _ = jax.jit(steps.train_step)(state, fixed_batch())
    # At step 0 the warm-up decay is min(0.999, 1/10) = 0.1.
    for start, params, ema in zip(
        jax.tree.leaves(state.params),
        jax.tree.leaves(new_state.params),
        jax.tree.leaves(new_state.ema_params),
        strict=True,
    ):
        np.testing.assert_allclose(ema, 0.1 * start + 0.9 * params, rtol=1e-5, atol=1e-7)


def test_elbo_eval_sums_only_unmasked_examples():
    config, steps, state = build()
    entry = config.evals.elbo
    evaluate = jax.jit(steps.eval_steps["elbo"](entry))
    batch = fixed_batch(8)
    rng = jax.random.PRNGKey(3)
    full = evaluate(state, batch | {"mask": jnp.ones(8)}, rng)
    half = evaluate(state, batch | {"mask": jnp.array([1.0] * 4 + [0.0] * 4)}, rng)
    assert float(full["count"]) == 8 and float(half["count"]) == 4
    # Per-example noise comes from the example's index, so the first four terms agree.
    per_example = evaluate(state, {k: v[:4] for k, v in batch.items()} | {"mask": jnp.ones(4)}, rng)
    np.testing.assert_allclose(half["neg_elbo"], per_example["neg_elbo"], rtol=1e-5)
    assert float(full["neg_elbo"]) > float(half["neg_elbo"]) > 0
