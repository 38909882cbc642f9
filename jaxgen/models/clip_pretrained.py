"""OpenAI CLIP as Hugging Face transformers computes it, for published weights (Radford et al.
2021): the text transformer (Stable Diffusion's text encoder), the vision ViT, the whole
CLIPModel, their weight maps, the CLIP tokenizer and the image processor's settings.

    model, params = load_text_encoder(text_encoder_dir)    # SD's text_encoder/, in one call
    sizes = read_text_config(hf_dir)                       # config.json of CLIPModel or CLIPTextModel
    weights, origin = pretrained.read_weights(hf_dir, *WEIGHT_FILES)
    params = text_params(weights, sizes, origin)           # shape by shape, names the tensor if off
    tokenizer = read_tokenizer(tokenizer_dir)              # vocab.json + merges.txt, padded to 77
    ids = tokenize(tokenizer, ["a photo of a cat"])       # int32 [B, 77]
    out = TextTransformer(**text_kwargs(sizes)).apply({"params": params}, ids)
    out.last_hidden_state                                   # [B, 77, width]: what SD attends to
    out.pooled                                              # [B, width]: at the end token

    sizes = read_clip_config(hf_dir); processor = read_processor(hf_dir)   # a CLIPModel folder
    params = clip_params(weights, sizes, origin)
    clip = Clip(**clip_kwargs(sizes, processor))           # encode_pixels, encode_text, ...

The modules follow transformers' CLIPTextModel exactly: token + learned position embeddings,
pre-LN encoder layers (q/k/v/out projections with biases, attention scaled by 1/sqrt(head_dim),
a causal mask), an MLP with quick_gelu (OpenAI's checkpoints) or exact gelu (OpenCLIP's, SD 2),
final_layer_norm, LayerNorm epsilon from config.json. The pooled output is the final hidden
state at the end token: at argmax(ids) when config.json has the legacy eos_token_id 2 (OpenAI's
checkpoints, where <|endoftext|> is the largest id), else at the first eos_token_id. Param names
are transformers' (layers_0.self_attn.q_proj ...), kernels [in, out] (torch's Linear transposed).
The vision tower is CLIPVisionModel's (patch conv without bias, class token, pre_layrnorm, the
same encoder layers without the mask, post_layernorm of the class token); Clip adds the
projections and logit_scale with jaxgen.models.clip.Clip's interface, so the clip family
(config.model.name "clip_pretrained", model_config) and a latent diffusion run take it as ours.

The folder is what save_pretrained writes: a CLIPModel (text_config inside config.json; names
under text_model.) or a CLIPTextModel alone (SD's text_encoder/: the sizes at the top level;
names under text_model. as transformers 4 saved them, or bare as transformers 5 does).
Every error is a pretrained.WeightError: one line naming the file (and the tensor).
Deliberately left out: attention masks for padding (the causal mask already hides the padding
after the end token from every real token), dropout, and position-embedding interpolation.
"""

import dataclasses
import math
import os
from typing import NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers as hf

from jaxgen import pretrained, tokenizers
from jaxgen.config import ConfigError
from jaxgen.models.clip_outputs import MAX_LOGIT_SCALE, ClipOutput, TextFeatures
from jaxgen.pretrained import Tensors, WeightError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")
LEGACY_EOS_TOKEN_ID = 2  # transformers' CLIPTextConfig default before PR #24773: pool at argmax
BUFFERS = ("position_ids",)  # saved by older transformers, not parameters
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIPImageProcessor's defaults
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LENGTH = 77  # CLIP's context: <|startoftext|>, 75 tokens, <|endoftext|>
# transformers' CLIPTokenizer pre-tokenizer: the special tokens, contractions, letter runs,
# single digits, other symbol runs (OpenAI's simple_tokenizer pattern).
_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def _activation(name: str):
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)  # OpenAI's approximation
    return lambda x: jax.nn.gelu(x, approximate=name != "gelu")


class TextOutput(NamedTuple):
    last_hidden_state: jax.Array  # [B, L, width], after final_layer_norm
    pooled: jax.Array  # [B, width]: the last hidden state at the end token


