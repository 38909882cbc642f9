"""The latent U-Net with cross-attention, and classifier-free guidance on a text condition."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen.config import ConfigError
from jaxgen.models import latent_unet
from jaxgen.sampling import ddpm as sampling
from tests.references import NumpyLatentUNet

MODEL = dict(
    channels=16,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(7, 4),
    heads=2,
    dropout=0.0,
    groups=4,
    dtype="float32",
    param_dtype="float32",
)


def _model(**overrides):
    config = ml_collections.ConfigDict({**MODEL, **overrides})
    latent_unet.check_config(config)
    return latent_unet.make_model(config, latent_channels=3)


@pytest.mark.parametrize("size", [7, 8])
def test_shapes_on_odd_and_even_latents(size):
    model = _model()
    z = jnp.ones((2, size, size, 3))
    t = jnp.array([0, 999])
    context = jnp.ones((2, 5, 12))
    params = model.init(jax.random.PRNGKey(0), z, t, context)["params"]
    out = model.apply({"params": params}, z, t, context)
    assert out.shape == (2, size, size, 3) and out.dtype == jnp.float32
    # The output conv is zero-initialised, as in the DDPM U-Net.
    np.testing.assert_allclose(out, 0.0)


def test_output_depends_on_the_context_through_cross_attention():
    model = _model()
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 7, 3))
    t = jnp.array([10, 10])
    params = model.init(jax.random.PRNGKey(0), z, t, jnp.zeros((2, 5, 12)))["params"]
    # Give the zero-initialised projections (output conv, block convs, transformer proj_out)
    # weights, so that the output depends on the input at all.
    params = jax.tree.map(lambda p: jnp.full_like(p, 0.01) if not p.any() else p, params)
    context = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 12))
    a = model.apply({"params": params}, z, t, context)
    b = model.apply({"params": params}, z, t, context.at[1].set(0.0))
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)  # example 0's context unchanged
    assert not np.allclose(a[1], b[1])  # example 1 follows its own context


def test_check_config_names_the_field():
    with pytest.raises(ConfigError, match="config.model.channel_multipliers"):
        latent_unet.check_config(ml_collections.ConfigDict({**MODEL, "heads": 3}))


def test_guided_on_text_condition_is_the_cfg_formula():
    def apply(x, t, context):  # a network whose output is linear in its condition
        return x * 0 + context.sum(axis=(1, 2))[:, None, None, None]

    condition = jnp.array([[[1.0, 2.0]], [[3.0, 4.0]]])  # [B=2, L=1, D=2]
    null = jnp.array([[0.5, 0.5]])
    x, t = jnp.zeros((2, 2, 2, 1)), jnp.zeros((2,), jnp.int32)
    for scale in (0.0, 1.0, 5.0):
        out = sampling.guided_on(apply, condition, null, scale)(x, t)
        expected = 1.0 + scale * (np.array([3.0, 7.0]) - 1.0)
        np.testing.assert_allclose(out[:, 0, 0, 0], expected, rtol=1e-6)


@pytest.mark.parametrize("size", [7, 8])
def test_forward_matches_numpy(size):
    """Random params (the zero-initialised projections included); 7x7 latents go 7 -> 4 -> 7."""
    model = _model()
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    t = np.array([5, 980])
    context = rng.normal(size=(2, 5, 6)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), z, jnp.asarray(t), context)
    params = jax.tree.map(lambda a: rng.normal(0, 0.3, a.shape).astype(np.float32), variables)
    out = model.apply(params, z, jnp.asarray(t), context)
    reference = NumpyLatentUNet(params["params"], 16, (1, 2), 1, (7, 4), 4, heads=2)
    expected = reference(z.astype(np.float64), t, context.astype(np.float64))
    assert len(params["params"]) == sum(reference.counts.values())  # every module was used
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
