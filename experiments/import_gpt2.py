"""Import a Hugging Face GPT-2 folder as a jaxgen run, to sample from or fine-tune.

    python -m experiments.import_gpt2 --hf_dir=/data/gpt2 --workdir=/tmp/gpt2
    python -m experiments.sample --workdir=/tmp/gpt2 --config.sample.prompt="The meaning of" \
        --config.sample.num_beams=4 --config.sample.num_return_sequences=2
    python -m experiments.train --config=configs/gpt/gpt2_124m.py --workdir=/tmp/tuned \
        --config.init_from=/tmp/gpt2 --config.data.tokenizer=/tmp/gpt2/tokenizer.json \
        --config.data.text_file=/data/corpus.txt <the model flags this script prints>

The folder is what `save_pretrained` writes (or a Hub snapshot of gpt2, gpt2-medium, -large,
-xl); jaxgen/models/gpt_pretrained.py reads it (names, shapes, tokenizer) and jaxgen.pretrained
writes the run: config.json (the GPT-2 architecture, LayerNorm epsilon included, float32; the
data section names tiny_shakespeare with W/tokenizer.json), data_info.json, tokenizer.json and
a checkpoint at step 0 (optimizer state fresh). No dataset is opened: the run samples with
nothing else, and fine-tunes on any text with config.init_from.

Bad folders (a missing file, a shape that does not match config.json, a model_type other than
gpt2, a config value of the wrong type, integer or non-finite weights) are one line on stderr
and exit status 2, naming the field or tensor. --workdir must be a new or empty folder: an
existing run is never touched, and a failed import leaves nothing behind.
"""

import os

import jax
from absl import flags

from jaxgen import cli, data, pretrained
from jaxgen.config import ConfigDict, sibling_config
from jaxgen.models import gpt_pretrained

flags.DEFINE_string(
    "hf_dir", None, "A Hugging Face GPT-2 folder (config.json, weights, tokenizer)."
)
flags.DEFINE_string("workdir", None, "The jaxgen run directory to write.")
flags.mark_flags_as_required(["hf_dir", "workdir"])

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
FINETUNE_FIELDS = (
    "vocab_size", "block_size", "num_layers", "num_heads", "width", "bias", "layer_norm_epsilon",
)  # fmt: skip


def run_config(sizes: dict) -> ConfigDict:
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
    # The dataset the run evaluates and fine-tunes on by default: tiny Shakespeare.
    config.data.update(name="tiny_shakespeare", seq_len=sizes["positions"])
    config.evals.val.update(batch_size=8, num_examples=64 * 8)
    config.sample.max_new_tokens = min(config.sample.max_new_tokens, sizes["positions"] // 2)
    return config


def main(argv):
    del argv
    hf_dir, workdir = flags.FLAGS.hf_dir, flags.FLAGS.workdir
    try:
        pretrained.check_new_workdir(workdir)  # before reading gigabytes of weights
        sizes = gpt_pretrained.read_hf_config(hf_dir)
        weights, origin = pretrained.read_weights(hf_dir, *gpt_pretrained.WEIGHT_FILES)
        params = gpt_pretrained.to_params(weights, sizes, origin)
        tokenizer = gpt_pretrained.read_tokenizer(hf_dir)
        if tokenizer.vocab_size > sizes["vocab"]:
            raise pretrained.WeightError(
                f"{hf_dir}: the tokenizer has {tokenizer.vocab_size} tokens, config.json's "
                f"vocab_size is {sizes['vocab']}"
            )
        config = run_config(sizes)
        # Declared, not read from data: a token stream of this vocabulary (split sizes unknown).
        splits = {config.data.train_split: 0, config.data.eval_split: 0}
        info = data.DatasetInfo((), 0, splits, tokenizer.vocab_size)
        tokenizers = {"tokenizer": tokenizer}
        pretrained.write_run(
            config, params, workdir, info=info, tokenizers=tokenizers, origin=origin
        )
    except pretrained.WeightError as error:
        cli.fail(error)
    count = sum(x.size for x in jax.tree.leaves(params))
    print(f"imported {origin} ({count:,} params) into {workdir}")
    model = " ".join(f"--config.model.{field}={config.model[field]}" for field in FINETUNE_FIELDS)
    tokenizer_path = os.path.join(os.path.abspath(workdir), "tokenizer.json")
    print(
        f"fine-tune with: --config.init_from={workdir} "
        f"--config.data.tokenizer={tokenizer_path} {model}"
    )


if __name__ == "__main__":
    cli.run(main)
