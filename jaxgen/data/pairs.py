"""Text pairs for translation (the "pairs" kind, pairs_kind.py): a TSV file, prepared once.

PAIR_DATASETS: "bible_es_en" (30,120 Reina-Valera 1909 / King James verses, bible_es_en.tsv from
config.data.source_dir or $JAXGEN_DATA_DIR, or the file config.data.text_file names; MD5 checked
for the named file) and "tsv" (any UTF-8 TSV file, config.data.text_file).

A TSV file has a header row naming its columns; config.data.source and config.data.target name
the two text columns, and an optional `id` column keys the split. Every row goes to "train",
"validation" or "test" by a hash of its id (or of the row's two texts when there is no id
column): hash in [0, 1) < val_fraction -> validation, < val_fraction + test_fraction -> test,
else train. A row therefore never moves between splits when the file grows. A UTF-8 byte order
mark (what Excel writes first) is dropped, so it never hides the `id` column. Bad files (no
header, a column named twice, a missing column, an empty cell, a wrong number of cells, not
UTF-8) are one-line DataErrors naming the file and the line.

Prepared once, under an fcntl lock, as TFDS array_record records {"source", "target"} per split
(<tfds_dir>/jaxgen_pairs/<stem>-<hash of bytes, columns and fractions>/), so reading a prepared
dataset needs neither the TSV nor TensorFlow. The tokenizer is one byte-level BPE shared by
source and target (tokenizers.train_bpe on the train split's texts of both sides), with one
extra "<pad>" id appended after training (PAD_TOKEN; the padding of every batch), saved beside
the records. Its end-of-text id ends every sequence and starts every target (the decoder's first
input). Deliberately not here: token caches (a split is tokenized when opened: ~1 s for the
Bible) and batches (pairs_kind.py).
"""

import csv
import hashlib
import io
import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from jaxgen import tokenizers
from jaxgen.config import ConfigDict
from jaxgen.data import builders, raw
from jaxgen.data.errors import DataError
from jaxgen.registry import Registry

PAIR_DATASETS = Registry("pairs dataset", "config.data.name")
SPLITS = ("train", "validation", "test")
PAD_TOKEN = "<pad>"
ID_COLUMN = "id"

BIBLE_FILE = "bible_es_en.tsv"
# Computed from ../shared/data/bible_es_en.tsv (see its README row for how it was made).
BIBLE_MD5 = "75b3f813ddc610ec486b3caa9dbfb7a1"


def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    """The split of a row with hash key `key` (its id, or its two texts)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    if position < val_fraction:
        return "validation"
    if position < val_fraction + test_fraction:
        return "test"
    return "train"


def parse_tsv(text: str, origin: str, source: str, target: str) -> Iterator[tuple[str, str, str]]:
    """(hash key, source text, target text) of each row; DataError naming origin:line."""
    lines = io.StringIO(text, newline="")
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if not header or not any(cell.strip() for cell in header):
        raise DataError(f"{origin}:1: no header row (a TSV header naming the columns)")
    header = [cell.strip() for cell in header]
    repeated = sorted({cell for cell in header if cell and header.count(cell) > 1})
    if repeated:
        raise DataError(
            f"{origin}:1: column {', '.join(map(repr, repeated))} named more than once in the "
            "header; give each column its own name"
        )
    for column, field in ((source, "source"), (target, "target")):
        if column not in header:
            raise DataError(
                f"{origin}:1: no column {column!r} (config.data.{field}); the header has "
                f"{', '.join(header)}"
            )
    src, tgt = header.index(source), header.index(target)
    key_column = header.index(ID_COLUMN) if ID_COLUMN in header else None
    for cells in reader:
        line = reader.line_num
        if not cells:
            continue  # a blank line
        if len(cells) != len(header):
            raise DataError(f"{origin}:{line}: {len(cells)} cells, the header has {len(header)}")
        used = [src, tgt] + ([] if key_column is None else [key_column])
        for index in used:
            if not cells[index].strip():
                raise DataError(f"{origin}:{line}: empty cell in column {header[index]!r}")
        key = cells[key_column] if key_column is not None else f"{cells[src]}\t{cells[tgt]}"
        yield key, cells[src].strip(), cells[tgt].strip()


def read_pairs(data_config: ConfigDict, path: pathlib.Path) -> dict[str, list[tuple[str, str]]]:
    """{split: [(source, target)]} of a TSV file (see the module docstring)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read TSV file ({e.strerror or e})") from e
    text = decode_tsv_bytes(data, str(path))
    splits: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    rows = parse_tsv(text, str(path), data_config.source, data_config.target)
    for key, source, target in rows:
        split = split_of(key, data_config.val_fraction, data_config.test_fraction)
        splits[split].append((source, target))
    for split, pairs in splits.items():
        if not pairs:
            raise DataError(f"{path}: no rows fall in the {split} split; add rows or fractions")
    return splits