class Attention(nn.Module):
    width: int
    heads: int
    causal: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, length, _ = x.shape
        head_dim = self.width // self.heads

        def project(name):
            return nn.Dense(self.width, name=name)(x).reshape(b, length, self.heads, head_dim)

        q, k, v = project("q_proj"), project("k_proj"), project("v_proj")  # [B, L, heads, hd]
        # Scaled by 1/sqrt(head_dim), as transformers' CLIPAttention.
        attended = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
        return nn.Dense(self.width, name="out_proj")(attended.reshape(b, length, self.width))


class EncoderLayer(nn.Module):
    """transformers' CLIPEncoderLayer: x + attn(LN1(x)), then x + fc2(act(fc1(LN2(x))))."""

    width: int
    heads: int
    intermediate: int
    activation: str
    epsilon: float
    causal: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.LayerNorm(self.epsilon, name="layer_norm1")(x)
        x = x + Attention(self.width, self.heads, self.causal, name="self_attn")(h)
        h = nn.LayerNorm(self.epsilon, name="layer_norm2")(x)
        h = nn.Dense(self.intermediate, name="fc1")(h)
        h = nn.Dense(self.width, name="fc2")(_activation(self.activation)(h))
        return x + h


class TextTransformer(nn.Module):
    """transformers' CLIPTextModel: ids [B, L] (L <= positions) -> TextOutput."""

    vocab_size: int
    positions: int
    width: int
    layers: int
    heads: int
    intermediate: int
    activation: str = "quick_gelu"
    epsilon: float = 1e-5
    eos_token_id: int = LEGACY_EOS_TOKEN_ID

    @nn.compact
    def __call__(self, ids: jax.Array) -> TextOutput:
        length = ids.shape[1]
        embed = nn.Embed(self.vocab_size, self.width, name="token_embedding")
        positions = self.param(
            "position_embedding", nn.initializers.normal(0.01), (self.positions, self.width)
        )
        x = embed(ids) + positions[:length]  # [B, L, width]
        for i in range(self.layers):
            x = EncoderLayer(
                self.width,
                self.heads,
                self.intermediate,
                self.activation,
                self.epsilon,
                causal=True,
                name=f"layers_{i}",
            )(x)
        x = nn.LayerNorm(self.epsilon, name="final_layer_norm")(x)
        if self.eos_token_id == LEGACY_EOS_TOKEN_ID:
            end = jnp.argmax(ids, axis=-1)  # <|endoftext|> is the largest id of OpenAI's vocab
        else:
            end = jnp.argmax(ids == self.eos_token_id, axis=-1)  # the first end token
        pooled = jnp.take_along_axis(x, end[:, None, None], axis=1)[:, 0]  # [B, width]
        return TextOutput(x, pooled)


