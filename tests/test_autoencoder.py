"""The KL autoencoder: model shapes, the KL closed form against NumPy, the steps, the configs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen.config import ConfigError, base_config
from jaxgen.data import DatasetInfo
from jaxgen.losses import autoencoder as losses
from jaxgen.models import autoencoder as models
from jaxgen.train import autoencoder as family
from tests.helpers import load_config
from tests.references import numpy_conv, numpy_group_norm, numpy_swish


def _model_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(name="kl", channels=(8, 16, 16), latent_channels=3, groups=4)
    )
    config.update(overrides)
    return config


def _config():
    config = base_config()
    config.family = "autoencoder"
    config.model.update(_model_config().to_dict())
    config.loss.name = "l2"
    config.loss.kw = ml_collections.ConfigDict({"kl_weight": 1e-6})
    config.optim.lr = 3e-3
    config.train.num_steps = 50
    return config


def test_model_shapes_downsample_by_four():
    model = models.make_model(_model_config(), (28, 28, 1))
    image = jnp.zeros((2, 28, 28, 1))
    noise = jnp.zeros((2, 7, 7, 3))
    variables = model.init(jax.random.PRNGKey(0), image, noise)
    out = model.apply(variables, image, noise)
    assert out.reconstruction.shape == (2, 28, 28, 1) and out.mean.shape == (2, 7, 7, 3)
    assert out.logvar.shape == (2, 7, 7, 3) and out.reconstruction.dtype == jnp.float32
    assert models.latent_shape(_model_config(), (32, 32, 3)) == (8, 8, 3)
    with pytest.raises(ConfigError, match="config.model.channels"):
        models.check_config(_model_config(), (30, 30, 3))
    with pytest.raises(ConfigError, match="config.model.groups"):
        models.check_config(_model_config(groups=3), (28, 28, 1))


def test_kl_matches_numpy_closed_form_and_is_zero_for_the_prior():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
    logvar = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
    var = np.exp(logvar.astype(np.float64))
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2)/2 - 1/2, per element.
    expected = (-0.5 * logvar + (var + mean.astype(np.float64) ** 2) / 2 - 0.5).sum((1, 2, 3))
    np.testing.assert_allclose(losses.latent_kl(mean, logvar), expected, rtol=1e-5)
    zeros = np.zeros((2, 2, 2, 4), np.float32)
    np.testing.assert_allclose(losses.latent_kl(zeros, zeros), 0.0, atol=1e-7)


def test_losses_by_hand():
    image = np.zeros((2, 2, 2, 1), np.float32)
    reconstruction = np.full((2, 2, 2, 1), -0.5, np.float32)
    zeros = np.zeros((2, 1, 1, 1), np.float32)
    mean = np.ones((2, 1, 1, 1), np.float32)  # KL 0.5 each
    loss, metrics = losses.l1_kl(image, reconstruction, mean, zeros, kl_weight=0.1)
    assert float(metrics["recon"]) == pytest.approx(2.0) and float(loss) == pytest.approx(2.05)
    loss, _ = losses.l2_kl(image, reconstruction, zeros, zeros, kl_weight=0.1)
    assert float(loss) == pytest.approx(1.0)


def test_steps_lower_the_loss_and_latent_scale_is_one_over_std():
    config = _config()
    info = DatasetInfo((8, 8, 3), 0, {"train": 8, "test": 8})
    steps = family.make_steps(config, info)
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32)}
    state = steps.init(jax.random.PRNGKey(0), batch)
    train_step = jax.jit(steps.train_step)
    losses_seen = []
    for _ in range(40):
        state, metrics = train_step(state, batch)
        losses_seen.append(float(metrics["loss"]))
    assert np.isfinite(losses_seen).all() and losses_seen[-1] < 0.5 * losses_seen[0]
    evaluate = {**batch, "mask": np.ones(8, np.float32)}
    sums = steps.eval_steps["reconstruction"](None)(state, evaluate, jax.random.PRNGKey(1))
    assert float(sums["count"]) == 8 and float(sums["mse"]) / 8 < 0.5
    moments = steps.eval_steps["latent_scale"](None)(state, evaluate, jax.random.PRNGKey(1))
    means = {k: float(v) / 8 for k, v in moments.items() if k != "count"}
    result = steps.finalize["latent_scale"](means)
    assert result["scale_factor"] == pytest.approx(
        1 / np.sqrt(means["z_square"] - means["z_mean"] ** 2)
    )
    grid = steps.sample(state, batch, jax.random.PRNGKey(2))["reconstruction"]
    assert grid.shape == (1, 16, 8, 8, 3)
    np.testing.assert_allclose(grid[0, 0::2], batch["image"][:8])


@pytest.mark.parametrize("name", ["mnist", "emoji"])
def test_configs_load_and_smoke_shrinks(name):
    config = load_config(f"configs/autoencoder/{name}.py", "smoke")
    assert config.family == "autoencoder" and config.train.num_steps == 20
    assert load_config(f"configs/autoencoder/{name}.py").train.num_steps >= 2000


def test_latent_scale_is_one_over_the_numpy_std_of_every_real_latent_element():
    """Two eval batches, the second padded with garbage: the scale factor is 1 / std of the
    posterior draws z = μ + σ ε of the 13 real examples, every element, computed in NumPy."""
    config = _config()
    info = DatasetInfo((8, 8, 3), 0, {"train": 8, "test": 13})
    steps = family.make_steps(config, info)
    model = models.make_model(config.model, info.image_shape)
    rng = np.random.default_rng(3)
    images = rng.uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32)
    images[13:] = 50.0  # padding: must not count
    mask = (np.arange(16) < 13).astype(np.float32)
    state = steps.init(jax.random.PRNGKey(0), {"image": images[:8]})
    evaluate = steps.eval_steps["latent_scale"](None)
    totals, draws = {}, []
    for index, rows in enumerate([slice(0, 8), slice(8, 16)]):
        batch = {"image": images[rows], "mask": mask[rows]}
        key = jax.random.PRNGKey(10 + index)
        for name, value in evaluate(state, batch, key).items():
            totals[name] = totals.get(name, 0.0) + float(value)
        mean, logvar = model.apply({"params": state.params}, images[rows], method=model.encode)
        noise = family.draw_noise(key, 8, mean.shape[1:])
        z = np.asarray(mean, np.float64) + np.exp(0.5 * np.asarray(logvar, np.float64)) * noise
        draws.append(z[mask[rows] > 0])
    assert totals["count"] == 13
    result = steps.finalize["latent_scale"]({k: v / 13 for k, v in totals.items() if k != "count"})
    z = np.concatenate(draws)
    assert z.shape == (13, 2, 2, 3) and np.std(z) > 0.01
    assert result["z_std"] == pytest.approx(np.std(z), rel=1e-4)
    assert result["scale_factor"] == pytest.approx(1 / np.std(z), rel=1e-4)


def numpy_res_block(x, p, groups):
    h = numpy_conv(numpy_swish(numpy_group_norm(x, p["GroupNorm_0"], groups)), p["Conv_0"])
    h = numpy_conv(numpy_swish(numpy_group_norm(h, p["GroupNorm_1"], groups)), p["Conv_1"])
    return (numpy_conv(x, p["Conv_2"]) if "Conv_2" in p else x) + h


def test_forward_matches_numpy_ldm_encoder_decoder():
    """LDM's Encoder/Decoder at two levels (channels 8, 16), in NumPy: stem conv, a ResBlock
    (GroupNorm, swish, 3x3 conv, twice; 1x1 skip when widths differ) and a stride-2 conv per
    level, a middle ResBlock, GroupNorm + swish + conv to (mean, logvar); the decoder mirrored
    with nearest-neighbour 2x upsampling; z = mean + exp(logvar / 2) ε."""
    config = _model_config(channels=(8, 16), latent_channels=3)
    model = models.make_model(config, (8, 12, 1))
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 8, 12, 1)).astype(np.float32)
    noise = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), image, noise)
    params = jax.tree.map(lambda a: rng.normal(0, 0.3, a.shape).astype(np.float32), variables)
    out = model.apply(params, image, noise)

    groups = 4
    e = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"]["encoder"])
    h = numpy_conv(image.astype(np.float64), e["Conv_0"])
    h = numpy_res_block(h, e["ResBlock_0"], groups)
    h = numpy_conv(h, e["Conv_1"], stride=2)
    h = numpy_res_block(h, e["ResBlock_1"], groups)
    h = numpy_res_block(h, e["ResBlock_2"], groups)
    h = numpy_conv(numpy_swish(numpy_group_norm(h, e["GroupNorm_0"], groups)), e["Conv_2"])
    mean, logvar = h[..., :3], np.clip(h[..., 3:], -30.0, 20.0)
    z = mean + np.exp(0.5 * logvar) * noise

    d = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"]["decoder"])
    h = numpy_conv(z, d["Conv_0"])
    h = numpy_res_block(h, d["ResBlock_0"], groups)
    h = numpy_res_block(h, d["ResBlock_1"], groups)
    h = numpy_conv(h.repeat(2, axis=1).repeat(2, axis=2), d["Conv_1"])
    h = numpy_res_block(h, d["ResBlock_2"], groups)
    image_out = numpy_conv(numpy_swish(numpy_group_norm(h, d["GroupNorm_0"], groups)), d["Conv_2"])
    np.testing.assert_allclose(out.mean, mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.logvar, logvar, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.reconstruction, image_out, rtol=1e-4, atol=1e-4)
