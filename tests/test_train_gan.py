"""GAN steps: structure, who updates what, n_critic counting, spectral-norm state, devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import parallel
from jaxgen.config import ConfigError
from jaxgen.data import DatasetInfo
from jaxgen.family import get_family
from jaxgen.losses import gan as losses
from jaxgen.registry import Registry
from jaxgen.train import gan, vae
from jaxgen.train import state as train_state
from tests.helpers import load_config, vae_smoke_config

INFO = DatasetInfo(image_shape=(28, 28, 1), num_classes=10, num_examples={"train": 64, "test": 64})


def fixed_batch(batch_size=16, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.uniform(-1, 1, (batch_size, 28, 28, 1)).astype(np.float32)),
        "label": jnp.asarray(rng.integers(0, 10, batch_size).astype(np.int32)),
    }


def set_field(config, dotted, value):
    *sections, field = dotted.split(".")
    for section in sections:
        config = config[section]
    config[field] = value


def tiny_config(path="configs/gan/mnist_dcgan.py", arg="smoke", **overrides):
    config = load_config(path, arg)
    config.model.latent_dim = 4
    config.model.features = 2  # the smallest widths: these tests check plumbing, not quality
    config.train.batch_size = 16
    for key, value in overrides.items():
        set_field(config, key, value)
    return config


def leaves_equal(a, b):
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_steps_keep_structure_count_n_critic_updates_and_carry_model_state():
    # DCGAN with BatchNorm in both networks and spectral norm in D: both kinds of state.
    config = tiny_config(**{"train.n_critic": 3, "train.batch_size": 12})
    config.model.spectral_norm = True
    steps = gan.make_steps(config, INFO)
    state = jax.jit(steps.init)(jax.random.PRNGKey(0), fixed_batch(12))
    step = jax.jit(steps.train_step)
    new_state = state
    for _ in range(2):
        new_state, metrics = step(new_state, fixed_batch(12))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
        assert old.shape == new.shape and old.dtype == new.dtype
    expected = {"loss", "d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm"}
    assert set(metrics) >= expected | {"d_lr", "g_lr"}
    assert all(np.isfinite(float(v)) and np.ndim(v) == 0 for v in metrics.values())
    assert float(metrics["loss"]) == float(metrics["d_loss"])
    # Adam counts its own updates: after 2 steps D has made 2 * n_critic, G 2.
    counts = {
        name: [int(leaf) for leaf in jax.tree.leaves(new_state.opt_state[name]) if leaf.ndim == 0]
        for name in gan.PLAYERS
    }
    assert set(counts["discriminator"]) == {2 * 3} and set(counts["generator"]) == {2}
    assert int(new_state.step) == 2
    # BatchNorm averages of both networks and D's power-iteration vectors moved.
    d_stats = new_state.model_state["discriminator"]["batch_stats"]
    assert any("SpectralNorm" in key for key in d_stats) and "BatchNorm_0" in d_stats
    for name in gan.PLAYERS:
        assert not leaves_equal(state.model_state[name], new_state.model_state[name]), name


def test_each_player_update_leaves_the_other_untouched():
    config = tiny_config(**{"train.n_critic": 1})
    players = gan.make_players(config, INFO)
    state = jax.jit(players.init)(jax.random.PRNGKey(0), fixed_batch())

    d_state, _ = jax.jit(players.discriminator_updates)(state, fixed_batch())
    for field in ("params", "opt_state", "model_state"):
        old, new = getattr(state, field), getattr(d_state, field)
        assert leaves_equal(old["generator"], new["generator"]), field
        assert not leaves_equal(old["discriminator"], new["discriminator"]), field
    assert leaves_equal(state.ema_params, d_state.ema_params) and int(d_state.step) == 0

    g_state, _ = jax.jit(players.generator_update, static_argnums=1)(state, 8)
    for field in ("params", "opt_state", "model_state"):
        old, new = getattr(state, field), getattr(g_state, field)
        assert leaves_equal(old["discriminator"], new["discriminator"]), field
        assert not leaves_equal(old["generator"], new["generator"]), field
    assert not leaves_equal(state.ema_params, g_state.ema_params) and int(g_state.step) == 1


def test_discriminator_updates_on_a_fixed_batch_lower_its_loss():
    config = tiny_config("configs/gan/mnist_mlp.py", **{"optim_d.lr": 1e-3})
    config.model.hidden = (32,)
    players = gan.make_players(config, INFO)
    state = jax.jit(players.init)(jax.random.PRNGKey(0), fixed_batch())
    update = jax.jit(players.discriminator_updates)
    losses = []
    for _ in range(25):
        state, metrics = update(state, fixed_batch())  # same step: the same fakes each time
        losses.append(float(metrics["d_loss"]))
    assert losses[-1] < 0.5 * losses[0]


def test_wgan_gp_step_reports_the_penalty():
    config = tiny_config("configs/gan/cifar10_wgan_gp.py", **{"loss.kw.r1_gamma": 1.0})
    steps = gan.make_steps(config, INFO)
    state = jax.jit(steps.init)(jax.random.PRNGKey(0), fixed_batch())
    _, metrics = jax.jit(steps.train_step)(state, fixed_batch())
    assert float(metrics["gp"]) > 0 and float(metrics["r1"]) > 0
    assert float(metrics["gp_grad_norm"]) > 0


def train_params(backend, devices, num_steps=2):
    config = tiny_config(**{"train.n_critic": 2, "mesh.backend": backend, "mesh.data": devices})
    placement = parallel.Placement(config.mesh)
    steps = gan.make_steps(config, INFO, placement.axis_name)
    init_steps = gan.make_steps(config, INFO, None)
    batches = [fixed_batch(seed=i) for i in range(num_steps)]
    batches = [jax.tree.map(np.asarray, b) for b in batches]
    state = placement.compile_init(init_steps.init)(jax.random.PRNGKey(0), batches[0])
    step = placement.compile_train_step(steps.train_step, state)
    state = placement.put_state(state)
    losses = []
    for batch in batches:
        state, metrics = step(state, placement.put_batch(batch))
        losses.append(float(placement.first_metrics(metrics)["g_loss"]))
    state = placement.get_state(state)
    return jax.device_get((state.params, state.model_state)), losses


def test_device_count_and_backend_do_not_change_training():
    # BatchNorm in both networks: its statistics must be over the global batch.
    reference, reference_losses = train_params("jit", 1)
    for backend in ("jit", "pmap"):
        result, losses = train_params(backend, 4)
        np.testing.assert_allclose(losses, reference_losses, rtol=1e-4, err_msg=backend)
        for x, y in zip(jax.tree.leaves(result), jax.tree.leaves(reference), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=backend)


@pytest.mark.parametrize(
    "path,override,value,field",
    [
        ("mnist_dcgan", "train.n_critic", 0, "config.train.n_critic"),
        ("mnist_dcgan", "loss.name", "lsgan", "config.loss.name"),
        ("mnist_dcgan", "model.name", "stylegan", "config.model.name"),
        ("cifar10_wgan_gp", "loss.kw.gp_weight", -1.0, "config.loss.kw.gp_weight"),
        ("cifar10_wgan_gp", "loss.kw.gp_weight", 0.0, "config.loss.kw.gp_weight"),
        ("cifar10_wgan_gp", "model.norm", "batch", "config.model.norm"),
        ("mnist_dcgan", "loss.kw.r1_gamma", -1.0, "config.loss.kw.r1_gamma"),
        ("cifar10_sngan", "train.batch_size", 30, "config.train.batch_size"),  # 2 x 4 devices
        ("mnist_dcgan", "optim_d.lr", 0.0, "config.optim_d.lr"),
        ("mnist_dcgan", "optim_d.ema_decay", 0.9, "config.optim_d.ema_decay"),
        ("mnist_dcgan", "train.microbatches", 2, "config.train.microbatches"),
    ],
)
def test_bad_values_name_the_field(path, override, value, field):
    config = load_config(f"configs/gan/{path}.py", "smoke")
    set_field(config, override, value)
    with pytest.raises(ConfigError, match="^" + field.replace(".", r"\.")):
        gan.validate(config, INFO)


def test_dcgan_rejects_images_it_was_not_built_for():
    config = load_config("configs/gan/cifar10_dcgan.py", "smoke")
    info = INFO._replace(image_shape=(64, 64, 3))
    with pytest.raises(ConfigError, match=r"^config\.model\.name: 'dcgan' is built for 28x28"):
        gan.validate(config, info)


def test_init_from_restarts_only_the_generator_ema():
    config = tiny_config()
    state = jax.jit(gan.make_steps(config, INFO).init)(jax.random.PRNGKey(0), fixed_batch())
    params = jax.tree.map(lambda x: x + 1.0, state.params)
    new = train_state.start_from_params(state, params)
    assert set(new.ema_params) == {"generator"}
    assert leaves_equal(new.ema_params["generator"], params["generator"])
    assert jax.tree.structure(new) == jax.tree.structure(state)
    # A VAE's EMA covers all its params, as before train_state.start_from_params existed.
    vae_steps = vae.make_steps(vae_smoke_config(), INFO)
    vae_state = jax.jit(vae_steps.init)(jax.random.PRNGKey(0), {"image": jnp.zeros((2, 28, 28, 1))})
    vae_params = jax.tree.map(lambda x: x + 1.0, vae_state.params)
    new = train_state.start_from_params(vae_state, vae_params)
    assert leaves_equal(new.ema_params, vae_params) and leaves_equal(new.params, vae_params)
    assert jax.tree.structure(new) == jax.tree.structure(vae_state)


def test_generate_draws_images_for_the_sample_evaluators():
    """Steps.generate: [num, H, W, C] in [-1, 1]; given labels change a conditional G's output."""
    config = tiny_config(path="configs/gan/mnist_mlp.py", arg="smoke,conditional")
    steps = gan.make_steps(config, INFO)
    state = jax.jit(steps.init)(jax.random.PRNGKey(0), fixed_batch())
    generate = jax.jit(steps.generate, static_argnums=2)
    rng = jax.random.PRNGKey(1)
    drawn = generate(state, rng, 8)
    assert drawn.shape == (8, 28, 28, 1) and float(jnp.abs(drawn).max()) <= 1.0
    threes = generate(state, rng, 8, jnp.full((8,), 3, jnp.int32))
    sevens = generate(state, rng, 8, jnp.full((8,), 7, jnp.int32))
    assert float(jnp.abs(threes - sevens).max()) > 1e-4