class VisionTransformer(nn.Module):
    """transformers' CLIPVisionModel: pixel_values [B, S, S, 3] (NHWC, CLIP-normalised) ->
    the pooled output [B, width]: post_layernorm of the class token's final hidden state."""

    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    intermediate: int
    activation: str = "quick_gelu"
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        b = pixels.shape[0]
        patches = nn.Conv(
            self.width,
            (self.patch_size, self.patch_size),
            strides=(self.patch_size, self.patch_size),
            padding="VALID",
            use_bias=False,
            name="patch_embedding",
        )(pixels)  # [B, S/p, S/p, width], row-major patches as torch's flatten(2)
        patches = patches.reshape(b, -1, self.width)
        num_positions = (self.image_size // self.patch_size) ** 2 + 1
        class_embedding = self.param("class_embedding", nn.initializers.normal(0.02), (self.width,))
        positions = self.param(
            "position_embedding", nn.initializers.normal(0.02), (num_positions, self.width)
        )
        cls = jnp.broadcast_to(class_embedding, (b, 1, self.width))
        x = jnp.concatenate([cls, patches], axis=1) + positions  # [B, 1 + patches, width]
        x = nn.LayerNorm(self.epsilon, name="pre_layrnorm")(x)  # sic: transformers' name
        for i in range(self.layers):
            x = EncoderLayer(
                self.width,
                self.heads,
                self.intermediate,
                self.activation,
                self.epsilon,
                causal=False,
                name=f"layers_{i}",
            )(x)
        return nn.LayerNorm(self.epsilon, name="post_layernorm")(x[:, 0])


class Clip(nn.Module):
    """transformers' CLIPModel: both towers, visual_projection, text_projection (no biases) and
    logit_scale; the interface of jaxgen.models.clip.Clip, so the clip family, its evaluation
    and a latent diffusion run naming it as text encoder take it as they take ours.

    encode_pixels takes the processor's pixel_values (NHWC); encode_image takes jaxgen images in
    [-1, 1] at any size, resized in the graph (bicubic, antialiased: close to, not exactly, PIL's)
    to image_size and normalised with the processor's mean and std.

    vision None: CLIPTextModel alone (Stable Diffusion's text_encoder/): the text tower without
    projections, whose encode_text gives the condition; it has no image side (encode_image is
    one line naming config.model.vision) and is a clip run only to be a latent diffusion run's
    text encoder.
    """

    text: dict  # TextTransformer's fields
    vision: dict | None  # VisionTransformer's fields; None: the text tower alone
    projection_dim: int | None
    image_mean: tuple[float, ...] = OPENAI_MEAN
    image_std: tuple[float, ...] = OPENAI_STD

    def setup(self):
        self.text_model = TextTransformer(**self.text)
        if self.vision is None:
            return
        self.vision_model = VisionTransformer(**self.vision)
        self.visual_projection = nn.Dense(self.projection_dim, use_bias=False)
        self.text_projection = nn.Dense(self.projection_dim, use_bias=False)
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(math.log(1 / 0.07)), ()
        )

    def image_features(self, pixels: jax.Array) -> jax.Array:
        """The projected image embedding [B, projection_dim] (not normalised)."""
        return self.visual_projection(self.vision_model(pixels))

    def text_features(self, ids: jax.Array) -> tuple[jax.Array, TextOutput]:
        """(the projected text embedding [B, projection_dim] (not normalised), TextOutput)."""
        out = self.text_model(ids)
        if self.vision is None:  # CLIPTextModel: no projection
            return out.pooled, out
        return self.text_projection(out.pooled), out

    def encode_pixels(self, pixels: jax.Array) -> jax.Array:
        """Unit-norm image embeddings [B, projection_dim] of pixel_values [B, S, S, 3]."""
        return _normalize(self.image_features(pixels))

    def encode_image(self, image: jax.Array) -> jax.Array:
        """Unit-norm image embeddings of jaxgen images [B, H, W, C] in [-1, 1] (C = 1: gray,
        repeated to RGB as PIL's convert("RGB") does)."""
        if self.vision is None:
            raise ConfigError(
                "config.model.vision: none: this CLIP is a text encoder alone (a Stable "
                "Diffusion text_encoder/); it has no image tower to embed or score images with"
            )
        if image.shape[-1] == 1:
            image = jnp.repeat(image, 3, axis=-1)
        size = self.vision["image_size"]
        if image.shape[1:3] != (size, size):
            image = jax.image.resize(image, (image.shape[0], size, size, image.shape[3]), "bicubic")
        mean, std = jnp.asarray(self.image_mean), jnp.asarray(self.image_std)
        return self.encode_pixels(((image + 1) / 2 - mean) / std)

    def encode_text(self, ids: jax.Array) -> tuple[jax.Array, TextFeatures]:
        """(unit-norm text embeddings, TextFeatures(last_hidden_state, pooled)) as ours."""
        embeds, out = self.text_features(ids)
        return _normalize(embeds), TextFeatures(out.last_hidden_state, out.pooled)

    def __call__(self, image: jax.Array, ids: jax.Array) -> ClipOutput:
        text_embeds, _ = self.encode_text(ids)
        if self.vision is None and self.is_initializing():  # the text tower's params only
            return ClipOutput(text_embeds, text_embeds, jnp.zeros(()))
        scale = jnp.minimum(self.logit_scale, MAX_LOGIT_SCALE)
        return ClipOutput(self.encode_image(image), text_embeds, scale)


