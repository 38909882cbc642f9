"""StyleGAN2 networks: shapes, noise modes, truncation, style mixing, minibatch std."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxgen.config import ConfigError
from jaxgen.models import stylegan2 as models


def tiny_model_config(**overrides):
    config = ConfigDict(
        dict(
            name="stylegan2",
            resolution=16,
            z_dim=8,
            w_dim=8,
            mapping_layers=2,
            mapping_lr_multiplier=0.01,
            channel_base=64,  # 16 channels at 4x4, 8 at 8x8, 4 at 16x16
            channel_max=16,
            architecture="resnet",
            mbstd_group_size=4,
            cmap_dim=0,
            fused_modconv=True,
            conditional=False,
        )
    )
    config.update(overrides)
    return config


def build(image_shape=(16, 16, 3), num_classes=0, **overrides):
    generator, discriminator = models.make_networks(
        tiny_model_config(**overrides), image_shape, num_classes
    )
    z = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)), jnp.float32)
    label = jnp.arange(8, dtype=jnp.int32) % max(num_classes, 1)
    rng = jax.random.PRNGKey(0)
    g_params = generator.init(rng, z, label, rng)["params"]
    images = jnp.zeros((8,) + tuple(image_shape))
    d_params = discriminator.init(rng, images, label)["params"]
    return generator, discriminator, g_params, d_params, z, label


@pytest.mark.parametrize("num_classes", [0, 3])
@pytest.mark.parametrize("architecture", ["resnet", "orig"])
def test_shapes(num_classes, architecture):
    generator, discriminator, g_params, d_params, z, label = build(
        num_classes=num_classes, architecture=architecture
    )
    assert generator.num_ws == 6  # 4x4: 1 conv; 8x8, 16x16: 2 each; the last toRGB
    w = generator.apply({"params": g_params}, z, label, method="mapping")
    assert w.shape == (8, 8) and w.dtype == jnp.float32
    images = generator.apply({"params": g_params}, z, label, jax.random.PRNGKey(1))
    assert images.shape == (8, 16, 16, 3) and images.dtype == jnp.float32
    assert np.isfinite(np.asarray(images)).all()
    logits = discriminator.apply({"params": d_params}, images, label)
    assert logits.shape == (8,) and logits.dtype == jnp.float32
    # Mapping layers, 3 resolutions of synthesis.
    assert set(g_params["mapping_network"]) >= {"fc0", "fc1"}
    assert ("embed" in g_params["mapping_network"]) == bool(num_classes)
    assert ("mapping" in d_params) == bool(num_classes)
    assert any("skip" in key for key in d_params) == (architecture == "resnet")


def test_noise_modes():
    generator, _, g_params, _, z, label = build()
    # Noise strengths start at 0: set them to 1 so noise shows.
    g_params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.ones_like(x) if "noise_strength" in jax.tree_util.keystr(path) else x,
        g_params,
    )

    def run(mode, seed):
        return np.asarray(
            generator.apply({"params": g_params}, z, label, jax.random.PRNGKey(seed), mode)
        )

    assert not np.allclose(run("random", 1), run("random", 2))
    np.testing.assert_array_equal(run("const", 1), run("const", 2))
    np.testing.assert_array_equal(run("none", 1), run("none", 2))
    assert not np.allclose(run("const", 1), run("none", 1))


def test_truncation_psi_zero_gives_w_avg_and_cutoff_keeps_the_rest():
    ws = jnp.asarray(np.random.default_rng(1).normal(size=(3, 6, 8)), jnp.float32)
    w_avg = jnp.asarray(np.random.default_rng(2).normal(size=(8,)), jnp.float32)
    out = np.asarray(models.truncate(ws, w_avg, 0.0))
    np.testing.assert_allclose(out, np.broadcast_to(np.asarray(w_avg), out.shape), atol=1e-6)
    out = np.asarray(models.truncate(ws, w_avg, 0.5, cutoff=2))
    np.testing.assert_allclose(out[:, :2], 0.5 * np.asarray(ws[:, :2] + w_avg), atol=1e-6)
    np.testing.assert_array_equal(out[:, 2:], np.asarray(ws[:, 2:]))


def test_mix_styles_takes_the_second_ws_from_the_cutoff():
    a, b = jnp.zeros((2, 6, 3)), jnp.ones((2, 6, 3))
    mixed = np.asarray(models.mix_styles(a, b, jnp.array([2, 6])))
    assert (mixed[0, :2] == 0).all() and (mixed[0, 2:] == 1).all() and (mixed[1] == 0).all()


def test_minibatch_std_matches_the_publisher_grouping():
    x = np.random.default_rng(3).normal(size=(8, 2, 2, 3)).astype(np.float32)
    out = np.asarray(models.minibatch_std(jnp.asarray(x), 4))
    assert out.shape == (8, 2, 2, 4)
    np.testing.assert_array_equal(out[..., :3], x)
    for i in range(8):  # stylegan2-ada: reshape(G, -1, ...): examples i, i + 2, i + 4, i + 6
        group = x[i % 2 :: 2]
        expected = np.mean(np.sqrt(np.var(group, axis=0) + 1e-8))
        np.testing.assert_allclose(out[i, ..., 3], expected, rtol=1e-5)


def test_padding_and_bad_values_name_the_field():
    build(image_shape=(12, 12, 1))  # 12x12 data in a 16x16 model: padded by the family
    with pytest.raises(ConfigError, match=r"^config\.model\.resolution"):
        models.check_config(tiny_model_config(resolution=24), (16, 16, 3))
    with pytest.raises(ConfigError, match=r"^config\.model\.resolution"):
        models.check_config(tiny_model_config(), (32, 32, 3))
    with pytest.raises(ConfigError, match=r"^config\.model\.architecture"):
        models.check_config(tiny_model_config(architecture="skip"), (16, 16, 3))
    config = tiny_model_config()
    del config["w_dim"]
    with pytest.raises(ConfigError, match=r"^config\.model\.w_dim: missing"):
        models.check_config(config, (16, 16, 3))
