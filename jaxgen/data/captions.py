"""Datasets of images with captions (the "captions" kind's own datasets, CAPTION_DATASETS).

Each dataset loads, once per process, its splits as `CaptionedSplit`s: uint8 images
[N, H, W, C], int32 labels [N] (class datasets only) and, per example, a list of candidate
captions (ragged: `choices[starts[i]:starts[i + 1]]` index `texts`). A class dataset's
candidates are per class instead (`by_class`: row c of starts is class c's), and its images
and labels are decoded on their first read (`Decoded`): a short run reads few of them.
The kind draws one candidate per example and epoch (captions_kind.py). Datasets:

  captioned_mnist, captioned_fashion_mnist: the image builders' MNIST / Fashion-MNIST, each class
      captioned by templates (TEMPLATES). Training examples use the "seen" templates; evaluation
      uses config.data.eval_captions: "heldout" (templates never used in training, so the
      evaluation also tells whether a model follows phrasings it never saw) or "seen".
  emoji: the colour glyphs of Noto Color Emoji (emoji.py), captioned by their lowercased Unicode
      names with templates; "train" and "test" hold the same ~1,375 images (no image is held
      out: the data is tiny), "test" captioned with config.data.eval_captions.
  captions_folder: config.data.folder with a captions.jsonl ({"file": ..., "caption": ...} a
      line), images resized to config.data.image_size; the last val_fraction of lines is "test".
  TFDS catalog captioned datasets (CATALOG: coco_captions) through tfds.data_source.

Deliberately not here: batching, drawing captions and augmentation (captions_kind.py).
"""

import json
import os
import pathlib
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxgen.config import ConfigDict
from jaxgen.data import builders, emoji, sources
from jaxgen.data.errors import DataError
from jaxgen.registry import Registry

CAPTION_DATASETS = Registry("captioned dataset", "config.data.name")
CATALOG = ("coco_captions",)  # TFDS catalog datasets with an "image" and "captions"/"text"
EVAL_CAPTIONS = ("heldout", "seen")

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_CLOTHES = (
    "t-shirt", "pair of trousers", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
# {word}: the class's name; {digit}: its numeral (MNIST); {a}: "a"/"an" before {word}.
TEMPLATES = {
    "captioned_mnist": {
        "seen": (
            "a handwritten digit {word}",
            "a handwritten digit {digit}",
            "the number {digit}, written by hand",
            "the digit {word}",
            "a picture of the number {word}",
            "{word}",
            "{digit}",
        ),
        "heldout": (
            "a scribbled {word}",
            "the numeral {digit} in handwriting",
            "an image of the digit {digit}",
        ),
    },
    "captioned_fashion_mnist": {
        "seen": (
            "a photo of {a} {word}",
            "{a} {word}",
            "a grayscale picture of {a} {word}",
            "a product photo of {a} {word}",
            "{word}",
        ),
        "heldout": ("a low resolution photo of {a} {word}", "an image showing {a} {word}"),
    },
    "emoji": {
        "seen": ("{word}", "{a} {word}", "an emoji of {a} {word}", "{word} emoji"),
        "heldout": ("a drawing of {a} {word}", "an icon showing {a} {word}"),
    },
}


class CaptionedSplit(NamedTuple):
    images: Any  # uint8 [N, H, W, C]: an array, or Decoded
    labels: Any  # int32 [N] (an array, or Decoded) for class datasets, else None
    texts: list[str]  # the distinct captions
    starts: np.ndarray  # int64 [rows + 1]: row r's candidates are choices[starts[r]:starts[r+1]]
    choices: np.ndarray  # int32 [M] indices into texts
    by_class: bool = False  # rows are classes (example i's row is labels[i]), else examples


class Decoded:
    """The images (field 0) or labels (1) of a sources.SplitReader as an array: indexing
    decodes those examples on their first read (the reader keeps them); len and shape
    decode nothing."""

    def __init__(self, reader: sources.SplitReader, field: int):
        self._reader, self._field = reader, field
        self.shape = (len(reader), *reader.image_shape)[: None if field == 0 else 1]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, indices) -> np.ndarray:
        positions = np.arange(len(self))[indices]
        return self._reader.read(np.atleast_1d(positions))[self._field].reshape(
            positions.shape + self.shape[1:]
        )


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def fill(template: str, word: str, digit: str = "") -> str:
    return template.format(word=word, digit=digit, a=article(word))


def _from_lists(images, labels, captions: list[list[str]]) -> CaptionedSplit:
    """A CaptionedSplit from one list of candidate captions per example."""
    index: dict[str, int] = {}
    choices = [index.setdefault(text, len(index)) for options in captions for text in options]
    starts = np.concatenate([[0], np.cumsum([len(options) for options in captions])])
    return CaptionedSplit(images, labels, list(index), starts, np.asarray(choices, np.int32))


def _from_classes(images, labels, class_captions: list[list[str]]) -> CaptionedSplit:
    """A CaptionedSplit whose examples of class c take the candidates class_captions[c]."""
    texts = [text for options in class_captions for text in options]
    starts = np.concatenate([[0], np.cumsum([len(options) for options in class_captions])])
    choices = np.arange(len(texts), dtype=np.int32)
    return CaptionedSplit(images, labels, texts, starts, choices, by_class=True)


