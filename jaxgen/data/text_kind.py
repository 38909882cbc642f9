"""The "text" kind: a stream of token ids (text.TEXT_DATASETS: tiny_shakespeare, text_file).

Batches are {"tokens": int32 [b, T + 1]} windows of the split's token ids, with
T = config.data.seq_len, read from the memory-mapped cache (text.py). Training: nanoGPT's
get_batch, start offsets uniform in [0, N - T - 1], drawn from default_rng([derived seed, k]), so
batch k is a pure function of (seed, host, k), and hosts draw from unrelated streams over the
whole split. Evaluation: the split's non-overlapping windows of T + 1 tokens with stride T (every
token but the first, and the last (N - 1) % T, is predicted exactly once), visited in one fixed
pseudo-random order that depends on neither config.seed, the batch size nor the number of hosts,
split across hosts and padded like the image eval pass. An evaluator that stops after n windows
thus sees the same spread-out sample of the split at every evaluation.

The kind's config.data fields (FIELDS; configs add them with data.kind_fields("text")) and its
one tokenizer, config.data.tokenizer, which a run saves as <workdir>/tokenizer.json.
"""

import math
import os
from typing import Any

import grain
import numpy as np

from jaxgen import tokenizers
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import kinds, text

FIELDS = dict(
    seq_len=0,  # context length T; a text batch holds windows of T + 1 tokens
    tokenizer="char",  # "char", "bpe" (trained on the train split) or a tokenizer.json path
    vocab_size=0,  # BPE vocabulary size (ignored by "char" and by a tokenizer.json path)
    text_file="",  # the UTF-8 file of data.name="text_file"
    val_fraction=0.1,  # text_file: the last fraction of the characters is "validation"
)
_EVAL_WINDOWS_SEED = 0x7E47  # fixed: every evaluation of every run visits windows in one order
_WINDOWS = 2  # the derived-seed purpose of train windows (images use 0 and 1)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


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


class TextSource:
    """An opened text dataset (a kinds.Source)."""

    def __init__(self, data_config: ConfigDict):
        self._config = data_config
        self.dataset = text.TextDataset(data_config)

    def info(self) -> kinds.DatasetInfo:
        splits = (self._config.train_split, self._config.eval_split)
        counts = {split: len(self.dataset.tokens(split)) for split in splits}
        return kinds.DatasetInfo((), 0, counts, self.dataset.vocab_size)

    def tokenizers(self) -> dict[str, tokenizers.Tokenizer]:
        return {"tokenizer": self.dataset.tokenizer}

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
        seq_len, tokens = self._config.seq_len, self.dataset.tokens(split)
        if len(tokens) < seq_len + 1:
            raise ConfigError(
                f"config.data.seq_len: {seq_len} + 1 tokens are more than the {len(tokens)} of "
                f"{self.dataset.name} split {split!r}"
            )
        if train:
            windows_seed = kinds.derived_seed(seed, process_index, _WINDOWS)
            load = _TextTrainBatch(tokens, local_batch, seq_len, windows_seed)
            return grain.MapDataset.range(1).repeat().map_with_index(load)
        num_windows = (len(tokens) - 1) // seq_len
        order = np.random.default_rng(_EVAL_WINDOWS_SEED).permutation(num_windows)
        windows = order[process_index::process_count]  # host p: positions p, p + P, ...
        num_batches = math.ceil(math.ceil(num_windows / process_count) / local_batch)
        load = _TextEvalBatch(tokens, windows, local_batch, seq_len)
        return grain.MapDataset.range(num_batches).map(load)


class TextKind(kinds.Kind):
    """Text corpora as one token stream per split ("train" and "validation")."""

    name = "text"
    datasets = text.TEXT_DATASETS
    fields = FIELDS
    tokenizer_fields = ("tokenizer",)

    def check_config(self, data_config: ConfigDict) -> None:
        name = data_config.name
        for field in ("train_split", "eval_split"):
            split = data_config[field]
            if split not in text.SPLITS:
                raise ConfigError(
                    f"config.data.{field}: {split!r}: {name} has splits 'train' and "
                    "'validation' only"
                )
        seq_len = data_config.seq_len
        if not _is_int(seq_len) or seq_len < 1:
            raise ConfigError(f"config.data.seq_len: {seq_len!r}, a text dataset needs >= 1")
        tokenizer = data_config.tokenizer
        if not isinstance(tokenizer, str) or (
            tokenizer not in text.TOKENIZERS and not os.path.isfile(os.path.expanduser(tokenizer))
        ):
            raise ConfigError(
                f"config.data.tokenizer: {tokenizer!r} is neither one of "
                f"{', '.join(text.TOKENIZERS)} nor an existing tokenizer.json file"
            )
        vocab_size = data_config.vocab_size
        if tokenizer == "bpe" and (
            not _is_int(vocab_size) or vocab_size < tokenizers.MIN_BPE_VOCAB
        ):
            raise ConfigError(
                f"config.data.vocab_size: {vocab_size!r}, a byte-level BPE needs at least "
                f"{tokenizers.MIN_BPE_VOCAB} (256 bytes + {tokenizers.EOS_TOKEN})"
            )
        if name == "text_file":
            val_fraction = data_config.val_fraction
            if not isinstance(val_fraction, int | float) or not 0 < val_fraction < 1:
                raise ConfigError(f"config.data.val_fraction: {val_fraction!r}, must be in (0, 1)")
            text_file = data_config.text_file
            if not isinstance(text_file, str) or not text_file:
                raise ConfigError("config.data.text_file: empty; name a UTF-8 text file")

    def open(self, data_config: ConfigDict) -> TextSource:
        return TextSource(data_config)


kinds.KINDS.register("text")(TextKind())
