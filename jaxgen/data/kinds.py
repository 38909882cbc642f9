"""Kinds of data behind one interface: what the rest of jaxgen knows about a dataset.

config.data.name selects a dataset; the dataset belongs to one registered Kind ("images":
labelled images; "text": a token stream), and the kind owns everything that differs between
kinds: the config.data fields beyond the shared base section (with their defaults, which
configs take with `kind_fields`), their checks, preparing the data, the batches for
training and evaluation, the tokenizers, and the DatasetInfo the families read. Nothing
outside a kind's module asks which kind a dataset is.

A kind is a `Kind` subclass registered in KINDS; `open` returns a `Source`:

    source = kind.open(data_config)          # prepares the data if needed
    source.info() -> DatasetInfo
    source.batches(split, local_batch, seed, train=..., process_index=..., process_count=...)
        -> grain.MapDataset whose elements are whole batches of this host (a dict of arrays,
           with a float32 "mask" [b] of real examples when train=False)
    source.tokenizers() -> {config.data field: Tokenizer}  ({} for a kind without text)

Deliberately not here: the Grain iterator around the batches (pipeline.py) and the
datasets themselves (builders.py, text.py, sources.py).
"""

import abc
import os
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple, Protocol

import grain
import numpy as np

from jaxgen import tokenizers
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data.errors import DataError
from jaxgen.registry import Registry
from jaxgen.tokenizers import Tokenizer

KINDS = Registry("kind of data", "config.data.name")
PIXELS = ("symmetric", "binary")


class DatasetInfo(NamedTuple):
    image_shape: tuple[int, ...]  # (H, W, C); () for text
    num_classes: int  # 0 for text
    num_examples: dict[str, int]  # split name -> count (of tokens, for text)
    vocab_size: int = 0  # the tokenizer's, for text; 0 for images


class Source(Protocol):
    """A prepared dataset of some kind (what Kind.open returns)."""

    def info(self) -> DatasetInfo: ...

    def batches(
        self,
        split: str,
        local_batch: int,
        seed: int,
        *,
        train: bool,
        process_index: int,
        process_count: int,
    ) -> grain.MapDataset: ...

    def tokenizers(self) -> dict[str, Tokenizer]: ...


class Kind(abc.ABC):
    """One kind of data. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    datasets: ClassVar[Registry]  # config.data.name -> the kind's own datasets
    # config.data fields of this kind beyond base_config's data section, with defaults.
    fields: ClassVar[Mapping[str, Any]] = {}
    # The fields that name a tokenizer: a run saves each as <workdir>/<field>.json and
    # reads it back from there, so the workdir alone decodes the run's tokens.
    tokenizer_fields: ClassVar[tuple[str, ...]] = ()

    # A kind that takes every name no other kind takes (the images kind: the TFDS catalog).
    catch_all: ClassVar[bool] = False

    def accepts(self, name: str) -> bool:
        """Whether `name`, not one of any kind's own datasets, is of this kind (e.g. a TFDS
        catalog dataset of its sort); asked of catch-all kinds last."""
        del name
        return False

    def load_tokenizer(self, field: str, path: str) -> Tokenizer:
        """The tokenizer.json at `path` for tokenizer field `field` (a run's saved tokenizer, read
        without opening the dataset); a kind checks here what it needs of it."""
        del field
        try:
            return tokenizers.load(path)
        except ValueError as error:
            raise DataError(str(error)) from None

    @abc.abstractmethod
    def check_config(self, data_config: ConfigDict) -> None:
        """Cheap checks of this kind's fields, no preparation; ConfigError naming the field."""

    @abc.abstractmethod
    def open(self, data_config: ConfigDict) -> Source:
        """Prepares the dataset if needed (config already checked) and opens it."""


def own_dataset_names() -> list[str]:
    return sorted(name for kind in _kinds() for name in kind.datasets.names())


def _kinds() -> list[Kind]:
    return [KINDS.get(name) for name in KINDS.names()]


def kind_of(name: str) -> Kind:
    """The kind of dataset `name`; a ConfigError naming config.data.name if none takes it."""
    kinds = _kinds()
    # A kind's own names first: TFDS's catalog has its own "tiny_shakespeare" too.
    for kind in kinds:
        if name in kind.datasets:
            return kind
    for kind in sorted(kinds, key=lambda kind: kind.catch_all):
        if kind.accepts(name):
            return kind
    raise ConfigError(
        f"config.data.name: unknown dataset {name!r}: not one of ours "
        f"({', '.join(own_dataset_names())}) and not in the TFDS catalog"
    )


def kind_fields(kind: str) -> dict[str, Any]:
    """The config.data fields of `kind` with their defaults: `config.data.update(...)`."""
    return dict(KINDS.get(kind).fields)