def class_captions(name: str, template_set: str) -> list[list[str]] | None:
    """Per class, the captions of dataset `name`'s templates `template_set` ("seen" or
    "heldout"); None for a dataset without class templates (emoji, folders, the catalog)."""
    words = {"captioned_mnist": _DIGITS, "captioned_fashion_mnist": _CLOTHES}.get(name)
    if words is None:
        return None
    templates = TEMPLATES[name][template_set]
    return [[fill(t, word, str(digit)) for t in templates] for digit, word in enumerate(words)]


def _template_set(name: str, split: str, data_config: ConfigDict) -> tuple[str, ...]:
    train = split == data_config.train_split
    return TEMPLATES[name]["seen" if train else data_config.eval_captions]


def _check_captions(captions: list[list[str]], origin: str) -> None:
    for i, options in enumerate(captions):
        if not options or any(not text.strip() for text in options):
            raise DataError(f"{origin}: example {i} has an empty caption")


@CAPTION_DATASETS.register("captioned_mnist")
@CAPTION_DATASETS.register("captioned_fashion_mnist")
def load_class_dataset(data_config: ConfigDict, split: str) -> CaptionedSplit:
    """MNIST / Fashion-MNIST from the images kind's builders, captioned by class templates."""
    name = data_config.name
    image_config = ConfigDict(data_config.to_dict())
    image_config.name = name.removeprefix("captioned_")
    reader = sources.Dataset(image_config).reader(split, 0, 1)
    train = split == data_config.train_split
    per_class = class_captions(name, "seen" if train else data_config.eval_captions)
    return _from_classes(Decoded(reader, 0), Decoded(reader, 1), per_class)


@CAPTION_DATASETS.register("emoji")
def load_emoji(data_config: ConfigDict, split: str) -> CaptionedSplit:
    """Noto Color Emoji glyphs at config.data.image_size, captioned by their Unicode names."""
    images, names = emoji.render(emoji.find_font(data_config), data_config.image_size)
    templates = _template_set("emoji", split, data_config)
    captions = [[fill(t, word) for t in templates] for word in names]
    return _from_lists(images, None, captions)


def read_image(path: pathlib.Path, size: int) -> np.ndarray:
    """uint8 RGB [size, size, 3]: the centre square of the image at `path`, resized."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image: {e}") from e
    return square_resize(image, size)


def square_resize(image: Image.Image, size: int) -> np.ndarray:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), np.uint8)


def read_captions_jsonl(folder: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """(image path, caption) per line of folder/captions.jsonl; DataError naming file:line."""
    path = folder / "captions.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no such file (a captions folder needs captions.jsonl)")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                file, caption = record["file"], record["caption"]
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(
                    f'{path}:{number}: not a {{"file": ..., "caption": ...}} line: {e}'
                ) from e
            if not isinstance(caption, str) or not caption.strip():
                raise DataError(f"{path}:{number}: empty caption for {file!r}")
            pairs.append((folder / str(file), caption))
    if not pairs:
        raise DataError(f"{path}: no captions")
    return pairs


@CAPTION_DATASETS.register("captions_folder")
def load_folder(data_config: ConfigDict, split: str) -> CaptionedSplit:
    """config.data.folder's captions.jsonl; the last val_fraction of its lines is "test"."""
    pairs = read_captions_jsonl(pathlib.Path(data_config.folder).expanduser())
    num_test = max(1, round(len(pairs) * data_config.val_fraction))
    if len(pairs) <= num_test:
        raise DataError(f"{data_config.folder}/captions.jsonl: {len(pairs)} lines, need >= 2")
    pairs = pairs[:-num_test] if split == "train" else pairs[-num_test:]
    images = np.stack([read_image(path, data_config.image_size) for path, _ in pairs])
    return _from_lists(images, None, [[caption] for _, caption in pairs])


def _texts(record: dict[str, Any]) -> list[str]:
    captions = record.get("captions", record.get("caption", record.get("text")))
    if isinstance(captions, dict):  # coco_captions: Sequence({"text": Text, "id": int64})
        captions = captions["text"]
    if isinstance(captions, bytes | str):
        captions = [captions]
    return [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in captions]


def load_catalog(data_config: ConfigDict, split: str) -> CaptionedSplit:
    """A TFDS catalog dataset with images and captions, resized to config.data.image_size."""
    name, size = data_config.name, data_config.image_size
    data_dir = os.fspath(builders.tfds_dir(data_config))
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=True)
    except Exception as e:  # TFDS raises anything from ImportError to urllib errors
        raise DataError(f"TFDS dataset {name!r} could not be prepared in {data_dir}: {e}") from e
    images, captions = [], []
    for i in range(len(source)):
        record = source[i]
        image = np.asarray(record["image"], np.uint8)
        if image.ndim == 2 or image.shape[-1] == 1:
            image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
        images.append(square_resize(Image.fromarray(image[..., :3]), size))
        captions.append(_texts(record))
    _check_captions(captions, f"{name}/{split}")
    return _from_lists(np.stack(images), None, captions)


def load(data_config: ConfigDict, split: str) -> CaptionedSplit:
    """The split of config.data.name (one of ours, or a catalog dataset)."""
    name = data_config.name
    loader = CAPTION_DATASETS.get(name) if name in CAPTION_DATASETS else load_catalog
    return loader(data_config, split)
