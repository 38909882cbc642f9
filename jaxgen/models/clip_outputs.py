"""What every CLIP model returns (ours in models/clip.py, a published one in
models/clip_pretrained.py), so that both share one interface without importing each other."""

import math
from typing import NamedTuple

import jax

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips exp(logit_scale) at 100


class ClipOutput(NamedTuple):
    image_embeds: jax.Array  # [B, embed_dim], unit norm
    text_embeds: jax.Array  # [B, embed_dim], unit norm
    logit_scale: jax.Array  # scalar: logits = exp(logit_scale) * cosines


class TextFeatures(NamedTuple):
    hidden: jax.Array  # [B, L, width]: every token's final hidden state
    pooled: jax.Array  # [B, width]: the last real token's
