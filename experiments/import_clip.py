"""Import a Hugging Face CLIPModel folder as a jaxgen clip run, to score images or fine-tune.

    python -m experiments.import_clip --hf_dir=/data/clip-vit-base-patch32 --workdir=/tmp/clip
    python -m experiments.clip_score --clip=/tmp/clip --images=/data/generated --out=scores.json
    python -m experiments.evaluate --workdir=/tmp/clip        # CLIP score on emoji captions

The folder is what `save_pretrained` writes for CLIPModel and CLIPProcessor (or a Hub snapshot
of openai/clip-vit-base-patch32, -base-patch16, -large-patch14, -large-patch14-336): config.json,
model.safetensors (or pytorch_model.bin, which needs torch), vocab.json + merges.txt (or
tokenizer.json) with the tokenizer's special-token files, and preprocessor_config.json (or
transformers 5's processor_config.json). jaxgen/models/clip_pretrained.py reads it and
jaxgen.pretrained writes the run from configs/clip/pretrained.py: config.json (the towers'
sizes, activation, eos_token_id, the preprocessing), data_info.json, tokenizer.json (CLIP's BPE,
padding and truncating to 77 tokens with the folder's pad token) and a checkpoint at step 0.

Bad folders (a missing file, a tensor whose shape does not fit config.json, a model_type other
than clip) are one line on stderr and exit status 2.
"""

import os

import jax
from absl import flags

from jaxgen import cli, data, pretrained
from jaxgen.config import ConfigDict, sibling_config
from jaxgen.models import clip_pretrained

flags.DEFINE_string(
    "hf_dir", None, "A Hugging Face CLIPModel folder (config.json, weights, tokenizer, processor)."
)
flags.DEFINE_string("workdir", None, "The jaxgen run directory to write.")
flags.mark_flags_as_required(["hf_dir", "workdir"])

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def run_config(sizes: dict, processor: dict) -> ConfigDict:
    """configs/clip/pretrained.py with this model's sizes and preprocessing."""
    config = sibling_config(os.path.join(CONFIGS, "clip", "pretrained.py"), "pretrained.py")
    model = clip_pretrained.model_config(sizes, processor)
    with config.unlocked():
        config.model.update(model)
    config.data.image_size = sizes["vision"]["image_size"]
    config.data.caption_len = sizes["text"]["positions"]
    return config


def main(argv):
    del argv
    hf_dir, workdir = flags.FLAGS.hf_dir, flags.FLAGS.workdir
    try:
        sizes = clip_pretrained.read_clip_config(hf_dir)
        processor = clip_pretrained.read_processor(hf_dir)
        weights, origin = pretrained.read_weights(hf_dir, *clip_pretrained.WEIGHT_FILES)
        params = clip_pretrained.clip_params(weights, sizes, origin)
        tokenizer = clip_pretrained.read_tokenizer(hf_dir, sizes["text"]["positions"])
    except pretrained.WeightError as error:
        cli.fail(error)
    if tokenizer.vocab_size > sizes["text"]["vocab"]:
        cli.fail(
            f"{hf_dir}: the tokenizer has {tokenizer.vocab_size} tokens, config.json's "
            f"text_config.vocab_size is {sizes['text']['vocab']}"
        )
    config = run_config(sizes, processor)
    # Declared, not read from data: images of the model's input size with CLIP's captions.
    size = sizes["vision"]["image_size"]
    splits = {config.data.train_split: 0, config.data.eval_split: 0}
    info = data.DatasetInfo((size, size, 3), 0, splits, tokenizer.vocab_size)
    tokenizers = {"tokenizer": tokenizer}
    pretrained.write_run(config, params, workdir, info=info, tokenizers=tokenizers, origin=origin)
    count = sum(x.size for x in jax.tree.leaves(params))
    print(f"imported {origin} ({count:,} params) into {workdir}")


if __name__ == "__main__":
    cli.run(main)
