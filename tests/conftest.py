"""Test session set-up: 4 fake CPU devices, data locations, shared fixtures.

XLA_FLAGS must be set before jax is imported, so it is done here at import
time: every test process sees 4 CPU devices (for correctness, not speed).
Raw data comes from ../shared/data when it is there (JAXGEN_DATA_DIR): a test that reads it
is marked @pytest.mark.shared_data("mnist/...") or calls need_shared_data(), which skips it when
the file is missing, and fails it with one line naming the file under CI=true. TFDS
preparations are shared by the whole session in build/tfds, compiled XLA programs in
build/xla_cache (the persistent compilation cache, as experiments/*.py use it).
"""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if SHARED_DATA.is_dir():
    os.environ.setdefault("JAXGEN_DATA_DIR", str(SHARED_DATA))
os.environ.setdefault("JAXGEN_TFDS_DIR", str(ROOT / "build" / "tfds"))
# One persistent XLA compilation cache for the whole suite (and the next run of it), so the
# many identical small programs of the smoke runs compile once; results never depend on it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / "build" / "xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


def pytest_collection_modifyitems(config, items):
    """Files with end-to-end (slow) tests first, each file's order kept: under
    `-n 2 --dist loadfile` a long file handed out last runs alone while the other worker
    idles, so the long ones start first and the short files fill in around them."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


def shared_data_dir() -> pathlib.Path:
    """Where the tests read real data: $JAXGEN_DATA_DIR, else ../shared/data."""
    return pathlib.Path(os.environ.get("JAXGEN_DATA_DIR") or SHARED_DATA)


def need_shared_data(*names: str) -> list[pathlib.Path]:
    """The paths of files (or folders) under the shared data folder. A missing one skips the
    test on a developer machine; under CI=true (which CI sets) it fails the test with one line
    naming the file, so that a CI run without the data cannot pass by skipping."""
    paths = [shared_data_dir() / name for name in names]
    for path in paths:
        if not path.exists():
            message = f"missing {path} (this test reads ../shared/data, or $JAXGEN_DATA_DIR)"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
    return paths


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "shared_data(*names): the test reads these files of ../shared/data"
    )


def pytest_runtest_setup(item):
    for marker in item.iter_markers("shared_data"):
        need_shared_data(*marker.args)
