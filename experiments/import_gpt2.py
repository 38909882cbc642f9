"""Import a Hugging Face GPT-2 folder as a jaxgen run, to sample from or fine-tune.

    python -m experiments.import_gpt2 --hf_dir=/data/gpt2 --workdir=/tmp/gpt2
    python -m experiments.sample --workdir=/tmp/gpt2 --config.sample.prompt="The meaning of" \
        --config.sample.num_beams=4 --config.sample.num_return_sequences=2
    python -m experiments.train --config=configs/gpt/gpt2_124m.py --workdir=/tmp/tuned \
        --config.init_from=/tmp/gpt2 --config.data.tokenizer=/tmp/gpt2/tokenizer.json \
        --config.data.text_file=/data/corpus.txt <the model flags this script prints>

The folder is what `save_pretrained` writes (or a Hub snapshot of gpt2, gpt2-medium, -large,
-xl): config.json; model.safetensors, read with the safetensors package's NumPy API (no torch),
or pytorch_model.bin (needs torch); tokenizer.json, or vocab.json + merges.txt (then a
byte-level BPE is built from them). Every size comes from config.json. The run written to W
has config.json (the GPT-2 architecture, LayerNorm epsilon included, float32; the data section
names tiny_shakespeare with W/tokenizer.json, so the run loads with nothing else), tokenizer.json
and a checkpoint at step 0 (optimizer state fresh). jaxgen's GPT has HF GPT-2's layout up to
Conv1D's [in, out] kernels: c_attn [E, 3E] splits into q, k, v and heads as HF splits it, and
the output head is tied to wte (lm_head.weight, when saved, is that same matrix).

Bad folders (a missing file, a shape that does not match config.json, a model_type other than
gpt2) are one line on stderr and exit status 2.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
import tokenizers as hf
from absl import flags

from jaxgen import checkpoint, cli, data, runs, tokenizers
from jaxgen.config import ConfigDict, ConfigError, sibling_config
from jaxgen.train import get_family, loop

flags.DEFINE_string(
    "hf_dir", None, "A Hugging Face GPT-2 folder (config.json, weights, tokenizer)."
)
flags.DEFINE_string("workdir", None, "The jaxgen run directory to write.")
flags.mark_flags_as_required(["hf_dir", "workdir"])

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU's tanh approximation
BUFFERS = ("attn.bias", "attn.masked_bias", "lm_head.weight")  # not parameters (or tied)


class BadFolder(ValueError):
    """The folder is not a GPT-2 checkpoint this script can read; the message names the file."""


def read_hf_config(hf_dir: str) -> dict:
    """config.json's sizes, checked: {layers, heads, width, positions, vocab, epsilon}."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise BadFolder(f"{path}: missing (not a Hugging Face model folder?)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as error:
        raise BadFolder(f"{path}: not JSON ({error})") from None
    if raw.get("model_type") != "gpt2":
        raise BadFolder(f"{path}: model_type is {raw.get('model_type')!r}, not 'gpt2'")
    sizes = {
        "layers": raw.get("n_layer"),
        "heads": raw.get("n_head"),
        "width": raw.get("n_embd"),
        "positions": raw.get("n_positions", raw.get("n_ctx")),
        "vocab": raw.get("vocab_size"),
    }
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise BadFolder(f"{path}: no positive integer for the {name} (got {value!r})")
    if sizes["width"] % sizes["heads"]:
        raise BadFolder(f"{path}: n_embd={sizes['width']} is not divisible by n_head")
    inner = raw.get("n_inner") or 4 * sizes["width"]
    activation = raw.get("activation_function", "gelu_new")
    if inner != 4 * sizes["width"] or activation not in ACTIVATIONS:
        raise BadFolder(f"{path}: only n_inner = 4 * n_embd with gelu_new is supported")
    if raw.get("scale_attn_by_inverse_layer_idx") or not raw.get("scale_attn_weights", True):
        raise BadFolder(f"{path}: only GPT-2's attention scaling 1/sqrt(head_dim) is supported")
    return sizes | {"epsilon": float(raw.get("layer_norm_epsilon", 1e-5))}


