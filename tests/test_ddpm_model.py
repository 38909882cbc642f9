"""The DDPM U-Net: the paper's 35.7M parameters, shapes and dtypes, conditioning, per-example dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.config import ConfigError
from jaxgen.models import ddpm as models
from tests.helpers import load_config
from tests.references import NumpyUNet

TINY = dict(
    channels=8,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    groups=4,
    out_channels=1,
)
ONE_LEVEL = TINY | dict(channel_multipliers=(1,), attention_resolutions=(8,))  # compiles faster


def init(model, x, t, label=None):
    """{"params": ...} for a tiny model, compiled (eager init compiles every op on its own)."""
    params = jax.jit(models.init_params, static_argnums=0)(
        model, jax.random.PRNGKey(0), x, t, label
    )
    return {"params": params}


def count(model, shape, label=False):
    x, t = jnp.zeros(shape), jnp.zeros(shape[:1], jnp.int32)
    args = (x, t, jnp.zeros(shape[:1], jnp.int32)) if label else (x, t)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(abstract))


def test_cifar10_unet_has_the_papers_35_7m_params():
    config = load_config("configs/ddpm/cifar10.py")
    model = models.make_model(config.model, (32, 32, 3), num_classes=0)
    params = count(model, (1, 32, 32, 3))
    print(f"CIFAR-10 U-Net parameters: {params:,}")
    # Ho et al. report 35.7M; this is the exact count of our layout.
    assert params == 35_746_307
    assert abs(params - 35.7e6) < 0.1e6


def test_output_shape_and_dtype_under_bfloat16():
    model = models.UNet(**TINY, dtype=jnp.bfloat16)
    x, t = jnp.ones((2, 8, 8, 1)), jnp.array([0, 99])
    variables = init(model, x, t)
    out = jax.jit(model.apply)(variables, x, t)
    assert out.shape == (2, 8, 8, 1) and out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


def test_class_conditioning_adds_a_null_label_and_changes_the_output():
    model = models.UNet(**ONE_LEVEL, num_classes=10)
    x, t = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1)), jnp.array([3, 3])
    variables = init(model, x, t, jnp.array([0, 0]))
    assert variables["params"]["Embed_0"]["embedding"].shape == (11, 32)  # 10 classes + null
    # The output layer starts at zero; perturb it to see the label's effect.
    variables = jax.tree.map(lambda p: p + 0.01, variables)
    apply = jax.jit(model.apply)
    a = apply(variables, x, t, jnp.array([0, 10]))
    b = apply(variables, x, t, jnp.array([1, 10]))
    assert float(jnp.abs(a[0] - b[0]).max()) > 0
    np.testing.assert_array_equal(a[1], b[1])


def test_dropout_masks_are_per_example():
    model = models.UNet(**ONE_LEVEL, dropout=0.5)
    x, t = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1)), jnp.array([1, 2, 3, 4])
    variables = jax.tree.map(lambda p: p + 0.01, init(model, x, t))
    keys = jax.random.split(jax.random.PRNGKey(2), 4)
    apply = jax.jit(model.apply)
    full = apply(variables, x, t, None, keys)
    part = apply(variables, x[1:3], t[1:3], None, keys[1:3])
    np.testing.assert_allclose(full[1:3], part, atol=1e-5)  # independent of the batch around it
    other = apply(variables, x, t, None, jax.random.split(jax.random.PRNGKey(3), 4))
    assert float(jnp.abs(full - other).max()) > 1e-4  # the masks do depend on the keys


def test_attention_resolution_not_reached_is_a_config_error():
    config = load_config("configs/ddpm/mnist.py", "smoke")
    config.model.attention_resolutions = (16,)
    with pytest.raises(ConfigError, match="config.model.attention_resolutions"):
        models.check_model_config(config.model, (28, 28, 1))


def test_unet_forward_matches_numpy():
    """Random params everywhere (the zero-initialised convs included), class-conditional."""
    model = models.UNet(**(TINY | dict(out_channels=2, num_classes=3, dropout=0.0)))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 2)).astype(np.float32)
    t, label = np.array([3, 917]), np.array([1, 3])  # 3: the "null" label
    variables = model.init(jax.random.PRNGKey(0), x, jnp.asarray(t), jnp.asarray(label))
    params = jax.tree.map(lambda a: rng.normal(0, 0.3, a.shape).astype(np.float32), variables)
    out = model.apply(params, x, jnp.asarray(t), jnp.asarray(label))
    reference = NumpyUNet(params["params"], 8, (1, 2), 1, (4,), 4)
    expected = reference(x.astype(np.float64), t, label)
    assert sorted(reference.counts.items()) == [
        ("AttentionBlock", 4), ("Conv", 4), ("Dense", 2), ("Embed", 1), ("GroupNorm", 1),
        ("ResBlock", 8),
    ]  # fmt: skip
    assert len(params["params"]) == sum(reference.counts.values())  # every module was used
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
