"""Threefry unrolled on CPU while init lowers: shorter init compiles, the same bits.

Threefry is jax.random's default generator. On CPU jax lowers each threefry2x32 call to a
`while` loop of 5 iterations of 4 rounds, and XLA's CPU backend compiles every loop body and
condition as kernels of their own. Flax's per-parameter initialisers make many calls: the
latent diffusion smoke U-Net's init has 141 loops and 642 fusions. Lowered unrolled, as jax
does on every other backend, a call is the same 20 rounds and gives the same bits in one
fusion.

Only init gets it (`Placement.compile_init` lowers inside `unrolled_threefry()`; the rule
reads a per-thread flag), and only for calls of at least 64 pairs of words: the
initialisers' draws. That init then has 71 loops and 292 fusions and compiles in 5.85 s
against 9.42 s; the autoencoder smoke's in 2.30 s against 6.53 s (`python -m
benchmarks.init_compile`, benchmarks/README.md). Key splits and fold-ins of a few words stay rolled: unrolled, each
is a kernel of ~450 instructions with its own constants, and the DDPM smoke init compiled
in 4.0-4.5 s against 2.8-3.2 s. In a train step the unrolled hash is fused into every
consumer of its bits, so the forward and backward passes of each dropout mask each compile
it: the seq2seq smoke step compiled in 5.2-5.6 s unrolled against 3.2-3.6 s rolled.
tests/test_lowering.py checks Random123's known answers in both lowerings, and that Flax
inits are bit-equal.

This uses jax's private API (jax._src). Where that has moved, jax's own rule stays and
jaxgen logs that it did. GPU and TPU lowerings are left alone.
"""

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("jaxgen")
_state = threading.local()
UNROLL_MIN_WORDS = 64  # smaller calls (key splits and fold-ins) stay rolled


def _install() -> bool:
    """Register, for CPU, a threefry2x32 rule that lowers jax's CPU rule (rolled) unless the
    lowering thread is inside unrolled_threefry() and the call hashes at least
    UNROLL_MIN_WORDS pairs; False where jax's API has moved."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as threefry

        unrolled = threefry._threefry2x32_lowering_rule
        rolled = threefry._threefry2x32_cpu_lowering_rule

        def rule(ctx, *args, **kwargs):
            wanted = getattr(_state, "unrolled", False)
            if wanted:  # a symbolic (shape-polymorphic) size stays rolled
                words = math.prod(ctx.avals_out[0].shape)
                wanted = isinstance(words, int) and words >= UNROLL_MIN_WORDS
            return (unrolled if wanted else rolled)(ctx, *args, **kwargs)

        mlir.register_lowering(threefry.threefry2x32_p, rule, platform="cpu")
    except (ImportError, AttributeError, TypeError) as error:
        log.info("threefry keeps jax's CPU lowering (%r)", error)
        return False
    return True


INSTALLED = _install()


@contextlib.contextmanager
def unrolled_threefry() -> Iterator[None]:
    """Programs lowered on this thread inside lower threefry unrolled on CPU."""
    before = getattr(_state, "unrolled", False)
    _state.unrolled = True
    try:
        yield
    finally:
        _state.unrolled = before


class UnrolledThreefry:
    """A jitted function whose lowering (first call, or lower()) is inside unrolled_threefry()."""

    def __init__(self, jitted: Callable):
        self._jitted = jitted

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with unrolled_threefry():
            return self._jitted(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        with unrolled_threefry():
            return self._jitted.lower(*args, **kwargs)
