"""Image classifiers: the offline domain network behind domain-FID/KID/IS (metrics/domain.py).

One registered module, "cnn": two conv stages (3x3 conv + ReLU + 2x2 max-pool), then a
dense "features" layer whose activations are the embedding used for Fréchet
distances, then the class logits. No BatchNorm or dropout: the network is a pure
function of (params, image), so features do not depend on the batch or a key.
Images are NHWC float32 in [-1, 1] ({0, 1} pixels are mapped by the caller).
"""

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models.building import from_config
from jaxgen.registry import Registry

MODELS = Registry("model", "config.model.name")


class ClassifierOutput(NamedTuple):
    logits: jax.Array  # [B, num_classes] float32
    features: jax.Array  # [B, hidden] float32, the penultimate activations


@MODELS.register("cnn")
class CNN(nn.Module):
    """Conv3x3(features[i]) + ReLU + MaxPool2x2 per stage -> Dense(hidden) + ReLU -> Dense(K)."""

    num_classes: int = 10
    features: tuple[int, ...] = (32, 64)
    hidden: int = 128
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> ClassifierOutput:
        h = x.astype(self.dtype)
        for width in self.features:
            h = nn.Conv(width, (3, 3), dtype=self.dtype, param_dtype=self.param_dtype)(h)
            h = nn.max_pool(nn.relu(h), (2, 2), strides=(2, 2))  # [B, H/2, W/2, width]
        h = h.reshape(h.shape[0], -1)
        features = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype)(h))
        features = features.astype(jnp.float32)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype)(
            features
        )
        return ClassifierOutput(logits, features)


def check_config(model_config: ConfigDict, num_classes: int | None) -> None:
    """One-line ConfigError for a model config that cannot be built."""
    cls = MODELS.get(model_config.name)
    skip = {"parent", "name", "num_classes", "dtype", "param_dtype"}
    for field in (f.name for f in dataclasses.fields(cls) if f.name not in skip):
        if field not in model_config:
            raise ConfigError(
                f"config.model.{field}: missing; model {model_config.name!r} needs it"
            )
    if not num_classes:
        raise ConfigError("config.data.name: a classifier needs a dataset with class labels")
    if not all(isinstance(w, int) and w > 0 for w in model_config.features):
        raise ConfigError(
            f"config.model.features: widths must be positive integers, got {model_config.features}"
        )
    if not isinstance(model_config.hidden, int) or model_config.hidden < 1:
        raise ConfigError(
            f"config.model.hidden: must be a positive integer, got {model_config.hidden}"
        )


def make_model(model_config: ConfigDict, num_classes: int) -> nn.Module:
    return from_config(MODELS.get(model_config.name), model_config, num_classes=num_classes)
