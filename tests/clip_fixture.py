"""Hugging Face CLIP folders of the tiny random model of tests/fixtures/clip/, for the tests.

The weights are regenerated with NumPy (tests/fixtures/clip_tiny.py) from the names and shapes
that make_clip_fixture.py recorded; golden.npz holds what transformers computed with them.
The real CLIP vocabulary is ../shared/data/clip_tokenizer (not copied into the repo).
"""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import safetensors.numpy

from tests.fixtures import clip_tiny
from tests.helpers import ROOT, SHARED_DATA

FIXTURE = ROOT / "tests" / "fixtures" / "clip"
TOKENIZER_DIR = SHARED_DATA / "clip_tokenizer"
VARIANTS = tuple(clip_tiny.VARIANTS)
CAPTIONS = [json.loads(line)["caption"] for line in (FIXTURE / "images" / "captions.jsonl").open()]


def tokenizer_dir() -> pathlib.Path:
    """../shared/data/clip_tokenizer, or the test fails with one line saying it is missing."""
    if not (TOKENIZER_DIR / "vocab.json").is_file() or not (TOKENIZER_DIR / "merges.txt").is_file():
        pytest.fail(f"{TOKENIZER_DIR}: missing vocab.json / merges.txt (CLIP's BPE files)", False)
    return TOKENIZER_DIR


def golden(variant: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURE / variant / "golden.npz") as data:
        return dict(data)


def hf_config(variant: str) -> dict:
    return json.loads((FIXTURE / variant / "config.json").read_text())


def weights(variant: str) -> dict[str, np.ndarray]:
    """The CLIPModel state dict (transformers' names) that golden.npz was computed with."""
    manifest = json.loads((FIXTURE / variant / "weights.json").read_text())
    return clip_tiny.random_weights(manifest["shapes"], manifest["seed"])


def write_text_encoder(folder: os.PathLike, variant: str, prefix: str = "text_model.") -> str:
    """SD's text_encoder/ layout: a CLIPTextModel's config.json and model.safetensors, names under
    `prefix` ("text_model." as transformers 4 saved them, "" as transformers 5 does)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = hf_config(variant)["text_config"] | {"architectures": ["CLIPTextModel"]}
    (folder / "config.json").write_text(json.dumps(config))
    text = {
        prefix + name.removeprefix("text_model."): value
        for name, value in weights(variant).items()
        if name.startswith("text_model.")
    }
    safetensors.numpy.save_file(text, str(folder / "model.safetensors"))
    return str(folder)


def write_clip_model(folder: os.PathLike, variant: str, tokenizer: bool = True) -> str:
    """A CLIPModel folder as save_pretrained writes it (with the processor's files)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(FIXTURE / variant):
        if name not in ("golden.npz", "weights.json"):
            shutil.copy(FIXTURE / variant / name, folder / name)
    safetensors.numpy.save_file(weights(variant), str(folder / "model.safetensors"))
    if tokenizer:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(tokenizer_dir() / name, folder / name)
    return str(folder)
