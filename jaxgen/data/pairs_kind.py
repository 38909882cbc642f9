"""The "pairs" kind: sentence pairs for translation (pairs.PAIR_DATASETS, TFDS catalog ones).

Batches are {"source": int32 [b, S], "target": int32 [b, T + 1]} with S = config.data.source_len
and T = config.data.target_len: the source is its BPE ids then eos, the target eos (the
decoder's start) then its ids then eos, both cut to length and filled with the padding id
(pairs.PAD_TOKEN, the tokenizer's last id; pairs.pad_id). The model reads target[:, :-1] and
predicts target[:, 1:]. Evaluation batches add a float32 "mask" [b] of real rows.
With config.data.pack, train rows hold several pairs each (pairs.packed_rows: the same
"source" / "target" layout plus int32 "source_segment", "source_position" [b, S] and
"target_segment", "target_position" [b, T], segment 0 = padding); evaluation rows never do.

Training: the rows of the train split in a fresh permutation every epoch, drawn from
default_rng([derived seed, epoch]) (the remainder of an epoch is dropped), so batch k is a pure
function of (seed, host, k); hosts draw unrelated permutations of the whole split. Evaluation:
the split's rows in file order, host p taking rows p, p + P, ..., the last batch padded.

Datasets: ours (bible_es_en, tsv: a TSV file, pairs.py) and the TFDS catalog's translation
datasets (TRANSLATION_CATALOG, e.g. "wmt14_translate/de-en"), whose text features are named by
language: config.data.source / .target name them ("de", "en"). The tokenizer (one byte-level
BPE for both sides, trained on the train split, or a tokenizer.json path) is config.data.tokenizer,
which a run saves as <workdir>/tokenizer.json.
"""

import math
import os
import pathlib
import threading
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
import tensorflow_datasets.translate.wmt14
import tensorflow_datasets.translate.wmt15
import tensorflow_datasets.translate.wmt16
import tensorflow_datasets.translate.wmt_t2t  # noqa: F401 (TFDS registers them on import only)

from jaxgen import tokenizers
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import builders, kinds, pairs, sources
from jaxgen.data.errors import DataError

FIELDS = dict(
    text_file="",  # the TSV file (data.name="tsv"; bible_es_en finds bible_es_en.tsv itself)
    source="es",  # the source column of the TSV header (catalog: the source language)
    target="en",  # the target column (catalog: the target language)
    tokenizer="bpe",  # "bpe" (shared by both sides, trained on train) or a tokenizer.json path
    vocab_size=8000,  # BPE ids including <|endoftext|> and <pad>
    source_len=0,  # S: source tokens per row, eos included (longer sources are cut)
    target_len=0,  # T: target tokens the model predicts per row (the batch holds T + 1)
    pack=False,  # train rows hold several pairs (segment ids/positions keep them apart)
    val_fraction=0.01,  # TSV rows whose hash falls below this are "validation"
    test_fraction=0.02,  # ... and the next test_fraction of hashes are "test"
)
# Catalog datasets read through tfds (wmt14_translate/de-en: features "de" and "en").
TRANSLATION_CATALOG = ("wmt14_translate", "wmt_t2t_translate", "wmt15_translate", "wmt16_translate")
_ORDER = 3  # the derived-seed purpose of the train order (images use 0, 1; text 2)
# Packing looks for room in the last _PACK_WINDOW rows opened: on bible_es_en at 64/64 tokens
# 8 rows fill 84% of the positions, 64 rows 90% (~0.3 s an epoch), 512 rows 93% (~2 s).
_PACK_WINDOW = 64
_CACHE: dict[tuple, Any] = {}  # per process: tokenized splits, tokenizers
_CACHE_LOCK = threading.Lock()


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


class _TrainBatch:
    """Batch k -> rows of epoch k // steps_per_epoch's permutation."""

    def __init__(self, rows: dict[str, np.ndarray], batch_size: int, seed: int):
        self._rows, self._batch_size, self._seed = rows, batch_size, seed
        self._num_rows = len(rows["source"])
        self._steps_per_epoch = self._num_rows // batch_size
        self._permutations: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._permutations:
                if len(self._permutations) >= 2:  # prefetch may straddle an epoch boundary
                    self._permutations.pop(min(self._permutations))
                rng = np.random.default_rng([self._seed, epoch])
                self._permutations[epoch] = rng.permutation(self._num_rows)
            return self._permutations[epoch]

    def __call__(self, index: int, _: Any) -> dict[str, np.ndarray]:
        epoch, step = divmod(index, self._steps_per_epoch)
        rows = self._permutation(epoch)[step * self._batch_size : (step + 1) * self._batch_size]
        return {key: value[rows] for key, value in self._rows.items()}


