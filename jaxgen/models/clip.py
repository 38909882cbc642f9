"""A small CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision"): an image tower, a Transformer text tower over caption tokens, linear projections
into a shared embedding space, and a learnable temperature.

Image tower: a conv stack (3x3 conv, GroupNorm, swish; stride 2 after each level), global average
pooling, a linear projection. Text tower (as CLIP's): token + learned position embeddings, pre-LN
Transformer blocks with a causal mask, a final LayerNorm; the pooled feature is the hidden state
of the caption's last real token (CLIP takes its end-of-text token), projected without bias.
`encode_text` also returns every token's hidden state [B, L, width]: what a latent diffusion U-Net
cross-attends to (SD conditions on CLIP's last hidden states). Padding (id PAD_ID = 0, at the end)
is never attended to by real tokens thanks to the causal mask. logit_scale starts at log(1/0.07)
and is clipped at log(100), as in the paper.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models import clip_pretrained
from jaxgen.models.building import from_config
from jaxgen.models.clip_outputs import MAX_LOGIT_SCALE, ClipOutput, TextFeatures

PAD_ID = 0  # jaxgen.data.captions_kind.PAD_ID (models do not import the data layer)
PRETRAINED = "clip_pretrained"  # config.model.name of a published CLIP's architecture


class ImageTower(nn.Module):
    channels: tuple[int, ...]
    groups: int = 8

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        h = image
        for features in self.channels:
            h = nn.swish(nn.GroupNorm(self.groups)(nn.Conv(features, (3, 3))(h)))
            h = nn.Conv(features, (3, 3), strides=(2, 2))(h)  # [B, H/2, W/2, features]
        return jnp.mean(nn.swish(nn.GroupNorm(self.groups)(h)), axis=(1, 2))  # [B, features]


class Block(nn.Module):
    """A pre-LN Transformer block: causal self-attention and a 4x GELU MLP."""

    width: int
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, length, _ = x.shape
        head_dim = self.width // self.heads
        qkv = nn.Dense(3 * self.width)(nn.LayerNorm()(x))  # [B, L, 3 * width]
        q, k, v = jnp.split(qkv.reshape(b, length, 3 * self.heads, head_dim), 3, axis=2)
        attended = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # [B, L, heads, hd]
        x = x + nn.Dense(self.width)(attended.reshape(b, length, self.width))
        h = nn.Dense(4 * self.width)(nn.LayerNorm()(x))
        return x + nn.Dense(self.width)(nn.gelu(h))


class TextTower(nn.Module):
    vocab_size: int
    max_len: int
    width: int
    depth: int
    heads: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> TextFeatures:
        length = tokens.shape[1]
        embed = nn.Embed(self.vocab_size, self.width)(tokens)  # [B, L, width]
        position = self.param("position", nn.initializers.normal(0.01), (self.max_len, self.width))
        h = embed + position[:length]
        for _ in range(self.depth):
            h = Block(self.width, self.heads)(h)
        h = nn.LayerNorm()(h)
        num_real = jnp.sum(tokens != PAD_ID, axis=1)
        last = jnp.maximum(num_real - 1, 0)  # the empty caption pools its first position
        return TextFeatures(h, h[jnp.arange(h.shape[0]), last])


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Clip(nn.Module):
    vocab_size: int
    caption_len: int
    embed_dim: int = 64
    channels: tuple[int, ...] = (32, 64, 128)
    width: int = 128
    depth: int = 2
    heads: int = 4
    groups: int = 8

    def setup(self):
        self.image_tower = ImageTower(self.channels, self.groups)
        self.text_tower = TextTower(
            self.vocab_size, self.caption_len, self.width, self.depth, self.heads
        )
        self.image_projection = nn.Dense(self.embed_dim, use_bias=False)
        self.text_projection = nn.Dense(self.embed_dim, use_bias=False)
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(math.log(1 / 0.07)), ()
        )

    def encode_image(self, image: jax.Array) -> jax.Array:
        """Unit-norm image embeddings [B, embed_dim]."""
        return _normalize(self.image_projection(self.image_tower(image)))

    def encode_text(self, tokens: jax.Array) -> tuple[jax.Array, TextFeatures]:
        """(unit-norm text embeddings [B, embed_dim], the tower's TextFeatures)."""
        features = self.text_tower(tokens)
        return _normalize(self.text_projection(features.pooled)), features

    def __call__(self, image: jax.Array, tokens: jax.Array) -> ClipOutput:
        text_embeds, _ = self.encode_text(tokens)
        scale = jnp.minimum(self.logit_scale, MAX_LOGIT_SCALE)
        return ClipOutput(self.encode_image(image), text_embeds, scale)


def check_config(model_config: ConfigDict) -> None:
    if model_config.get("name") == PRETRAINED:  # a published CLIP's architecture
        return clip_pretrained.check_config(model_config)
    for field in ("embed_dim", "width", "depth", "heads", "groups"):
        value = model_config[field]
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.model.{field}: {value!r}, must be a positive integer")
    if model_config.width % model_config.heads:
        raise ConfigError(
            f"config.model.heads: {model_config.heads} does not divide width {model_config.width}"
        )
    channels = model_config.channels
    if not channels or any(not isinstance(c, int) or c % model_config.groups for c in channels):
        raise ConfigError(
            f"config.model.channels: {channels}, positive multiples of groups {model_config.groups}"
        )


def text_width(model_config: ConfigDict) -> int:
    """The width of encode_text's hidden states (what a latent diffusion U-Net attends to)."""
    if model_config.get("name") == PRETRAINED:
        return model_config.text.width
    return model_config.width


def make_model(model_config: ConfigDict, vocab_size: int, caption_len: int) -> nn.Module:
    """Ours (config.model.name "clip"), or a published CLIP's architecture ("clip_pretrained",
    models/clip_pretrained.py, what experiments/import_clip.py writes): the same interface."""
    if model_config.get("name") == PRETRAINED:
        return clip_pretrained.make_model(model_config, vocab_size, caption_len)
    return from_config(Clip, model_config, vocab_size=vocab_size, caption_len=caption_len)