def derived_seed(seed: int, process_index: int, purpose: int) -> int:
    """A seed for one purpose of one host of a run; unrelated streams for each."""
    # Hashing keeps the streams of runs, hosts and purposes unrelated (Grain's own shuffle uses
    # seed + epoch, so there runs with seeds 0 and 1 would share all but one epoch order).
    return int(np.random.SeedSequence([seed, process_index, purpose]).generate_state(1)[0])


def check_config(data_config: ConfigDict) -> None:
    """Cheap checks of config.data, no data preparation; raises ConfigError naming the field."""
    name = data_config.name
    if not isinstance(name, str) or not name:
        raise ConfigError("config.data.name: empty; choose a dataset, e.g. 'mnist'")
    kind = kind_of(name)
    for field in ("train_split", "eval_split"):
        split = data_config[field]
        if not isinstance(split, str) or not split:
            raise ConfigError(f"config.data.{field}: must name a split, e.g. 'train'")
    if data_config.pixels not in PIXELS:
        raise ConfigError(
            f"config.data.pixels: unknown pixels mode {data_config.pixels!r}; "
            f"choose from {', '.join(PIXELS)}"
        )
    if data_config.source_dir and not os.path.isdir(os.path.expanduser(data_config.source_dir)):
        raise ConfigError(f"config.data.source_dir: {data_config.source_dir!r} is not a folder")
    tfds_dir = os.path.expanduser(data_config.tfds_dir)
    if data_config.tfds_dir and os.path.exists(tfds_dir) and not os.path.isdir(tfds_dir):
        raise ConfigError(f"config.data.tfds_dir: {data_config.tfds_dir!r} is not a folder")
    if not isinstance(data_config.num_threads, int) or data_config.num_threads < 1:
        raise ConfigError(f"config.data.num_threads: {data_config.num_threads!r}, must be >= 1")
    if not isinstance(data_config.prefetch, int) or data_config.prefetch < 0:
        raise ConfigError(f"config.data.prefetch: {data_config.prefetch!r}, must be >= 0")
    for field in kind.fields:
        if field not in data_config:
            raise ConfigError(
                f"config.data.{field}: missing; {kind.name} datasets read "
                f"config.data.{', '.join(kind.fields)} (jaxgen.data.kind_fields({kind.name!r}))"
            )
    kind.check_config(data_config)


def open_source(data_config: ConfigDict) -> Source:
    """Checks the config, prepares the dataset (and its tokens) if needed, and opens it."""
    check_config(data_config)
    return kind_of(data_config.name).open(data_config)


def get_info(data_config: ConfigDict) -> DatasetInfo:
    """Prepares the dataset if needed and returns its shapes, classes and split sizes.

    num_examples has an entry for config.data.train_split and config.data.eval_split. For a text
    dataset it counts tokens, image_shape is () and num_classes 0, and vocab_size is the
    tokenizer's.
    """
    return open_source(data_config).info()


def _saved_tokenizers(data_config: ConfigDict) -> dict[str, Tokenizer] | None:
    """{field: tokenizer} when every tokenizer field of the kind names a tokenizer.json file
    (a run's saved ones: jaxgen.rundir.with_saved_tokenizers), else None."""
    kind = kind_of(data_config.name)
    paths = {
        field: os.path.expanduser(str(data_config.get(field, "")))
        for field in kind.tokenizer_fields
    }
    if not all(os.path.isfile(path) for path in paths.values()):
        return None
    return {field: kind.load_tokenizer(field, path) for field, path in paths.items()}


def get_tokenizers(data_config: ConfigDict) -> dict[str, Tokenizer]:
    """{config.data field: tokenizer} of the dataset ({} for a kind without text).

    Tokenizer fields that all name tokenizer.json files (a run's saved tokenizers) are read as
    they are, without opening the dataset: a run decodes on a machine without its data.
    Otherwise prepares the dataset and trains its tokenizers if needed; every process gets
    the same ones.
    """
    if not kind_of(data_config.name).tokenizer_fields:
        check_config(data_config)
        return {}  # nothing to prepare
    saved = _saved_tokenizers(data_config)
    if saved is not None:
        return saved
    check_config(data_config)
    return open_source(data_config).tokenizers()


def load_tokenizer(data_config: ConfigDict) -> Tokenizer:
    """The tokenizer (config.data.tokenizer) of a dataset with one, e.g. a text dataset."""
    kind = kind_of(data_config.name)
    if "tokenizer" in kind.tokenizer_fields:
        return get_tokenizers(data_config)["tokenizer"]
    check_config(data_config)
    if "tokenizer" not in kind.tokenizer_fields:
        text = [
            n for k in _kinds() if "tokenizer" in k.tokenizer_fields for n in k.datasets.names()
        ]
        raise ConfigError(
            f"config.data.name: {data_config.name!r} is not a text dataset "
            f"({', '.join(sorted(text))}), so it has no tokenizer"
        )
