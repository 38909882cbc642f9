"""Classifier family: the domain network of metrics/domain.py, trained by the generic loop.

A supervised family in the same shape as train/vae.py: its train step is
train_state.train_step over train_inputs and classifier_loss. Its `sample` returns no
images (the loop writes nothing); its eval step "accuracy" gives masked sums of
correct predictions and cross-entropy over the eval split. Its "features" function
(Steps.predict_fns) is what the domain metrics embed images with.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.family import FAMILIES, Family, Steps
from jaxgen.losses import classifier as losses
from jaxgen.models import classifier as models
from jaxgen.train import state as train_state


def validate(config: ConfigDict, info: Any) -> None:
    models.check_config(config.model, info.num_classes)
    losses.LOSSES.get(config.loss.name)
    if config.data.pixels != "symmetric":
        raise ConfigError(
            f"config.data.pixels: the classifier reads images in [-1, 1] ('symmetric'), "
            f"got {config.data.pixels!r}"
        )


def classifier_loss(params, batch, *, model, loss_fn, loss_kw):
    """(cross-entropy, metrics) of the model on {"image", "label"}."""
    logits = model.apply({"params": params}, batch["image"]).logits
    return loss_fn(logits, batch["label"], **loss_kw)


def init(rng: jax.Array, batch: dict, *, model, optimizer: train_state.Optimizer):
    params_rng, state_rng = jax.random.split(rng)
    params = model.init(params_rng, batch["image"][:1])["params"]
    return train_state.create(params, optimizer, state_rng)


def train_inputs(state, batch, rng):
    """{"image", "label"} of the batch: the step draws nothing (state and rng unused)."""
    del state, rng
    return {"image": batch["image"], "label": batch["label"]}


def accuracy_sums(params, batch, rng, *, model):
    """Sums of correct predictions and cross-entropy (nats) over real examples."""
    del rng
    image, label, mask = batch["image"], batch["label"], batch["mask"]
    logits = model.apply({"params": params}, image).logits
    correct = (jnp.argmax(logits, -1) == label).astype(jnp.float32)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, label)
    return {
        "accuracy": jnp.sum(correct * mask),
        "xent": jnp.sum(xent * mask),
        "count": jnp.sum(mask),
    }


def features(params, images, *, model):
    """(penultimate features [B, D], logits [B, K]) of images [B, H, W, C] in [-1, 1]: what the
    domain metrics embed images with (jaxgen.metrics.domain)."""
    out = model.apply({"params": params}, images)
    return out.features, out.logits


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    model = models.make_model(config.model, info.num_classes)
    optimizer = train_state.from_config(config)
    step = functools.partial(
        train_state.train_step,
        inputs_of=train_inputs,
        loss_of=functools.partial(
            classifier_loss,
            model=model,
            loss_fn=losses.LOSSES.get(config.loss.name),
            loss_kw=config.loss.kw.to_dict(),
        ),
        optimizer=optimizer,
        microbatches=config.train.microbatches,
        axis_name=axis_name,
    )
    accuracy = train_state.on_eval_params(functools.partial(accuracy_sums, model=model))
    return Steps(
        init=functools.partial(init, model=model, optimizer=optimizer),
        train_step=step,
        eval_steps={"accuracy": lambda entry: accuracy},
        sample=lambda state, batch, rng: {},  # a classifier draws no images
        batch_spec={"image": jax.ShapeDtypeStruct((1, *info.image_shape), jnp.float32)},
        # The domain metrics' feature network (jaxgen.metrics.domain).
        predict_fns={"features": functools.partial(features, model=model)},
    )


FAMILIES.register("classifier")(Family(validate, make_steps, losses=losses.LOSSES))
