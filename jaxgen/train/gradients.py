"""Gradients averaged over microbatches (accumulation) and, per device (pmap, or the CPU's
per-device jit step: parallel.Placement), over devices."""

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


def split_microbatches(batch: PyTree, num: int) -> PyTree:
    """[B, ...] -> [num, B / num, ...]; microbatch m holds examples m, m + num, ...

    Interleaving keeps every microbatch spread evenly over the devices that
    hold contiguous slices of a data-sharded batch, so no data moves.
    """
    return jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((x.shape[0] // num, num) + x.shape[1:]), 0, 1), batch
    )


def pmean_flat(tree: PyTree, axis_name: str) -> PyTree:
    """jax.lax.pmean of every leaf, as one all-reduce of a flat vector per dtype.

    The same numbers as a pmean per leaf. XLA's CPU collectives meet once per buffer of an
    all-reduce, so the ~30 leaves of a small GPT cost ~4x a single vector of the same size
    (benchmarks/README.md); on GPU/TPU one buffer is no slower.
    """
    leaves, treedef = jax.tree.flatten(tree)
    out = [None] * len(leaves)
    for dtype in dict.fromkeys(jnp.result_type(leaf) for leaf in leaves):
        group = [i for i, leaf in enumerate(leaves) if jnp.result_type(leaf) == dtype]
        flat = jnp.concatenate([jnp.ravel(leaves[i]) for i in group])
        flat = jax.lax.pmean(flat, axis_name)
        split = functools.partial(_split, shapes=[jnp.shape(leaves[i]) for i in group])
        # Both branches are the same split: the conditional, whose predicate XLA cannot
        # fold, only keeps the slices out of the fusions that read the leaves. Fused, each
        # slice's offset made every optimizer-update kernel of a leaf unique, and XLA's CPU
        # backend compiled one kernel per leaf instead of one per shape: the DDPM smoke step
        # compiled in 17 s instead of 11 s (benchmarks/README.md).
        parts = jax.lax.cond(jax.lax.axis_index(axis_name) >= 0, split, split, flat)
        for i, part in zip(group, parts, strict=True):
            out[i] = part
    return jax.tree.unflatten(treedef, out)


def _split(flat: jax.Array, shapes: list[tuple[int, ...]]) -> list[jax.Array]:
    """A flat vector -> consecutive leaves of these shapes."""
    ends = np.cumsum([math.prod(shape) for shape in shapes])
    parts = jnp.split(flat, ends[:-1])
    return [part.reshape(shape) for part, shape in zip(parts, shapes, strict=True)]


def grads_and_metrics(
    loss_fn: Callable[[PyTree, PyTree], tuple[jax.Array, dict]],
    params: PyTree,
    batch: PyTree,
    microbatches: int = 1,
    axis_name: str | None = None,
) -> tuple[PyTree, dict]:
    """Mean gradient and metrics of `loss_fn(params, batch) -> (loss, metrics)`.

    With k microbatches of equal size the mean of their gradients is the
    gradient of the mean loss over the whole batch: the same update as one big
    batch, with 1/k of the activation memory. Per device (axis_name set) each
    device differentiates its own loss and the gradients are averaged across
    devices (pmean_flat), as the per-device params are separate copies.
    """

    def grad_fn(mb):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb)
        return grads, {"loss": loss, **metrics}

    if microbatches == 1:
        grads, metrics = grad_fn(batch)
    else:

        def accumulate(carry, mb):
            return jax.tree.map(jnp.add, carry, grad_fn(mb)), None

        micro = split_microbatches(batch, microbatches)
        first = jax.tree.map(lambda x: x[0], micro)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, first))
        total, _ = jax.lax.scan(accumulate, zeros, micro)
        grads, metrics = jax.tree.map(lambda x: x / microbatches, total)
    if axis_name is not None:
        grads, metrics = pmean_flat((grads, metrics), axis_name)
    metrics["grad_norm"] = optax.global_norm(grads)
    return grads, metrics
