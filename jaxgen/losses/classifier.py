"""Classifier losses: softmax cross-entropy on integer labels (optionally label-smoothed)."""

import jax
import jax.numpy as jnp
import optax

from jaxgen.registry import Registry

LOSSES = Registry("loss", "config.loss.name")


@LOSSES.register("xent")
def cross_entropy(
    logits: jax.Array, label: jax.Array, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict]:
    """Mean over the batch of -sum_k q_k log softmax(logits)_k.

    q is the one-hot label, or (1 - s) one-hot + s / K with label smoothing s
    (Szegedy et al. 2016, "Rethinking the Inception Architecture", section 7).
    Returns (loss, {"accuracy"}).
    """
    num_classes = logits.shape[-1]
    target = optax.smooth_labels(jax.nn.one_hot(label, num_classes), label_smoothing)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, target))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == label)
    return loss, {"accuracy": accuracy}
