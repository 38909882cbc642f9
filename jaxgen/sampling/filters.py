"""Logit filters for decoding: [N, V] float32 -> [N, V] float32, -inf for ruled-out tokens.

no_repeat_ngram (`banned_ngrams`, a mask to apply), top-k and top-p (nucleus sampling, Holtzman
et al. 2020); sampling/decoding.py applies them in its loops. Each is vectorised over rows and
traced inside the decode loop, with its sizes static. Also `top_k`, lax.top_k for beam search's
few best of many candidates, without the full sort that XLA's CPU backend makes of it.
"""

import jax
import jax.numpy as jnp


def banned_ngrams(
    tokens: jax.Array, start: jax.Array, slot: jax.Array, n: int, vocab_size: int
) -> jax.Array:
    """[N, V] bool: the tokens that would complete an n-gram already in tokens[b, start[b]:slot].

    tokens [N, S] is the fixed buffer, start [N] the first real slot of each row, slot (traced)
    the slot about to be written. Vectorised over all n-gram start slots j: the n - 1 tokens
    from j must equal the last n - 1 before `slot`; then tokens[j + n - 1] is banned.
    """
    num_rows, length = tokens.shape
    windows = length - n + 1
    j = jnp.arange(windows)[None]  # [1, W], the first slot of each n-gram
    match = (j >= start[:, None]) & (j + n - 1 < slot)  # [N, W], n-grams inside the row
    if n > 1:
        # Clamped when the row has fewer than n - 1 tokens; such rows ban nothing.
        last = jax.lax.dynamic_slice_in_dim(tokens, slot - (n - 1), n - 1, axis=1)  # [N, n-1]
        match &= (slot - (n - 1) >= start)[:, None]
        for k in range(n - 1):
            match &= tokens[:, k : k + windows] == last[:, k : k + 1]
    following = tokens[:, n - 1 :]  # [N, W], the token that completes each n-gram
    rows = jnp.arange(num_rows)[:, None]
    counts = (
        jnp.zeros((num_rows, vocab_size), jnp.int32)
        .at[rows, following]
        .add(match.astype(jnp.int32))
    )
    return counts > 0


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits of each row (more on ties)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][:, -1:]  # [N, 1]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Keeps the smallest set of most likely tokens whose probability is >= p, and the top one."""
    if p >= 1.0:
        return logits
    descending = -jnp.sort(-logits, axis=-1)  # [N, V]
    probs = jax.nn.softmax(descending, axis=-1)
    above = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked higher
    cutoff = jnp.min(jnp.where(above < p, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """jax.lax.top_k of float32 x [..., N] (values and indices [..., k], the largest first, the
    lower index first among equal values), by k argmax passes over sortable integer keys.

    Inside a loop, XLA's CPU backend lowers a lax.top_k whose indices are used to a stable sort
    of the whole row (openxla/xla issue 25487): for beam search's 2K best of K * V candidates
    (K = 4, V = 4000, 64 prompts) that sort was ~0.3 s of each step on 2 cores; k passes over
    the row cost a few ms. Meant for small k. NaN counts as the largest, as in lax.top_k.
    """
    # The float's bits as an int32 that orders as the float does (-0.0 is first made +0.0).
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32) + 0.0, jnp.int32)
    keys = jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # -inf: -2**31 + 2**23 - 1
    taken = jnp.iinfo(jnp.int32).min  # below every float's key
    positions = jnp.arange(x.shape[-1])
    indices = []
    for _ in range(k):
        index = jnp.argmax(keys, axis=-1)  # [...], the first of the largest
        indices.append(index)
        keys = jnp.where(positions == index[..., None], taken, keys)
    indices = jnp.stack(indices, axis=-1).astype(jnp.int32)  # [..., k]
    return jnp.take_along_axis(x, indices, axis=-1), indices
