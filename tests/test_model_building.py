"""from_config: a Flax module built from config.model, and a family's make_model built with it."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import pytest

from jaxgen.config import ConfigError
from jaxgen.models import ddpm, gpt
from jaxgen.models.building import config_fields, from_config
from tests.helpers import gpt_model_config, load_config


class Tiny(nn.Module):
    """A module with one field of each kind from_config handles."""

    image_shape: tuple[int, ...]
    hidden: tuple[int, ...] = (8,)
    blocks: tuple[tuple[int, ...], ...] = ((1, 2),)
    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.hidden[-1], dtype=self.dtype, param_dtype=self.param_dtype)(x)


def _model_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(
            name="tiny",  # not a field of Tiny: ignored
            autoencoder="/tmp/ae",  # neither
            image_shape=(1, 1, 1),
            hidden=[4, 6],
            blocks=[[1, 2], [3]],
            epsilon=1e-6,
            dtype="bfloat16",
            param_dtype="float32",
        )
    )
    config.update(overrides)
    return config


def test_fields_come_from_config_and_fixed_wins():
    model = from_config(Tiny, _model_config(), image_shape=[28, 28, 1])
    assert model.image_shape == (28, 28, 1)  # fixed, not config.model's (1, 1, 1)
    assert model.epsilon == 1e-6


def test_lists_become_tuples_and_the_module_hashes():
    model = from_config(Tiny, _model_config(), image_shape=(28, 28, 1))
    assert model.hidden == (4, 6) and type(model.hidden) is tuple
    assert model.blocks == ((1, 2), (3,)) and all(type(b) is tuple for b in model.blocks)
    hash(model)  # jit and Flax need hashable modules


def test_dtype_strings_become_dtypes():
    model = from_config(Tiny, _model_config(), image_shape=(2,))
    assert model.dtype == jnp.dtype("bfloat16") and isinstance(model.dtype, jnp.dtype)
    assert model.param_dtype == jnp.dtype("float32") and isinstance(model.param_dtype, jnp.dtype)


def test_missing_field_is_an_error_naming_it():
    config = _model_config()
    del config["hidden"]
    with pytest.raises(ConfigError, match=r"^config\.model\.hidden: missing") as error:
        from_config(Tiny, config, image_shape=(2,))
    assert "\n" not in str(error.value)  # the scripts print it as one line
    with pytest.raises(ConfigError, match=r"^config\.model\.image_shape: missing"):
        from_config(Tiny, ml_collections.ConfigDict(dict(hidden=(2,))))


def test_default_only_for_a_field_the_config_lacks():
    legacy = _model_config()
    del legacy["epsilon"]  # a run saved before the field existed
    model = from_config(Tiny, legacy, defaults={"epsilon": 1e-5}, image_shape=(2,))
    assert model.epsilon == 1e-5
    model = from_config(Tiny, _model_config(), defaults={"epsilon": 1e-5}, image_shape=(2,))
    assert model.epsilon == 1e-6  # config.model's value wins over the default


def test_fixing_a_field_the_module_lacks_is_an_error():
    with pytest.raises(TypeError, match="Tiny has no field num_classes"):
        from_config(Tiny, _model_config(), image_shape=(2,), num_classes=10)


def test_config_fields_leave_out_flax_and_fixed_fields():
    assert config_fields(Tiny) == [
        "image_shape",
        "hidden",
        "blocks",
        "epsilon",
        "dtype",
        "param_dtype",
    ]
    assert "image_shape" not in config_fields(Tiny, fixed=("image_shape",))


def test_ddpm_make_model_equals_the_hand_built_unet():
    config = load_config("configs/ddpm/mnist.py", "smoke").model
    expected = ddpm.UNet(
        channels=config.channels,
        channel_multipliers=tuple(config.channel_multipliers),
        num_res_blocks=config.num_res_blocks,
        attention_resolutions=tuple(config.attention_resolutions),
        dropout=config.dropout,
        groups=config.groups,
        num_classes=10,
        out_channels=1,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
    )
    assert ddpm.make_model(config, (28, 28, 1), num_classes=10) == expected


def test_gpt_make_model_keeps_the_legacy_epsilon_and_the_padded_vocab():
    legacy = gpt_model_config()  # saved before layer_norm_epsilon existed
    assert gpt.make_model(legacy, 37).layer_norm_epsilon == 1e-5
    assert gpt.make_model(legacy, 37).vocab_size == 37  # vocab_size 0: the tokenizer's
    assert gpt.make_model(gpt_model_config(vocab_size=64), 37).vocab_size == 64
