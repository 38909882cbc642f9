"""Writing the outputs of a family's `Steps.sample` to files: image grids and decoded text.

Each family says how its outputs are written (jaxgen.family.Family.write_sample); these are
the two writers the built-in families use. A writer takes (config, name, host array, stem)
and returns the path it wrote: `stem` plus the extension of its format. Deliberately not
here: running the sampler (jaxgen.rundir.write_samples) and TensorBoard (train/writer.py).
"""

import os

import numpy as np

from jaxgen import images
from jaxgen.config import ConfigDict
from jaxgen.tokenizers import Tokenizer
from jaxgen.workdir import writing


def write_image_grid(config: ConfigDict, name: str, array: np.ndarray, stem: str) -> str:
    """Images [N, H, W, C] or [rows, cols, H, W, C] in [-1, 1] -> `stem`.png."""
    del config, name
    with writing(stem + ".png"):
        return images.save_grid(array, stem + ".png")


def decode_rows(tokenizer: Tokenizer, tokens: np.ndarray) -> list[str]:
    """Decode each row of an int array, skipping the -1 entries (padding)."""
    return [tokenizer.decode(row[row >= 0]) for row in np.asarray(tokens)]


def write_text(texts: list[str], path: str) -> str:
    """Write samples separated by a rule line; returns the path."""
    with writing(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with writing(path), open(path, "w", encoding="utf-8") as f:
        f.write("\n---------------\n".join(texts) + "\n")
    return path
