"""CLIP score (Hessel et al. 2021, "CLIPScore"), with torchmetrics' definition:

    score(image, caption) = 100 * max(cos(E_image(image), E_text(caption)), 0)

averaged over pairs; torchmetrics' CLIPScore leaves out CLIPScore's 2.5 weight, and so do we.
The embeddings come from a CLIP model (jaxgen/models/clip.py). This module holds the pure
function; the CLIP family's "clip_score" evaluation applies it to real image-caption pairs (and,
as the chance baseline, to mismatched ones), and a text-to-image model applies it to its samples
and their prompts.

torchmetrics itself clamps the mean, not each pair: max(mean(100 cos), 0). pair_scores and
folder_score compute exactly that, and preprocess makes an image's pixel_values as transformers'
CLIPImageProcessor does, for a published CLIP (models/clip_pretrained.py) scoring image folders
(experiments/clip_score.py) as torchmetrics would.
"""

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def clip_score(image_embeds: jax.Array, text_embeds: jax.Array) -> jax.Array:
    """100 * max(cos, 0) per pair [B] of image and text embeddings [B, D] (any norm)."""
    image = image_embeds / jnp.maximum(jnp.linalg.norm(image_embeds, axis=-1, keepdims=True), 1e-12)
    text = text_embeds / jnp.maximum(jnp.linalg.norm(text_embeds, axis=-1, keepdims=True), 1e-12)
    return 100.0 * jnp.maximum(jnp.sum(image * text, axis=-1), 0.0)


def pair_scores(image_embeds: jax.Array, text_embeds: jax.Array) -> jax.Array:
    """100 * cos per pair [B], not clamped: torchmetrics clamps only the mean (folder_score)."""
    image = image_embeds / jnp.linalg.norm(image_embeds, axis=-1, keepdims=True)
    text = text_embeds / jnp.linalg.norm(text_embeds, axis=-1, keepdims=True)
    return 100.0 * jnp.sum(image * text, axis=-1)


def folder_score(scores: np.ndarray) -> float:
    """torchmetrics' CLIPScore of pairs whose pair_scores are `scores`: max(mean, 0)."""
    return max(float(np.mean(np.asarray(scores, np.float64))), 0.0)


def preprocess(image: Image.Image, processor: Mapping) -> np.ndarray:
    """float32 [S, S, 3] pixel_values of a PIL image, as transformers' CLIPImageProcessor (its
    PIL backend) makes them: RGB (alpha composited on white), the shortest edge resized to
    processor["size"] with PIL (bicubic for CLIP) and the long edge to int(size * long / short),
    a center crop (zero padding where the image is smaller), x * rescale_factor in float64 then
    float32, (x - mean) / std in float32. processor: clip_pretrained.read_processor's dict."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    image = image.convert("RGB")
    if processor["do_resize"]:
        width, height = image.size
        size = processor["size"]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(size * long / short)
        new_width, new_height = (size, new_long) if width <= height else (new_long, size)
        image = image.resize((new_width, new_height), resample=processor["resample"])
    pixels = np.asarray(image)  # [H, W, 3] uint8
    if processor["do_center_crop"]:
        crop_height, crop_width = processor["crop"]
        height, width = pixels.shape[:2]
        if crop_height > height or crop_width > width:  # pad to the crop, centred, with zeros
            new_height, new_width = max(crop_height, height), max(crop_width, width)
            padded = np.zeros((new_height, new_width, 3), pixels.dtype)
            top, left = math.ceil((new_height - height) / 2), math.ceil((new_width - width) / 2)
            padded[top : top + height, left : left + width] = pixels
            pixels, height, width = padded, new_height, new_width
        top, left = (height - crop_height) // 2, (width - crop_width) // 2
        pixels = pixels[top : top + crop_height, left : left + crop_width]
    pixels = pixels.astype(np.float32)
    if processor["do_rescale"]:
        pixels = (pixels.astype(np.float64) * processor["rescale_factor"]).astype(np.float32)
    if processor["do_normalize"]:
        mean = np.asarray(processor["image_mean"], np.float32)
        pixels = (pixels - mean) / np.asarray(processor["image_std"], np.float32)
    return pixels


class Scorer(NamedTuple):
    """What a clip family run gives scripts and evaluators (Steps.predict_fns["clip_scorer"]):

    preprocess(PIL image) -> float32 [H, W, C]   host-side: the model's input for one image
    image_features(params, inputs [B, H, W, C]) -> [B, D]   any norm
    text_features(params, ids [B, L]) -> [B, D]              any norm
    params(state) -> the params to score with (the eval params)
    """

    preprocess: Callable[[Image.Image], np.ndarray]
    image_features: Callable[..., jax.Array]
    text_features: Callable[..., jax.Array]
    params: Callable[[Any], Any]


def data_preprocess(image: Image.Image, image_shape: tuple[int, ...]) -> np.ndarray:
    """A jaxgen image [H, W, C] in [-1, 1] of a PIL image (bilinear to the data's size, RGB or
    grayscale as the data): the input of a CLIP trained here (models/clip.py)."""
    height, width, channels = image_shape
    image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, np.float32).reshape(height, width, channels)
    return pixels / 127.5 - 1.0
