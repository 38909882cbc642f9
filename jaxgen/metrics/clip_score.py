"""CLIP score (Hessel et al. 2021, "CLIPScore"), with torchmetrics' definition:

    score(image, caption) = 100 * max(cos(E_image(image), E_text(caption)), 0)

averaged over pairs; torchmetrics' CLIPScore leaves out CLIPScore's 2.5 weight, and so do we.
The embeddings come from a CLIP model (jaxgen/models/clip.py). This module holds the pure
function; the CLIP family's "clip_score" evaluation applies it to real image-caption pairs (and,
as the chance baseline, to mismatched ones), and a text-to-image model applies it to its samples
and their prompts.
"""

import jax
import jax.numpy as jnp


def clip_score(image_embeds: jax.Array, text_embeds: jax.Array) -> jax.Array:
    """100 * max(cos, 0) per pair [B] of image and text embeddings [B, D] (any norm)."""
    image = image_embeds / jnp.maximum(jnp.linalg.norm(image_embeds, axis=-1, keepdims=True), 1e-12)
    text = text_embeds / jnp.maximum(jnp.linalg.norm(text_embeds, axis=-1, keepdims=True), 1e-12)
    return 100.0 * jnp.maximum(jnp.sum(image * text, axis=-1), 0.0)
