"""DDPM steps: structure and finiteness, learning on a fixed batch, 1 vs 4 devices, bits/dim, sampling, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import parallel
from jaxgen.config import ConfigError
from jaxgen.data import DatasetInfo
from jaxgen.train import ddpm
from tests.helpers import load_config

INFO = DatasetInfo(image_shape=(8, 8, 1), num_classes=10, num_examples={"train": 64, "test": 64})


def tiny_config(**overrides):
    """The conditional MNIST smoke config on 8x8 images, with every per-example draw switched on."""
    config = load_config("configs/ddpm/mnist_cond.py", "smoke")
    config.diffusion.num_timesteps = 50
    # One resolution level: the step compiles in a fraction of the time of two.
    config.model.update(channels=8, channel_multipliers=(1,), attention_resolutions=(8,))
    config.model.dropout = 0.1
    config.train.random_flip = True  # exercised even though digits should not be flipped
    config.loss.label_dropout = 0.5
    config.optim.update(schedule="constant", warmup_steps=0, lr=3e-3)
    config.train.batch_size = 16
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def fixed_batch(batch_size=16, seed=0):
    rng = np.random.default_rng(seed)
    # Smooth blobs in [-1, 1]: something a tiny U-Net can learn to denoise in a few steps.
    grid = np.linspace(-1, 1, 8)
    centres = rng.uniform(-0.5, 0.5, (batch_size, 2))
    image = np.exp(
        -((grid[None, :, None] - centres[:, 0, None, None]) ** 2)
        - (grid[None, None, :] - centres[:, 1, None, None]) ** 2
    )
    image = (2 * image / image.max() - 1)[..., None].astype(np.float32)
    return {
        "image": jnp.asarray(image),
        "label": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32),
    }


@pytest.fixture(scope="module")
def built():
    config = tiny_config()
    ddpm.validate(config, INFO)
    steps = ddpm.make_steps(config, INFO)
    state = jax.jit(steps.init)(jax.random.PRNGKey(0), fixed_batch())
    return config, steps, state, jax.jit(steps.train_step)


def test_one_step_keeps_structure_and_gives_finite_metrics(built):
    _, _, state, step = built
    new_state, metrics = step(state, fixed_batch())
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
        assert old.shape == new.shape and old.dtype == new.dtype
    assert int(new_state.step) == 1
    assert set(metrics) >= {"loss", "mse", "grad_norm", "lr"}
    assert all(np.isfinite(float(v)) and np.ndim(v) == 0 for v in metrics.values())


def test_steps_on_a_fixed_batch_lower_the_loss(built):
    _, _, state, step = built
    batch = fixed_batch()
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    # ε-MSE starts near 1 (the output layer is zero) and must fall.
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:4])


def test_one_and_four_devices_give_the_same_step(built):
    config, steps, state, step = built
    batch = fixed_batch()
    reference, reference_metrics = step(state, batch)
    config = config.copy_and_resolve_references()
    config.mesh.data = 4
    placement = parallel.Placement(config.mesh)
    assert placement.num_devices == 4
    four = placement.compile_train_step(steps.train_step, state)
    state = placement.put_state(jax.tree.map(jnp.copy, state))  # the step donates it
    new_state, metrics = four(state, placement.put_batch(batch))
    np.testing.assert_allclose(metrics["loss"], reference_metrics["loss"], rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(new_state.params), jax.tree.leaves(reference.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)


def test_bpd_eval_sums_only_unmasked_examples(built):
    config, steps, state, _ = built
    entry = config.evals.bpd.copy_and_resolve_references()
    entry.num_timesteps = 0  # all 50 terms
    evaluate = jax.jit(steps.eval_steps["bpd"](entry))
    batch, rng = fixed_batch(8), jax.random.PRNGKey(3)
    full = evaluate(state, batch | {"mask": jnp.ones(8)}, rng)
    half = evaluate(state, batch | {"mask": jnp.array([1.0] * 4 + [0.0] * 4)}, rng)
    assert float(full["count"]) == 8 and float(half["count"]) == 4
    first = evaluate(state, {k: v[:4] for k, v in batch.items()} | {"mask": jnp.ones(4)}, rng)
    np.testing.assert_allclose(half["bpd"], first["bpd"], rtol=1e-5)
    # An untrained ε-model predicts 0 noise: a valid but poor bound, well above 1 bit/dim.
    per_image = float(full["bpd"]) / 8
    assert np.isfinite(per_image) and 1.0 < per_image < 100.0
    assert 0 <= float(full["prior_bpd"]) < float(full["bpd"])
    # The subsampled estimate (exact L_0 + 49 x the mean of 10 drawn KL terms) is close.
    entry.num_timesteps = 10
    sampled = jax.jit(steps.eval_steps["bpd"](entry))(state, batch | {"mask": jnp.ones(8)}, rng)
    print("bpd all terms", float(full["bpd"]) / 8, "sampled", float(sampled["bpd"]) / 8)
    assert float(sampled["bpd"]) == pytest.approx(float(full["bpd"]), rel=0.25)


def test_sample_gives_one_row_per_class_with_guidance(built):
    config, steps, state, _ = built
    config = config.copy_and_resolve_references()
    config.sample.update(labels=(3, 7), samples_per_class=3, num_inference_steps=5)
    steps = ddpm.make_steps(config, INFO)
    grids = jax.jit(steps.sample)(state, fixed_batch(), jax.random.PRNGKey(0))
    assert set(grids) == {"ddim"}
    assert grids["ddim"].shape == (2, 3, 8, 8, 1)
    assert float(jnp.abs(grids["ddim"]).max()) <= 1.0


def test_generate_draws_given_or_random_labels(built):
    """Steps.generate (what FID/KID/IS evaluators sample) equals sample() for the same labels."""
    config, _, state, _ = built
    config = config.copy_and_resolve_references()
    config.sample.update(labels=(3, 7), samples_per_class=2, num_inference_steps=5)
    steps = ddpm.make_steps(config, INFO)
    rng = jax.random.PRNGKey(0)
    grid = jax.jit(steps.sample)(state, fixed_batch(), rng)["ddim"]
    labels = jnp.asarray([3, 3, 7, 7], jnp.int32)
    given = jax.jit(steps.generate, static_argnums=2)(state, rng, 4, labels)
    np.testing.assert_allclose(np.asarray(given), np.asarray(grid).reshape(given.shape), atol=1e-6)
    drawn = jax.jit(steps.generate, static_argnums=2)(state, rng, 4)
    assert drawn.shape == (4, 8, 8, 1) and float(jnp.abs(drawn).max()) <= 1.0


def test_ddim_reads_the_clipped_model_output_option(built, monkeypatch):
    """config.sample.use_clipped_model_output and clip_denoised reach the DDIM sampler."""
    config, _, state, _ = built
    seen = []
    ddim = ddpm.sampling.ddim

    def recording_ddim(*args, **kw):
        seen.append((kw["clip"], kw["use_clipped_model_output"]))
        return ddim(*args, **kw)

    monkeypatch.setattr(ddpm.sampling, "ddim", recording_ddim)
    for setting in (True, False):
        config = config.copy_and_resolve_references()
        config.sample.update(labels=(3,), samples_per_class=2, num_inference_steps=3)
        config.sample.use_clipped_model_output = setting
        steps = ddpm.make_steps(config, INFO)
        jax.eval_shape(steps.sample, state, fixed_batch(), jax.random.PRNGKey(0))  # traces only
    assert seen == [(True, True), (True, False)]


BAD = [
    ("diffusion.parameterisation", "score", "config.diffusion.parameterisation"),
    ("diffusion.schedule", "sigmoid", "config.diffusion.schedule"),
    ("sample.sampler", "euler", "config.sample.sampler"),
    ("sample.num_inference_steps", 51, "config.sample.num_inference_steps"),
    ("sample.labels", (3, 10), "config.sample.labels"),
    ("model.attention_resolutions", (4,), "config.model.attention_resolutions"),
    ("loss.name", "hinge", "config.loss.name"),
    ("sample.variance", "learned", "config.sample.variance"),
]


@pytest.mark.parametrize("key,value,field", BAD)
def test_bad_values_are_config_errors_naming_the_field(key, value, field):
    config = tiny_config(**{key: value})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ddpm.validate(config, INFO)


def test_guidance_needs_a_conditional_model():
    config = load_config("configs/ddpm/mnist.py", "smoke")
    config.sample.guidance_scale = 3.0
    with pytest.raises(ConfigError, match=r"config\.sample\.guidance_scale"):
        ddpm.validate(config, INFO._replace(image_shape=(28, 28, 1)))