def _normalize(x: jax.Array) -> jax.Array:
    # As transformers: x / ||x|| (no epsilon; a zero embedding does not occur).
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _read_json(path: str) -> dict:
    return pretrained.read_json_object(path, "not a Hugging Face CLIP folder?")


def _tower_sizes(raw: dict, path: str, where: str, defaults=(512, 12, 8, 2048)) -> dict:
    """A tower's sizes; `defaults` (width, layers, heads, intermediate) are transformers'."""
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    names = ("width", "layers", "heads", "intermediate")
    sizes = {
        name: raw.get(key, default)
        for name, key, default in zip(names, keys, defaults, strict=True)
    }
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise WeightError(f"{path}: {where}: no positive integer for the {name} ({value!r})")
    if sizes["width"] % sizes["heads"]:
        raise WeightError(f"{path}: {where}: hidden_size is not divisible by num_attention_heads")
    activation = raw.get("hidden_act", "quick_gelu")
    if activation not in ACTIVATIONS:
        raise WeightError(f"{path}: {where}: hidden_act {activation!r} is not one of {ACTIVATIONS}")
    return sizes | {"activation": activation, "epsilon": float(raw.get("layer_norm_eps", 1e-5))}


def read_text_config(hf_dir: str) -> dict:
    """config.json's text tower, checked: {vocab, positions, width, layers, heads, intermediate,
    activation, epsilon, eos_token_id}. transformers' defaults fill what the file leaves out."""
    path = os.path.join(hf_dir, "config.json")
    raw = _read_json(path)
    model_type = raw.get("model_type")
    if model_type == "clip":
        text = raw.get("text_config") or {}
        where = "text_config"
    elif model_type == "clip_text_model":
        text, where = raw, "config"
    else:
        raise WeightError(f"{path}: model_type is {model_type!r}, not 'clip' or 'clip_text_model'")
    sizes = _tower_sizes(text, path, where)
    for name, key, default in (
        ("vocab", "vocab_size", 49408),
        ("positions", "max_position_embeddings", 77),
    ):
        value = text.get(key, default)
        if not isinstance(value, int) or value < 1:
            raise WeightError(f"{path}: {where}: no positive integer for {key} ({value!r})")
        sizes[name] = value
    sizes["eos_token_id"] = int(text.get("eos_token_id", LEGACY_EOS_TOKEN_ID))
    return sizes


def text_kwargs(sizes: dict) -> dict:
    """TextTransformer's fields from read_text_config's sizes."""
    names = ("vocab_size", "positions", "width", "layers", "heads", "intermediate", "activation")
    keys = ("vocab", "positions", "width", "layers", "heads", "intermediate", "activation")
    kwargs = {name: sizes[key] for name, key in zip(names, keys, strict=True)}
    return kwargs | {"epsilon": sizes["epsilon"], "eos_token_id": sizes["eos_token_id"]}


def read_clip_config(hf_dir: str) -> dict:
    """A CLIPModel's config.json, checked: {"text": read_text_config's sizes, "vision": {width,
    layers, heads, intermediate, activation, epsilon, image_size, patch_size}, projection_dim}."""
    path = os.path.join(hf_dir, "config.json")
    raw = _read_json(path)
    if raw.get("model_type") != "clip":
        raise WeightError(
            f"{path}: model_type is {raw.get('model_type')!r}, not 'clip' (CLIPModel)"
        )
    vision_raw = raw.get("vision_config") or {}
    vision = _tower_sizes(vision_raw, path, "vision_config", defaults=(768, 12, 12, 3072))
    for name, key, default in (("image_size", "image_size", 224), ("patch_size", "patch_size", 32)):
        value = vision_raw.get(key, default)
        if not isinstance(value, int) or value < 1:
            raise WeightError(f"{path}: vision_config: no positive integer for {key} ({value!r})")
        vision[name] = value
    if vision["image_size"] % vision["patch_size"]:
        raise WeightError(f"{path}: vision_config: patch_size does not divide image_size")
    if vision_raw.get("num_channels", 3) != 3:
        raise WeightError(f"{path}: vision_config: only RGB (num_channels 3) is supported")
    projection_dim = raw.get("projection_dim", 512)
    if not isinstance(projection_dim, int) or projection_dim < 1:
        raise WeightError(f"{path}: no positive integer for projection_dim ({projection_dim!r})")
    return {"text": read_text_config(hf_dir), "vision": vision, "projection_dim": projection_dim}


