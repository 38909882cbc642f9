"""Bits/dim of a diffusion model from its variational bound (Ho et al. 2020, eq. 5).

A family eval step, not a registered evaluator: train/ddpm.py binds `bits_per_dim` to its
model and schedule and offers it as the eval type "bpd". Everything here is a pure function
of params and arrays; the per-term maths (the Gaussian KL and the discretised decoder
likelihood) lives in losses/ddpm.py, the diffusion maths in diffusion.py.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen import diffusion
from jaxgen.losses import ddpm as losses
from jaxgen.parallel import example_rngs

PyTree = Any


def vb_term(
    params: PyTree,
    image: jax.Array,
    label: jax.Array | None,
    t: jax.Array,
    noise: jax.Array,
    *,
    model: nn.Module,
    schedule: diffusion.Schedule,
    parameterisation: str,
    variance: str,
    clip: bool,
) -> jax.Array:
    """L_{t-1} in nats [B] at timesteps t [B] for x_t drawn with `noise` (t = 0: the decoder)."""
    to_x0_eps = diffusion.PARAMETERISATIONS.get(parameterisation).to_x0_eps
    xt = diffusion.q_sample(schedule, image, t, noise)
    output = model.apply({"params": params}, xt, t, label)
    x0, _ = to_x0_eps(schedule, xt, t, output)
    if clip:
        x0 = jnp.clip(x0, -1.0, 1.0)
    true_mean, _, true_logvar = diffusion.q_posterior(schedule, image, xt, t)
    model_mean, _, _ = diffusion.q_posterior(schedule, x0, xt, t)
    model_logvar = diffusion.model_log_variance(schedule, t, variance, image.ndim)
    return losses.vb_term(image, t, true_mean, true_logvar, model_mean, model_logvar)


def _fold(keys: jax.Array, index) -> jax.Array:
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, index)


def bits_per_dim(
    params: PyTree,
    batch: dict,
    rng: jax.Array,
    *,
    num_timesteps: int,
    conditional: bool,
    **term_kw,
) -> dict:
    """Sums of bits/dim of the bound L_T + Σ_{t>0} L_{t-1} + L_0 over the real examples.

    num_timesteps = 0 evaluates all T terms for every example. k > 0 evaluates the
    decoder term L_0 exactly (it is large and would make a sampled estimate noisy)
    and estimates the sum of the other T - 1 terms by (T - 1) times the mean of k
    terms drawn uniformly with replacement per example: unbiased, k + 1 model calls.
    Class-conditional models are scored on the example's own label (log p(x | y)).
    Draw j's noise comes from fold_in(example key, j); the k timesteps from
    fold_in(example key, k + 1 + j). term_kw: vb_term's keyword arguments.

    Returns sums of "bpd", "prior_bpd" (L_T) and "decoder_bpd" (L_0), and "count".
    """
    schedule = term_kw["schedule"]
    num_steps = schedule.num_steps
    subsample = 0 < num_timesteps < num_steps
    image, mask = batch["image"], batch["mask"]
    label = batch["label"] if conditional else None
    batch_size = image.shape[0]
    keys = example_rngs(rng, batch_size)

    def vb_at(t, index):
        noise = jax.vmap(lambda key: jax.random.normal(key, image.shape[1:]))(_fold(keys, index))
        return vb_term(params, image, label, t, noise, **term_kw)

    def term(total, index):
        if subsample:  # t in {1, ..., T - 1}, apart from the noise draws 0..num_timesteps
            draw_keys = _fold(keys, num_timesteps + 1 + index)
            t = jax.vmap(lambda key: jax.random.randint(key, (), 1, num_steps))(draw_keys)
        else:
            t = jnp.full((batch_size,), index)
        return total + vb_at(t, index), None

    zeros = jnp.zeros((batch_size,))
    if subsample:
        decoder = vb_at(jnp.zeros((batch_size,), jnp.int32), num_timesteps)
        kl_terms, _ = jax.lax.scan(term, zeros, jnp.arange(num_timesteps))
        terms = decoder + (num_steps - 1) / num_timesteps * kl_terms
    else:
        # All T terms; t = 0 is the decoder term, kept apart for the metrics too.
        terms, _ = jax.lax.scan(term, zeros, jnp.arange(num_steps))
        decoder = vb_at(jnp.zeros((batch_size,), jnp.int32), 0)
    prior_mean, prior_variance = diffusion.q_mean_variance(
        schedule, image, jnp.full((batch_size,), num_steps - 1)
    )
    prior = losses.prior_kl(prior_mean, prior_variance)
    to_bits = 1.0 / (math.prod(image.shape[1:]) * math.log(2.0))
    bpd = (terms + prior) * to_bits
    return {
        "bpd": jnp.sum(bpd * mask),
        "prior_bpd": jnp.sum(prior * to_bits * mask),
        "decoder_bpd": jnp.sum(decoder * to_bits * mask),
        "count": jnp.sum(mask),
    }
