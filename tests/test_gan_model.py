"""GAN models: shapes and dtypes, spectral normalisation against NumPy's SVD, config checks."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models import gan as models
from tests.references import numpy_batch_norm_inference, numpy_conv, numpy_conv_transpose


def model_config(model_name, **overrides):
    config = ConfigDict(
        dict(
            name=model_name,
            latent_dim=8,
            hidden=(16,),
            features=4,
            norm="batch",
            spectral_norm=False,
            dtype="float32",
            param_dtype="float32",
        )
    )
    config.update(overrides)
    return config


@pytest.mark.parametrize(
    "name,shape,num_classes",
    [
        ("mlp", (28, 28, 1), 0),
        ("dcgan", (28, 28, 1), 10),
        ("dcgan", (32, 32, 3), 0),
        ("sngan", (32, 32, 3), 10),
    ],
)
def test_shapes_and_dtypes(name, shape, num_classes):
    generator, discriminator = models.make_models(model_config(name), shape, num_classes)

    # Traced, not compiled: shapes and dtypes without paying for XLA (tanh bounds values).
    def run(z, label):
        g_vars = generator.init(jax.random.PRNGKey(0), z, label, train=False)
        images = generator.apply(g_vars, z, label, train=False)
        d_vars = discriminator.init(jax.random.PRNGKey(1), images, label, train=False)
        return images, discriminator.apply(d_vars, images, label, train=False), d_vars

    images, logits, d_vars = jax.eval_shape(run, jnp.ones((2, 8)), jnp.array([0, 1]))
    assert images.shape == (2, *shape) and images.dtype == jnp.float32
    assert logits.shape == (2,) and logits.dtype == jnp.float32
    if name == "sngan":  # every conv and the head keep a power-iteration vector and sigma
        assert len(jax.tree.leaves(d_vars["batch_stats"])) == 2 * 8


def test_projection_discriminator_depends_on_the_label():
    _, discriminator = models.make_models(model_config("mlp"), (28, 28, 1), num_classes=10)
    x = jnp.ones((2, 28, 28, 1))
    variables = discriminator.init(jax.random.PRNGKey(0), x, jnp.array([0, 0]), train=False)
    logits = discriminator.apply(variables, x, jnp.array([0, 1]), train=False)
    assert float(jnp.abs(logits[0] - logits[1])) > 1e-4


def test_spectral_norm_power_iteration_converges_to_the_largest_singular_value():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(20, 12)).astype(np.float32)
    layer = nn.SpectralNorm(nn.Dense(12))
    x = jnp.asarray(rng.normal(size=(4, 20)).astype(np.float32))
    variables = layer.init(jax.random.PRNGKey(0), x, update_stats=False)
    params = jax.tree.map(lambda p: p, variables["params"])
    params["layer_instance"]["kernel"] = jnp.asarray(kernel)
    stats = variables["batch_stats"]
    for _ in range(50):  # one power iteration per call, state carried as in a train step
        out, updated = layer.apply(
            {"params": params, "batch_stats": stats}, x, update_stats=True, mutable=["batch_stats"]
        )
        stats = updated["batch_stats"]
    sigma = np.linalg.svd(kernel, compute_uv=False)[0]
    (stored,) = [v for k, v in jax.tree_util.tree_leaves_with_path(stats) if "sigma" in str(k)]
    np.testing.assert_allclose(stored, sigma, rtol=1e-4)
    # The layer uses the normalised kernel W / sigma.
    bias = np.asarray(params["layer_instance"]["bias"])
    np.testing.assert_allclose(out, np.asarray(x) @ (kernel / sigma) + bias, rtol=1e-4, atol=1e-5)


def test_conv_models_reject_other_image_sizes():
    with pytest.raises(ConfigError, match=r"^config\.model\.name: 'dcgan' is built for 28x28"):
        models.check_config(model_config("dcgan"), (64, 64, 3))
    models.check_config(model_config("mlp"), (64, 64, 3))  # the MLP takes any size


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"name": "stylegan"}, "config.model.name"),
        ({"norm": "group"}, "config.model.norm"),
        ({"latent_dim": 0}, "config.model.latent_dim"),
        ({"features": 0}, "config.model.features"),
    ],
)
def test_bad_model_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match="^" + re.escape(field)):
        models.check_config(model_config("dcgan", **overrides), (28, 28, 1))


def test_missing_field_names_the_field():
    config = model_config("dcgan")
    del config["norm"]
    with pytest.raises(ConfigError, match=r"^config\.model\.norm: missing"):
        models.check_config(config, (28, 28, 1))


def test_conditional_mlp_pair_matches_numpy():
    """The MLP generator [z, one-hot(y)] -> Dense + LeakyReLU(0.2) -> Dense -> tanh, and the
    projection discriminator (Miyato & Koyama 2018): flatten -> Dense + LeakyReLU(0.2) ->
    w·h + b + embed(y)·h, in NumPy with random params."""
    generator, discriminator = models.make_models(model_config("mlp"), (4, 6, 1), num_classes=3)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 8)).astype(np.float32)
    label = np.array([2, 0])
    g_vars = generator.init(jax.random.PRNGKey(0), z, label, train=False)
    g_params = jax.tree.map(lambda a: rng.normal(0, 0.5, a.shape).astype(np.float32), g_vars)
    images = generator.apply(g_params, z, label, train=False)
    d_vars = discriminator.init(jax.random.PRNGKey(1), images, label, train=False)
    d_params = jax.tree.map(lambda a: rng.normal(0, 0.5, a.shape).astype(np.float32), d_vars)
    logits = discriminator.apply(d_params, images, label, train=False)

    def leaky(h):
        return np.where(h > 0, h, 0.2 * h)

    g = jax.tree.map(lambda a: np.asarray(a, np.float64), g_params["params"])
    h = np.concatenate([z, np.eye(3)[label]], axis=1)
    h = leaky(h @ g["Dense_0"]["kernel"] + g["Dense_0"]["bias"])
    expected_images = np.tanh(h @ g["Dense_1"]["kernel"] + g["Dense_1"]["bias"]).reshape(2, 4, 6, 1)
    np.testing.assert_allclose(images, expected_images, rtol=1e-5, atol=1e-5)

    d = jax.tree.map(lambda a: np.asarray(a, np.float64), d_params["params"])
    h = leaky(expected_images.reshape(2, -1) @ d["Dense_0"]["kernel"] + d["Dense_0"]["bias"])
    projection = np.sum(d["Embed_0"]["embedding"][label] * h, axis=1)
    expected_logits = (h @ d["head"]["kernel"] + d["head"]["bias"])[:, 0] + projection
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-4)


def test_dcgan_pair_in_inference_mode_matches_numpy():
    """DCGAN at 28x28 (Radford et al. 2016): z -> Dense -> BN -> ReLU -> [4x4/2 transposed conv
    + BN + ReLU] x 2 -> 3x3 conv -> tanh; the discriminator [4x4/2 conv (+ BN after the first)
    + LeakyReLU 0.2] x 2 -> Dense. BatchNorm with random running statistics."""
    generator, discriminator = models.make_models(model_config("dcgan"), (28, 28, 1), 0)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 8)).astype(np.float32)

    def randomise(variables):
        def draw(path, a):
            value = rng.normal(0, 0.3, a.shape)
            if jax.tree_util.keystr(path).endswith("['var']"):
                value = np.abs(value) + 0.5
            return value.astype(np.float32)

        return jax.tree_util.tree_map_with_path(draw, variables)

    g_vars = randomise(generator.init(jax.random.PRNGKey(0), z, None, train=False))
    images = generator.apply(g_vars, z, None, train=False)
    d_vars = randomise(discriminator.init(jax.random.PRNGKey(1), images, None, train=False))
    logits = discriminator.apply(d_vars, images, None, train=False)

    g, stats = (
        jax.tree.map(lambda a: np.asarray(a, np.float64), g_vars[k])
        for k in ("params", "batch_stats")
    )
    h = (z @ g["Dense_0"]["kernel"]).reshape(2, 7, 7, 16)
    h = np.maximum(numpy_batch_norm_inference(h, g["BatchNorm_0"], stats["BatchNorm_0"]), 0)
    for stage in range(2):
        h = numpy_conv_transpose(h, g[f"ConvTranspose_{stage}"])
        norm = f"BatchNorm_{stage + 1}"
        h = np.maximum(numpy_batch_norm_inference(h, g[norm], stats[norm]), 0)
    expected_images = np.tanh(numpy_conv(h, g["Conv_0"]))
    np.testing.assert_allclose(images, expected_images, rtol=1e-4, atol=1e-4)

    d, stats = (
        jax.tree.map(lambda a: np.asarray(a, np.float64), d_vars[k])
        for k in ("params", "batch_stats")
    )
    h = numpy_conv(expected_images, d["Conv_0"], stride=2)
    h = np.where(h > 0, h, 0.2 * h)
    h = numpy_conv(h, {"kernel": d["Conv_1"]["kernel"], "bias": 0.0}, stride=2)
    h = numpy_batch_norm_inference(h, d["BatchNorm_0"], stats["BatchNorm_0"])
    h = np.where(h > 0, h, 0.2 * h).reshape(2, -1)
    expected_logits = (h @ d["head"]["kernel"] + d["head"]["bias"])[:, 0]
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-4)