def _line_of_offset(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode_tsv_bytes(data: bytes, origin: str) -> str:
    """The text of a TSV file, without a byte order mark; a DataError naming the file and line
    if it is not UTF-8."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = _line_of_offset(data, e.start)
        raise DataError(
            f"{origin}:{line}: not UTF-8 text: invalid byte 0x{data[e.start]:02x} ({e.reason})"
        ) from e


def find_file(data_config: ConfigDict) -> pathlib.Path:
    """The TSV file of the dataset: config.data.text_file, else bible_es_en.tsv looked for."""
    if data_config.text_file:
        path = pathlib.Path(data_config.text_file).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: no such TSV file (config.data.text_file)")
        return path
    roots = []
    if data_config.source_dir:
        roots.append(pathlib.Path(data_config.source_dir).expanduser())
    if os.environ.get(raw.DATA_DIR_ENV):
        roots.append(pathlib.Path(os.environ[raw.DATA_DIR_ENV]).expanduser())
    for root in roots:
        if (path := root / BIBLE_FILE).is_file():
            md5 = hashlib.md5(path.read_bytes()).hexdigest()
            if md5 != BIBLE_MD5:
                raise DataError(f"{path}: MD5 {md5}, but bible_es_en.tsv's is {BIBLE_MD5}")
            return path
    raise DataError(
        f"bible_es_en: no {BIBLE_FILE} in config.data.source_dir or ${raw.DATA_DIR_ENV} "
        f"({', '.join(map(str, roots)) or 'neither set'}); or set config.data.text_file"
    )


class PairsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Pairs {"source", "target"} in file order; splits train, validation and test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Generated by jaxgen from a TSV file."}

    def __init__(self, *, pairs: dict[str, list[tuple[str, str]]] | None = None, **kwargs: Any):
        self._pairs = pairs  # only needed to generate, never to read
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        return None  # as in builders.IdxImageBuilder: we verify our own files

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Sentence pairs from a TSV file.",
            features=tfds.features.FeaturesDict({"source": text, "target": tfds.features.Text()}),
            disable_shuffling=True,  # record i is pair i of the split
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager
        if self._pairs is None:
            raise DataError(f"{self.name}: generating needs the pairs (use pairs.prepare)")
        return {split: self._generate_examples(self._pairs[split]) for split in SPLITS}

    def _generate_examples(self, pairs: list[tuple[str, str]]):
        for i, (source, target) in enumerate(pairs):
            yield i, {"source": source, "target": target}


PAIR_DATASETS.register("bible_es_en")(PairsBuilder)
PAIR_DATASETS.register("tsv")(PairsBuilder)


def data_dir(data_config: ConfigDict, path: pathlib.Path) -> pathlib.Path:
    """One folder per (file bytes, columns, fractions): editing the file prepares it afresh."""
    file_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    fields = (data_config.source, data_config.target)
    fractions = (data_config.val_fraction, data_config.test_fraction)
    key = hashlib.sha256(f"{file_hash} {fields!r} {fractions!r}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.]+", "_", path.stem)[:40] or "pairs"
    return builders.tfds_dir(data_config) / "jaxgen_pairs" / f"{stem}-{key}"


def prepare(data_config: ConfigDict) -> PairsBuilder:
    """Prepares the records of the dataset's TSV file if needed; returns a builder to read it."""
    path = find_file(data_config)
    folder = data_dir(data_config, path)
    builder = PairsBuilder(data_dir=os.fspath(folder), file_format="array_record")
    if builder.is_prepared():
        return builder
    folder.mkdir(parents=True, exist_ok=True)
    with builders.file_lock(folder / ".pairs.lock"):
        if not PairsBuilder(data_dir=os.fspath(folder)).is_prepared():
            writer = PairsBuilder(
                data_dir=os.fspath(folder),
                file_format="array_record",
                pairs=read_pairs(data_config, path),
            )
            writer.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
    return PairsBuilder(data_dir=os.fspath(folder), file_format="array_record")


def read_split(builder: tfds.core.DatasetBuilder, split: str, source: str, target: str):
    """([source texts], [target texts]) of a prepared split; `source`/`target`: feature names."""
    try:
        records = builder.as_data_source(split=split)
    except (KeyError, ValueError) as e:
        raise DataError(f"{builder.name}: cannot read split {split!r}: {e}") from e
    sources, targets = [], []
    for i in range(len(records)):
        try:
            record = records[i]
        except Exception as e:  # array_record raises RuntimeError for missing/corrupt files
            raise DataError(f"{builder.name}/{split}: cannot read prepared pairs: {e}") from e
        for texts, key in ((sources, source), (targets, target)):
            value = record[key]
            texts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
    return sources, targets


def train_shared_bpe(texts: list[str], vocab_size: int) -> tokenizers.HFTokenizer:
    """A byte-level BPE of vocab_size - 1 trained ids plus PAD_TOKEN as the last id."""
    tokenizer = tokenizers.train_bpe(texts, vocab_size - 1)
    tokenizer.hf.add_special_tokens([PAD_TOKEN])
    return tokenizers.HFTokenizer(tokenizer.hf)


def pad_id(tokenizer: tokenizers.Tokenizer) -> int:
    """The padding id of a pairs tokenizer; a DataError if it has none."""
    hf = getattr(tokenizer, "hf", None)
    identifier = hf.token_to_id(PAD_TOKEN) if hf is not None else None
    if identifier is None:
        raise DataError(f"the tokenizer has no {PAD_TOKEN} token (not one made for pairs)")
    return int(identifier)


def encode_rows(
    tokenizer: tokenizers.Tokenizer, texts: list[str], length: int, *, start: bool
) -> np.ndarray:
    """int32 [n, length]: [eos if start] + ids + [eos], cut to `length`, then padding.

    A text too long for `length` loses its end (and its eos).
    """
    eos, pad = tokenizer.eos_id, pad_id(tokenizer)
    out = np.full((len(texts), length), pad, np.int32)
    encodings = tokenizer.hf.encode_batch_fast(texts) if texts else []
    for row, encoding in enumerate(encodings):
        ids = ([eos] if start else []) + encoding.ids + [eos]
        ids = ids[:length]
        out[row, : len(ids)] = ids
    return out


def pack_pairs(
    source_lengths: np.ndarray,
    target_lengths: np.ndarray,
    order: np.ndarray,
    source_len: int,
    target_len: int,
    window: int,
) -> list[list[int]]:
    """Greedy first-fit packing of pairs into rows of source_len / target_len tokens.

    Pairs are taken in `order`; each goes into the first of the last `window` rows opened that
    has room for both its sides (source_lengths[i] source tokens, target_lengths[i] decoder
    positions), else into a new row. Returns the rows, each a list of pair indices in the
    order they were placed; every pair of `order` is in exactly one row.
    """
    source_fill = np.zeros(len(order), np.int64)  # at most one row per pair
    target_fill = np.zeros(len(order), np.int64)
    rows: list[list[int]] = []
    for pair in order:
        need_source, need_target = source_lengths[pair], target_lengths[pair]
        start = max(0, len(rows) - window)
        fits = np.flatnonzero(
            (source_fill[start : len(rows)] + need_source <= source_len)
            & (target_fill[start : len(rows)] + need_target <= target_len)
        )
        row = start + int(fits[0]) if len(fits) else len(rows)
        if row == len(rows):
            rows.append([])
        rows[row].append(int(pair))
        source_fill[row] += need_source
        target_fill[row] += need_target
    return rows


def packed_rows(
    rows: dict[str, np.ndarray], groups: list[list[int]], pad: int
) -> dict[str, np.ndarray]:
    """Packed batch rows of the pairs `groups` from unpacked rows {"source", "target"}.

    rows["source"] [n, S] (ids, eos, padding) and rows["target"] [n, T + 1] (eos, ids, eos,
    padding). A packed source row is the pairs' non-padding sources one after another; a packed
    target row is eos followed by each pair's target[1:] (ids, eos), so the eos ending one pair
    is the decoder's start token of the next (the end-of-text id is both). "source_segment"
    [B, S] and "target_segment" [B, T] (aligned with the decoder inputs target[:, :-1] and
    their labels target[:, 1:]) number the pairs of a row from 1 (0 = padding);
    "source_position" and "target_position" restart at 0 with each pair. A pair cut to length
    fills its row alone (pack_pairs), so every following pair starts after an eos.
    """
    source, target = rows["source"], rows["target"]
    size, source_len, target_len = len(groups), source.shape[1], target.shape[1] - 1
    out = {
        "source": np.full((size, source_len), pad, np.int32),
        "target": np.full((size, target_len + 1), pad, np.int32),
    }
    for key, length in (("source", source_len), ("target", target_len)):
        out[f"{key}_segment"] = np.zeros((size, length), np.int32)
        out[f"{key}_position"] = np.zeros((size, length), np.int32)
    for row, group in enumerate(groups):
        out["target"][row, 0] = target[group[0], 0]  # eos: the first pair's start token
        s = t = 0
        for segment, pair in enumerate(group, start=1):
            ns = int(np.count_nonzero(source[pair] != pad))
            nt = int(np.count_nonzero(target[pair, 1:] != pad))
            out["source"][row, s : s + ns] = source[pair, :ns]
            out["target"][row, t + 1 : t + 1 + nt] = target[pair, 1 : 1 + nt]
            out["source_segment"][row, s : s + ns] = segment
            out["target_segment"][row, t : t + nt] = segment
            out["source_position"][row, s : s + ns] = np.arange(ns)
            out["target_position"][row, t : t + nt] = np.arange(nt)
            s, t = s + ns, t + nt
    return out


def pair_lengths(rows: dict[str, np.ndarray], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(source tokens, decoder positions) of each unpacked pair: non-padding source ids, and
    the target's non-padding ids after its start token (the inputs it feeds the decoder)."""
    return (rows["source"] != pad).sum(1), (rows["target"][:, 1:] != pad).sum(1)
