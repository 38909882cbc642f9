"""Reading IDX files, the raw format of MNIST and Fashion-MNIST, with integrity checks.

An IDX file is two zero bytes, a type code (0x08 = uint8, the only type these datasets use), the
number of dimensions, each dimension as a big-endian uint32, then the data in C order; the files
are usually gzipped. Every problem (unreadable file, bad gzip, truncated data, bad magic, wrong
shape, MD5 mismatch, more data than the header declares) is a DataError whose one-line message
starts with the file's path. The header is read first and bounds how much is decompressed, so a
gzip bomb stops after the size the header declares.

The MD5 is taken over the *decompressed* bytes: Debian re-gzipped Fashion-MNIST, so the digests
of the .gz files differ between sources while the IDX content is identical. This module knows
nothing about TFDS or where files come from (see raw.py).
"""

import gzip
import hashlib
import os
import zlib
from collections.abc import Sequence

import numpy as np

from jaxgen.data.errors import DataError

_UINT8 = 0x08


def read_bytes(path: str | os.PathLike, max_size: int | None = None) -> bytes:
    """Returns the file's content, gunzipped if the name ends in .gz.

    With `max_size`, at most max_size + 1 bytes are ever decompressed (a gzip bomb stops
    there); the caller decides what a longer content means.
    """
    path = os.fspath(path)
    try:
        with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
            return f.read() if max_size is None else f.read(max_size + 1)
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file") from e
    except EOFError as e:  # gzip stream cut short
        raise DataError(f"{path}: truncated gzip file ({e})") from e
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def _header(data: bytes, *, name: str) -> tuple[int, tuple[int, ...]]:
    """(header size, shape) of IDX bytes that start with at least the whole header."""
    if len(data) < 4:
        raise DataError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: bad IDX magic {data[:4].hex()} (expected 0000 08 nn)")
    if data[2] != _UINT8:
        raise DataError(f"{name}: IDX type code 0x{data[2]:02x} is not uint8 (0x08)")
    ndim = data[3]
    header_size = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_size:
        raise DataError(f"{name}: bad IDX header ({ndim} dimensions, {len(data)} bytes)")
    return header_size, tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))


def parse(data: bytes, *, name: str) -> np.ndarray:
    """Parses IDX bytes into a read-only uint8 array; `name` (the file) goes in errors."""
    header_size, shape = _header(data, name=name)
    expected = header_size + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(
            f"{name}: IDX header says shape {shape} ({expected} bytes) but the file has "
            f"{len(data)} bytes (truncated or corrupt)"
        )
    return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


def read_idx(
    path: str | os.PathLike,
    *,
    md5: str | None = None,
    shape: Sequence[int | None] | None = None,
) -> np.ndarray:
    """Reads an IDX file (plain or .gz) into a uint8 array, checking it on the way.

    Args:
      path: the file.
      md5: expected hex MD5 of the decompressed bytes; None skips the check.
      shape: expected shape; None entries match any size.

    Returns:
      A read-only uint8 array of the file's shape.
    """
    name = os.fspath(path)
    # The header first (at most 4 + 4 * 255 bytes): its dimensions bound how much the rest
    # may decompress to, so a small .gz that inflates without end is stopped early.
    header_size, header_shape = _header(read_bytes(path, max_size=1023), name=name)
    if shape is not None and (
        len(shape) != len(header_shape)
        or any(s is not None and s != a for s, a in zip(shape, header_shape, strict=False))
    ):
        raise DataError(f"{name}: shape {header_shape}, expected {tuple(shape)}")
    size = header_size + int(np.prod(header_shape))
    data = read_bytes(path, max_size=size)
    if len(data) > size:
        raise DataError(
            f"{name}: decompresses to more than the {size} bytes its IDX header declares "
            f"(shape {header_shape}); corrupt, or not an IDX file"
        )
    array = parse(data, name=name)
    if md5 is not None:
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if digest != md5:
            raise DataError(
                f"{name}: MD5 of the decompressed data is {digest}, expected {md5} (corrupt or "
                "a different file)"
            )
    return array
