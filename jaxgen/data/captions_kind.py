"""The "captions" kind: images with captions, for text-to-image (captions.py: the datasets).

Batches are {"image": float32 [b, H, W, C] in [-1, 1], "caption": int32 [b, L]} (+ "label"
int32 [b] for the class datasets, + "mask" float32 [b] in evaluation), L = config.data.caption_len:
the caption's token ids, cut at L and padded with PAD_ID (0). The tokenizer (config.data.tokenizer:
"char": one id per printable ASCII character, id 0 the padding character "\\x00" and one
unknown id for any other character, the same for every dataset and config, so a text tower moves
between datasets; or a tokenizer.json of a tokenizer whose id 0 encodes "\\x00", or of one that
pads every text to caption_len itself, as a published CLIP's does) is the kind's tokenizer
field, so a run saves it and samples with exactly it.

Which caption: example i (its index in the split) has a list of candidates (templates x class
name, an emoji's templates, a file's captions); training draws candidate
splitmix64(seed, i, epoch) mod count, so every epoch re-draws, independently of the batch size,
and resuming at step k gives exactly the captions of a run that never stopped. Evaluation uses
splitmix64(a fixed seed, i, 0): the same captions for every run. Batches of training are the
images kind's: epoch e = k // steps_per_epoch is a fresh permutation of the host's shard.

Augmentation (config.data.augment="shift_scale", meant for the ~1,400 emoji): training images only,
each zoomed by a factor in [1 - max_scale, 1 + max_scale] and shifted by up to
max_shift * image side pixels (emoji.shift_scale, bilinear, white fill), drawn from
default_rng([derived seed of (seed, host), k]) for batch k, so it is deterministic in (seed, step).
"""

import json
import math
import os
import string
import threading
from typing import Any

import grain
import numpy as np

from jaxgen import tokenizers
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import captions, emoji, image_kind, kinds, sources
from jaxgen.data.errors import DataError

FIELDS = dict(
    caption_len=64,  # L: captions are cut to L token ids and padded with PAD_ID
    tokenizer="char",  # "char" (built from the dataset's captions) or a tokenizer.json path
    eval_captions="heldout",  # class/emoji templates of eval batches: "heldout" or "seen"
    image_size=32,  # side of emoji / folder / catalog images (captioned MNIST stays 28)
    augment="",  # "" or "shift_scale" (training images only)
    max_shift=0.0625,  # shift_scale: at most this fraction of the image side, each axis
    max_scale=0.1,  # shift_scale: zoom factor in [1 - max_scale, 1 + max_scale]
    font_file="",  # emoji: NotoColorEmoji.ttf; empty: <source_dir or $JAXGEN_DATA_DIR>/emoji/
    folder="",  # captions_folder: a folder with captions.jsonl and the images it names
    val_fraction=0.1,  # captions_folder: the last fraction of the lines is the "test" split
)
PAD = "\x00"
PAD_ID = 0
CHARS = string.ascii_letters + string.digits + string.punctuation + " "
AUGMENTATIONS = ("", "shift_scale")
_EVAL_CAPTIONS_SEED = 0xCA97  # fixed: every evaluation of every run sees the same captions
_SHUFFLE, _CAPTIONS, _AUGMENT = 0, 3, 4  # derived-seed purposes (images use 0, 1; text 2)
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(*words: Any) -> np.ndarray:
    """A well-mixed uint64 hash of integer arrays (broadcast): splitmix64 over their sum."""
    with np.errstate(over="ignore"):
        x = np.zeros((), np.uint64)
        for k, word in enumerate(words):
            x = x + np.asarray(word).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15 + 2 * k)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x = (x ^ (x >> np.uint64(31))) & _MASK64
    return x


def encode_captions(tokenizer: tokenizers.Tokenizer, texts: list[str], length: int) -> np.ndarray:
    """int32 [n, length] token ids of `texts`, cut at `length` and padded with PAD_ID."""
    ids = np.full((len(texts), length), PAD_ID, np.int32)
    for i, text in enumerate(texts):
        tokens = tokenizer.encode(text)[:length]
        ids[i, : len(tokens)] = tokens
    return ids


def char_tokenizer() -> tokenizers.CharTokenizer:
    """The "char" caption tokenizer: PAD (id 0), printable ASCII, and one unknown id."""
    return tokenizers.CharTokenizer("".join(sorted(set(PAD + CHARS))), unknown=True)


def decode_caption(tokenizer: tokenizers.Tokenizer, ids: np.ndarray) -> str:
    return tokenizer.decode([int(i) for i in ids if i != PAD_ID])


