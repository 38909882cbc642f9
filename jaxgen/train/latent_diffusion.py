"""Latent diffusion with text (Stable Diffusion's recipe): the pure pieces of its step and sampler.

Stage 3 of text-to-image, after the autoencoder (train/autoencoder.py) and CLIP (train/clip.py):
  latents   z_0 = scale_factor * (mean + σ ε) of the frozen autoencoder's posterior (SD samples
            latent_dist and multiplies by 0.18215; ours is the run's latent_scale/scale_factor);
  text      the frozen CLIP text tower's hidden states [B, L, width] of the caption, after caption
            dropout: each caption is replaced by the empty prompt (all PAD_ID) with probability
            `rate` (10%), so one network is both p(z|text) and p(z) (Ho & Salimans 2022);
  loss      jaxgen.losses.ddpm's registered losses on z_t = q_sample(z_0, t, ε): the same
            diffusion maths (jaxgen.diffusion) as the pixel DDPM, no second copy;
  sampling  jaxgen.sampling.ddpm's DDIM/DDPM on sampling.ddpm.guided_on(unet, text, empty text,
            guidance_scale), then the autoencoder's decoder on z / scale_factor. guidance_scale
            follows diffusers' convention: 0 the unconditional model, 1 the conditional one,
            > 1 guided.
Not here yet: the Family registration that loads the autoencoder and CLIP
runs named by config.model.autoencoder / config.model.text_encoder (checking they exist and match
the data), configs/latent_diffusion/, experiments.sample's prompts and generate().
"""

import jax
import jax.numpy as jnp

from jaxgen import diffusion
from jaxgen.models.clip import PAD_ID
from jaxgen.parallel import example_rngs
from jaxgen.sampling import ddpm as sampling


def drop_captions(captions: jax.Array, rng: jax.Array, rate: float, axis_name=None) -> jax.Array:
    """int32 [B, L]: each caption replaced by the empty prompt with probability `rate`, drawn
    per example from its index in the global batch (device-count independent)."""
    keys = example_rngs(rng, captions.shape[0], axis_name)
    dropped = jax.vmap(lambda key: jax.random.bernoulli(key, rate))(keys)  # [B]
    return jnp.where(dropped[:, None], PAD_ID, captions)


def encode_latents(ae_params, image, noise, *, autoencoder, scale_factor: float) -> jax.Array:
    """scale_factor * a posterior draw [B, h, w, c] of the frozen autoencoder (noise ε [B, h, w, c])."""
    mean, logvar = autoencoder.apply({"params": ae_params}, image, method=autoencoder.encode)
    z = mean + jnp.exp(0.5 * logvar) * noise
    return jax.lax.stop_gradient(scale_factor * z)


def encode_text(clip_params, captions, *, clip) -> jax.Array:
    """The frozen text tower's hidden states [B, L, width]: what the U-Net cross-attends to."""
    _, features = clip.apply({"params": clip_params}, captions, method=clip.encode_text)
    return jax.lax.stop_gradient(features.hidden)


def denoise_loss(params, batch, *, unet, schedule, parameterisation, loss_fn, loss_kw):
    """(loss, metrics) of the U-Net on {"latents", "context", "t", "noise"} (one t, ε per
    example): `loss_fn` (losses.ddpm.LOSSES) of its output against the parameterisation's target."""
    z0, t, noise = batch["latents"], batch["t"], batch["noise"]
    zt = diffusion.q_sample(schedule, z0, t, noise)
    output = unet.apply({"params": params}, zt, t, batch["context"])
    target = diffusion.PARAMETERISATIONS.get(parameterisation).target(schedule, z0, t, noise)
    snr = diffusion.snr(schedule, t)
    return loss_fn(output, target, snr, parameterisation=parameterisation, **loss_kw)


def sample_latents(params, context, null_context, noise, rng, *, unet, schedule, settings):
    """Latents [B, h, w, c] for text encodings `context` [B, L, D] under classifier-free guidance
    with scale settings.guidance_scale; settings.sampler "ddim" (num_inference_steps, eta) or
    "ddpm". No clipping: latents are not confined to [-1, 1] (SD's clip_sample=False)."""

    def apply(z, t, text):
        return unet.apply({"params": params}, z, t, text)

    if settings.guidance_scale == 1.0:
        denoise = sampling.conditional(apply, context)
    else:
        denoise = sampling.guided_on(apply, context, null_context, settings.guidance_scale)
    if settings.sampler == "ddim":
        return sampling.ddim(
            denoise,
            schedule,
            settings.parameterisation,
            noise,
            rng,
            num_inference_steps=settings.num_inference_steps,
            eta=settings.eta,
            clip=False,
        )
    return sampling.ddpm(denoise, schedule, settings.parameterisation, noise, rng, clip=False)


def decode_latents(ae_params, latents, *, autoencoder, scale_factor: float) -> jax.Array:
    """Images [B, H, W, C] in [-1, 1] from latents scaled by scale_factor."""
    images = autoencoder.apply(
        {"params": ae_params}, latents / scale_factor, method=autoencoder.decode
    )
    return jnp.clip(images, -1.0, 1.0)
