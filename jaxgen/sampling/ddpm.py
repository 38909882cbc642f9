"""DDPM samplers: ancestral sampling (Ho et al. 2020), DDIM (Song et al. 2021) and guidance.

A sampler is a pure function of a `denoise(x, t) -> network output` closure, the
schedule, the parameterisation, the starting noise x_T [B, H, W, C] and a key; its whole
loop is one `lax.scan`, so the caller jits it once. Step k's noise is drawn from
fold_in(rng, k), so given x_T and rng a sample is reproducible, and DDIM with eta = 0
uses no noise after x_T at all. `guided` wraps a class-conditional model into such a
closure with classifier-free guidance (Ho & Salimans 2022); `guided_on` does the same for
any condition array, e.g. a text encoding. Predicted x_0 are clipped
to [-1, 1] when `clip` is set, as Ho et al. do when sampling. Writing PNGs is left to
the caller.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import diffusion
from jaxgen.diffusion import Schedule

SAMPLERS = ("ddpm", "ddim")
Denoise = Callable[[jax.Array, jax.Array], jax.Array]


def guided(apply: Callable, label: jax.Array, null_label: int, scale: float) -> Denoise:
    """Classifier-free guidance: out_u + s (out_c - out_u), one batched call on [cond; uncond].

    `apply(x, t, label)` is the network. The combination is linear in the output, so it is
    the same whether the network predicts ε, x_0 or v. Scale 1 is the conditional model;
    use `conditional` to skip the unconditional half then.
    """
    return guided_on(apply, label, jnp.full_like(label, null_label), scale)


def guided_on(apply: Callable, condition: jax.Array, null: jax.Array, scale: float) -> Denoise:
    """`guided` for any condition array [B, ...] (a text encoding [B, L, D]) and its null value
    (the empty prompt's encoding, broadcast to the condition's shape). Scale s is diffusers'
    guidance_scale: 0 the unconditional model, 1 the conditional one."""
    null = jnp.broadcast_to(null, condition.shape).astype(condition.dtype)

    def denoise(x, t):
        out = apply(
            jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([condition, null])
        )
        cond, uncond = jnp.split(out, 2)
        return uncond + scale * (cond - uncond)

    return denoise


def conditional(apply: Callable, label: jax.Array | None) -> Denoise:
    """The network alone (label None for an unconditional model)."""
    return lambda x, t: apply(x, t, label)


def _progress(report: Callable[[int], None] | None, index: jax.Array, total: int) -> None:
    """Calls report(k) on the host about ten times over the loop (outside the compiled maths)."""
    if report is None:
        return
    every = max(1, total // 10)
    jax.lax.cond(
        (index + 1) % every == 0,
        lambda: jax.debug.callback(report, index + 1),
        lambda: None,
    )


def ddpm(
    denoise: Denoise,
    schedule: Schedule,
    parameterisation: str,
    noise: jax.Array,
    rng: jax.Array,
    variance: str = "beta",
    clip: bool = True,
    report: Callable[[int], None] | None = None,
) -> jax.Array:
    """Ancestral sampling x_{t-1} ~ N(μ̃(x_t, x̂_0), σ_t²) over all T steps (Ho et al. Alg. 2).

    `variance`: "beta" (σ² = β_t) or "beta_tilde" (σ² = β̃_t), the two choices of sec. 3.2.
    """
    to_x0_eps = diffusion.PARAMETERISATIONS.get(parameterisation).to_x0_eps
    num_steps = schedule.num_steps

    def step(x, index):
        t = jnp.full(x.shape[:1], num_steps - 1 - index)
        x0, _ = to_x0_eps(schedule, x, t, denoise(x, t))
        if clip:
            x0 = jnp.clip(x0, -1.0, 1.0)
        mean, _, _ = diffusion.q_posterior(schedule, x0, x, t)
        log_variance = diffusion.model_log_variance(schedule, t, variance, x.ndim)
        z = jax.random.normal(jax.random.fold_in(rng, index), x.shape)
        x = mean + jnp.where(t[:, None, None, None] > 0, jnp.exp(0.5 * log_variance) * z, 0.0)
        _progress(report, index, num_steps)
        return x, None

    x, _ = jax.lax.scan(step, noise, jnp.arange(num_steps))
    return x


def ddim_timesteps(num_steps: int, num_inference_steps: int) -> np.ndarray:
    """The evenly spaced ("uniform") subsequence 0, k, 2k, ... with k = T // n (Song et al. sec. 4.2)."""
    return np.arange(num_inference_steps) * (num_steps // num_inference_steps)


def ddim(
    denoise: Denoise,
    schedule: Schedule,
    parameterisation: str,
    noise: jax.Array,
    rng: jax.Array,
    num_inference_steps: int = 50,
    eta: float = 0.0,
    clip: bool = True,
    report: Callable[[int], None] | None = None,
    use_clipped_model_output: bool = True,
) -> jax.Array:
    """DDIM (Song et al. 2021, eq. 12): η = 0 is deterministic, η = 1 is DDPM-like.

    x_prev = √ᾱ_prev x̂_0 + √(1 - ᾱ_prev - σ²) ε̂ + σ z,
    σ = η √((1 - ᾱ_prev) / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_prev).

    With `clip`, x̂_0 is clipped to [-1, 1] (diffusers' clip_sample=True). Then
    `use_clipped_model_output` recomputes ε̂ from the clipped x̂_0, so x_prev lies on the
    line from x_t through it: diffusers' DDIMScheduler.step(use_clipped_model_output=True).
    False keeps the network's own ε̂ for the direction term: diffusers' default (False).
    The final step goes to ᾱ = 1 (diffusers' set_alpha_to_one=True), timesteps are
    "leading"-spaced with no offset (steps_offset=0).
    """
    to_x0_eps = diffusion.PARAMETERISATIONS.get(parameterisation).to_x0_eps
    timesteps = ddim_timesteps(schedule.num_steps, num_inference_steps)
    previous = np.append(-1, timesteps[:-1])  # -1: the data, ᾱ = 1
    order = jnp.asarray(np.stack([timesteps, previous], axis=1)[::-1])  # [n, 2], t descending

    def step(x, inputs):
        index, (t_now, t_prev) = inputs
        t = jnp.full(x.shape[:1], t_now)
        x0, eps = to_x0_eps(schedule, x, t, denoise(x, t))
        if clip:
            x0 = jnp.clip(x0, -1.0, 1.0)
            if use_clipped_model_output:
                eps = diffusion.x0_to_eps(schedule, x, t, x0)
        alpha_bar = schedule.alphas_cumprod[t_now]
        alpha_bar_prev = jnp.where(t_prev >= 0, schedule.alphas_cumprod[t_prev], 1.0)
        sigma = eta * jnp.sqrt(
            (1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev)
        )
        direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0)) * eps
        x = jnp.sqrt(alpha_bar_prev) * x0 + direction
        if eta:
            x = x + sigma * jax.random.normal(jax.random.fold_in(rng, index), x.shape)
        _progress(report, index, num_inference_steps)
        return x, None

    x, _ = jax.lax.scan(step, noise, (jnp.arange(num_inference_steps), order))
    return x
