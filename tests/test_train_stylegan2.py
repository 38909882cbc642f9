"""StyleGAN2 steps: structure and lazy phases, learning on a fixed batch, style mixing,
truncation, 1 vs 4 devices, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import parallel
from jaxgen.config import ConfigError
from jaxgen.data import DatasetInfo
from jaxgen.family import get_family
from jaxgen.models import stylegan2 as models
from jaxgen.train import stylegan2, stylegan2_phases
from tests.helpers import load_config
from tests.test_train_gan import set_field

INFO = DatasetInfo(image_shape=(28, 28, 1), num_classes=10, num_examples={"train": 64, "test": 64})


def tiny_config(arg="smoke", **overrides):
    config = load_config("configs/stylegan2/mnist.py", arg)
    config.train.batch_size = 8
    for key, value in overrides.items():
        set_field(config, key, value)
    return config


def fixed_batch(batch_size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.uniform(-1, 1, (batch_size, 28, 28, 1)).astype(np.float32)),
        "label": jnp.asarray(rng.integers(0, 10, batch_size).astype(np.int32)),
    }


def adam_counts(opt_state):
    """Adam's update count (the other scalar leaves of the chain are 0)."""
    return {max(int(leaf) for leaf in jax.tree.leaves(opt_state) if leaf.ndim == 0)}


def test_steps_keep_structure_and_run_the_lazy_phases_on_schedule():
    # smoke: R1 every 4 steps, path length every 2.
    config = tiny_config()
    steps = stylegan2.make_steps(config, INFO)
    state = jax.jit(steps.init)(jax.random.PRNGKey(0), fixed_batch())
    step = jax.jit(steps.train_step)
    history = []
    new = state
    for _ in range(3):
        new, metrics = step(new, fixed_batch())
        history.append((new, metrics))
    assert jax.tree.structure(new) == jax.tree.structure(state)
    for old, cur in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
        assert old.shape == cur.shape and old.dtype == cur.dtype
    expected = {"loss", "d_loss", "g_loss", "d_real", "d_fake", "r1", "pl_penalty", "pl_mean"}
    assert set(metrics) >= expected | {"g_lr", "d_lr", "ema_beta", "g_grad_norm"}
    assert all(np.isfinite(float(v)) and np.ndim(v) == 0 for v in metrics.values())
    # Adam steps: step 0 runs both penalties (G: main + reg, D: main + reg); step 1 neither
    # (path length every 2, R1 every 4); step 2 the path length again.
    g_counts = [adam_counts(s.opt_state["generator"]) for s, _ in history]
    d_counts = [adam_counts(s.opt_state["discriminator"]) for s, _ in history]
    assert g_counts == [{2}, {3}, {5}] and d_counts == [{2}, {3}, {4}]
    r1 = [float(m["r1"]) for _, m in history]
    assert r1[0] > 0 and r1[1] == r1[0] == r1[2]  # the last value is carried between
    pl_means = [float(s.pl_mean) for s, _ in history]
    assert pl_means[0] > 0 and pl_means[1] == pl_means[0] != pl_means[2]
    # The corrected Adam: lr 0.002 * k / (k + 1) for each lazily regularised player.
    np.testing.assert_allclose(float(metrics["g_lr"]), 0.002 * 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["d_lr"]), 0.002 * 4 / 5, rtol=1e-6)
    # w_avg moved towards the batch mean of w; the EMA moved.
    assert float(jnp.abs(new.w_avg).max()) > 0
    assert not np.allclose(jax.tree.leaves(new.ema_params)[0], jax.tree.leaves(state.ema_params)[0])


def test_a_zero_weight_leaves_its_phase_out():
    config = tiny_config(**{"loss.kw.pl_weight": 0.0, "loss.kw.r1_gamma": 0.0})
    steps = stylegan2.make_steps(config, INFO)
    state = jax.jit(steps.init)(jax.random.PRNGKey(0), fixed_batch())
    state, metrics = jax.jit(steps.train_step)(state, fixed_batch())
    assert adam_counts(state.opt_state["generator"]) == {1}
    assert adam_counts(state.opt_state["discriminator"]) == {1}
    assert float(metrics["r1"]) == 0 and float(metrics["pl_penalty"]) == 0
    np.testing.assert_allclose(float(metrics["g_lr"]), 0.002, rtol=1e-6)  # no correction


