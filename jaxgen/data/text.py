"""Text datasets (the "text" kind, text_kind.py): raw text, TFDS builders, tokenizer, token ids.

TEXT_DATASETS ("tiny_shakespeare", "text_file") have the splits "train" and "validation", cut as
nanoGPT does (train = text[:int(0.9 * len(text))]; text_file: the last val_fraction validates).

Three things are prepared once, under an fcntl lock, and written so that an interrupted run never
leaves anything that looks finished (TFDS renames its temporary folder into place; our files are
written to a temporary name and os.replace'd):
  1. the TFDS dataset: records {"text": a chunk of the split} in order, array_record, written and
     read without TensorFlow (<tfds_dir>/jaxgen_tiny_shakespeare/1.0.0; a text_file's lives in
     <tfds_dir>/jaxgen_text_file/<stem>-<hash of its bytes and val_fraction>/);
  2. the tokenizer, trained on the train split only (<cache>/tokenizer-char.json,
     tokenizer-bpe<vocab_size>.json) or read from the path config.data.tokenizer names; every
     process of a run therefore uses the same file;
  3. the token ids of each split, <cache>/tokens-<tokenizer fingerprint>/<split>.npy (uint16 when
     the vocabulary allows), memory-mapped by the pipelines, so a corpus is tokenized once per
     tokenizer.
<cache> is <tfds_dir>/jaxgen_tokens/<the dataset's path below tfds_dir>.

Raw tiny shakespeare is looked for as tinyshakespeare.txt or input.txt in config.data.source_dir,
then $JAXGEN_DATA_DIR (directly or in a tiny_shakespeare/ or tinyshakespeare/ subfolder), then in
the download cache, then downloaded from char-rnn's URL; it must match a known size and MD5.
Training the tokenizer and tokenizing stream the records, so a big corpus is never held as one
string after preparation. Deliberately not here: document boundaries / eos insertion (both
corpora are one document), corpora bigger than memory, and batches (text_kind.py).
"""

import hashlib
import os
import pathlib
import re
import threading
import urllib.error
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from jaxgen import tokenizers
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import builders, raw
from jaxgen.data.errors import DataError
from jaxgen.registry import Registry

TEXT_DATASETS = Registry("dataset", "config.data.name")
SPLITS = ("train", "validation")
TOKENIZERS = ("char", "bpe")

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
# Computed from ../shared/data/tinyshakespeare.txt (char-rnn's input.txt): 1,115,394 ASCII bytes.
TINY_SHAKESPEARE_MD5 = "6fb458f1232090904fb40fe944165e91"
TINY_SHAKESPEARE_SIZE = 1115394
_TINY_SHAKESPEARE_NAMES = ("tinyshakespeare.txt", "input.txt")
_TINY_SHAKESPEARE_SUBDIRS = ("tiny_shakespeare", "tinyshakespeare")

_RECORD_CHARS = 1 << 20  # characters per TFDS record (the last one of a split is shorter)


# ----------------------------------------------------------------------------- raw text


