"""GPT losses: next-token cross-entropy (and its label-smoothed variant).

The train step runs the model on tokens[:, :-1] and passes
  logits  [B, T, V] float32   the next-token logits at every position,
  targets [B, T] int32        tokens[:, 1:].
Values are in nats per token. Sums and counts over eval batches are the caller's business;
`add_perplexity` turns their mean NLL into a perplexity (GPT's and seq2seq's eval finalize).
"""

import math

import jax
import jax.numpy as jnp

from jaxgen.registry import Registry

LOSSES = Registry("loss", "config.loss.name")

# exp(709.8) overflows a float64: a diverged run's perplexity stays finite (about 1e304).
MAX_LOG_PERPLEXITY = 700.0


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log softmax(logits)[target] per token, [B, T], computed in float32."""
    logits = logits.astype(jnp.float32)
    log_norm = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_norm - target_logit


def add_perplexity(means: dict[str, float]) -> dict[str, float]:
    """The "loss" eval's averages with the perplexity, exp(mean token NLL in nats), the
    exponent capped at MAX_LOG_PERPLEXITY. Host-side: a Steps.finalize function."""
    return means | {"perplexity": math.exp(min(means["loss"], MAX_LOG_PERPLEXITY))}


@LOSSES.register("cross_entropy")
def cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0):
    """Mean next-token negative log-likelihood (Radford et al. 2018, eq. 1).

    With label_smoothing = s the target distribution is (1 - s) one-hot + s uniform
    (Szegedy et al. 2016): loss = (1 - s) NLL + s mean_v(-log p_v). "nll" is always the
    unsmoothed NLL, the number comparable across runs.
    """
    nll = token_nll(logits, targets)  # [B, T]
    loss = nll
    if label_smoothing:
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        loss = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    return jnp.mean(loss), {"nll": jnp.mean(nll)}