class _Split:
    """A loaded split with its captions as token ids."""

    def __init__(self, split: captions.CaptionedSplit, tokenizer: tokenizers.Tokenizer, length):
        self.images, self.labels = split.images, split.labels
        self.starts, self.choices, self.by_class = split.starts, split.choices, split.by_class
        self.counts = np.diff(split.starts)
        self.tokens = encode_captions(tokenizer, split.texts, length)  # [texts, L]

    def batch(self, indices: np.ndarray, words: tuple) -> dict[str, np.ndarray]:
        """The examples at `indices`, each with candidate splitmix64(*words, index) % count."""
        labels = None if self.labels is None else self.labels[indices].astype(np.int32)
        rows = labels if self.by_class else indices
        pick = splitmix64(*words, indices) % self.counts[rows].astype(np.uint64)
        caption = self.tokens[self.choices[self.starts[rows] + pick.astype(np.int64)]]
        batch = {"image": image_kind._symmetric(self.images[indices]), "caption": caption}
        if labels is not None:
            batch["label"] = labels
        return batch


class _TrainBatch:
    def __init__(self, split: _Split, positions, process, augment, seed: int):
        self._split, self._positions, self._process = split, positions, process
        self._augment, self._seed = augment, seed

    def __call__(self, index: int, _: Any) -> dict[str, np.ndarray]:
        process_index, process_count = self._process
        indices = process_index + self._positions(index, None) * process_count
        epoch = index // self._positions._steps_per_epoch
        batch = self._split.batch(indices, (self._seed, epoch))
        if self._augment:
            max_shift, max_scale, augment_seed = self._augment
            rng = np.random.default_rng([augment_seed, index])
            side = batch["image"].shape[1]
            batch["image"] = emoji.shift_scale(batch["image"], rng, max_shift * side, max_scale)
        return batch


class _EvalBatch:
    def __init__(self, split: _Split, batch_size: int, process: tuple[int, int]):
        self._split, self._batch_size, self._process = split, batch_size, process

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        process_index, process_count = self._process
        positions = np.arange(step * self._batch_size, (step + 1) * self._batch_size)
        indices = process_index + positions * process_count
        real = indices < len(self._split.images)
        batch = self._split.batch(np.where(real, indices, 0), (_EVAL_CAPTIONS_SEED, 0))
        batch["image"][~real] = 0.0
        batch["caption"][~real] = PAD_ID
        if "label" in batch:
            batch["label"][~real] = 0
        return {**batch, "mask": real.astype(np.float32)}


_LOADED: dict[str, captions.CaptionedSplit] = {}
_LOCK = threading.Lock()


def _load(data_config: ConfigDict, split: str) -> captions.CaptionedSplit:
    key = json.dumps([data_config.to_dict(), split], sort_keys=True, default=str)
    with _LOCK:
        if key not in _LOADED:
            if len(_LOADED) >= 8:
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[key] = captions.load(data_config, split)
        return _LOADED[key]


def load_caption_tokenizer(path: str) -> tokenizers.Tokenizer:
    """A tokenizer.json whose id PAD_ID (0) encodes the padding character, or one that pads and
    truncates every text to one length itself (a published CLIP's: start and end tokens, its
    own pad token; config.data.caption_len must then be that length); DataError if neither."""
    tokenizer = tokenizers.load(os.path.expanduser(path))
    if tokenizers.fixed_length(tokenizer):
        return tokenizer
    try:
        pad_ids = [int(i) for i in tokenizer.encode(PAD)]
    except ValueError:
        pad_ids = []
    if pad_ids != [PAD_ID]:
        raise DataError(f"{path}: not a caption tokenizer (its id {PAD_ID} is not {PAD!r})")
    return tokenizer


