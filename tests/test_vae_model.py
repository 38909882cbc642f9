"""Tests for jaxgen/models/vae.py and jaxgen/sampling/vae.py on tiny configs."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen.config import ConfigError
from jaxgen.models import vae as models
from jaxgen.sampling import vae as sampling
from tests.references import numpy_conv, numpy_conv_transpose

LATENT = 3
IMAGE_SHAPE = (8, 12, 3)  # H != W catches swapped axes; both divisible by 4 for "conv"


def _config(name="mlp", likelihood="bernoulli", dtype="float32", **overrides):
    config = ml_collections.ConfigDict(
        dict(
            name=name,
            dtype=dtype,
            param_dtype="float32",
            latent_dim=LATENT,
            hidden=(16, 8),
            features=(4, 8),
            likelihood=likelihood,
        )
    )
    config.update(overrides)
    return config


def _init_args(image_shape, batch=2):
    return jax.random.key(0), jnp.zeros((batch, *image_shape)), jnp.zeros((batch, LATENT))


@functools.cache
def _params(name, likelihood):
    """Random params for IMAGE_SHAPE with init's structure, shared by the tests.

    Init's shapes come from eval_shape; values are drawn with NumPy (LeCun-normal
    kernels, small biases) because compiling Flax's initialisers takes seconds on CPU.
    """
    model = models.make_model(_config(name, likelihood), IMAGE_SHAPE)
    shapes = jax.eval_shape(model.init, *_init_args(IMAGE_SHAPE))["params"]
    rng = np.random.default_rng(0)

    def draw(shape):
        assert shape.dtype == jnp.float32  # param_dtype, whatever the compute dtype
        scale = 0.1 if len(shape.shape) == 1 else 1 / np.sqrt(np.prod(shape.shape[:-1]))
        return jnp.asarray(rng.normal(0, scale, shape.shape).astype(np.float32))

    return jax.tree.map(draw, shapes)


def _images(likelihood, shape, seed=0):
    rng = np.random.default_rng(seed)
    if likelihood == "bernoulli":
        return jnp.asarray((rng.random(shape) < 0.5).astype(np.float32))
    return jnp.asarray(rng.uniform(-1, 1, shape).astype(np.float32))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_output_shapes_and_dtypes(name, likelihood, dtype):
    image_shape = IMAGE_SHAPE
    channels_out = 3 if likelihood == "bernoulli" else 6
    model = models.make_model(_config(name, likelihood, dtype), image_shape)
    assert model.dtype == jnp.dtype(dtype)
    params = _params(name, likelihood)

    x = _images(likelihood, (2, *image_shape))
    variables = {"params": params}
    mean, logvar = model.apply(variables, x, method=model.encode)
    assert mean.shape == logvar.shape == (2, LATENT)
    assert mean.dtype == logvar.dtype == jnp.float32

    z = jax.random.normal(jax.random.key(1), (2, 5, LATENT))  # [B, K, D]
    out = model.apply(variables, z, method=model.decode)
    assert out.shape == (2, 5, *image_shape[:2], channels_out)
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(out))

    result = model.apply(variables, x, z)
    assert result.out.shape == (2, 5, *image_shape[:2], channels_out)
    assert result.z.shape == (2, 5, LATENT)
    assert result.out.dtype == result.mean.dtype == result.z.dtype == jnp.float32
    expected_z = mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * z
    np.testing.assert_allclose(result.z, expected_z, rtol=1e-6)
    if likelihood == "gaussian":
        assert np.all(out[..., 3:] >= models.MIN_LOG_SCALE)


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_gaussian_log_scale_is_floored(name):
    model = models.make_model(_config(name, "gaussian"), IMAGE_SHAPE)
    params = dict(_params(name, "gaussian"))
    # A very negative head bias drives the raw log-scale (and mean) far below the floor.
    params["decoder_head"] = dict(params["decoder_head"])
    params["decoder_head"]["bias"] = jnp.full_like(params["decoder_head"]["bias"], -100.0)
    out = model.apply({"params": params}, jnp.zeros((2, LATENT)), method=model.decode)
    np.testing.assert_allclose(out[..., 3:], models.MIN_LOG_SCALE, atol=1e-3)
    assert np.all(out[..., :3] < -10)  # the means are not floored


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_bfloat16_compute_stays_close_to_float32(name):
    image_shape = IMAGE_SHAPE
    model_f32 = models.make_model(_config(name), image_shape)
    model_bf16 = models.make_model(_config(name, dtype="bfloat16"), image_shape)
    params = _params(name, "bernoulli")
    x = _images("bernoulli", (4, *image_shape))
    z = jax.random.normal(jax.random.key(1), (4, LATENT))
    out_f32 = model_f32.apply({"params": params}, x, z).out
    out_bf16 = model_bf16.apply({"params": params}, x, z).out
    np.testing.assert_allclose(out_bf16, out_f32, atol=0.1)


def test_mlp_param_count_matches_formula():
    image_shape = (5, 7, 2)
    model = models.make_model(_config("mlp", "gaussian", hidden=(11, 13)), image_shape)
    pixels, out_pixels, d = 5 * 7 * 2, 5 * 7 * 4, LATENT
    dense = lambda fan_in, fan_out: fan_in * fan_out + fan_out  # noqa: E731
    encoder = dense(pixels, 11) + dense(11, 13) + dense(13, 2 * d)
    decoder = dense(d, 13) + dense(13, 11) + dense(11, out_pixels)
    params = jax.eval_shape(model.init, *_init_args(image_shape))["params"]
    assert sum(p.size for p in jax.tree.leaves(params)) == encoder + decoder


def test_check_image_shape_errors():
    models.check_image_shape(_config("conv"), (28, 28, 1))
    models.check_image_shape(_config("mlp"), (28, 30, 1))  # the MLP takes any shape
    with pytest.raises(ConfigError, match=r"^config\.model\.name: .*divisible by 4"):
        models.check_image_shape(_config("conv"), (28, 30, 1))
    with pytest.raises(ConfigError, match=r"^config\.model\.likelihood:"):
        models.check_image_shape(_config("mlp", likelihood="poisson"), (28, 28, 1))
    with pytest.raises(ConfigError, match=r"^config\.model\.name: unknown model 'resnet'"):
        models.check_image_shape(_config("resnet"), (28, 28, 1))
    with pytest.raises(ConfigError, match=r"^config\.model\.features:"):
        models.check_image_shape(_config("conv", features=(4, 8, 16)), (28, 28, 1))
    with pytest.raises(ConfigError, match=r"^config\.model\.name:") as error:
        models.make_model(_config("conv"), (6, 8, 1))  # make_model checks too
    assert "\n" not in str(error.value)  # the scripts print it as one line


def test_make_model_requires_every_hyperparameter():
    config = _config("mlp")
    del config["hidden"]
    with pytest.raises(ConfigError, match=r"^config\.model\.hidden: missing"):
        models.make_model(config, (4, 4, 1))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_sampling_shapes_range_and_interpolation_endpoints(likelihood):
    image_shape = IMAGE_SHAPE
    model = models.make_model(_config("conv", likelihood), image_shape)
    params = _params("conv", likelihood)
    # Sampling functions must be jittable with the model static, as the caller does.
    prior = jax.jit(sampling.prior_samples, static_argnums=(0, 3))
    samples = prior(model, params, jax.random.key(2), 5)
    assert samples.shape == (5, *image_shape) and samples.dtype == jnp.float32
    assert np.all((np.asarray(samples) >= -1) & (np.asarray(samples) <= 1))
    decode = functools.partial(model.apply, {"params": params}, method=model.decode)
    z_prior = jax.random.normal(jax.random.key(2), (5, LATENT))
    np.testing.assert_allclose(samples, sampling.to_pixels(decode(z_prior), likelihood), atol=1e-5)

    image_a = _images(likelihood, (3, *image_shape), seed=1)
    image_b = _images(likelihood, (3, *image_shape), seed=2)
    recon_a = sampling.reconstructions(model, params, image_a)
    recon_b = sampling.reconstructions(model, params, image_b)
    assert recon_a.shape == (3, *image_shape)
    mean_a, _ = model.apply({"params": params}, image_a, method=model.encode)
    np.testing.assert_allclose(recon_a, sampling.to_pixels(decode(mean_a), likelihood), atol=1e-5)
    lines = jax.jit(sampling.interpolations, static_argnums=(0, 4))(
        model, params, image_a, image_b, 4
    )
    assert lines.shape == (3, 4, *image_shape)
    assert np.all((np.asarray(lines) >= -1) & (np.asarray(lines) <= 1))
    np.testing.assert_allclose(lines[:, 0], recon_a, atol=1e-5)
    np.testing.assert_allclose(lines[:, -1], recon_b, atol=1e-5)


def test_to_pixels_by_hand():
    logits = jnp.array([-50.0, 0.0, np.log(3.0), 50.0]).reshape(1, 1, 4, 1)
    np.testing.assert_allclose(
        sampling.to_pixels(logits, "bernoulli").ravel(), [-1.0, 0.0, 0.5, 1.0], atol=1e-6
    )
    out = jnp.array([[-3.0, 0.25, 2.0, -9.0, -9.0, -9.0]]).reshape(1, 1, 1, 6)  # means, scales
    np.testing.assert_allclose(
        sampling.to_pixels(out, "gaussian").ravel(), [-1.0, 0.25, 1.0], atol=1e-6
    )
    with pytest.raises(ConfigError, match=r"^config\.model\.likelihood:"):
        sampling.to_pixels(out, "poisson")


def test_models_are_registered():
    assert models.MODELS.names() == ["conv", "mlp"]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_mlp_forward_matches_numpy(likelihood):
    """Kingma & Welling's MLP VAE in NumPy: flatten, Dense + SiLU per hidden layer, a head of
    (mean, logvar); z = mean + exp(logvar / 2) ε; the mirrored decoder, and for the Gaussian
    likelihood a log-scale floored softly at log(2/255): floor + softplus(s - floor)."""
    model = models.make_model(_config("mlp", likelihood), IMAGE_SHAPE)
    params = _params("mlp", likelihood)
    x = _images(likelihood, (2, *IMAGE_SHAPE))
    noise = np.random.default_rng(1).normal(size=(2, LATENT)).astype(np.float32)
    out = model.apply({"params": params}, x, jnp.asarray(noise))

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def dense(name, h):
        return h @ p[name]["kernel"] + p[name]["bias"]

    def silu(h):
        return h / (1 + np.exp(-h))

    h = np.asarray(x, np.float64).reshape(2, -1)
    for i in range(2):
        h = silu(dense(f"encoder_{i}", h))
    mean, logvar = np.split(dense("encoder_head", h), 2, axis=-1)
    z = mean + np.exp(0.5 * logvar) * noise
    h = z
    for i in range(2):
        h = silu(dense(f"decoder_{i}", h))
    decoded = dense("decoder_head", h).reshape(2, 8, 12, -1)
    if likelihood == "gaussian":
        floor = np.log(2 / 255)
        mu, s = np.split(decoded, 2, axis=-1)
        decoded = np.concatenate([mu, floor + np.log1p(np.exp(s - floor))], axis=-1)
    np.testing.assert_allclose(out.mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.logvar, logvar, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.z, z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.out, decoded, rtol=1e-4, atol=1e-5)


def test_conv_forward_matches_numpy():
    """Two stride-2 3x3 convs + SiLU, dense layers to (mean, logvar), and the mirrored decoder
    through two stride-2 transposed convs, in NumPy (Bernoulli logits)."""
    model = models.make_model(_config("conv", "bernoulli"), IMAGE_SHAPE)
    params = _params("conv", "bernoulli")
    x = _images("bernoulli", (2, *IMAGE_SHAPE))
    noise = np.random.default_rng(1).normal(size=(2, LATENT)).astype(np.float32)
    out = model.apply({"params": params}, x, jnp.asarray(noise))

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def silu(h):
        return h / (1 + np.exp(-h))

    def dense(name, h):
        return h @ p[name]["kernel"] + p[name]["bias"]

    h = np.asarray(x, np.float64)
    for i in range(2):
        h = silu(numpy_conv(h, p[f"encoder_convs_{i}"], stride=2))
    h = silu(dense("encoder_dense_1", silu(dense("encoder_dense_0", h.reshape(2, -1)))))
    mean, logvar = np.split(dense("encoder_head", h), 2, axis=-1)
    z = mean + np.exp(0.5 * logvar) * noise
    h = silu(dense("decoder_dense_1", silu(dense("decoder_dense_0", z))))
    h = silu(dense("decoder_project", h))
    h = silu(numpy_conv_transpose(h.reshape(2, 2, 3, 8), p["decoder_conv"]))
    logits = numpy_conv_transpose(h, p["decoder_head"])
    np.testing.assert_allclose(out.mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.out, logits, rtol=1e-4, atol=1e-4)