def vision_kwargs(vision: dict) -> dict:
    """VisionTransformer's fields from read_clip_config's vision sizes."""
    names = ("image_size", "patch_size", "width", "layers", "heads", "intermediate", "activation")
    return {name: vision[name] for name in names} | {"epsilon": vision["epsilon"]}


def clip_kwargs(sizes: dict, processor: dict | None = None) -> dict:
    """Clip's fields from read_clip_config's sizes (and read_processor's mean and std)."""
    kwargs = {
        "text": text_kwargs(sizes["text"]),
        "vision": vision_kwargs(sizes["vision"]),
        "projection_dim": sizes["projection_dim"],
    }
    if processor is not None:
        kwargs |= {"image_mean": processor["image_mean"], "image_std": processor["image_std"]}
    return kwargs


MODEL_FIELDS = ("text", "vision", "projection_dim", "processor")


def model_config(sizes: dict, processor: dict) -> dict:
    """config.model of a clip family run of this CLIP (name "clip_pretrained")."""
    return {
        "name": "clip_pretrained",
        "text": text_kwargs(sizes["text"]),
        "vision": vision_kwargs(sizes["vision"]),
        "projection_dim": sizes["projection_dim"],
        "processor": dict(processor, crop=list(processor["crop"])),
    }


def text_model_config(sizes: dict) -> dict:
    """config.model of a clip family run of a CLIPTextModel alone (SD's text_encoder/)."""
    return {
        "name": "clip_pretrained",
        "text": text_kwargs(sizes),
        "vision": None,
        "projection_dim": None,
        "processor": None,
    }


def check_config(config_model) -> None:
    """ConfigError naming the first config.model field a Clip cannot be built from."""
    for field in MODEL_FIELDS:
        if field not in config_model:
            raise ConfigError(f"config.model.{field}: missing (a clip_pretrained model needs it)")
    towers = (("text", TextTransformer), ("vision", VisionTransformer))
    if config_model.vision is None:  # a text encoder alone: no image side to check
        towers = towers[:1]
    for tower, fields in towers:
        wanted = {f.name for f in dataclasses.fields(fields) if f.name not in ("parent", "name")}
        given = set(config_model[tower].keys())
        for name in sorted(wanted ^ given):
            where = "missing" if name in wanted else "not a field"
            raise ConfigError(f"config.model.{tower}.{name}: {where}")
        if config_model[tower]["activation"] not in ACTIVATIONS:
            raise ConfigError(
                f"config.model.{tower}.activation: {config_model[tower]['activation']!r} "
                f"is not one of {ACTIVATIONS}"
            )
        if config_model[tower]["width"] % config_model[tower]["heads"]:
            raise ConfigError(f"config.model.{tower}.heads: does not divide the width")
    for name in ("image_mean", "image_std"):
        if config_model.vision is None:
            break
        if len(config_model.processor[name]) != 3:
            raise ConfigError(f"config.model.processor.{name}: needs 3 values (RGB)")


def make_model(config_model, vocab_size: int, caption_len: int) -> "Clip":
    """The Clip of config.model (model_config's fields); the data's vocabulary and caption
    length must fit its text tower (ConfigError naming the field)."""
    check_config(config_model)
    text = config_model.text
    if vocab_size > text["vocab_size"]:
        raise ConfigError(
            f"config.data.tokenizer: {vocab_size} ids, the text tower has {text['vocab_size']}"
        )
    if caption_len > text["positions"]:
        raise ConfigError(
            f"config.data.caption_len: {caption_len} > the text tower's {text['positions']} "
            "positions"
        )
    if config_model.vision is None:
        return Clip(text=flax.core.FrozenDict(_plain(text)), vision=None, projection_dim=None)
    return Clip(
        text=flax.core.FrozenDict(_plain(text)),
        vision=flax.core.FrozenDict(_plain(config_model.vision)),
        projection_dim=config_model.projection_dim,
        image_mean=tuple(config_model.processor["image_mean"]),
        image_std=tuple(config_model.processor["image_std"]),
    )