def decode_utf8(data: bytes, origin: str) -> str:
    """`data` as text; a DataError naming `origin` and the byte offset if it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{origin}: not UTF-8 text: invalid byte 0x{data[e.start]:02x} at byte offset "
            f"{e.start} ({e.reason})"
        ) from e


def split_text(text: str, train_fraction: float, origin: str) -> dict[str, str]:
    """{"train": the first int(train_fraction * len) characters, "validation": the rest}."""
    cut = int(train_fraction * len(text))
    splits = {"train": text[:cut], "validation": text[cut:]}
    for split, part in splits.items():
        if not part:
            raise DataError(f"{origin}: {len(text)} characters leave the {split} split empty")
    return splits


def _check_tiny_shakespeare(data: bytes, origin: str) -> None:
    if len(data) != TINY_SHAKESPEARE_SIZE:
        raise DataError(
            f"{origin}: {len(data)} bytes, but tiny shakespeare has {TINY_SHAKESPEARE_SIZE}"
        )
    md5 = hashlib.md5(data).hexdigest()
    if md5 != TINY_SHAKESPEARE_MD5:
        raise DataError(f"{origin}: MD5 {md5}, but tiny shakespeare's is {TINY_SHAKESPEARE_MD5}")


def find_tiny_shakespeare(source_dir: str, cache_dir: pathlib.Path) -> tuple[bytes, str]:
    """The verified bytes of tiny shakespeare and where they came from (see the docstring)."""
    roots = []
    if source_dir:
        roots.append(("config.data.source_dir", pathlib.Path(source_dir).expanduser()))
    if os.environ.get(raw.DATA_DIR_ENV):
        env = pathlib.Path(os.environ[raw.DATA_DIR_ENV]).expanduser()
        roots.append((f"${raw.DATA_DIR_ENV}", env))
    tried = []
    for what, root in roots:
        for folder in (root, *(root / sub for sub in _TINY_SHAKESPEARE_SUBDIRS)):
            for name in _TINY_SHAKESPEARE_NAMES:
                if (path := folder / name).is_file():
                    data = path.read_bytes()
                    _check_tiny_shakespeare(data, str(path))  # someone put it there: raise
                    return data, str(path)
        tried.append(f"{what} {root}" + ("" if root.is_dir() else " (no such folder)"))
    cached = cache_dir / _TINY_SHAKESPEARE_NAMES[0]
    if cached.is_file():
        try:
            data = cached.read_bytes()
            _check_tiny_shakespeare(data, str(cached))
            return data, str(cached)
        except DataError as e:
            cached.unlink(missing_ok=True)  # a bad download must not poison the cache
            tried.append(f"cached {cached} ({e})")
    try:
        raw._download(TINY_SHAKESPEARE_URL, cached)
        data = cached.read_bytes()
        _check_tiny_shakespeare(data, TINY_SHAKESPEARE_URL)
        return data, TINY_SHAKESPEARE_URL
    except (OSError, urllib.error.URLError, ValueError) as e:
        cached.unlink(missing_ok=True)
        tried.append(f"{TINY_SHAKESPEARE_URL} ({type(e).__name__}: {e})")
    raise DataError(
        f"tiny_shakespeare: could not obtain {' or '.join(_TINY_SHAKESPEARE_NAMES)}; "
        f"tried: {'; '.join(tried)}"
    )


def read_text_file(path: str) -> str:
    """The UTF-8 text of `path`; a one-line DataError naming the file otherwise."""
    file = pathlib.Path(path).expanduser()
    try:
        data = file.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{file}: no such text file (config.data.text_file)") from e
    except OSError as e:
        raise DataError(f"{file}: cannot read text file: {e}") from e
    return decode_utf8(data, str(file))


_HASHES: dict[tuple, str] = {}  # (path, size, mtime) -> sha256 of the bytes, per process


def _file_hash(path: str) -> str:
    """sha256 of the file's bytes, computed once per process for each (size, mtime) it has."""
    file = pathlib.Path(path).expanduser()
    try:
        stat = file.stat()
        key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _HASHES:
            digest = hashlib.sha256()
            with open(file, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
            _HASHES[key] = digest.hexdigest()
    except FileNotFoundError as e:
        raise DataError(f"{file}: no such text file (config.data.text_file)") from e
    except OSError as e:
        raise DataError(f"{file}: cannot read text file: {e}") from e
    return _HASHES[key]


# ----------------------------------------------------------------------------- TFDS builders


class TextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A text corpus as records {"text": chunk} in order; the splits are 'train' and 'validation'."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Generated by jaxgen from the raw text."}
    DESCRIPTION: ClassVar[str]
    HOMEPAGE: ClassVar[str] = ""
    CITATION: ClassVar[str] = ""

    def __init__(self, *, texts: dict[str, str] | None = None, **kwargs: Any):
        self._texts = texts  # only needed to generate, never to read
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        return None  # as in builders.IdxImageBuilder: we verify our own files

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            disable_shuffling=True,  # record i is chunk i of the split
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager
        if self._texts is None:
            raise DataError(f"{self.name}: generating needs the split texts (use text.prepare)")
        return {split: self._generate_examples(self._texts[split]) for split in SPLITS}

    def _generate_examples(self, text: str):
        for i, chunk in enumerate(tokenizers.chunks(text, _RECORD_CHARS)):
            yield i, {"text": chunk}

    @classmethod
    def tfds_data_dir(cls, data_config: ConfigDict) -> pathlib.Path:
        """The TFDS data_dir holding this dataset."""
        return builders.tfds_dir(data_config)

    @classmethod
    def load_texts(cls, data_config: ConfigDict, cache_dir: pathlib.Path) -> dict[str, str]:
        """The split texts, from the raw data."""
        raise NotImplementedError