def test_phases_on_a_fixed_batch_lower_their_losses():
    config = tiny_config()
    setup = stylegan2.make_setup(config, INFO)
    state = jax.jit(stylegan2.make_steps(config, INFO).init)(jax.random.PRNGKey(0), fixed_batch())
    real = {
        "image": stylegan2_phases.pad_to_model(fixed_batch()["image"], setup),
        "label": fixed_batch()["label"],
    }
    rng = jax.random.PRNGKey(3)  # the same fakes every time
    d_phase = jax.jit(lambda s: stylegan2_phases.discriminator_main(s, real, rng, setup=setup))
    d_losses = []
    d_state = state
    for _ in range(15):
        d_state, metrics = d_phase(d_state)
        d_losses.append(float(metrics["d_loss"]))
    assert d_losses[-1] < 0.8 * d_losses[0], d_losses
    g_phase = jax.jit(lambda s: stylegan2_phases.generator_main(s, rng, setup=setup))
    g_losses = []
    g_state = d_state  # against the trained D, G has something to gain
    for _ in range(15):
        g_state, metrics = g_phase(g_state)
        g_losses.append(float(metrics["g_loss"]))
    assert g_losses[-1] < 0.8 * g_losses[0], g_losses


def test_mixing_probability_zero_means_no_mixing():
    for prob, mixed in ((0.0, False), (1.0, True)):
        config = tiny_config(**{"loss.kw.style_mixing_prob": prob})
        setup = stylegan2.make_setup(config, INFO)
        state = jax.jit(stylegan2.make_steps(config, INFO).init)(
            jax.random.PRNGKey(0), fixed_batch()
        )
        draw = jax.jit(lambda p, k, setup=setup: stylegan2_phases.draw_ws(p, k, 8, setup=setup))
        for seed in range(5):
            ws, w, _ = draw(state.params["generator"], jax.random.PRNGKey(seed))
            same = np.allclose(np.asarray(ws), np.asarray(w)[:, None])
            assert same != mixed, (prob, seed)
            # Mixing keeps the first layer's w (the cutoff is >= 1).
            np.testing.assert_array_equal(np.asarray(ws[:, 0]), np.asarray(w))


def test_truncation_psi_zero_gives_the_w_avg_image_in_every_cell():
    config = tiny_config()
    config.sample.truncation_psi = 0.0
    config.sample.noise_mode = "none"
    steps = stylegan2.make_steps(config, INFO)
    setup = stylegan2.make_setup(config, INFO)
    state = jax.jit(steps.init)(jax.random.PRNGKey(0), fixed_batch())
    w_avg = jax.random.normal(jax.random.PRNGKey(5), state.w_avg.shape)
    state = state.replace(w_avg=w_avg)
    out = jax.jit(steps.sample)(state, {}, jax.random.PRNGKey(1))
    ws = models.broadcast_ws(w_avg[None], setup.generator.num_ws)
    expected = setup.generator.apply(
        {"params": state.eval_params}, ws, jax.random.PRNGKey(0), "none", method="synthesis"
    )
    expected = np.asarray(stylegan2_phases.crop_to_data(expected, setup))[0]
    for name in ("samples", "mixing_coarse", "interpolation"):
        images = np.asarray(out[name]).reshape((-1, 28, 28, 1))
        if name.startswith("mixing"):
            images = images[1:]  # cell (0, 0) is blank
        np.testing.assert_allclose(images, np.broadcast_to(expected, images.shape), atol=1e-5)
    # psi = 1: the samples differ.
    config.sample.truncation_psi = 1.0
    out = jax.jit(stylegan2.make_steps(config, INFO).sample)(state, {}, jax.random.PRNGKey(1))
    assert np.std(np.asarray(out["samples"]), axis=0).max() > 1e-3


