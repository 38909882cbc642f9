"""Grain pipelines: the batches of one host, for training (endless, shuffled) or evaluation.

Both pipelines are Grain MapDatasets whose elements are whole batches: element k computes the
positions (in this host's shard) of batch k, gathers them from the decoded shard and converts the
pixels in one vectorised step. Grain's own per-example shuffle+batch costs ~10 us of Python per
example (index_shuffle and stats bookkeeping), which capped the host at ~75k MNIST images/s on
2 cores; per-epoch numpy permutations keep it at several hundred thousand.

Everything a batch holds is a pure function of (seed, host, batch index k): the iterator's state
is just {"next_index": k}, JSON-serialisable, and set_state() continues with exactly the batches a
run that never stopped would have seen. Training: epoch e = k // steps_per_epoch uses its own
permutation of the shard, the remainder is dropped, and binarised pixels are drawn by Grain's
random_map after the repeat, from Philox(seed, k), so each epoch draws afresh. Evaluation: one
pass in the split's order, the last batch padded and a "mask" marking real examples; binarised
eval pixels are drawn per example from (a fixed seed, the example's index in the split), so they
do not depend on the batch size, the number of hosts or config.seed.

Text datasets (text.py) give {"tokens": int32 [b, T + 1]} windows of the split's token ids, with
T = config.data.seq_len, read from the memory-mapped cache. Training: nanoGPT's get_batch, start
offsets uniform in [0, N - T - 1], drawn from default_rng([derived seed, k]), so again batch k is
a pure function of (seed, host, k), and hosts draw from unrelated streams over the whole split.
Evaluation: the split's non-overlapping windows of T + 1 tokens with stride T (every token but
the first, and the last (N - 1) % T, is predicted exactly once), visited in one fixed
pseudo-random order that depends on neither config.seed, the batch size nor the number of hosts,
split across hosts and padded like the image eval pass. An evaluator that stops after n windows
thus sees the same spread-out sample of the split at every evaluation.

Deliberately not here: augmentation, multiprocessing workers (decoded shards are in memory, so
threads keep up) and sharding over the devices of a host (the trainer does that with jax).
"""

import math
import threading
from typing import Any

import grain
import jax
import numpy as np

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import sources, text

_EVAL_PIXELS_SEED = 0x5EED  # fixed: eval metrics of different runs see the same binarisation
_EVAL_WINDOWS_SEED = 0x7E47  # fixed: every evaluation of every run visits windows in one order
# Tags that keep the derived seeds of different purposes apart.
_SHUFFLE, _BINARY, _WINDOWS = 0, 1, 2


def _derived_seed(seed: int, process_index: int, purpose: int) -> int:
    # Hashing keeps the streams of runs, hosts and purposes unrelated (Grain's own shuffle uses
    # seed + epoch, so there runs with seeds 0 and 1 would share all but one epoch order).
    return int(np.random.SeedSequence([seed, process_index, purpose]).generate_state(1)[0])


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


class _TextTrainBatch:
    """Batch k -> [b, T + 1] windows at offsets drawn from default_rng([seed, k])."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int):
        self._tokens, self._batch_size, self._seed = tokens, batch_size, seed
        self._offsets = np.arange(seq_len + 1)
        self._num_starts = len(tokens) - seq_len  # starts 0 .. N - T - 1, as nanoGPT's get_batch

    def __call__(self, index: int, _: Any) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self._seed, index])
        starts = rng.integers(0, self._num_starts, self._batch_size)
        return {"tokens": np.array(self._tokens[starts[:, None] + self._offsets], np.int32)}


class _TextEvalBatch:
    """Step j -> windows j*b .. (j+1)*b - 1 of this host's list, the last batch padded."""

    def __init__(self, tokens: np.ndarray, windows: np.ndarray, batch_size: int, seq_len: int):
        self._tokens, self._windows, self._batch_size = tokens, windows, batch_size
        self._seq_len, self._offsets = seq_len, np.arange(seq_len + 1)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        positions = np.arange(step * self._batch_size, (step + 1) * self._batch_size)
        real = positions < len(self._windows)
        starts = np.zeros(self._batch_size, np.int64)
        starts[real] = self._windows[positions[real]] * self._seq_len
        tokens = np.array(self._tokens[starts[:, None] + self._offsets], np.int32)
        tokens[~real] = 0
        return {"tokens": tokens, "mask": real.astype(np.float32)}


