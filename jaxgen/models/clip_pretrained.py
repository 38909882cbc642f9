"""OpenAI CLIP as Hugging Face transformers computes it, for published weights (Radford et al.
2021): the text transformer (Stable Diffusion's text encoder), and its weight map.

    sizes = read_text_config(hf_dir)                       # config.json of CLIPModel or CLIPTextModel
    weights, origin = pretrained.read_weights(hf_dir, *WEIGHT_FILES)
    params = text_params(weights, sizes, origin)           # shape by shape, names the tensor if off
    tokenizer = read_tokenizer(tokenizer_dir)              # vocab.json + merges.txt, padded to 77
    ids = tokenize(tokenizer, ["a photo of a cat"])       # int32 [B, 77]
    out = TextTransformer(**text_kwargs(sizes)).apply({"params": params}, ids)
    out.last_hidden_state                                   # [B, 77, width]: what SD attends to
    out.pooled                                              # [B, width]: at the end token

The modules follow transformers' CLIPTextModel exactly: token + learned position embeddings,
pre-LN encoder layers (q/k/v/out projections with biases, attention scaled by 1/sqrt(head_dim),
a causal mask), an MLP with quick_gelu (OpenAI's checkpoints) or exact gelu (OpenCLIP's, SD 2),
final_layer_norm, LayerNorm epsilon from config.json. The pooled output is the final hidden
state at the end token: at argmax(ids) when config.json has the legacy eos_token_id 2 (OpenAI's
checkpoints, where <|endoftext|> is the largest id), else at the first eos_token_id. Param names
are transformers' (layers_0.self_attn.q_proj ...), kernels [in, out] (torch's Linear transposed).

The folder is what save_pretrained writes: a CLIPModel (text_config inside config.json; names
under text_model.) or a CLIPTextModel alone (SD's text_encoder/: the sizes at the top level;
names under text_model. as transformers 4 saved them, or bare as transformers 5 does).
Every error is a pretrained.WeightError: one line naming the file (and the tensor).
Deliberately left out: attention masks for padding (the causal mask already hides the padding
after the end token from every real token), dropout, and position-embedding interpolation.
"""

import json
import os
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers as hf

from jaxgen import tokenizers
from jaxgen.pretrained import Tensors, WeightError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")
LEGACY_EOS_TOKEN_ID = 2  # transformers' CLIPTextConfig default before PR #24773: pool at argmax
BUFFERS = ("position_ids",)  # saved by older transformers, not parameters
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
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


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise WeightError(f"{path}: missing (not a Hugging Face CLIP folder?)") from None
    except (OSError, ValueError) as error:
        raise WeightError(f"{path}: not JSON ({' '.join(str(error).split())})") from None
    if not isinstance(raw, dict):
        raise WeightError(f"{path}: not a JSON object")
    return raw


def _tower_sizes(raw: dict, path: str, where: str) -> dict:
    sizes = {
        "width": raw.get("hidden_size", 512),
        "layers": raw.get("num_hidden_layers", 12),
        "heads": raw.get("num_attention_heads", 8),
        "intermediate": raw.get("intermediate_size", 2048),
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
