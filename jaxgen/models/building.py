"""Building a Flax module from config.model, the one way every family's make_model does it.

    model = from_config(GPT, config.model, vocab_size=vocab_size)

Each dataclass field of the module is a hyperparameter read from config.model under the same
name, unless the caller fixes it: values that come from the data rather than the config
(image_shape, num_classes, vocab_size, pad_id, ...). The module's own defaults are
documentation, not fallbacks, so a field missing from config.model is a ConfigError naming it;
the only exception is an explicit default for a field that runs saved before it existed lack.
Keys of config.model that are not fields (name, the paths of earlier stages, ...) are ignored.

Lists become tuples, so the module hashes (Flax and jit need that), and dtype strings become
jnp.dtype. Checks of the values themselves (ranges, shapes that fit) stay in each family's
check_config: only the family knows them.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import flax.linen as nn
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError

ModuleT = TypeVar("ModuleT", bound=nn.Module)

DTYPE_FIELDS = ("dtype", "param_dtype")
_FLAX_FIELDS = ("parent", "name")  # set by Flax when a module is bound, never hyperparameters


def config_fields(module_cls: type[nn.Module], fixed: tuple[str, ...] = ()) -> list[str]:
    """The hyperparameters a module reads from config.model when the caller passes `fixed`:
    its dataclass fields but Flax's own (parent, name) and those fixed."""
    return [
        field.name
        for field in dataclasses.fields(module_cls)
        if field.init and field.name not in _FLAX_FIELDS and field.name not in fixed
    ]


def from_config(
    module_cls: type[ModuleT],
    model_config: ConfigDict,
    *,
    defaults: Mapping[str, Any] | None = None,
    **fixed: Any,
) -> ModuleT:
    """`module_cls` with each field from `fixed` if given there, else from config.model.

    Args:
      module_cls: a Flax Linen module class.
      model_config: config.model; keys that are not fields of the module are ignored.
      defaults: values for fields that older saved runs lack (e.g. GPT's layer_norm_epsilon);
        used only when config.model has no such key.
      **fixed: values that are not config fields (image_shape, vocab_size, ...); they win
        over config.model.

    Returns:
      module_cls(**fields), lists and tuples made tuples (nested too), dtype and param_dtype
      made jnp.dtype.

    Raises:
      ConfigError: a field is neither fixed, in config.model nor in `defaults`.
      TypeError: `fixed` or `defaults` names something that is not a field of the module.
    """
    defaults = dict(defaults or {})
    names = config_fields(module_cls)
    unknown = sorted((set(fixed) | set(defaults)) - set(names))
    if unknown:
        raise TypeError(f"{module_cls.__name__} has no field {', '.join(unknown)}")
    kwargs = {}
    for name in names:
        if name in fixed:
            value = fixed[name]
        elif name in model_config:
            value = model_config[name]
        elif name in defaults:
            value = defaults[name]
        else:
            raise ConfigError(f"config.model.{name}: missing; {module_cls.__name__} needs it")
        kwargs[name] = _normalise(name, value)
    return module_cls(**kwargs)


def _normalise(name: str, value: Any) -> Any:
    """A config value as the module field wants it: hashable, and a dtype for dtypes."""
    if name in DTYPE_FIELDS and value is not None:
        return jnp.dtype(value)
    return _tuples(value)


def _tuples(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_tuples(item) for item in value)
    return value