class CaptionSource:
    """An opened captioned dataset (a kinds.Source)."""

    def __init__(self, data_config: ConfigDict):
        self._config = data_config
        self._splits = {
            split: _load(data_config, split)
            for split in (data_config.train_split, data_config.eval_split)
        }
        self.tokenizer = self._make_tokenizer()

    def _make_tokenizer(self) -> tokenizers.Tokenizer:
        path = self._config.tokenizer
        if path == "char":
            return char_tokenizer()
        tokenizer = load_caption_tokenizer(path)
        length = tokenizers.fixed_length(tokenizer)
        if length and length != self._config.caption_len:
            raise DataError(
                f"config.data.caption_len: {self._config.caption_len}, but {path} pads every "
                f"caption to {length} tokens; set caption_len={length}"
            )
        return tokenizer

    def info(self) -> kinds.DatasetInfo:
        train = self._splits[self._config.train_split]
        counts = {split: len(s.images) for split, s in self._splits.items()}
        num_classes = 10 if train.labels is not None else 0
        return kinds.DatasetInfo(
            train.images.shape[1:], num_classes, counts, self.tokenizer.vocab_size
        )

    def tokenizers(self) -> dict[str, tokenizers.Tokenizer]:
        return {"tokenizer": self.tokenizer}

    def batches(
        self,
        split: str,
        local_batch: int,
        seed: int,
        *,
        train: bool,
        process_index: int,
        process_count: int,
    ) -> grain.MapDataset:
        loaded = self._splits.get(split) or _load(self._config, split)
        data = _Split(loaded, self.tokenizer, self._config.caption_len)
        total, process = len(loaded.images), (process_index, process_count)
        if not train:
            num_batches = math.ceil(math.ceil(total / process_count) / local_batch)
            return grain.MapDataset.range(num_batches).map(_EvalBatch(data, local_batch, process))
        per_host = total // process_count
        if per_host < local_batch:
            raise ConfigError(
                f"batch_size: {local_batch * process_count} is more than the {total} "
                f"examples of {self._config.name} split {split!r}"
            )
        positions = image_kind._TrainPositions(
            per_host, local_batch, kinds.derived_seed(seed, process_index, _SHUFFLE)
        )
        augment = None
        if self._config.augment == "shift_scale":
            augment_seed = kinds.derived_seed(seed, process_index, _AUGMENT)
            augment = (self._config.max_shift, self._config.max_scale, augment_seed)
        caption_seed = kinds.derived_seed(seed, process_index, _CAPTIONS)
        load = _TrainBatch(data, positions, process, augment, caption_seed)
        return grain.MapDataset.range(per_host // local_batch).repeat().map_with_index(load)


def _check_number(data_config: ConfigDict, field: str, low: float, high: float, kind=int) -> None:
    value = data_config[field]
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        raise ConfigError(f"config.data.{field}: {value!r}, must be in [{low}, {high}]")


class CaptionsKind(kinds.Kind):
    """Images with captions: captioned MNIST / Fashion-MNIST, emoji, a folder, TFDS catalog."""

    name = "captions"
    datasets = captions.CAPTION_DATASETS
    fields = FIELDS
    tokenizer_fields = ("tokenizer",)

    def accepts(self, name: str) -> bool:
        return sources.catalog_base_name(name) in captions.CATALOG

    def load_tokenizer(self, field: str, path: str) -> tokenizers.Tokenizer:
        del field
        return load_caption_tokenizer(path)

    def check_config(self, data_config: ConfigDict) -> None:
        name = data_config.name
        if data_config.pixels != "symmetric":
            raise ConfigError(f"config.data.pixels: {name} images are 'symmetric' only")
        if name in captions.CAPTION_DATASETS:
            for field in ("train_split", "eval_split"):
                if data_config[field] not in ("train", "test"):
                    raise ConfigError(
                        f"config.data.{field}: {data_config[field]!r}: {name} has splits "
                        "'train' and 'test' only"
                    )
        _check_number(data_config, "caption_len", 1, 4096)
        _check_number(data_config, "image_size", 8, 1024)
        _check_number(data_config, "max_shift", 0.0, 0.5, (int, float))
        _check_number(data_config, "max_scale", 0.0, 0.5, (int, float))
        _check_number(data_config, "val_fraction", 0.0, 0.5, (int, float))
        tokenizer = data_config.tokenizer
        if tokenizer != "char" and not os.path.isfile(os.path.expanduser(str(tokenizer))):
            raise ConfigError(
                f"config.data.tokenizer: {tokenizer!r} is neither 'char' nor a tokenizer.json file"
            )
        if data_config.eval_captions not in captions.EVAL_CAPTIONS:
            raise ConfigError(
                f"config.data.eval_captions: {data_config.eval_captions!r}; choose from "
                f"{', '.join(captions.EVAL_CAPTIONS)}"
            )
        if data_config.augment not in AUGMENTATIONS:
            raise ConfigError(
                f"config.data.augment: {data_config.augment!r}; choose from '' or 'shift_scale'"
            )
        if name == "captions_folder" and not os.path.isdir(
            os.path.expanduser(data_config.folder or "")
        ):
            raise ConfigError(f"config.data.folder: {data_config.folder!r} is not a folder")

    def open(self, data_config: ConfigDict) -> CaptionSource:
        return CaptionSource(data_config)


kinds.KINDS.register("captions")(CaptionsKind())
