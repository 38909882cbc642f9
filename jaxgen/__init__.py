"""jaxgen: generative models in JAX/Flax, trained by pure steps on a device mesh."""

from jaxgen import lowering as _lowering

_lowering.unroll_threefry_on_cpu()  # the same bits, shorter CPU compiles (jaxgen/lowering.py)
