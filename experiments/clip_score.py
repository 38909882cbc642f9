"""CLIP score of a folder of images against their captions, as torchmetrics' CLIPScore defines it.

    python -m experiments.import_clip --hf_dir=/data/clip-vit-large-patch14 --workdir=/tmp/clip
    python -m experiments.clip_score --clip=/tmp/clip --images=/data/generated --out=scores.json

--images holds the images (PNG, JPG, ...) and a captions.jsonl, one {"file": ..., "caption": ...}
line per pair (the captions kind's format; a file may appear on several lines). Each pair
scores 100 * cos(image embedding, caption embedding) with the run's CLIP (an imported one, with
CLIPImageProcessor's preprocessing: shortest-edge bicubic resize with PIL, center crop,
mean/std; or one trained here, on its data's image size). The folder's score is
max(mean over pairs, 0), torchmetrics' CLIPScore; it prints `clip_score: <value>` and --out
writes {"clip_score", "num_pairs", "pairs": [{"file", "caption", "score"}]} (per-pair scores
before the clamp). Captions longer than the text tower's 77 tokens are cut to 76 tokens and the
end token (torchmetrics slices the ids instead and then pools from a wrong token).

Bad input (no captions.jsonl, a missing or unreadable image, a run that is not a clip run) is
one line on stderr and exit status 2, before anything compiles.
"""

import json
import os
import pathlib

import jax
import numpy as np
from absl import flags
from PIL import Image

from jaxgen import cli, runs
from jaxgen.config import load_workdir_config
from jaxgen.data import captions as caption_data
from jaxgen.data.captions_kind import encode_captions
from jaxgen.data.errors import DataError
from jaxgen.metrics import clip_score
from jaxgen.workdir import write_atomic

flags.DEFINE_string("clip", None, "A clip run: experiments.import_clip's, or one trained here.")
flags.DEFINE_string("images", None, "A folder of images with a captions.jsonl.")
flags.DEFINE_string("out", None, "Where to write the per-pair scores as JSON (optional).")
# allow_override: fid.py defines batch_size too, and tests import both into one process.
flags.DEFINE_integer("batch_size", 32, "Pairs per forward pass.", allow_override=True)
flags.mark_flags_as_required(["clip", "images"])


def read_pairs(folder: str) -> list[tuple[str, str]]:
    """(image path, caption) of folder/captions.jsonl, every image checked readable."""
    if not os.path.isdir(folder):
        cli.fail(f"--images: {folder} is not a folder")
    try:
        pairs = caption_data.read_captions_jsonl(pathlib.Path(folder))
    except DataError as error:
        cli.fail(error)
    for path, _ in pairs:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError) as error:
            cli.fail(f"{path}: not a readable image ({error})")
    return [(str(path), caption) for path, caption in pairs]


def score_pairs(run, pairs, batch_size: int) -> np.ndarray:
    """100 * cos per pair [N] with the run's predict_fns["clip_scorer"]."""
    scorer = run.steps.predict_fns["clip_scorer"]
    params = scorer.params(run.state)
    image_features, text_features = jax.jit(scorer.image_features), jax.jit(scorer.text_features)
    ids = encode_captions(
        run.tokenizer, [caption for _, caption in pairs], run.config.data.caption_len
    )
    scores = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        inputs = []
        for path, _ in chunk:
            try:
                with Image.open(path) as image:
                    inputs.append(scorer.preprocess(image))
            except (OSError, SyntaxError, ValueError) as error:  # verify() misses some damage
                cli.fail(f"{path}: not a readable image ({error})")
        # The last batch is padded to batch_size: one compilation for the whole folder.
        pad = batch_size - len(chunk)
        images = np.stack(inputs + [inputs[-1]] * pad)
        batch_ids = ids[start : start + batch_size]
        batch_ids = np.concatenate([batch_ids, np.repeat(batch_ids[-1:], pad, axis=0)])
        score = clip_score.pair_scores(
            image_features(params, images), text_features(params, batch_ids)
        )
        scores.append(np.asarray(score)[: len(chunk)])
    return np.concatenate(scores)


def main(argv):
    del argv
    workdir, folder = flags.FLAGS.clip, flags.FLAGS.images
    if flags.FLAGS.batch_size < 1:
        cli.fail(f"--batch_size: must be >= 1, got {flags.FLAGS.batch_size}")
    config = load_workdir_config(workdir)
    pairs = read_pairs(folder)
    run = runs.load_run(config, workdir)
    if "clip_scorer" not in run.steps.predict_fns:
        cli.fail(f"--clip: {workdir} is a {config.family} run, not a clip run (import_clip)")
    scores = score_pairs(run, pairs, min(flags.FLAGS.batch_size, len(pairs)))
    value = clip_score.folder_score(scores)
    print(f"clip_score: {value:.4f}")
    if flags.FLAGS.out:
        records = [
            {"file": os.path.relpath(path, folder), "caption": caption, "score": float(score)}
            for (path, caption), score in zip(pairs, scores, strict=True)
        ]
        result = {"clip_score": value, "num_pairs": len(pairs), "pairs": records}
        write_atomic(flags.FLAGS.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    cli.run(main)