def train_params(devices, num_steps=2):
    config = tiny_config(**{"mesh.data": devices})
    placement = parallel.Placement(config.mesh, get_family("stylegan2").per_device_step)
    steps = stylegan2.make_steps(config, INFO, placement.axis_name)
    batches = [jax.tree.map(np.asarray, fixed_batch(seed=i)) for i in range(num_steps)]
    state = placement.compile_init(steps.init)(jax.random.PRNGKey(0), batches[0])
    step = placement.compile_train_step(steps.train_step, state)
    state = placement.put_state(state)
    losses = []
    for batch in batches:
        state, metrics = step(state, placement.put_batch(batch))
        losses.append(float(placement.first_metrics(metrics)["g_loss"]))
    state = placement.get_state(state)
    return jax.device_get((state.params, state.w_avg, state.pl_mean)), losses


def test_one_and_four_devices_agree():
    reference, reference_losses = train_params(1)
    result, losses = train_params(4)
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-4)
    for x, y in zip(jax.tree.leaves(result), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "override,value,field",
    [
        ("loss.kw.r1_interval", 0, "config.loss.kw.r1_interval"),
        ("loss.kw.style_mixing_prob", 1.5, "config.loss.kw.style_mixing_prob"),
        ("loss.kw.pl_batch_shrink", 64, "config.loss.kw.pl_batch_shrink"),
        ("train.batch_size", 30, "config.train.batch_size"),
        ("train.diffaugment", "color,flip", "config.train.diffaugment"),
        ("optim.ema_decay", 0.999, "config.optim.ema_decay"),
        ("mesh.backend", "pmap", "config.mesh.backend"),
        ("model.resolution", 16, "config.model.resolution"),
        ("sample.noise_mode", "fixed", "config.sample.noise_mode"),
    ],
)
def test_bad_values_name_the_field(override, value, field):
    config = load_config("configs/stylegan2/mnist.py", "smoke")
    set_field(config, override, value)
    with pytest.raises(ConfigError, match="^" + field.replace(".", r"\.")):
        stylegan2.validate(config, INFO)


def test_diffaugment_keeps_shapes_and_changes_images():
    from jaxgen import diffaugment

    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
    policies = diffaugment.parse("cutout,color,translation")
    assert policies == ("color", "translation", "cutout")
    y = diffaugment.augment(jax.random.PRNGKey(0), x, policies)
    assert y.shape == x.shape and not np.allclose(np.asarray(y), np.asarray(x))
    # cutout zeroes a half-size square: at least (8 - clipping) ^ 2 pixels of each image.
    cut = np.asarray(diffaugment.cutout(jax.random.PRNGKey(1), x + 5.0))
    assert all((cut[i] == 0).all(axis=-1).sum() >= 16 for i in range(4))
    # translation: a shifted copy, the rest zero.
    moved = np.asarray(diffaugment.translation(jax.random.PRNGKey(2), x))
    assert np.isin(np.round(moved, 6), np.append(np.round(np.asarray(x), 6), 0.0)).all()
    # Differentiable: gradients reach the images.
    grads = jax.grad(lambda x: jnp.sum(diffaugment.augment(jax.random.PRNGKey(3), x, policies)))(x)
    assert float(jnp.abs(grads).sum()) > 0


def test_unknown_loss_keyword_is_a_config_error_before_compiling():
    from jaxgen.family import check_loss_kw

    config = load_config("configs/stylegan2/mnist.py", "smoke")
    check_loss_kw(config, get_family("stylegan2"))  # every keyword the step reads
    config.loss.kw.r1_gama = 1.0
    with pytest.raises(ConfigError, match=r"^config\.loss\.kw\.r1_gama: "):
        check_loss_kw(config, get_family("stylegan2"))


def test_training_and_sampling_generators_compute_the_same_images():
    config = tiny_config()
    setup = stylegan2.make_setup(config, INFO)
    assert setup.generator.fused_modconv and not setup.train_generator.fused_modconv
    state = jax.jit(stylegan2.make_steps(config, INFO).init)(jax.random.PRNGKey(0), fixed_batch())
    ws, _, _ = stylegan2_phases.draw_ws(
        state.params["generator"], jax.random.PRNGKey(1), 4, setup=setup
    )
    rng = jax.random.PRNGKey(2)
    images = [
        generator.apply({"params": state.params["generator"]}, ws, rng, method="synthesis")
        for generator in (setup.generator, setup.train_generator)
    ]
    np.testing.assert_allclose(np.asarray(images[0]), np.asarray(images[1]), atol=1e-4)
