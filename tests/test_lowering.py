"""jaxgen/lowering.py: init lowers threefry unrolled on CPU: Threefry's bits, with no loops."""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.random import threefry2x32 as threefry

from jaxgen import lowering, parallel
from jaxgen.config import base_config

MASK = 0xFFFFFFFF
ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)


def threefry2x32_numpy(key, x0, x1):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011, Random123's threefry.h), on uint64
    arrays holding 32-bit words."""
    ks = [key[0], key[1], key[0] ^ key[1] ^ 0x1BD11BDA]
    x0, x1 = (x0 + ks[0]) & MASK, (x1 + ks[1]) & MASK
    for r in range(20):
        rotation = ROTATIONS[r % 8]
        x0 = (x0 + x1) & MASK
        x1 = ((x1 << rotation) | (x1 >> (32 - rotation))) & MASK
        x1 = x1 ^ x0
        if r % 4 == 3:  # key injection every 4 rounds
            i = r // 4 + 1
            x0 = (x0 + ks[i % 3]) & MASK
            x1 = (x1 + ks[(i + 1) % 3] + i) & MASK
    return x0, x1


def jax_threefry(key, x0, x1, unrolled):
    """jax's threefry_2x32 of the pairs (x0[i], x1[i]) under a new jit, lowered rolled or
    unrolled (at least UNROLL_MIN_WORDS pairs) -> two uint64 arrays."""
    fn = jax.jit(lambda k0, k1, c: threefry.threefry_2x32((k0, k1), c))
    args = np.uint32(key[0]), np.uint32(key[1]), np.concatenate([x0, x1]).astype(np.uint32)
    with lowering.unrolled_threefry() if unrolled else contextlib.nullcontext():
        compiled = fn.lower(*args).compile()
    assert (" while(" in compiled.as_text()) != unrolled
    return np.split(np.asarray(compiled(*args)).astype(np.uint64), 2)


# Random123's kat_vectors for threefry2x32_20: (key, counter, result).
KNOWN = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("unrolled", [True, False])
@pytest.mark.parametrize("key,counter,expected", KNOWN)
def test_known_answers(key, counter, expected, unrolled):
    assert lowering.INSTALLED
    pairs = lowering.UNROLL_MIN_WORDS  # the known pair first, then others
    x0, x1 = np.arange(pairs, dtype=np.uint64), np.arange(pairs, dtype=np.uint64) + 7
    x0[0], x1[0] = counter
    y0, y1 = jax_threefry(key, x0, x1, unrolled)
    assert (int(y0[0]), int(y1[0])) == expected
    numpy = threefry2x32_numpy(key, x0, x1)
    assert (int(numpy[0][0]), int(numpy[1][0])) == expected
    np.testing.assert_array_equal(y0, numpy[0])
    np.testing.assert_array_equal(y1, numpy[1])


def test_many_counters_match_numpy():
    rng = np.random.default_rng(0)
    for _ in range(4):
        key = tuple(int(k) for k in rng.integers(0, 2**32, 2, dtype=np.uint64))
        x0, x1 = rng.integers(0, 2**32, (2, 513), dtype=np.uint64)
        for got, expected in zip(
            jax_threefry(key, x0, x1, unrolled=True), threefry2x32_numpy(key, x0, x1), strict=True
        ):
            np.testing.assert_array_equal(got, expected)


def test_small_calls_stay_rolled():
    """Key splits and fold-ins (a few words) keep jax's CPU rule even inside the context."""
    fn = jax.jit(lambda key: jax.random.split(key, 4))
    with lowering.unrolled_threefry():
        hlo = fn.lower(jax.random.key(0)).compile().as_text()
    assert " while(" in hlo


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.LayerNorm()(nn.Dense(16, kernel_init=nn.initializers.truncated_normal(0.02))(x))
        return nn.Embed(10, 4)(jnp.zeros((2,), jnp.int32)), nn.Dense(3)(x)


def test_init_compiles_fewer_loops_and_jax_cpu_lowerings_bits():
    """compile_init unrolls the initialisers' draws and gives the params of jax's CPU rule."""
    x = jnp.ones((2, 5, 5, 3))
    init = parallel.Placement(base_config().mesh).compile_init(Net().init)
    unrolled = init.lower(jax.random.key(3), x).compile()
    rolled = jax.jit(Net().init).lower(jax.random.key(3), x).compile()
    loops = [hlo.count(" while(") for hlo in (unrolled.as_text(), rolled.as_text())]
    assert loops[0] < loops[1]  # the initialisers' draws unrolled
    params, expected = init(jax.random.key(3), x), rolled(jax.random.key(3), x)
    assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(expected)) == 9
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