class _PackedTrainBatch:
    """Batch k -> packed rows of an epoch's permutation (pairs.pack_pairs, then in row order).

    Epoch e packs the pairs in default_rng([seed, e]).permutation order into rows; its batches
    are those rows b at a time (the remainder of fewer than b rows dropped), so batch k is a pure
    function of (seed, host, k). Epochs hold different numbers of rows: the count of each is
    kept, and resuming at batch k packs the epochs before it once (~0.3 s each).
    """

    def __init__(self, rows: dict[str, np.ndarray], batch_size: int, seed: int, pad: int):
        self._rows, self._batch_size, self._seed, self._pad = rows, batch_size, seed, pad
        self._lengths = pairs.pair_lengths(rows, pad)
        self._groups: dict[int, list[list[int]]] = {}
        self._steps: list[int] = []  # batches of epochs 0, 1, ...
        self._lock, self._steps_lock = threading.Lock(), threading.Lock()

    def groups(self, epoch: int) -> list[list[int]]:
        """The rows (lists of pair indices) of an epoch."""
        with self._lock:
            if epoch not in self._groups:
                if len(self._groups) >= 2:  # prefetch may straddle an epoch boundary
                    self._groups.pop(min(self._groups))
                rng = np.random.default_rng([self._seed, epoch])
                order = rng.permutation(len(self._rows["source"]))
                source_len = self._rows["source"].shape[1]
                target_len = self._rows["target"].shape[1] - 1
                self._groups[epoch] = pairs.pack_pairs(
                    *self._lengths, order, source_len, target_len, _PACK_WINDOW
                )
            return self._groups[epoch]

    def _locate(self, index: int) -> tuple[int, int]:
        with self._steps_lock:
            return self._locate_unlocked(index)

    def _locate_unlocked(self, index: int) -> tuple[int, int]:
        epoch = 0
        while True:
            if epoch == len(self._steps):
                steps = len(self.groups(epoch)) // self._batch_size
                if steps == 0:
                    raise ConfigError(
                        f"config.train.batch_size: {self._batch_size} rows per host are more "
                        "than the packed rows of an epoch"
                    )
                self._steps.append(steps)
            if index < self._steps[epoch]:
                return epoch, index
            index -= self._steps[epoch]
            epoch += 1

    def __call__(self, index: int, _: Any) -> dict[str, np.ndarray]:
        epoch, step = self._locate(index)
        groups = self.groups(epoch)[step * self._batch_size : (step + 1) * self._batch_size]
        return pairs.packed_rows(self._rows, groups, self._pad)


class _EvalBatch:
    """Step j -> this host's rows j*b .. (j+1)*b - 1, the last batch padded (mask 0)."""

    def __init__(self, rows: dict[str, np.ndarray], positions: np.ndarray, batch_size: int):
        self._rows, self._positions, self._batch_size = rows, positions, batch_size

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        index = np.arange(step * self._batch_size, (step + 1) * self._batch_size)
        real = index < len(self._positions)
        rows = np.where(real, self._positions[np.minimum(index, len(self._positions) - 1)], 0)
        batch = {key: value[rows] for key, value in self._rows.items()}
        return batch | {"mask": real.astype(np.float32)}


def _prepare_catalog(data_config: ConfigDict) -> tfds.core.DatasetBuilder:
    """A catalog translation dataset, prepared as tfds.data_source(..., download=True) does."""
    name, data_dir = data_config.name, builders.tfds_dir(data_config)
    try:
        builder = tfds.builder(name, data_dir=os.fspath(data_dir), file_format="array_record")
        if not builder.is_prepared():
            with builders.file_lock(data_dir / f".{sources.catalog_base_name(name)}.lock"):
                builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # TFDS raises anything from ImportError to urllib errors
        raise DataError(
            f"TFDS dataset {name!r} could not be prepared in {data_dir}: {type(e).__name__}: {e}"
        ) from e
    return builder