def _plain(section) -> dict:
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def _norm(tensors: Tensors, name: str, width: int) -> dict:
    return {
        "scale": tensors.take(f"{name}.weight", (width,)),
        "bias": tensors.take(f"{name}.bias", (width,)),
    }


def _dense(tensors: Tensors, name: str, fan_in: int, fan_out: int, bias: bool = True) -> dict:
    params = {"kernel": tensors.take(f"{name}.weight", (fan_out, fan_in)).T}  # torch: [out, in]
    if bias:
        params["bias"] = tensors.take(f"{name}.bias", (fan_out,))
    return params


def encoder_params(tensors: Tensors, prefix: str, sizes: dict) -> dict:
    """{layers_i: ...} of transformers' `<prefix>.layers.<i>` encoder layers."""
    width, intermediate = sizes["width"], sizes["intermediate"]
    params = {}
    for i in range(sizes["layers"]):
        layer = f"{prefix}.layers.{i}"
        attention = f"{layer}.self_attn"
        params[f"layers_{i}"] = {
            "layer_norm1": _norm(tensors, f"{layer}.layer_norm1", width),
            "self_attn": {
                name: _dense(tensors, f"{attention}.{name}", width, width)
                for name in ("q_proj", "k_proj", "v_proj", "out_proj")
            },
            "layer_norm2": _norm(tensors, f"{layer}.layer_norm2", width),
            "fc1": _dense(tensors, f"{layer}.mlp.fc1", width, intermediate),
            "fc2": _dense(tensors, f"{layer}.mlp.fc2", intermediate, width),
        }
    return params


def take_text_params(tensors: Tensors, sizes: dict, prefix: str = "text_model") -> dict:
    """TextTransformer params of the tensors under `prefix.` (taken from `tensors`)."""
    width = sizes["width"]
    params = {
        "token_embedding": {
            "embedding": tensors.take(
                f"{prefix}.embeddings.token_embedding.weight", (sizes["vocab"], width)
            )
        },
        "position_embedding": tensors.take(
            f"{prefix}.embeddings.position_embedding.weight", (sizes["positions"], width)
        ),
        "final_layer_norm": _norm(tensors, f"{prefix}.final_layer_norm", width),
    }
    return params | encoder_params(tensors, f"{prefix}.encoder", sizes)


def text_params(weights: dict[str, np.ndarray], sizes: dict, origin: str) -> dict:
    """TextTransformer params of a CLIPTextModel's weights (a text_encoder/ folder): names under
    text_model. (transformers 4) or bare (transformers 5); nothing else may be in the file."""
    if not any(name.startswith("text_model.") for name in weights):
        weights = {f"text_model.{name}": value for name, value in weights.items()}
    tensors = Tensors(weights, origin)
    params = take_text_params(tensors, sizes)
    tensors.check_all_taken(ignore=BUFFERS)
    return params


def clip_params(weights: dict[str, np.ndarray], sizes: dict, origin: str) -> dict:
    """Clip params of a CLIPModel's weights (transformers' names); nothing else may be there."""
    tensors = Tensors(weights, origin)
    vision, text, dim = sizes["vision"], sizes["text"], sizes["projection_dim"]
    width = vision["width"]
    patch, channels = vision["patch_size"], 3
    grid = vision["image_size"] // patch
    prefix = "vision_model.embeddings"
    kernel = tensors.take(f"{prefix}.patch_embedding.weight", (width, channels, patch, patch))
    vision_params = {
        "patch_embedding": {"kernel": kernel.transpose(2, 3, 1, 0)},  # OIHW -> HWIO
        "class_embedding": tensors.take(f"{prefix}.class_embedding", (width,)),
        "position_embedding": tensors.take(
            f"{prefix}.position_embedding.weight", (grid * grid + 1, width)
        ),
        "pre_layrnorm": _norm(tensors, "vision_model.pre_layrnorm", width),
        "post_layernorm": _norm(tensors, "vision_model.post_layernorm", width),
    } | encoder_params(tensors, "vision_model.encoder", vision)
    params = {
        "text_model": take_text_params(tensors, text),
        "vision_model": vision_params,
        "visual_projection": _dense(tensors, "visual_projection", width, dim, bias=False),
        "text_projection": _dense(tensors, "text_projection", text["width"], dim, bias=False),
        "logit_scale": tensors.take("logit_scale", ()),
    }
    tensors.check_all_taken(ignore=BUFFERS)
    return params


