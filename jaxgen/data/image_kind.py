"""The "images" kind: labelled images, from our TFDS builders or the TFDS catalog.

Batches are {"image": float32 [b, H, W, C], "label": int32 [b]} (plus "mask" for eval).
Both pipelines are Grain MapDatasets whose elements are whole batches: element k computes the
positions (in this host's shard) of batch k, gathers them from the decoded shard and converts the
pixels in one vectorised step. Grain's own per-example shuffle+batch costs ~10 us of Python per
example (index_shuffle and stats bookkeeping), which capped the host at ~75k MNIST images/s on
2 cores; per-epoch numpy permutations keep it at several hundred thousand.

Training: epoch e = k // steps_per_epoch uses its own permutation of the shard, the remainder is
dropped, and binarised pixels are drawn by Grain's random_map after the repeat, from
Philox(seed, k), so each epoch draws afresh. Evaluation: one pass in the split's order, the last
batch padded and a "mask" marking real examples; binarised eval pixels are drawn per example from
(a fixed seed, the example's index in the split), so they do not depend on the batch size, the
number of hosts or config.seed. Deliberately not here: augmentation.
"""

import math
import re
import threading
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import builders, folder, kinds, sources
from jaxgen.tokenizers import Tokenizer

_EVAL_PIXELS_SEED = 0x5EED  # fixed: eval metrics of different runs see the same binarisation
# Tags that keep the derived seeds of different purposes apart.
_SHUFFLE, _BINARY = 0, 1


class _TrainPositions:
    """Batch k -> the shard positions it holds: a fresh permutation of the shard every epoch."""

    def __init__(self, num_positions: int, batch_size: int, seed: int):
        self._num_positions, self._batch_size, self._seed = num_positions, batch_size, seed
        self._steps_per_epoch = num_positions // batch_size  # the remainder is dropped
        self._permutations: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._permutations:
                rng = np.random.default_rng([self._seed, epoch])
                # Prefetch threads may straddle an epoch boundary (or be sent back by set_state).
                if len(self._permutations) >= 2:
                    self._permutations.pop(min(self._permutations))
                self._permutations[epoch] = rng.permutation(self._num_positions)
            return self._permutations[epoch]

    def __call__(self, index: int, _: Any) -> np.ndarray:
        epoch, step = divmod(index, self._steps_per_epoch)
        start = step * self._batch_size
        return self._permutation(epoch)[start : start + self._batch_size]


def _symmetric(images: np.ndarray) -> np.ndarray:
    # Dividing by 127.5 maps 0 and 255 exactly onto -1 and 1 in float32.
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _binarise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # u uniform on {0, ..., 254} gives P(u < x) = x / 255 exactly (0 stays 0, 255 stays 1), and
    # uint8 draws are ~2.5x faster than float ones.
    return (rng.integers(0, 255, images.shape, dtype=np.uint8) < images).astype(np.float32)


class _LoadTrainBatch:
    def __init__(self, reader: sources.SplitReader, binary: bool):
        self._reader, self._binary = reader, binary

    def __call__(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        images, labels = self._reader.read(positions)
        # Binary batches stay uint8 here; random_map turns them into {0, 1} floats.
        return {"image": images if self._binary else _symmetric(images), "label": labels}


def _binarise_batch(batch: dict[str, np.ndarray], rng: np.random.Generator):
    return {"image": _binarise(batch["image"], rng), "label": batch["label"]}


class _LoadEvalBatch:
    def __init__(self, reader: sources.SplitReader, batch_size: int, binary: bool):
        self._reader, self._batch_size, self._binary = reader, batch_size, binary

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        positions = np.arange(step * self._batch_size, (step + 1) * self._batch_size)
        real = positions < len(self._reader)  # padding positions come last in the last batch
        images = np.zeros((self._batch_size, *self._reader.image_shape), np.uint8)
        labels = np.zeros((self._batch_size,), np.int32)
        images[real], labels[real] = self._reader.read(positions[real])
        if self._binary:
            pixels = np.zeros(images.shape, np.float32)
            for i in np.flatnonzero(real):
                index = int(self._reader.global_index(positions[i]))
                rng = np.random.default_rng([_EVAL_PIXELS_SEED, index])
                pixels[i] = _binarise(images[i], rng)
        else:
            pixels = _symmetric(images)
        return {"image": pixels, "label": labels, "mask": real.astype(np.float32)}


class ImageSource:
    """An opened image dataset (a kinds.Source)."""

    def __init__(self, data_config: ConfigDict):
        if data_config.name == folder.NAME:
            self._dataset = folder.FolderDataset(data_config)
        else:
            self._dataset = sources.Dataset(data_config)
        self._binary = data_config.pixels == "binary"

    def info(self) -> kinds.DatasetInfo:
        return self._dataset.info()

    def tokenizers(self) -> dict[str, Tokenizer]:
        return {}

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
        reader = self._dataset.reader(split, process_index, process_count)
        binary = self._binary
        if not train:
            # Host p holds examples p, p + P, ...; every host runs the same number of batches.
            largest_shard = math.ceil(reader.total / process_count)
            num_batches = math.ceil(largest_shard / local_batch)
            return grain.MapDataset.range(num_batches).map(
                _LoadEvalBatch(reader, local_batch, binary)
            )
        # Every host uses the same number of examples, so epochs end at the same step.
        per_host = reader.total // process_count
        if per_host < local_batch:
            raise ConfigError(
                f"batch_size: {local_batch * process_count} is more than the {reader.total} "
                f"examples of {self._dataset.name} split {split!r}"
            )
        seeds = kinds.derived_seed(seed, process_index, _SHUFFLE)
        ds = grain.MapDataset.range(per_host // local_batch).repeat()
        ds = ds.map_with_index(_TrainPositions(per_host, local_batch, seeds))  # index: batch k
        ds = ds.map(_LoadTrainBatch(reader, binary))
        if binary:
            ds = ds.random_map(
                _binarise_batch, seed=kinds.derived_seed(seed, process_index, _BINARY)
            )
        return ds


class ImagesKind(kinds.Kind):
    """Our datasets (builders.DATASETS), any image dataset of the TFDS catalog, and "folder":
    the image files of config.data.image_dir (data/folder.py)."""

    name = "images"
    datasets = builders.DATASETS
    catch_all = True  # a catalog name no other kind claims is read as images

    def accepts(self, name: str) -> bool:
        if name == folder.NAME:
            return True
        base = sources.catalog_base_name(name)
        ours = {
            getattr(kinds.KINDS.get(kind).datasets.get(dataset), "name", dataset)
            for kind in kinds.KINDS.names()
            for dataset in kinds.KINDS.get(kind).datasets.names()
        }
        # Without with_community_datasets=False TFDS tries to reach GCS (and import TensorFlow).
        return base not in ours and base in tfds.list_builders(with_community_datasets=False)

    def check_config(self, data_config: ConfigDict) -> None:
        name = data_config.name
        if name == folder.NAME:
            folder.check_config(data_config)
            return
        if name not in builders.DATASETS:
            return  # catalog datasets: TFDS checks the split when it is read
        for field in ("train_split", "eval_split"):
            # TFDS split syntax: "train", "train[:90%]", "train+test", ...
            split = data_config[field]
            unknown = {s for s in re.findall(r"(\w+)(?:\[[^\]]*\])?", split)} - {"train", "test"}
            if unknown:
                raise ConfigError(
                    f"config.data.{field}: {split!r}: {name} has splits 'train' and 'test' only"
                )

    def open(self, data_config: ConfigDict) -> ImageSource:
        return ImageSource(data_config)


kinds.KINDS.register("images")(ImagesKind())
