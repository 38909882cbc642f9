"""Classifier family: the domain network of metrics/domain.py, trained by the generic loop.

A supervised family in the same shape as train/vae.py. Its `sample` returns no
images (the loop writes nothing); its eval step "accuracy" gives masked sums of
correct predictions and cross-entropy over the eval split.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxgen import optim
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.losses import classifier as losses
from jaxgen.models import classifier as models
from jaxgen.train import FAMILIES, Family, Steps
from jaxgen.train import state as train_state
from jaxgen.train.gradients import grads_and_metrics


def validate(config: ConfigDict, info: Any) -> None:
    models.check_config(config.model, info.num_classes)
    losses.LOSSES.get(config.loss.name)
    if config.data.pixels != "symmetric":
        raise ConfigError(
            f"config.data.pixels: the classifier reads images in [-1, 1] ('symmetric'), "
            f"got {config.data.pixels!r}"
        )


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    model = models.make_model(config.model, info.num_classes)
    loss_fn = losses.LOSSES.get(config.loss.name)
    loss_kw = config.loss.kw.to_dict()
    optimizer = optim.make_optimizer(
        config.optim, config.train.num_steps, config.train.skip_nonfinite
    )
    schedule = optim.learning_rate(config.optim, config.train.num_steps)
    ema_decay = config.optim.ema_decay
    microbatches = config.train.microbatches

    def init(rng, batch):
        params_rng, state_rng = jax.random.split(rng)
        params = model.init(params_rng, batch["image"][:1])["params"]
        return train_state.create(params, optimizer, state_rng, ema=ema_decay > 0)

    def train_step(state, batch):
        def loss_of(params, mb):
            logits = model.apply({"params": params}, mb["image"]).logits
            return loss_fn(logits, mb["label"], **loss_kw)

        grads, metrics = grads_and_metrics(
            loss_of,
            state.params,
            {"image": batch["image"], "label": batch["label"]},
            microbatches,
            axis_name,
        )
        metrics["lr"] = schedule(state.step)
        return train_state.apply_gradients(state, grads, optimizer, ema_decay), metrics

    def make_accuracy_eval(entry):
        """Sums of correct predictions and cross-entropy (nats) over real examples."""

        def accuracy_step(state, batch, rng):
            del rng
            image, label, mask = batch["image"], batch["label"], batch["mask"]
            logits = model.apply({"params": state.eval_params}, image).logits
            correct = (jnp.argmax(logits, -1) == label).astype(jnp.float32)
            xent = optax.softmax_cross_entropy_with_integer_labels(logits, label)
            return {
                "accuracy": jnp.sum(correct * mask),
                "xent": jnp.sum(xent * mask),
                "count": jnp.sum(mask),
            }

        return accuracy_step

    def sample(state, batch, rng):
        return {}  # a classifier draws no images

    return Steps(
        init=init,
        train_step=train_step,
        eval_steps={"accuracy": make_accuracy_eval},
        sample=sample,
    )


FAMILIES.register("classifier")(Family(validate, make_steps, losses=losses.LOSSES))
