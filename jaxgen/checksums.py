"""Checksums of a train state: the same numbers whatever the sharding, computed on device.

jaxgen/checkpoint.py stores them with every checkpoint and verifies them on
restore. They guard against damage (bit rot, a bad disk, a stray write), not
against an adversary: each array gets two 32-bit sums over its bits.
"""

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class ChecksumError(ValueError):
    """A restored array or data state differs from what was saved."""


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's finalizer: every input bit affects every output bit (uint32 in, out)."""
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as a flat uint32 vector: one word per element (two for 64-bit types)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size < 4:
        x = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size])
        return x.reshape(-1).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)


def leaf_checksum(x: jax.Array) -> jax.Array:
    """Two 32-bit sums over the bits of `x`, the same however `x` is sharded.

    With w_i the i-th word and all arithmetic mod 2**32:
      s0 = sum_i w_i * (2i + 1)            (odd weights: any one changed word changes s0)
      s1 = sum_i fmix32(w_i ^ fmix32(i))   (non-linear: catches what cancels in s0)
    Integer sums do not depend on the reduction order, so sharded and replicated copies of
    an array, on any number of devices, give the same two numbers.
    """
    words = _words(jnp.asarray(x))
    index = jnp.arange(words.shape[0], dtype=jnp.uint32)
    s0 = jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)
    s1 = jnp.sum(_fmix32(words ^ _fmix32(index)), dtype=jnp.uint32)
    return jnp.stack([s0, s1])


_tree_checksums = jax.jit(lambda leaves: [leaf_checksum(x) for x in leaves])


def _path_name(path) -> str:
    """`params/dense/kernel` for any mix of dicts, dataclasses and sequences."""
    names = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                names.append(str(getattr(key, attribute)))
                break
    return "/".join(names)


def _data_digest(data_state: Any) -> str:
    return hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).hexdigest()


def checksums(state: PyTree, data_state: Any) -> dict:
    """{"state": {path: [dtype, shape, s0, s1]}, "data": sha256 of the data state's JSON}."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    sums = jax.device_get(_tree_checksums([x for _, x in leaves]))
    table = {
        _path_name(path): [str(jnp.asarray(x).dtype), list(np.shape(x)), int(s[0]), int(s[1])]
        for (path, x), s in zip(leaves, sums, strict=True)
    }
    return {"state": table, "data": _data_digest(data_state)}


def verify(state: PyTree, data_state: Any, saved: dict) -> None:
    """Raise ChecksumError naming the first array (or the data state) that changed.

    Arrays restored to another dtype than they were saved in (a cast on restore) are not
    compared; every other saved array must be present and equal.
    """
    if data_state is not None and _data_digest(data_state) != saved["data"]:
        raise ChecksumError("checksum mismatch in the data state")
    actual = checksums(state, data_state)["state"]
    for name, (dtype, shape, *sums) in saved["state"].items():
        if name not in actual:
            raise ChecksumError(f"array {name} is missing")
        got_dtype, got_shape, *got = actual[name]
        if got_dtype == dtype and (got_shape != shape or got != sums):
            raise ChecksumError(f"checksum mismatch in array {name}")
