"""Losses of the KL autoencoder (Rombach et al. 2022, "High-Resolution Image Synthesis with
Latent Diffusion Models", sec. 3 and appendix G): reconstruction + a small KL weight.

    loss = mean_b [ sum_pixels d(x, x_hat) ] + kl_weight * mean_b [ KL(q(z|x) || N(0, I)) ]

with d = |x - x_hat| ("l1", LDM's choice) or (x - x_hat)^2 ("l2"), summed over pixels as LDM's
LPIPSWithDiscriminator does (its nll_loss = sum / batch), and KL summed over the latent's
elements; LDM's kl_weight is 1e-6. LDM's perceptual (LPIPS) and adversarial terms are left out.
Every function is pure: the train step runs the model and passes its outputs.
"""

import jax
import jax.numpy as jnp

from jaxgen.losses.vae import gaussian_kl
from jaxgen.registry import Registry

LOSSES = Registry("loss", "config.loss.name")


def latent_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) per example, summed over [h, w, c]: [B]."""
    return gaussian_kl(mean.reshape(mean.shape[0], -1), logvar.reshape(logvar.shape[0], -1))


def _kl_autoencoder_loss(image, reconstruction, mean, logvar, distance, kl_weight):
    recon = jnp.sum(distance(image - reconstruction), axis=(1, 2, 3))  # [B]
    kl = latent_kl(mean, logvar)  # [B]
    loss = jnp.mean(recon) + kl_weight * jnp.mean(kl)
    return loss, {"loss": loss, "recon": jnp.mean(recon), "kl": jnp.mean(kl)}


@LOSSES.register("l1")
def l1_kl(image, reconstruction, mean, logvar, *, kl_weight: float = 1e-6):
    """Summed absolute error + kl_weight * KL (LDM's first-stage loss without LPIPS/GAN)."""
    return _kl_autoencoder_loss(image, reconstruction, mean, logvar, jnp.abs, kl_weight)


@LOSSES.register("l2")
def l2_kl(image, reconstruction, mean, logvar, *, kl_weight: float = 1e-6):
    """Summed squared error + kl_weight * KL."""
    return _kl_autoencoder_loss(image, reconstruction, mean, logvar, jnp.square, kl_weight)