@TEXT_DATASETS.register("tiny_shakespeare")
class JaxgenTinyShakespeare(TextBuilder):
    """Tiny Shakespeare (char-rnn): 1,115,394 characters, 90% train and 10% validation."""

    DESCRIPTION = "40,000 lines of Shakespeare's plays, char-rnn's tinyshakespeare/input.txt."
    HOMEPAGE = "https://github.com/karpathy/char-rnn"
    CITATION = """@misc{karpathy2015charrnn,
  author={Andrej Karpathy},
  title={char-rnn},
  year={2015},
  howpublished={\\url{https://github.com/karpathy/char-rnn}}
}"""

    @classmethod
    def load_texts(cls, data_config: ConfigDict, cache_dir: pathlib.Path) -> dict[str, str]:
        data, origin = find_tiny_shakespeare(data_config.source_dir, cache_dir)
        return split_text(decode_utf8(data, origin), 0.9, origin)


@TEXT_DATASETS.register("text_file")
class JaxgenTextFile(TextBuilder):
    """Any UTF-8 file (config.data.text_file); the last config.data.val_fraction is validation."""

    DESCRIPTION = "A local UTF-8 text file."

    @classmethod
    def tfds_data_dir(cls, data_config: ConfigDict) -> pathlib.Path:
        # One folder per (file contents, val_fraction): editing the file prepares it afresh.
        path = data_config.text_file
        key = hashlib.sha256(f"{_file_hash(path)} {data_config.val_fraction!r}".encode())
        stem = re.sub(r"[^A-Za-z0-9_.]+", "_", pathlib.Path(path).stem)[:40] or "text"
        return builders.tfds_dir(data_config) / cls.name / f"{stem}-{key.hexdigest()[:16]}"

    @classmethod
    def load_texts(cls, data_config: ConfigDict, cache_dir: pathlib.Path) -> dict[str, str]:
        path = data_config.text_file
        text = read_text_file(path)
        return split_text(text, 1.0 - data_config.val_fraction, str(path))


def prepare(name: str, data_config: ConfigDict) -> TextBuilder:
    """Prepares the TFDS dataset of text dataset `name` if needed; returns a builder to read it."""
    builder_cls = TEXT_DATASETS.get(name)
    data_dir = builder_cls.tfds_data_dir(data_config)
    builder = builder_cls(data_dir=os.fspath(data_dir), file_format="array_record")
    if builder.is_prepared():
        return builder
    tfds_dir = builders.tfds_dir(data_config)
    with builders.file_lock(data_dir / f".{builder_cls.name}.lock"):
        if not builder_cls(data_dir=os.fspath(data_dir)).is_prepared():
            cache_dir = tfds_dir / "downloads" / "jaxgen" / name
            texts = builder_cls.load_texts(data_config, cache_dir)
            writer = builder_cls(
                data_dir=os.fspath(data_dir), file_format="array_record", texts=texts
            )
            writer.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
    return builder_cls(data_dir=os.fspath(data_dir), file_format="array_record")


# ----------------------------------------------------------------------------- tokens


