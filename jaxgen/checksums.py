"""Checksums of a train state: the same numbers whatever the sharding or where they are computed.

jaxgen/checkpoint.py stores them with every checkpoint and verifies them on
restore. They guard against damage (bit rot, a bad disk, a stray write), not
against an adversary: each array gets two 32-bit sums over its bits.
"""

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


# Leaves are checksummed in groups of up to this many words: one small program per group
# (a program per leaf made the checksums of a DDPM state ~20% of a :smoke run's compile
# time), and a bounded temporary copy of the words on device.
_GROUP_WORDS = 1 << 26


def _group_checksums(leaves: list[jax.Array], offsets: jax.Array) -> jax.Array:
    """leaf_checksum of every leaf, [len(leaves), 2], from one flat vector of their words.

    offsets[k] is where leaf k's words start. They are an argument, not a constant, so XLA
    does not constant-fold the segment ids at compile time. Leaf k's s0 and s1 are sums over
    its segment with its own word index (the position minus offsets[k]): what
    leaf_checksum computes, in the same mod 2**32 arithmetic.
    """
    words = jnp.concatenate([_words(jnp.asarray(x)) for x in leaves])
    size = words.shape[0]
    segment = jnp.zeros(size, jnp.int32).at[offsets[1:]].add(1, mode="drop").cumsum()
    index = jnp.arange(size, dtype=jnp.uint32) - offsets.astype(jnp.uint32)[segment]
    sums = [
        jax.ops.segment_sum(
            terms, segment, num_segments=len(leaves), indices_are_sorted=True, mode="drop"
        )
        for terms in (words * (2 * index + 1), _fmix32(words ^ _fmix32(index)))
    ]
    return jnp.stack(sums, axis=1)


@functools.cache
def _compiled(mesh: Mesh | None) -> Callable:
    """_group_checksums under jit, its output replicated over `mesh` (the leaves' mesh), so
    every process of a multi-process job can read it."""
    replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    return jax.jit(_group_checksums, out_shardings=replicated)


@functools.cache
def _num_words_of(shape: tuple[int, ...], dtype: Any) -> int:
    return jax.eval_shape(_words, jax.ShapeDtypeStruct(shape, dtype)).shape[0]


def _num_words(x: Any) -> int:
    """The length of _words(x), without computing it."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return _num_words_of(tuple(x.shape), x.dtype)
    return jax.eval_shape(_words, x).shape[0]


# Leaves in host memory (NumPy, or jax arrays on this process's CPU devices) are summed by
# NumPy in chunks of this many words: no program to compile (a group's took 0.8-1.8 s at every
# cold CPU run's first checkpoint, and one more per earlier stage restored), no device copy.
_HOST_CHUNK_WORDS = 1 << 22


def _host_words(x: Any) -> np.ndarray | None:
    """_words(x) as NumPy, for x in host memory (NumPy, or a jax array on this process's CPU
    devices) with elements of at most 4 bytes; None for the others (summed on device)."""
    if isinstance(x, jax.Array):
        if not x.is_fully_addressable or any(d.platform != "cpu" for d in x.sharding.device_set):
            return None
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
    x = np.asarray(x)
    if x.dtype.itemsize > 4:
        return None
    if x.dtype == np.bool_:
        x = x.view(np.uint8)
    return x.reshape(-1).view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize])


def _host_checksum(words: np.ndarray) -> np.ndarray:
    """leaf_checksum's two sums of `words` in NumPy, chunk by chunk (uint32 arithmetic wraps)."""
    s0 = s1 = np.uint32(0)
    with np.errstate(over="ignore"):
        for start in range(0, words.size, _HOST_CHUNK_WORDS):
            chunk = words[start : start + _HOST_CHUNK_WORDS].astype(np.uint32)
            index = np.arange(start, start + chunk.size, dtype=np.uint32)
            s0 += np.sum(chunk * (2 * index + 1), dtype=np.uint32)
            s1 += np.sum(_fmix32(chunk ^ _fmix32(index)), dtype=np.uint32)
    return np.array([s0, s1], np.uint32)


def _tree_checksums(leaves: list[jax.Array]) -> list[np.ndarray]:
    """[s0, s1] of each leaf (leaf_checksum's numbers): leaves in host memory by NumPy, the
    others on their devices, in groups of leaves."""
    words = [_host_words(x) for x in leaves]
    on_device = iter(
        _device_checksums([x for x, w in zip(leaves, words, strict=True) if w is None])
    )
    return [next(on_device) if w is None else _host_checksum(w) for w in words]


def _device_checksums(leaves: list[jax.Array]) -> list[np.ndarray]:
    groups, total = [], 0
    for x in leaves:
        words = _num_words(x)
        if not groups or total + words > _GROUP_WORDS:  # a new ([leaves], [word counts])
            groups.append(([], []))
            total = 0
        groups[-1][0].append(x)
        groups[-1][1].append(words)
        total += words
    sharding = getattr(leaves[0], "sharding", None) if leaves else None
    compiled = _compiled(sharding.mesh if isinstance(sharding, NamedSharding) else None)
    sums = [compiled(group, np.cumsum([0, *sizes[:-1]], dtype=np.int32)) for group, sizes in groups]
    return [row for rows in jax.device_get(sums) for row in rows]


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
    sums = _tree_checksums([x for _, x in leaves])
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