def drift_penalty(critic, images):
    """E[D(x)^2] on real images: Progressive GAN's drift penalty (Karras et al. 2018, A.1)."""
    return jnp.mean(jnp.square(critic(images))), {}


def register_drift(monkeypatch, **fields):
    """The built-in regularizers plus "drift" (weight: config.loss.kw.drift_weight), for
    this test only: losses.REGULARIZERS is replaced, not added to."""
    registry = Registry("regularizer", "config.loss.kw")
    for name in losses.REGULARIZERS.names():
        registry.register(name)(losses.REGULARIZERS.get(name))
    drift = losses.Regularizer(
        drift_penalty, losses.real_images, keyword="drift_weight", metric="drift", **fields
    )
    registry.register("drift")(drift)
    monkeypatch.setattr(losses, "REGULARIZERS", registry)


def test_the_family_reads_the_keywords_of_the_registered_regularizers():
    assert get_family("gan").loss_keywords == ("gp_weight", "r1_gamma")


def test_a_registered_regularizer_is_applied_by_the_step_with_its_weight(monkeypatch):
    register_drift(monkeypatch)
    config = tiny_config("configs/gan/mnist_mlp.py", **{"train.n_critic": 1})
    metrics = {}
    for weight in (0.0, 0.5):
        config.loss.kw.drift_weight = weight
        gan.validate(config, INFO)
        players = gan.make_players(config, INFO)
        state = jax.jit(players.init)(jax.random.PRNGKey(0), fixed_batch())
        _, metrics[weight] = jax.jit(players.discriminator_updates)(state, fixed_batch())
    assert "drift" not in metrics[0.0]  # weight 0: not evaluated at all
    drift = float(metrics[0.5]["drift"])
    assert drift > 0
    # The same params, fakes and real batch: the losses differ by the weighted penalty alone.
    d_loss = {weight: float(m["d_loss"]) for weight, m in metrics.items()}
    np.testing.assert_allclose(d_loss[0.5] - d_loss[0.0], 0.5 * drift, rtol=1e-5)
    assert float(metrics[0.5]["d_grad_norm"]) != float(metrics[0.0]["d_grad_norm"])


