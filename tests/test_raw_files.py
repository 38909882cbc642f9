"""Raw IDX files: a gzip bomb stops at the header's size; Fashion-MNIST from ../shared/data."""

import dataclasses
import gzip
import tracemalloc

import numpy as np
import pytest

from jaxgen.data import idx, raw
from jaxgen.data.errors import DataError
from tests.helpers import SHARED_DATA


def idx_header(shape):
    return bytes([0, 0, 0x08, len(shape)]) + np.asarray(shape, ">u4").tobytes()


def test_a_gzip_bomb_is_stopped_at_the_size_its_header_declares(tmp_path):
    """A 50 KB .gz whose header claims one 10x10 image but that inflates to 50 MB."""
    path = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(idx_header((1, 10, 10)))
        for _ in range(50):
            f.write(bytes(1 << 20))
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as error:
            idx.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(error.value)
    assert message.startswith(f"{path}: decompresses to more than the 116 bytes")
    assert "\n" not in message
    assert peak < 5 << 20, f"{peak} bytes allocated: the whole file was decompressed"


def test_a_header_that_disagrees_with_the_expected_shape_stops_before_the_data(tmp_path):
    path = tmp_path / "big-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(idx_header((60000, 280, 280)))  # would be 4.7 GB
    with pytest.raises(DataError, match=r"shape \(60000, 280, 280\), expected \(60000, 28, 28\)"):
        idx.read_idx(path, shape=(60000, 28, 28))


def test_one_extra_byte_is_an_error(tmp_path):
    path = tmp_path / "long-idx1-ubyte"
    path.write_bytes(idx_header((3,)) + b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="more than the 11 bytes its IDX header declares"):
        idx.read_idx(path)
    path.write_bytes(idx_header((3,)) + b"\x01\x02\x03")
    np.testing.assert_array_equal(idx.read_idx(path), [1, 2, 3])


@pytest.mark.shared_data("fashion_mnist")
def test_fashion_mnist_comes_from_shared_data_without_the_debian_package(tmp_path, monkeypatch):
    """What a fresh CI machine has: ../shared/data, no system folder, no network."""
    monkeypatch.setenv(raw.DATA_DIR_ENV, str(SHARED_DATA))

    def offline(url, timeout):
        raise AssertionError(f"tried the network: {url}")

    monkeypatch.setattr(raw, "_urlopen", offline)
    spec = dataclasses.replace(raw.FASHION_MNIST, system_dirs=())
    data = raw.load_raw(spec, source_dir="", cache_dir=tmp_path / "cache")
    assert set(data.origins.values()) == {
        str(SHARED_DATA / "fashion_mnist" / f"{spec.files[key].name}.gz") for key in spec.files
    }
    assert data.arrays["train_images"].shape == (60000, 28, 28)
    assert np.bincount(data.arrays["test_labels"]).tolist() == [1000] * 10
    assert np.bincount(data.arrays["train_labels"]).tolist() == [6000] * 10
