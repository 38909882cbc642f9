"""Grain pipelines: the batches of one host, for training (endless, shuffled) or evaluation.

The dataset's kind (kinds.py) builds a Grain MapDataset whose elements are whole batches
(image_kind.py, text_kind.py say how); this module checks the sizes, asks for this host's part
and wraps it in an iterator. Everything a batch holds is a pure function of (seed, host, batch
index k): the iterator's state is just {"next_index": k}, JSON-serialisable, and set_state()
continues with exactly the batches a run that never stopped would have seen. Evaluation is one
pass over the split, the last batch padded and a "mask" marking real examples.

Deliberately not here: augmentation, multiprocessing workers (decoded shards are in memory, so
threads keep up) and sharding over the devices of a host (the trainer does that with jax).
"""

import grain
import jax

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import kinds


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
      An iterator of the kind's batches, e.g. {"image": float32 [b, H, W, C], "label": int32
      [b]}, or for a text dataset {"tokens": int32 [b, config.data.seq_len + 1]}, plus "mask":
      float32 [b] when train=False, with get_state()/set_state() whose state is JSON-serialisable.
    """
    process_count, process_index = jax.process_count(), jax.process_index()
    if not isinstance(batch_size, int) or batch_size < 1 or batch_size % process_count:
        raise ConfigError(
            f"batch_size: the global batch size {batch_size} must be a positive multiple of "
            f"jax.process_count() = {process_count}"
        )
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: {seed!r} must be a non-negative integer")
    source = kinds.open_source(data_config)
    ds = source.batches(
        split,
        batch_size // process_count,
        seed,
        train=train,
        process_index=process_index,
        process_count=process_count,
    )
    read_options = grain.ReadOptions(
        num_threads=data_config.num_threads, prefetch_buffer_size=data_config.prefetch
    )
    return iter(ds.to_iter_dataset(read_options))
