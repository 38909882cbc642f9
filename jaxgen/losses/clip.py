"""CLIP's symmetric contrastive loss (Radford et al. 2021, figure 3's pseudocode).

    logits = exp(t) * I @ T^T               # [B, B] scaled cosines, I and T unit-norm
    loss = (CE(logits, arange(B)) + CE(logits^T, arange(B))) / 2

InfoNCE in both directions: image i must pick its own caption among the batch's, and caption i
its own image. Captions repeated within a batch (captioned MNIST has 10 classes) count as
negatives, as in CLIP; the loss floor is then above 0.
"""

import jax
import jax.numpy as jnp
import optax

from jaxgen.registry import Registry

LOSSES = Registry("loss", "config.loss.name")


@LOSSES.register("infonce")
def symmetric_infonce(image_embeds: jax.Array, text_embeds: jax.Array, logit_scale: jax.Array):
    """(loss, metrics) of the symmetric InfoNCE over a batch of matching pairs."""
    logits = jnp.exp(logit_scale) * image_embeds @ text_embeds.T  # [B images, B captions]
    labels = jnp.arange(logits.shape[0])
    image_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    text_loss = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    loss = 0.5 * (image_loss + text_loss)
    accuracy = 0.5 * (
        jnp.mean(jnp.argmax(logits, axis=1) == labels)
        + jnp.mean(jnp.argmax(logits, axis=0) == labels)
    )
    metrics = {"loss": loss, "accuracy": accuracy, "temperature": jnp.exp(-logit_scale)}
    return loss, metrics
