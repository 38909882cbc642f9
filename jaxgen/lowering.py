"""Lowering rules jaxgen sets for XLA's CPU backend: shorter compiles, the same bits.

Threefry, jax.random's default generator. On CPU jax lowers each threefry2x32 call to a
`while` loop of 5 iterations of 4 rounds, and XLA's CPU backend compiles every loop body
and condition as kernels of their own. Flax's per-parameter initialisers make many
calls: the latent diffusion smoke U-Net's init has 141 such loops and 642 fusions. jaxgen
lowers threefry on CPU unrolled, as jax does on every other backend. That is the same 20
rounds and the same bits, with no loops and 72 fusions; that init compiles in ~0.7x the
time (benchmarks/README.md). tests/test_lowering.py checks Random123's known answers and
that Flax inits are bit-equal under both rules.

This is jax's private API (jax._src). Where it has moved, jaxgen keeps jax's own rule and
logs that it did. GPU and TPU lowerings are left alone.
"""

import logging

log = logging.getLogger("jaxgen")


def unroll_threefry_on_cpu() -> bool:
    """Lower threefry2x32 on CPU as jax does elsewhere (unrolled); False where jax's private
    lowering API has moved (jax's CPU rule stays)."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as threefry

        rule, primitive = threefry._threefry2x32_lowering_rule, threefry.threefry2x32_p
        mlir.register_lowering(primitive, rule, platform="cpu", inline=True)
    except (ImportError, AttributeError, TypeError) as error:
        log.info("threefry keeps jax's CPU lowering (%r)", error)
        return False
    return True


def roll_threefry_on_cpu() -> bool:
    """jax's own CPU lowering of threefry2x32 (rolled loops) back; for comparisons."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as threefry

        rule, primitive = threefry._threefry2x32_cpu_lowering_rule, threefry.threefry2x32_p
        mlir.register_lowering(primitive, rule, platform="cpu")
    except (ImportError, AttributeError, TypeError):
        return False
    return True