def read_weights(hf_dir: str) -> tuple[dict[str, np.ndarray], str]:
    """(name -> float32 array, the file read): model.safetensors, else pytorch_model.bin."""
    path = os.path.join(hf_dir, "model.safetensors")
    if os.path.isfile(path):
        try:
            tensors = safetensors.numpy.load_file(path)
        except (safetensors.SafetensorError, OSError, TypeError, ValueError) as error:
            raise BadFolder(f"{path}: unreadable ({error})") from None
        return {name: np.asarray(x, np.float32) for name, x in tensors.items()}, path
    path = os.path.join(hf_dir, "pytorch_model.bin")
    if not os.path.isfile(path):
        raise BadFolder(f"{hf_dir}: no model.safetensors or pytorch_model.bin")
    try:
        import torch  # optional: only .bin files need it
    except ImportError:
        raise BadFolder(
            f"{path}: reading .bin weights needs torch (pip install torch), or save the "
            "model as model.safetensors"
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {name: x.to(torch.float32).numpy() for name, x in state.items()}, path


def to_params(weights: dict[str, np.ndarray], sizes: dict, origin: str) -> dict:
    """jaxgen GPT params from HF GPT-2 weights (Conv1D kernels are [in, out] already)."""
    weights = {name.removeprefix("transformer."): x for name, x in weights.items()}
    width, heads, vocab = sizes["width"], sizes["heads"], sizes["vocab"]
    head_dim = width // heads

    def take(name, shape):
        if name not in weights:
            raise BadFolder(f"{origin}: missing {name}")
        value = weights.pop(name)
        if value.shape != shape:
            raise BadFolder(
                f"{origin}: {name} has shape {value.shape}, config.json implies {shape}"
            )
        return value

    def norm(name):
        return {"scale": take(f"{name}.weight", (width,)), "bias": take(f"{name}.bias", (width,))}

    def dense(name, fan_in, fan_out, kernel_shape, bias_shape):
        kernel = take(f"{name}.weight", (fan_in, fan_out)).reshape(kernel_shape)
        return {"kernel": kernel, "bias": take(f"{name}.bias", (fan_out,)).reshape(bias_shape)}

    params = {
        "wte": {"embedding": take("wte.weight", (vocab, width))},
        "wpe": {"embedding": take("wpe.weight", (sizes["positions"], width))},
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
    left = sorted(name for name in weights if not name.endswith(BUFFERS))
    if left:
        raise BadFolder(f"{origin}: unexpected weights {', '.join(left[:3])} (not GPT-2's?)")
    return params


def read_tokenizer(hf_dir: str) -> tokenizers.Tokenizer:
    """tokenizer.json, else a byte-level BPE of vocab.json + merges.txt (GPT-2's, as HF's)."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if os.path.isfile(path):
        try:
            return tokenizers.load(path)
        except ValueError as error:
            raise BadFolder(str(error)) from None
    vocab, merges = (os.path.join(hf_dir, name) for name in ("vocab.json", "merges.txt"))
    if not (os.path.isfile(vocab) and os.path.isfile(merges)):
        raise BadFolder(f"{hf_dir}: no tokenizer.json, nor vocab.json and merges.txt")
    try:
        tokenizer = hf.Tokenizer(hf.models.BPE.from_file(vocab, merges))
    except Exception as error:  # the Rust side raises plain Exception subclasses
        raise BadFolder(f"{vocab}: not a BPE vocabulary ({' '.join(str(error).split())})") from None
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf.decoders.ByteLevel()
    if tokenizer.token_to_id(tokenizers.EOS_TOKEN) is not None:
        tokenizer.add_special_tokens([tokenizers.EOS_TOKEN])
    return tokenizers.HFTokenizer(tokenizer)


def run_config(sizes: dict, workdir: str) -> ConfigDict:
    """configs/gpt/gpt2_124m.py's recipe with this model's sizes, in float32 (HF's numerics)."""
    config = sibling_config(os.path.join(CONFIGS, "gpt", "gpt2_124m.py"), "gpt2_124m.py")
    config.model.update(
        vocab_size=sizes["vocab"],
        block_size=sizes["positions"],
        num_layers=sizes["layers"],
        num_heads=sizes["heads"],
        width=sizes["width"],
        bias=True,  # the released weights have biases
        layer_norm_epsilon=sizes["epsilon"],
        dtype="float32",
    )
    # A dataset the run loads with, wherever it is: tiny Shakespeare (downloaded if needed).
    config.data.update(
        name="tiny_shakespeare",
        tokenizer=os.path.join(os.path.abspath(workdir), "tokenizer.json"),
        seq_len=sizes["positions"],
    )
    config.evals.val.update(batch_size=8, num_examples=64 * 8)
    config.sample.max_new_tokens = min(config.sample.max_new_tokens, sizes["positions"] // 2)
    return config


def write_checkpoint(config: ConfigDict, workdir: str, params: dict) -> None:
    """A step-0 train state holding `params`, restorable by the usual path (load_run)."""
    info = loop.check(config, workdir)
    steps = get_family(config.family).make_steps(config, info, None)
    batch = runs.first_eval_batch(config, config.sample.num_samples)
    state = jax.jit(steps.init)(jax.random.PRNGKey(config.seed), batch)
    params = jax.tree.map(lambda want, x: jnp.asarray(x, want.dtype), state.params, params)
    state = loop.start_from_params(state, params)
    train_iter = data.make_iterator(
        config.data, config.data.train_split, config.train.batch_size, config.seed, train=True
    )
    ckpt = checkpoint.Checkpointer(workdir, config.ckpt)
    ckpt.save(0, state, {"train": train_iter.get_state()})
    ckpt.close()


def finetune_flags(config: ConfigDict, workdir: str) -> str:
    model = config.model
    return " ".join(
        [f"--config.init_from={workdir}", f"--config.data.tokenizer={config.data.tokenizer}"]
        + [
            f"--config.model.{field}={model[field]}"
            for field in (
                "vocab_size",
                "block_size",
                "num_layers",
                "num_heads",
                "width",
                "bias",
                "layer_norm_epsilon",
            )
        ]
    )


def main(argv):
    del argv
    hf_dir, workdir = flags.FLAGS.hf_dir, flags.FLAGS.workdir
    if os.path.isdir(os.path.join(workdir, checkpoint.CHECKPOINT_DIR)):
        raise ConfigError(f"--workdir: {workdir} already holds a run's checkpoints")
    try:
        sizes = read_hf_config(hf_dir)
        weights, origin = read_weights(hf_dir)
        params = to_params(weights, sizes, origin)
        tokenizer = read_tokenizer(hf_dir)
    except BadFolder as error:
        cli.fail(error)
    if tokenizer.vocab_size > sizes["vocab"]:
        cli.fail(
            f"{hf_dir}: the tokenizer has {tokenizer.vocab_size} tokens, config.json's "
            f"vocab_size is {sizes['vocab']}"
        )
    config = run_config(sizes, workdir)
    os.makedirs(workdir, exist_ok=True)
    tokenizer.save(config.data.tokenizer)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    write_checkpoint(config, workdir, params)
    count = sum(x.size for x in jax.tree.leaves(params))
    print(f"imported {origin} ({count:,} params) into {workdir}")
    print(f"fine-tune with: {finetune_flags(config, workdir)}")


if __name__ == "__main__":
    cli.run(main)
