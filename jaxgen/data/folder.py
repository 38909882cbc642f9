"""The "folder" dataset of the images kind: every image file under config.data.image_dir.

    --config.data.name=folder --config.data.image_dir=~/ffhq --config.data.image_size=256

Files (.png, .jpg, .jpeg, .webp, .bmp; any depth, sorted by path) are converted to RGB,
centre-cropped to a square and resized to image_size (Lanczos), as stylegan2-ada's
dataset_tool.py --transform=center-crop does. The last `val_fraction` of the sorted files (at least one) is
the "test" split, the rest "train"; there are no labels (num_classes 0, every label 0).
A split is decoded lazily, one file per first read (the SplitReader keeps decoded examples),
so a short run opens only the files it reads. Deliberately not here: the publisher's ZIP
format, labels from a dataset.json, and any augmentation (x-flips included).
"""

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import kinds, sources
from jaxgen.data.errors import DataError

NAME = "folder"
SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLITS = ("train", "test")


def check_config(data_config: ConfigDict) -> None:
    """ConfigError naming config.data.image_dir / image_size / val_fraction / the splits."""
    for field in ("image_dir", "image_size", "val_fraction"):
        if field not in data_config:
            raise ConfigError(f"config.data.{field}: missing; the folder dataset reads it")
    folder = os.path.expanduser(data_config.image_dir or "")
    if not os.path.isdir(folder):
        raise ConfigError(f"config.data.image_dir: {data_config.image_dir!r} is not a folder")
    size = data_config.image_size
    if not isinstance(size, int) or size < 4:
        raise ConfigError(f"config.data.image_size: must be an integer >= 4, got {size!r}")
    if not 0 < data_config.val_fraction < 1:
        raise ConfigError(
            f"config.data.val_fraction: must be in (0, 1), got {data_config.val_fraction}"
        )
    for field in ("train_split", "eval_split"):
        if data_config[field] not in SPLITS:
            raise ConfigError(
                f"config.data.{field}: {data_config[field]!r}; a folder has splits 'train' and "
                "'test' (the last val_fraction of the files)"
            )


def list_images(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(
        path for path in folder.rglob("*") if path.suffix.lower() in SUFFIXES and path.is_file()
    )


def load_image(path: pathlib.Path, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: RGB, centre-cropped to a square, resized with Lanczos."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            if side != size:
                image = image.resize((size, size), Image.LANCZOS)
            return np.asarray(image, np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from None


class _Files(Sequence):
    """A split as records {"image": uint8 [size, size, 3], "label": 0}, decoded on access."""

    def __init__(self, paths: list[pathlib.Path], size: int):
        self._paths, self._size = paths, size

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: Any) -> dict[str, Any]:
        return {"image": load_image(self._paths[index], self._size), "label": 0}


class FolderDataset:
    """A folder of images opened as a dataset (what sources.Dataset is for TFDS data)."""

    def __init__(self, data_config: ConfigDict):
        self._config = data_config
        self.name = NAME
        folder = pathlib.Path(data_config.image_dir).expanduser()
        paths = list_images(folder)
        num_test = max(1, int(round(len(paths) * data_config.val_fraction)))
        if len(paths) < 2 or num_test < 1 or num_test >= len(paths):
            raise DataError(
                f"{folder}: {len(paths)} image files ({', '.join(SUFFIXES)}); need enough for "
                f"both splits with val_fraction={data_config.val_fraction}"
            )
        self._splits = {"train": paths[:-num_test], "test": paths[-num_test:]}
        size = data_config.image_size
        self.image_shape, self.num_classes = (size, size, 3), 0
        self._key = os.fspath(folder.resolve())

    def source(self, split: str) -> _Files:
        return _Files(self._splits[split], self.image_shape[0])

    def info(self) -> kinds.DatasetInfo:
        counts = {
            self._config[f]: len(self._splits[self._config[f]])
            for f in ("train_split", "eval_split")
        }
        return kinds.DatasetInfo(self.image_shape, self.num_classes, counts)

    def reader(self, split: str, process_index: int, process_count: int):
        return sources.SplitReader(
            self.source(split),
            self.image_shape,
            f"{self.name}/{split}",
            process_index,
            process_count,
        )