class PairsSource:
    """An opened pairs dataset (a kinds.Source)."""

    def __init__(self, data_config: ConfigDict):
        self._config = data_config
        if data_config.name in pairs.PAIR_DATASETS:
            self._builder = pairs.prepare(data_config)
            self._columns = ("source", "target")
            self._folder = pathlib.Path(os.fspath(self._builder.data_path))
        else:
            self._builder = _prepare_catalog(data_config)
            self._columns = (data_config.source, data_config.target)
            features = self._builder.info.features
            for column, field in zip(self._columns, ("source", "target"), strict=True):
                if column not in features:
                    raise ConfigError(
                        f"config.data.{field}: {column!r} is not a feature of "
                        f"{data_config.name} ({', '.join(features)})"
                    )
            self._folder = builders.tfds_dir(data_config) / "jaxgen_tokens" / data_config.name
        self.tokenizer = self._tokenizer()
        self.pad_id = pairs.pad_id(self.tokenizer)

    def texts(self, split: str) -> tuple[list[str], list[str]]:
        """([source texts], [target texts]) of a split, in record order."""
        return pairs.read_split(self._builder, split, *self._columns)

    def _tokenizer(self) -> tokenizers.Tokenizer:
        spec = self._config.tokenizer
        if spec != "bpe":
            path = pathlib.Path(spec).expanduser()
        else:
            path = self._folder / f"tokenizer-bpe{self._config.vocab_size}.json"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                with builders.file_lock(path.parent / ".tokenizer.lock"):
                    if not path.is_file():
                        sources_, targets = self.texts("train")
                        bpe = pairs.train_shared_bpe(sources_ + targets, self._config.vocab_size)
                        bpe.save(path)
        try:
            return tokenizers.load(path)
        except ValueError as e:
            raise DataError(str(e)) from e

    def rows(self, split: str) -> dict[str, np.ndarray]:
        """{"source": [n, S], "target": [n, T + 1]} int32 of a split (tokenized once)."""
        config = self._config
        key = (str(self._folder), split, self.tokenizer.fingerprint(), config.source_len,
               config.target_len)  # fmt: skip
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
        source_texts, target_texts = self.texts(split)
        if not source_texts:
            raise DataError(f"{config.name}: the {split} split has no pairs")
        rows = {
            "source": pairs.encode_rows(
                self.tokenizer, source_texts, config.source_len, start=False
            ),
            "target": pairs.encode_rows(
                self.tokenizer, target_texts, config.target_len + 1, start=True
            ),
        }
        with _CACHE_LOCK:
            _CACHE[key] = rows
        return rows

    def info(self) -> kinds.DatasetInfo:
        splits = (self._config.train_split, self._config.eval_split)
        counts = {split: len(self.rows(split)["source"]) for split in splits}
        return kinds.DatasetInfo((), 0, counts, self.tokenizer.vocab_size)

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
        rows = self.rows(split)
        num_rows = len(rows["source"])
        if train:
            if num_rows < local_batch:
                raise ConfigError(
                    f"config.train.batch_size: {local_batch} rows per host are more than the "
                    f"{num_rows} of {self._config.name} split {split!r}"
                )
            order_seed = kinds.derived_seed(seed, process_index, _ORDER)
            if self._config.pack:
                load = _PackedTrainBatch(rows, local_batch, order_seed, self.pad_id)
            else:
                load = _TrainBatch(rows, local_batch, order_seed)
            return grain.MapDataset.range(1).repeat().map_with_index(load)
        positions = np.arange(process_index, num_rows, process_count)
        num_batches = math.ceil(math.ceil(num_rows / process_count) / local_batch)
        return grain.MapDataset.range(num_batches).map(_EvalBatch(rows, positions, local_batch))


def clear_cache() -> None:
    """Forgets the tokenized splits kept by this process."""
    with _CACHE_LOCK:
        _CACHE.clear()


class PairsKind(kinds.Kind):
    """Sentence pairs: TSV files (pairs.py) and catalog translation datasets."""

    name = "pairs"
    datasets = pairs.PAIR_DATASETS
    fields = FIELDS
    tokenizer_fields = ("tokenizer",)

    def accepts(self, name: str) -> bool:
        return sources.catalog_base_name(name) in TRANSLATION_CATALOG

    def check_config(self, data_config: ConfigDict) -> None:
        name = data_config.name
        if name in pairs.PAIR_DATASETS:
            for field in ("train_split", "eval_split"):
                if data_config[field] not in pairs.SPLITS:
                    raise ConfigError(
                        f"config.data.{field}: {data_config[field]!r}: {name} has splits "
                        f"{', '.join(pairs.SPLITS)}"
                    )
            fractions = (data_config.val_fraction, data_config.test_fraction)
            if not all(isinstance(f, int | float) and 0 < f < 1 for f in fractions) or (
                sum(fractions) >= 1
            ):
                raise ConfigError(
                    f"config.data.val_fraction, test_fraction: {fractions!r}, each in (0, 1) "
                    "with a sum below 1"
                )
            if name == "tsv" and not data_config.text_file:
                raise ConfigError("config.data.text_file: empty; name a UTF-8 TSV file")
        for field in ("source", "target"):
            if not isinstance(data_config[field], str) or not data_config[field]:
                raise ConfigError(f"config.data.{field}: empty; name a column / language")
        for field in ("source_len", "target_len"):
            value = data_config[field]
            if not _is_int(value) or value < 2:
                raise ConfigError(f"config.data.{field}: {value!r}, a pairs dataset needs >= 2")
        if not isinstance(data_config.get("pack", False), bool):
            raise ConfigError(f"config.data.pack: {data_config.pack!r}, must be True or False")
        tokenizer = data_config.tokenizer
        if not isinstance(tokenizer, str) or (
            tokenizer != "bpe" and not os.path.isfile(os.path.expanduser(tokenizer))
        ):
            raise ConfigError(
                f"config.data.tokenizer: {tokenizer!r} is neither 'bpe' nor an existing "
                "tokenizer.json file"
            )
        vocab_size = data_config.vocab_size
        if tokenizer == "bpe" and (
            not _is_int(vocab_size) or vocab_size < tokenizers.MIN_BPE_VOCAB + 1
        ):
            raise ConfigError(
                f"config.data.vocab_size: {vocab_size!r}, a shared BPE needs at least "
                f"{tokenizers.MIN_BPE_VOCAB + 1} (256 bytes, eos and pad)"
            )

    def open(self, data_config: ConfigDict) -> PairsSource:
        return PairsSource(data_config)


kinds.KINDS.register("pairs")(PairsKind())
