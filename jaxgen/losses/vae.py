"""VAE losses: the ELBO (and beta-VAE), the IWAE bound, and importance-sampled log p(x).

Every function is a pure function of arrays: the train step runs the model, draws
z = mean + exp(logvar / 2) * noise with K samples per example, and passes
  image  [B, H, W, C]     the data ({0, 1} for "bernoulli", [-1, 1] for "gaussian"),
  out    [B, K, H, W, C'] decoder outputs for each z (see jaxgen/models/vae.py),
  z      [B, K, D]        the latent samples,
  mean, logvar [B, D]     the parameters of q(z|x) = N(mean, diag(exp(logvar))).
Values are in nats. Sums and counts over eval batches are the caller's business.
"""

import math

import jax
import jax.numpy as jnp

from jaxgen.config import ConfigError
from jaxgen.registry import Registry

LOSSES = Registry("loss", "config.loss.name")

_LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)), summed over the last axis.

    KL = 1/2 sum_d (mean_d^2 + exp(logvar_d) - 1 - logvar_d)
    (Kingma & Welling 2014, "Auto-Encoding Variational Bayes", appendix B).
    """
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


def log_normal(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mean, diag(exp(logvar))) summed over the last axis (arguments broadcast).

    log N = -1/2 sum_d (log 2 pi + logvar_d + (z_d - mean_d)^2 exp(-logvar_d)).
    """
    return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar), axis=-1)


def log_likelihood(image: jax.Array, out: jax.Array, likelihood: str) -> jax.Array:
    """log p(image | z) summed over the last three (H, W, C) axes.

    `image` [..., H, W, C] broadcasts against `out` [..., H, W, C'] (e.g. [B, 1, ...]
    against [B, K, ...]).
      "bernoulli": out = logits l; log p = x log sigmoid(l) + (1 - x) log sigmoid(-l)
        = -(x softplus(-l) + (1 - x) softplus(l)), finite for any logit.
      "gaussian": out = concat(mu, s) over channels (C' = 2C), log-scale s;
        log p = -1/2 log 2 pi - s - 1/2 ((x - mu) exp(-s))^2.
    """
    if likelihood == "bernoulli":
        log_p = -(image * jax.nn.softplus(-out) + (1.0 - image) * jax.nn.softplus(out))
    elif likelihood == "gaussian":
        mu, log_scale = jnp.split(out, 2, axis=-1)
        log_p = -0.5 * _LOG_2PI - log_scale - 0.5 * jnp.square((image - mu) * jnp.exp(-log_scale))
    else:
        raise ConfigError(f"config.model.likelihood: unknown likelihood {likelihood!r}")
    return jnp.sum(log_p, axis=(-3, -2, -1))


def log_weights(
    image: jax.Array,
    out: jax.Array,
    z: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
    likelihood: str = "bernoulli",
) -> jax.Array:
    """Importance log-weights log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), [B, K].

    With p(z) = N(0, I); z [B, K, D] are draws from q. Each w_k is an unbiased estimate
    of p(x), so log (1/K) sum_k w_k is the IWAE bound (Burda et al. 2016).
    """
    log_px_z = log_likelihood(image[:, None], out, likelihood)  # [B, K]
    log_pz = log_normal(z, 0.0, 0.0)  # [B, K]
    log_qz = log_normal(z, mean[:, None], logvar[:, None])  # [B, K]
    return log_px_z + log_pz - log_qz


def importance_log_likelihood(
    image: jax.Array,
    out: jax.Array,
    z: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
    likelihood: str = "bernoulli",
) -> jax.Array:
    """Per-example estimate of log p(x) from K importance samples, [B].

    log p(x) ~= logsumexp_k(log w_k) - log K (Burda et al. 2016, "Importance Weighted
    Autoencoders", arXiv:1509.00519, eq. 8), a lower bound in expectation that tightens
    as K grows. For large K in chunks of size K_c, combine the chunk estimates e_i by
    logsumexp_i(e_i + log K_c) - log K.
    """
    weights = log_weights(image, out, z, mean, logvar, likelihood)  # [B, K]
    return jax.nn.logsumexp(weights, axis=1) - math.log(weights.shape[1])


def _recon_and_kl(image, out, mean, logvar, likelihood):
    """The per-example -E_q[log p(x|z)] (averaged over the K samples) and analytic KL."""
    recon = -jnp.mean(log_likelihood(image[:, None], out, likelihood), axis=1)  # [B]
    return recon, gaussian_kl(mean, logvar)  # [B], [B]


@LOSSES.register("elbo")
def elbo(
    image: jax.Array,
    out: jax.Array,
    z: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
    *,
    likelihood: str = "bernoulli",
    beta: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Negative evidence lower bound, averaged over the batch.

    loss = mean_b [ -(1/K) sum_k log p(x_b | z_bk) + beta KL(q(z|x_b) || p(z)) ]
    with the KL in closed form (Kingma & Welling 2014, arXiv:1312.6114, eq. 10);
    beta != 1 is the beta-VAE of Higgins et al. (2017, ICLR). `z` is unused: the
    samples enter only through `out`.

    Returns:
      (loss, metrics) with metrics "elbo" (the true ELBO, beta = 1), "kl" and "recon"
      (the negative log-likelihood term), all per-example means in nats.
    """
    del z
    recon, kl = _recon_and_kl(image, out, mean, logvar, likelihood)
    loss = jnp.mean(recon + beta * kl)
    metrics = {"elbo": jnp.mean(-recon - kl), "kl": jnp.mean(kl), "recon": jnp.mean(recon)}
    return loss, metrics


@LOSSES.register("iwae")
def iwae(
    image: jax.Array,
    out: jax.Array,
    z: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
    *,
    likelihood: str = "bernoulli",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Negative importance-weighted bound with the K samples on axis 1 of `z`.

    loss = -mean_b [ log (1/K) sum_k p(x_b|z_bk) p(z_bk) / q(z_bk|x_b) ]
    (Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders", eq. 8);
    K = 1 is the ELBO with a Monte-Carlo KL.

    Returns:
      (loss, metrics) with "iwae_bound", and "elbo", "kl", "recon" computed as in
      `elbo` (analytic KL) from the same samples, all per-example means in nats.
    """
    bound = importance_log_likelihood(image, out, z, mean, logvar, likelihood)  # [B]
    recon, kl = _recon_and_kl(image, out, mean, logvar, likelihood)
    metrics = {
        "iwae_bound": jnp.mean(bound),
        "elbo": jnp.mean(-recon - kl),
        "kl": jnp.mean(kl),
        "recon": jnp.mean(recon),
    }
    return -jnp.mean(bound), metrics
