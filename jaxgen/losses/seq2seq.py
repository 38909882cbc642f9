"""Seq2seq losses: label-smoothed cross entropy over the non-padding target tokens.

The train step runs the model on (source, target[:, :-1]) and passes
  logits  [B, T, V] float32   the next-token logits at every target position,
  targets [B, T] int32        target[:, 1:],
  weights [B, T] float32      1 for a real target token (eos included), 0 for padding.
Values are in nats per real token: sums over the batch's real tokens divided by their count.
"""

import jax
import jax.numpy as jnp

from jaxgen.losses.gpt import token_nll
from jaxgen.registry import Registry

LOSSES = Registry("loss", "config.loss.name")


@LOSSES.register("cross_entropy")
def cross_entropy(logits, targets, weights, label_smoothing: float = 0.1):
    """Label-smoothed token cross entropy (Vaswani et al. 2017, sec. 5.4, eps_ls = 0.1).

    The target distribution is (1 - s) one-hot + s uniform over the V ids (Szegedy et al.
    2016): per token, loss = (1 - s) NLL + s mean_v(-log p_v). Returns (mean over real tokens,
    {"nll": the unsmoothed mean NLL, "accuracy": the argmax's share of real tokens}).
    """
    nll = token_nll(logits, targets)  # [B, T]
    loss = nll
    if label_smoothing:
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        loss = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    count = jnp.maximum(jnp.sum(weights), 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    metrics = {
        "nll": jnp.sum(nll * weights) / count,
        "accuracy": jnp.sum(correct * weights) / count,
    }
    return jnp.sum(loss * weights) / count, metrics