# Per process: tokenizers by file, and memory-mapped token arrays by file.
_TOKENIZERS: dict[tuple, tokenizers.Tokenizer] = {}
_TOKENS: dict[str, np.ndarray] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forgets the tokenizers and memory-mapped token arrays kept by this process."""
    with _CACHE_LOCK:
        _TOKENIZERS.clear()
        _TOKENS.clear()


def _load_tokenizer_file(path: pathlib.Path) -> tokenizers.Tokenizer:
    try:
        stat = path.stat()
        key = (os.fspath(path), stat.st_size, stat.st_mtime_ns)  # a rewritten file is reread
    except OSError as e:
        raise DataError(f"{path}: cannot read tokenizer ({e})") from e
    with _CACHE_LOCK:
        if key in _TOKENIZERS:
            return _TOKENIZERS[key]
    try:
        tokenizer = tokenizers.load(path)
    except ValueError as e:
        raise DataError(str(e)) from e
    with _CACHE_LOCK:
        _TOKENIZERS[key] = tokenizer
    return tokenizer


class TextDataset:
    """A prepared text dataset with its tokenizer; token ids of each split on demand."""

    def __init__(self, data_config: ConfigDict):
        self._config = data_config
        self.name = data_config.name
        self._builder = prepare(self.name, data_config)
        data_path = pathlib.Path(os.fspath(self._builder.data_path))
        tfds_dir = builders.tfds_dir(data_config)
        try:
            relative = data_path.relative_to(tfds_dir)
        except ValueError:  # not below it (symlinks): key the cache by the folder's name
            relative = pathlib.Path(data_path.name)
        self.cache_dir = tfds_dir / "jaxgen_tokens" / relative
        self.tokenizer = self._tokenizer()
        self.vocab_size = self.tokenizer.vocab_size
        self._tokens_dir = self.cache_dir / f"tokens-{self.tokenizer.fingerprint()}"

    def records(self, split: str) -> Iterator[str]:
        """The text of `split`, record by record: consecutive parts cut as tokenizers.chunks()."""
        try:
            source = self._builder.as_data_source(split=split)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"split: cannot read split {split!r} of {self.name}: {e}") from e
        for i in range(len(source)):
            try:
                record = source[i]["text"]
            except Exception as e:  # array_record raises RuntimeError for missing/corrupt files
                raise DataError(f"{self.name}/{split}: cannot read prepared text: {e}") from e
            yield record.decode("utf-8") if isinstance(record, bytes) else str(record)

    def text(self, split: str) -> str:
        """The whole text of `split`."""
        return "".join(self.records(split))

    def _tokenizer(self) -> tokenizers.Tokenizer:
        spec = self._config.tokenizer
        if spec not in TOKENIZERS:
            return _load_tokenizer_file(pathlib.Path(spec).expanduser().resolve())
        key = "char" if spec == "char" else f"bpe{self._config.vocab_size}"
        path = self.cache_dir / f"tokenizer-{key}.json"
        if not path.is_file():
            with builders.file_lock(self.cache_dir / ".lock"):
                if not path.is_file():
                    train = self.records("train")  # streamed: a big corpus is never joined
                    if spec == "char":
                        tokenizer = tokenizers.train_char(train, self.records("validation"))
                    else:
                        tokenizer = tokenizers.train_bpe(train, self._config.vocab_size)
                    tokenizer.save(path)
        return _load_tokenizer_file(path)

    def tokens(self, split: str) -> np.ndarray:
        """The token ids of `split`, memory-mapped (uint16 or int32) [n]."""
        path = self._tokens_dir / f"{split}.npy"
        key = os.fspath(path)
        with _CACHE_LOCK:
            if key in _TOKENS:
                return _TOKENS[key]
        if not path.is_file():
            with builders.file_lock(self.cache_dir / ".lock"):
                if not path.is_file():
                    dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.int32
                    try:
                        # Record by record (cut where encoding may be split): a big corpus is
                        # never held as one string, only as its ids.
                        ids = [self.tokenizer.encode(r).astype(dtype) for r in self.records(split)]
                    except ValueError as e:  # a character outside a char tokenizer's alphabet
                        raise DataError(f"{self.name}/{split}: cannot tokenize: {e}") from e
                    builders.save_npy(path, np.concatenate(ids))
        try:
            tokens = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read cached token ids: {e}") from e
        with _CACHE_LOCK:
            _TOKENS[key] = tokens
        return tokens
