"""Image datasets: where the prepared TFDS data lives, and reading its examples.

config.data.name is either one of ours (DATASETS, built by builders.py) or any other dataset of
the TFDS catalog (e.g. "cifar10"), read through `tfds.data_source(..., download=True)`. Either
way the pipeline sees a split as uint8 images [H, W, C] and int32 labels, through a SplitReader
holding the examples of this host's shard (global indices p, p + P, p + 2P, ...).

A shard that fits in memory (below _IN_MEMORY_MAX_BYTES decoded) is kept decoded, each example
from its first read on: decoding a TFDS record costs ~30 us (raw bytes) to ~200 us (PNG) of
Python per example, which alone would cap the host at a few thousand images/s, far below what
the device eats on MNIST or CIFAR. The first epoch decodes the whole shard; a 20-step run only
the examples it reads (decoding all of MNIST's train split up front took ~1.7 s of every run).
Bigger shards are read batch by batch with the source's batched __getitems__.
What is read, and in which order, does not depend on this choice.

Catalog datasets are prepared by TFDS's own generator code, which may need TensorFlow in TFDS
4.9.x (e.g. cifar10 reads its files with tf.io.gfile and encodes PNGs with tf.image); reading
prepared array_record files never does. Such datasets can be built once elsewhere with
`tfds build NAME --file_format=array_record --data_dir=DIR` and read here from DIR.
"""

import collections
import logging
import math
import os
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import builders, kinds
from jaxgen.data.errors import DataError


class _QuietUnprepared(logging.Filter):
    """Drops TFDS's warning that a folder not prepared yet "has no dataset_info.json": it is
    logged on every first preparation and would precede the one-line errors of bad input."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUnprepared())

_IN_MEMORY_MAX_BYTES = 1 << 30  # per shard; MNIST train is 47 MB, CIFAR-10 train 154 MB
_CACHE_MAX_BYTES = 2 << 30  # decoded shards kept per process, least recently used dropped first
_ONLINE_TIMEOUT_S = 5.0  # to open a connection to a dataset's site before downloading
_READ_CHUNK = 1024  # records per batched read while loading a shard into memory


def catalog_base_name(name: str) -> str:
    """The builder name in "cifar10:3.0.2" or "mnist_corrupted/shot_noise"."""
    return name.split(":")[0].split("/")[0]


def _reachable(host: str, timeout: float) -> str | None:
    """None if a TCP connection to host:443 opens within `timeout` s, else why not. Runs in a
    daemon thread: a DNS lookup that hangs offline cannot hold the caller longer."""
    outcome = []

    def connect():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"{type(error).__name__}: {error}")

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer in {timeout:g} s"


def _check_online(name: str, builder: tfds.core.DatasetBuilder, data_dir: os.PathLike) -> None:
    """DataError at once when the machine cannot reach the dataset's site (offline), instead
    of TFDS's minutes of download retries."""
    host = urllib.parse.urlparse(builder.info.homepage or "").hostname or "storage.googleapis.com"
    reason = _reachable(host, _ONLINE_TIMEOUT_S)
    if reason is not None:
        raise DataError(
            f"config.data.name: TFDS dataset {name!r} is not prepared in {data_dir} and cannot "
            f"be downloaded: {host} is unreachable ({reason}); offline? Prepare it on a "
            f"connected machine with `tfds build {name} --file_format=array_record "
            f"--data_dir=DIR` and copy DIR/{catalog_base_name(name)} there"
        )