def read_processor(hf_dir: str) -> dict:
    """The image preprocessing of preprocessor_config.json (or transformers 5's
    processor_config.json), checked: {size (shortest edge), crop (height, width), resample
    (PIL's code; CLIP's is 3, bicubic), image_mean, image_std, do_*}; CLIPImageProcessor's
    defaults where the file leaves a field out."""
    path = os.path.join(hf_dir, "preprocessor_config.json")
    if os.path.isfile(path):
        raw = _read_json(path)
    else:
        path = os.path.join(hf_dir, "processor_config.json")
        if not os.path.isfile(path):
            raise WeightError(f"{hf_dir}: no preprocessor_config.json (nor processor_config.json)")
        raw = _read_json(path).get("image_processor") or {}
    size, crop = raw.get("size", {"shortest_edge": 224}), raw.get("crop_size", 224)
    size = size.get("shortest_edge") if isinstance(size, dict) else size
    crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
    for name, value in (
        ("size.shortest_edge", size),
        ("crop_size", crop[0]),
        ("crop_size", crop[1]),
    ):
        if not isinstance(value, int) or value < 1:
            raise WeightError(f"{path}: no positive integer for {name} ({value!r})")
    processor = {
        "size": size,
        "crop": crop,
        "resample": raw.get("resample", 3),
        "do_resize": raw.get("do_resize", True),
        "do_center_crop": raw.get("do_center_crop", True),
        "do_rescale": raw.get("do_rescale", True),
        "rescale_factor": float(raw.get("rescale_factor", 1 / 255)),
        "do_normalize": raw.get("do_normalize", True),
        "image_mean": tuple(float(x) for x in raw.get("image_mean", OPENAI_MEAN)),
        "image_std": tuple(float(x) for x in raw.get("image_std", OPENAI_STD)),
    }
    if len(processor["image_mean"]) != 3 or len(processor["image_std"]) != 3:
        raise WeightError(f"{path}: image_mean and image_std need 3 values (RGB)")
    return processor


def load_text_encoder(folder: str) -> tuple[TextTransformer, dict]:
    """(TextTransformer, params) of a CLIPTextModel folder (SD's text_encoder/: config.json and
    model.safetensors): what a Stable Diffusion pipeline conditions on."""
    sizes = read_text_config(folder)
    weights, origin = pretrained.read_weights(folder, *WEIGHT_FILES)
    return TextTransformer(**text_kwargs(sizes)), text_params(weights, sizes, origin)