def test_a_registered_regularizer_is_validated_by_its_keyword(monkeypatch):
    register_drift(monkeypatch)
    config = load_config("configs/gan/mnist_dcgan.py", "smoke")  # BatchNorm in D
    with pytest.raises(ConfigError, match=r"^config\.loss\.kw\.drift_weight: missing \(0 disab"):
        gan.validate(config, INFO)
    config.loss.kw.drift_weight = -1.0
    with pytest.raises(ConfigError, match=r"^config\.loss\.kw\.drift_weight: must be >= 0"):
        gan.validate(config, INFO)
    config.loss.kw.drift_weight = 0.0
    gan.validate(config, INFO)  # off: BatchNorm is fine
    config.loss.kw.drift_weight = 1.0
    with pytest.raises(ConfigError, match=r"^config\.model\.norm: a gradient penalty"):
        gan.validate(config, INFO)


def test_a_loss_requiring_a_regularizer_with_weight_0_names_its_field(monkeypatch):
    register_drift(monkeypatch)
    registry = Registry("loss", "config.loss.name")
    hinge = losses.LOSSES.get("hinge")
    registry.register("drifting_hinge")(hinge._replace(requires=("drift",)))
    monkeypatch.setattr(losses, "LOSSES", registry)
    config = load_config("configs/gan/cifar10_wgan_gp.py", "smoke")  # a LayerNorm critic
    config.loss.name = "drifting_hinge"
    config.loss.kw.drift_weight = 0.0
    with pytest.raises(
        ConfigError, match=r"^config\.loss\.kw\.drift_weight: 'drifting_hinge' needs a drift"
    ):
        gan.validate(config, INFO)
    config.loss.kw.drift_weight = 1e-3
    gan.validate(config, INFO)


@pytest.mark.parametrize("fields", [{"interval": 16}, {"player": "generator"}])
def test_lazy_or_generator_regularizers_are_not_run_by_this_family(monkeypatch, fields):
    # StyleGAN2's lazy R1 and path length need a step that schedules them; until one does,
    # turning such an entry on is a ConfigError rather than a penalty applied every step.
    register_drift(monkeypatch, **fields)
    config = load_config("configs/gan/cifar10_wgan_gp.py", "smoke")
    config.loss.kw.drift_weight = 0.0
    gan.validate(config, INFO)  # off: nothing to schedule
    config.loss.kw.drift_weight = 1.0
    with pytest.raises(ConfigError, match=r"^config\.loss\.kw\.drift_weight: the gan family"):
        gan.validate(config, INFO)
