"""GPT-2's published weights as jaxgen GPT params: a Hugging Face folder -> (sizes, params, tokenizer).

    sizes = read_hf_config(hf_dir)                      # config.json, checked
    weights, origin = pretrained.read_weights(hf_dir, *WEIGHT_FILES)
    params = to_params(weights, sizes, origin)          # shape by shape, names the tensor if off
    tokenizer = read_tokenizer(hf_dir)

The folder is what `save_pretrained` writes (or a Hub snapshot of gpt2, gpt2-medium, -large,
-xl): config.json; model.safetensors (or pytorch_model.bin, which needs torch); tokenizer.json,
or vocab.json + merges.txt (then a byte-level BPE is built from them, as HF's GPT2Tokenizer).
jaxgen's GPT (models/gpt.py) has HF GPT-2's layout up to Conv1D's [in, out] kernels: c_attn
[E, 3E] splits into q, k, v and heads as HF splits it, and the output head is tied to wte
(lm_head.weight, when saved, is that same matrix). experiments/import_gpt2.py writes a run of it.
Every error is a pretrained.WeightError: one line naming the file (and the tensor).
"""

import os

import numpy as np
import tokenizers as hf

from jaxgen import pretrained, tokenizers
from jaxgen.config import is_number
from jaxgen.pretrained import Tensors, WeightError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU's tanh approximation
BUFFERS = ("attn.bias", "attn.masked_bias", "lm_head.weight")  # not parameters (or tied)


def read_hf_config(hf_dir: str) -> dict:
    """config.json's sizes, checked: {layers, heads, width, positions, vocab, epsilon}."""
    path = os.path.join(hf_dir, "config.json")
    raw = pretrained.read_json_object(path, "not a Hugging Face model folder?")
    if raw.get("model_type") != "gpt2":
        raise WeightError(f"{path}: model_type is {raw.get('model_type')!r}, not 'gpt2'")
    sizes = {
        "layers": raw.get("n_layer"),
        "heads": raw.get("n_head"),
        "width": raw.get("n_embd"),
        "positions": raw.get("n_positions", raw.get("n_ctx")),
        "vocab": raw.get("vocab_size"),
    }
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise WeightError(f"{path}: no positive integer for the {name} (got {value!r})")
    if sizes["positions"] < 2:  # a prompt token and one new token
        raise WeightError(f"{path}: n_positions={sizes['positions']}: must be >= 2")
    if sizes["width"] % sizes["heads"]:
        raise WeightError(f"{path}: n_embd={sizes['width']} is not divisible by n_head")
    inner = raw.get("n_inner") or 4 * sizes["width"]
    activation = raw.get("activation_function", "gelu_new")
    if inner != 4 * sizes["width"] or activation not in ACTIVATIONS:
        raise WeightError(f"{path}: only n_inner = 4 * n_embd with gelu_new is supported")
    if raw.get("scale_attn_by_inverse_layer_idx") or not raw.get("scale_attn_weights", True):
        raise WeightError(f"{path}: only GPT-2's attention scaling 1/sqrt(head_dim) is supported")
    epsilon = raw.get("layer_norm_epsilon", 1e-5)
    if not is_number(epsilon) or epsilon <= 0:
        raise WeightError(f"{path}: layer_norm_epsilon must be a number > 0 (got {epsilon!r})")
    return sizes | {"epsilon": float(epsilon)}


def to_params(weights: dict[str, np.ndarray], sizes: dict, origin: str) -> dict:
    """jaxgen GPT params from HF GPT-2 weights (Conv1D kernels are [in, out] already)."""
    tensors = Tensors({name.removeprefix("transformer."): x for name, x in weights.items()}, origin)
    width, heads, vocab = sizes["width"], sizes["heads"], sizes["vocab"]
    head_dim = width // heads

    def norm(name):
        return {
            "scale": tensors.take(f"{name}.weight", (width,)),
            "bias": tensors.take(f"{name}.bias", (width,)),
        }

    def dense(name, fan_in, fan_out, kernel_shape, bias_shape):
        kernel = tensors.take(f"{name}.weight", (fan_in, fan_out)).reshape(kernel_shape)
        return {
            "kernel": kernel,
            "bias": tensors.take(f"{name}.bias", (fan_out,)).reshape(bias_shape),
        }

    params = {
        "wte": {"embedding": tensors.take("wte.weight", (vocab, width))},
        "wpe": {"embedding": tensors.take("wpe.weight", (sizes["positions"], width))},
        "LayerNorm_0": norm("ln_f"),
    }
    for layer in range(sizes["layers"]):
        block = f"h.{layer}"
        params[f"h_{layer}"] = {
            "ln_1": norm(f"{block}.ln_1"),
            "ln_2": norm(f"{block}.ln_2"),
            "attn": {
                # [E, 3E] -> [E, 3, heads, head_dim]: q, k, v, each split into heads (HF order)
                "qkv": dense(
                    f"{block}.attn.c_attn",
                    width,
                    3 * width,
                    (width, 3, heads, head_dim),
                    (3, heads, head_dim),
                ),
                "proj": dense(
                    f"{block}.attn.c_proj", width, width, (heads, head_dim, width), (width,)
                ),
            },
            "mlp": {
                "fc": dense(f"{block}.mlp.c_fc", width, 4 * width, (width, 4 * width), (-1,)),
                "proj": dense(f"{block}.mlp.c_proj", 4 * width, width, (4 * width, width), (-1,)),
            },
        }
    tensors.check_all_taken(ignore=BUFFERS)
    return params


def read_tokenizer(hf_dir: str) -> tokenizers.Tokenizer:
    """tokenizer.json, else a byte-level BPE of vocab.json + merges.txt (GPT-2's, as HF's)."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if os.path.isfile(path):
        try:
            return tokenizers.load(path)
        except ValueError as error:
            raise WeightError(str(error)) from None
    vocab, merges = (os.path.join(hf_dir, name) for name in ("vocab.json", "merges.txt"))
    if not (os.path.isfile(vocab) and os.path.isfile(merges)):
        raise WeightError(f"{hf_dir}: no tokenizer.json, nor vocab.json and merges.txt")
    try:
        tokenizer = hf.Tokenizer(hf.models.BPE.from_file(vocab, merges))
    except Exception as error:  # the Rust side raises plain Exception subclasses
        raise WeightError(f"{vocab}: not a BPE vocabulary ({error})") from None
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf.decoders.ByteLevel()
    if tokenizer.token_to_id(tokenizers.EOS_TOKEN) is not None:
        tokenizer.add_special_tokens([tokenizers.EOS_TOKEN])
    return tokenizers.HFTokenizer(tokenizer)