def _special_token(value) -> str | None:
    if isinstance(value, dict):  # {"content": "!", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_pad_token(folder: str) -> str:
    """The pad token the tokenizer folder names (tokenizer_config.json, special_tokens_map.json):
    <|endoftext|> for OpenAI's CLIP and SD v1, "!" for SD 2; <|endoftext|> if neither says."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            pad = _special_token(_read_json(path).get("pad_token"))
            if pad is not None:
                return pad
    return EOS_TOKEN


def clip_bpe(
    vocab: str, merges: str, pad_token: str = EOS_TOKEN, max_length: int = MAX_LENGTH
) -> tokenizers.HFTokenizer:
    """transformers' CLIPTokenizer on vocab.json + merges.txt, with padding and truncation built
    in: every text encodes to `max_length` ids, <|startoftext|> ... <|endoftext|>, the text cut
    to max_length - 2 tokens (the end token is kept) and padded with `pad_token`.

    Normalisation as CLIPTokenizer's: NFC, every whitespace run to one space, lower case (no
    ftfy: transformers' tokenizer does not run it either). Raises ValueError on a bad file.
    """
    try:
        tokenizer = hf.Tokenizer(
            hf.models.BPE.from_file(
                vocab, merges, end_of_word_suffix="</w>", unk_token=EOS_TOKEN, fuse_unk=False
            )
        )
    except Exception as error:  # the Rust side raises plain Exception subclasses
        raise ValueError(
            f"{vocab}: not a BPE vocabulary ({' '.join(str(error).split())})"
        ) from None
    return _with_clip_processing(tokenizer, vocab, pad_token, max_length)


def _with_clip_processing(tokenizer: hf.Tokenizer, origin: str, pad_token: str, max_length: int):
    ids = {token: tokenizer.token_to_id(token) for token in (BOS_TOKEN, EOS_TOKEN, pad_token)}
    for token, token_id in ids.items():
        if token_id is None:
            raise ValueError(f"{origin}: no {token!r} token in the vocabulary")
    # Special tokens match before normalisation, as in transformers: a literal "<|endoftext|>"
    # is the end token, and with SD 2's pad token "!" every "!" of a text is id 0.
    tokenizer.add_special_tokens(list(dict.fromkeys((BOS_TOKEN, EOS_TOKEN, pad_token))))
    tokenizer.normalizer = hf.normalizers.Sequence(
        [
            hf.normalizers.NFC(),
            hf.normalizers.Replace(hf.Regex(r"\s+"), " "),
            hf.normalizers.Lowercase(),
        ]
    )
    tokenizer.pre_tokenizer = hf.pre_tokenizers.Sequence(
        [
            hf.pre_tokenizers.Split(hf.Regex(_PATTERN), behavior="removed", invert=True),
            hf.pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    # Decoding as CLIPTokenizer's: each word's "</w>" becomes a space ("Ġ" is the byte-level
    # space), the last one dropped.
    tokenizer.decoder = hf.decoders.Sequence(
        [
            hf.decoders.Replace("</w>", "\u0120"),
            hf.decoders.ByteLevel(),
            hf.decoders.Strip(" ", 0, 1),
        ]
    )
    tokenizer.post_processor = hf.processors.RobertaProcessing(
        (EOS_TOKEN, ids[EOS_TOKEN]), (BOS_TOKEN, ids[BOS_TOKEN]), trim_offsets=False,
        add_prefix_space=False,
    )  # fmt: skip
    # Truncation counts the two added tokens: the text keeps max_length - 2, then the end token.
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(length=max_length, pad_id=ids[pad_token], pad_token=pad_token)
    return tokenizers.HFTokenizer(tokenizer)


def read_tokenizer(folder: str, max_length: int = MAX_LENGTH) -> tokenizers.HFTokenizer:
    """The CLIP tokenizer of a folder (a CLIPModel folder, or SD's tokenizer/): vocab.json +
    merges.txt (else tokenizer.json), with the pad token the folder names."""
    vocab, merges = (os.path.join(folder, name) for name in ("vocab.json", "merges.txt"))
    pad_token = read_pad_token(folder)
    try:
        if os.path.isfile(vocab) and os.path.isfile(merges):
            return clip_bpe(vocab, merges, pad_token, max_length)
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(path):
            raise WeightError(f"{folder}: no vocab.json and merges.txt, nor tokenizer.json")
        loaded = tokenizers.load(path)
        if not isinstance(loaded, tokenizers.HFTokenizer):
            raise WeightError(f"{path}: not a BPE tokenizer")
        return _with_clip_processing(loaded.hf, path, pad_token, max_length)
    except ValueError as error:
        if isinstance(error, WeightError):
            raise
        raise WeightError(str(error)) from None


def tokenize(tokenizer: tokenizers.Tokenizer, texts: list[str]) -> np.ndarray:
    """int32 [B, L] ids of `texts` with a tokenizer that pads and truncates to L (clip_bpe's)."""
    rows = [tokenizer.encode(text) for text in texts]
    lengths = {len(row) for row in rows}
    if len(lengths) > 1:
        raise ValueError("tokenize: the tokenizer does not pad to one length (not clip_bpe's?)")
    return np.stack(rows).astype(np.int32) if rows else np.zeros((0, MAX_LENGTH), np.int32)