class Dataset:
    """A prepared dataset: its image shape, classes and TFDS data sources by split."""

    def __init__(self, data_config: ConfigDict):
        self._config = data_config
        name = data_config.name
        if name in builders.DATASETS:
            self._builder = builders.prepare(name, data_config)
            self._catalog = False
        else:
            self._builder = self._prepare_catalog(name)
            self._catalog = True
        self.name = name
        self.image_shape, self.num_classes = self._features()

    def _prepare_catalog(self, name: str) -> tfds.core.DatasetBuilder:
        data_dir = builders.tfds_dir(self._config)
        try:
            builder = tfds.builder(name, data_dir=os.fspath(data_dir), file_format="array_record")
            if not builder.is_prepared():
                # What tfds.data_source(..., download=True) would do, under our lock.
                with builders.file_lock(data_dir / f".{catalog_base_name(name)}.lock"):
                    builder = tfds.builder(
                        name, data_dir=os.fspath(data_dir), file_format="array_record"
                    )
                    if not builder.is_prepared():
                        _check_online(name, builder, data_dir)
                        builder.download_and_prepare(file_format="array_record")
        except DataError:
            raise
        except Exception as e:  # TFDS raises anything from ImportError to urllib errors
            raise DataError(
                f"TFDS dataset {name!r} could not be prepared in {data_dir}: "
                f"{type(e).__name__}: {e} (a dataset whose TFDS generator needs TensorFlow can be "
                f"built elsewhere with `tfds build {name} --file_format=array_record` and copied "
                "there)"
            ) from e
        return builder

    def _features(self) -> tuple[tuple[int, int, int], int]:
        features = self._builder.info.features
        names = set(features.keys())
        image = features["image"] if "image" in names else None
        label = features["label"] if "label" in names else None
        shape = tuple(getattr(image, "shape", ()) or ())
        if (
            len(shape) != 3
            or None in shape
            or getattr(image, "np_dtype", None) != np.uint8
            or not isinstance(label, tfds.features.ClassLabel)
        ):
            raise ConfigError(
                f"config.data.name: TFDS dataset {self.name!r} needs a fixed-shape uint8 'image' "
                f"[H, W, C] and a ClassLabel 'label' feature; it has {sorted(features.keys())}"
            )
        return shape, label.num_classes

    def source(self, split: str, field: str = "split") -> Sequence[Any]:
        """The TFDS data source of `split` (any TFDS split string); `field` goes in errors."""
        try:
            if self._catalog:
                return tfds.data_source(
                    self.name,
                    split=split,
                    data_dir=os.fspath(builders.tfds_dir(self._config)),
                    download=True,  # a no-op: prepared above, under the lock
                )
            return self._builder.as_data_source(split=split)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"{field}: cannot read split {split!r} of {self.name}: {e}") from e

    def info(self) -> kinds.DatasetInfo:
        counts = {}
        for field in ("train_split", "eval_split"):
            split = self._config[field]
            counts[split] = len(self.source(split, f"config.data.{field}"))
        return kinds.DatasetInfo(self.image_shape, self.num_classes, counts)

    def reader(self, split: str, process_index: int, process_count: int) -> "SplitReader":
        """This host's SplitReader of `split`, decoded once per process when it fits in memory."""
        key = (os.fspath(self._builder.data_path), split, process_index, process_count)
        with _CACHE_LOCK:
            if key in _READERS:
                _READERS.move_to_end(key)
                return _READERS[key]
        field = "split"
        for name in ("train_split", "eval_split"):
            if split == self._config[name]:
                field = f"config.data.{name}"
        reader = SplitReader(
            self.source(split, field),
            self.image_shape,
            f"{self.name}/{split}",
            process_index,
            process_count,
        )
        if reader.in_memory:
            with _CACHE_LOCK:
                _READERS[key] = reader
                while sum(r.nbytes for r in _READERS.values()) > _CACHE_MAX_BYTES:
                    _READERS.popitem(last=False)
        return reader


# Decoded in-memory shards, shared by every iterator of this process (eval builds one each time).
_READERS: "collections.OrderedDict[tuple, SplitReader]" = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forgets the decoded shards kept in memory (tests use it between mocked datasets)."""
    with _CACHE_LOCK:
        _READERS.clear()


def _read_records(source: Sequence[Any], keys: list[int]) -> list[Any]:
    # Batched reads are 5-10x faster on array_record; plain Sequences have no __getitems__.
    getitems = getattr(source, "__getitems__", None)
    return list(getitems(keys)) if getitems is not None else [source[k] for k in keys]


class SplitReader:
    """The examples of one split that one host reads: positions 0..len-1 of its shard.

    Position q of host p (of P) is example p + q * P of the split.
    """

    def __init__(
        self,
        source: Sequence[Any],
        image_shape: tuple[int, int, int],
        name: str,
        process_index: int,
        process_count: int,
    ):
        self.name = name
        self.image_shape = image_shape
        self.process_index, self.process_count = process_index, process_count
        self.total = len(source)  # examples in the whole split, over every host
        self._source = source
        self._length = len(range(process_index, self.total, process_count))
        self.nbytes = self._length * math.prod(image_shape)  # decoded images, when in memory
        self.in_memory = self.nbytes <= _IN_MEMORY_MAX_BYTES
        if self.in_memory:  # each example decoded on its first read: short runs read few
            self._images = np.empty((self._length, *image_shape), np.uint8)
            self._labels = np.empty((self._length,), np.int32)
            self._decoded = np.zeros(self._length, bool)
            self._lock = threading.Lock()
            if self._length:  # a missing or unreadable file fails here, before training
                self.read(np.array([0, self._length - 1]))

    def __len__(self) -> int:
        return self._length

    def global_index(self, positions: np.ndarray) -> np.ndarray:
        return self.process_index + positions * self.process_count

    def _decode(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.empty((len(positions), *self.image_shape), np.uint8)
        labels = np.empty((len(positions),), np.int32)
        keys = self.global_index(positions).tolist()
        for start in range(0, len(keys), _READ_CHUNK):
            chunk = keys[start : start + _READ_CHUNK]
            try:
                records = _read_records(self._source, chunk)
            except Exception as e:  # array_record raises RuntimeError for missing/corrupt files
                raise DataError(f"{self.name}: cannot read prepared examples: {e}") from e
            for i, record in enumerate(records, start):
                image = np.asarray(record["image"])
                if image.shape != self.image_shape:
                    raise DataError(
                        f"{self.name}: example {keys[i]} has image shape {image.shape}, expected "
                        f"{self.image_shape}"
                    )
                images[i] = image
                labels[i] = record["label"]
        return images, labels

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [n, H, W, C] and int32 labels [n] at these positions of the shard."""
        if not self.in_memory:
            return self._decode(positions)
        if not self._decoded[positions].all():
            with self._lock:  # Grain may read from several threads
                missing = np.unique(positions[~self._decoded[positions]])
                if missing.size:
                    self._images[missing], self._labels[missing] = self._decode(missing)
                    self._decoded[missing] = True
        return self._images[positions], self._labels[positions]