def _text_dataset(
    dataset: text.TextDataset,
    split: str,
    local_batch: int,
    seq_len: int,
    seed: int,
    train: bool,
    process_index: int,
    process_count: int,
) -> grain.MapDataset:
    tokens = dataset.tokens(split)
    if len(tokens) < seq_len + 1:
        raise ConfigError(
            f"config.data.seq_len: {seq_len} + 1 tokens are more than the {len(tokens)} of "
            f"{dataset.name} split {split!r}"
        )
    if train:
        load = _TextTrainBatch(
            tokens, local_batch, seq_len, _derived_seed(seed, process_index, _WINDOWS)
        )
        return grain.MapDataset.range(1).repeat().map_with_index(load)
    num_windows = (len(tokens) - 1) // seq_len
    order = np.random.default_rng(_EVAL_WINDOWS_SEED).permutation(num_windows)
    windows = order[process_index::process_count]  # host p: positions p, p + P, ... of the order
    num_batches = math.ceil(math.ceil(num_windows / process_count) / local_batch)
    load = _TextEvalBatch(tokens, windows, local_batch, seq_len)
    return grain.MapDataset.range(num_batches).map(load)


def make_iterator(
    data_config: ConfigDict, split: str, batch_size: int, seed: int, *, train: bool
) -> grain.DatasetIterator:
    """Returns a Grain iterator over this host's batches of `split`.

    Args:
      data_config: config.data.
      split: a TFDS split string, usually config.data.train_split or eval_split.
      batch_size: the GLOBAL batch size; each host gets batch_size // jax.process_count().
      seed: shuffling, binarisation and text window seed (ignored for eval).
      train: True for an endless shuffled stream, False for one padded pass in order.

    Returns:
      An iterator of {"image": float32 [b, H, W, C], "label": int32 [b]}, or for a text
      dataset {"tokens": int32 [b, config.data.seq_len + 1]}, plus "mask": float32 [b] when
      train=False, with get_state()/set_state() whose state is JSON-serialisable.
    """
    process_count, process_index = jax.process_count(), jax.process_index()
    if not isinstance(batch_size, int) or batch_size < 1 or batch_size % process_count:
        raise ConfigError(
            f"batch_size: the global batch size {batch_size} must be a positive multiple of "
            f"jax.process_count() = {process_count}"
        )
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: {seed!r} must be a non-negative integer")
    local_batch = batch_size // process_count
    binary = data_config.pixels == "binary"
    dataset = sources.open_dataset(data_config)
    read_options = grain.ReadOptions(
        num_threads=data_config.num_threads, prefetch_buffer_size=data_config.prefetch
    )
    if isinstance(dataset, text.TextDataset):
        ds = _text_dataset(
            dataset,
            split,
            local_batch,
            data_config.seq_len,
            seed,
            train,
            process_index,
            process_count,
        )
        return iter(ds.to_iter_dataset(read_options))
    reader = dataset.reader(split, process_index, process_count)

    if train:
        # Every host uses the same number of examples, so epochs end at the same step.
        per_host = reader.total // process_count
        if per_host < local_batch:
            raise ConfigError(
                f"batch_size: {batch_size} is more than the {reader.total} examples of "
                f"{dataset.name} split {split!r}"
            )
        positions = _TrainPositions(
            per_host, local_batch, _derived_seed(seed, process_index, _SHUFFLE)
        )
        ds = grain.MapDataset.range(per_host // local_batch).repeat()
        ds = ds.map_with_index(positions)  # the index is the global batch number k
        ds = ds.map(_LoadTrainBatch(reader, binary))
        if binary:
            ds = ds.random_map(_binarise_batch, seed=_derived_seed(seed, process_index, _BINARY))
    else:
        # Host p holds examples p, p + P, ...; every host runs the same number of full batches.
        largest_shard = math.ceil(reader.total / process_count)
        num_batches = math.ceil(largest_shard / local_batch)
        ds = grain.MapDataset.range(num_batches)
        ds = ds.map(_LoadEvalBatch(reader, local_batch, binary))
    return iter(ds.to_iter_dataset(read_options))
