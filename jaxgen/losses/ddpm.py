"""DDPM losses: the (weighted) denoising regression and the variational bound in bits/dim.

Pure functions of arrays. The train step draws t and ε per example, runs the model on
x_t = q_sample(x_0, t, ε) and passes
  output [B, H, W, C]  the network output (what the parameterisation predicts),
  target [B, H, W, C]  the parameterisation's target for (x_0, t, ε),
  snr    [B]           ᾱ_t / (1 - ᾱ_t) of each example's t.
A weighting is a registered function of the SNR (and the parameterisation), chosen by
config.loss.kw.weighting; "none" on the ε target is Ho et al.'s L_simple.

The variational bound (Ho et al. 2020 eq. 5; Nichol & Dhariwal 2021 sec. 2) is
  L = L_T + Σ_{t>1} L_{t-1} + L_0,
  L_T     = KL(q(x_T | x_0) || N(0, I)),
  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),
  L_0     = -log p(x_0 | x_1) under a discretised Gaussian decoder on 256 bins;
`normal_kl` and `discretised_gaussian_log_likelihood` are its pieces, in nats.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxgen.registry import Registry

LOSSES = Registry("loss", "config.loss.name")
WEIGHTINGS = Registry("weighting", "config.loss.kw.weighting")


@WEIGHTINGS.register("none")
def no_weighting(snr: jax.Array, parameterisation: str) -> jax.Array:
    """Every t counts the same in the target's own units (L_simple for ε)."""
    return jnp.ones_like(snr)


@WEIGHTINGS.register("min_snr")
def min_snr_weighting(snr: jax.Array, parameterisation: str, gamma: float = 5.0) -> jax.Array:
    """Min-SNR-γ (Hang et al. 2023): the x_0-MSE weight min(SNR, γ), in the target's units.

    ‖x̂_0 - x_0‖² = ‖ε̂ - ε‖² / SNR = ‖v̂ - v‖² / (SNR + 1), hence the divisions.
    """
    clipped = jnp.minimum(snr, gamma)
    if parameterisation == "eps":
        return clipped / snr
    if parameterisation == "v":
        return clipped / (snr + 1.0)
    return clipped


@WEIGHTINGS.register("snr")
def snr_weighting(snr: jax.Array, parameterisation: str) -> jax.Array:
    """SNR-weighted x_0-MSE, i.e. the ε-MSE ‖ε̂ - ε‖² whatever the network predicts."""
    if parameterisation == "eps":
        return jnp.ones_like(snr)
    if parameterisation == "v":
        return snr / (snr + 1.0)
    return snr


@LOSSES.register("mse")
def mse_loss(
    output: jax.Array,
    target: jax.Array,
    snr: jax.Array,
    *,
    parameterisation: str,
    weighting: str = "none",
    weighting_kw: dict | None = None,
) -> tuple[jax.Array, dict]:
    """E_t,ε[w(SNR_t) · mean_pixels (output - target)²] (Ho et al. 2020 eq. 14 for ε, w = 1)."""
    weight_fn: Callable = WEIGHTINGS.get(weighting)
    per_example = jnp.mean(jnp.square(output - target), axis=(1, 2, 3))  # [B]
    weight = weight_fn(snr, parameterisation, **(weighting_kw or {}))
    loss = jnp.mean(weight * per_example)
    return loss, {"mse": jnp.mean(per_example)}


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
    )


def _standard_normal_cdf(x: jax.Array) -> jax.Array:
    # The tanh approximation of Ho et al.'s code would make bits/dim incomparable by ~1e-3.
    return 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def discretised_gaussian_log_likelihood(
    x: jax.Array, mean: jax.Array, log_scale: jax.Array
) -> jax.Array:
    """log P(x) elementwise for x on the 256 levels of [-1, 1] (Ho et al. 2020 eq. 13).

    Each level gets the Gaussian mass of its bin of width 2/255, the edge levels
    everything beyond them; logs are floored at 1e-12 as in Ho et al.'s code.
    """
    centred = x - mean
    inv_scale = jnp.exp(-log_scale)
    cdf_plus = _standard_normal_cdf(inv_scale * (centred + 1.0 / 255.0))
    cdf_minus = _standard_normal_cdf(inv_scale * (centred - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_minus = jnp.log(jnp.maximum(1.0 - cdf_minus, 1e-12))
    log_bin = jnp.log(jnp.maximum(cdf_plus - cdf_minus, 1e-12))
    return jnp.where(
        x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_minus, log_bin)
    )


def vb_term(
    x0: jax.Array,
    t: jax.Array,
    true_mean: jax.Array,
    true_logvar: jax.Array,
    model_mean: jax.Array,
    model_logvar: jax.Array,
) -> jax.Array:
    """L_{t-1} per example in nats [B]: the KL for t > 0, the decoder NLL L_0 for t = 0."""
    kl = jnp.sum(normal_kl(true_mean, true_logvar, model_mean, model_logvar), axis=(1, 2, 3))
    decoder_nll = -jnp.sum(
        discretised_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar), axis=(1, 2, 3)
    )
    return jnp.where(t == 0, decoder_nll, kl)


def prior_kl(mean: jax.Array, variance: jax.Array) -> jax.Array:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per example in nats [B]."""
    logvar = jnp.log(variance) * jnp.ones_like(mean)
    return jnp.sum(normal_kl(mean, logvar, 0.0, 0.0), axis=(1, 2, 3))
