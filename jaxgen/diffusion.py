"""Gaussian diffusion maths: noise schedules, q(x_t | x_0), the posterior and parameterisations.

Everything here is a pure function of arrays and a `Schedule` (precomputed per-step
constants). Timesteps are integers t in {0, ..., T - 1}, where index t stands for the
paper's step t + 1 (Ho et al. 2020 count 1..T): x_t below is the latent after t + 1
noising steps, and x_{-1} is the data x_0.

A parameterisation says what the network predicts ("eps", "x0", "v"); each is one
registered `Parameterisation` with its regression target and the map from a network
output back to (x_0, eps). The model, losses and samplers go through those two functions
only, so a new parameterisation is one registration plus one config line
(config.diffusion.parameterisation). Models, losses and samplers live in their own files.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.registry import Registry

SCHEDULES = Registry("schedule", "config.diffusion.schedule")
PARAMETERISATIONS = Registry("parameterisation", "config.diffusion.parameterisation")


@SCHEDULES.register("linear")
def linear_betas(
    num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02, max_beta: float = 0.999
) -> np.ndarray:
    """β_t linear from 1e-4 to 0.02 (Ho et al. 2020, sec. 4), rescaled for T != 1000.

    The rescaling (improved DDPM, Nichol & Dhariwal 2021, eq. 17's companion code) keeps
    ᾱ_T about the same for other T; for T = 1000 it is the identity. For T <= 20 the
    rescaled β_T reaches 1 or more (ᾱ_t <= 0: NaN from there on), so β is clipped at 0.999
    as the cosine schedule is.
    """
    scale = 1000 / num_steps
    betas = np.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=np.float64)
    return np.minimum(betas, max_beta)


@SCHEDULES.register("scaled_linear")
def scaled_linear_betas(
    num_steps: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> np.ndarray:
    """Stable Diffusion's: √β_t linear from √0.00085 to √0.012 (diffusers' "scaled_linear",
    LDM's "linear"), not rescaled for T != 1000."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float64) ** 2


@SCHEDULES.register("cosine")
def cosine_betas(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """ᾱ(t) = cos²((t/T + s) / (1 + s) · π/2) / ᾱ(0), β clipped at 0.999 (Nichol & Dhariwal 2021, eq. 17)."""

    def alpha_bar(u):
        return np.cos((u + offset) / (1 + offset) * math.pi / 2) ** 2

    u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    betas = 1 - alpha_bar(u[1:]) / alpha_bar(u[:-1])
    return np.minimum(betas, max_beta)


class Schedule(NamedTuple):
    """Per-timestep constants, float32 arrays [T] (computed in float64)."""

    betas: jax.Array
    alphas_cumprod: jax.Array  # ᾱ_t
    alphas_cumprod_prev: jax.Array  # ᾱ_{t-1}, with ᾱ_{-1} = 1
    posterior_variance: jax.Array  # β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)
    posterior_log_variance: jax.Array  # log β̃_t, with β̃_0 (= 0) replaced by β̃_1
    posterior_mean_coef_x0: jax.Array  # √ᾱ_{t-1} β_t / (1 - ᾱ_t)
    posterior_mean_coef_xt: jax.Array  # √α_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def make_schedule(name: str, num_steps: int, **kw) -> Schedule:
    """The Schedule of a registered beta schedule with T = num_steps."""
    betas = SCHEDULES.get(name)(num_steps, **kw)
    alphas_cumprod = np.cumprod(1.0 - betas)
    prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    # β̃_0 = 0: clip the log at β̃_1, as Ho et al.'s code does (only ever used for t > 0).
    log_variance = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    arrays = dict(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=prev,
        posterior_variance=posterior_variance,
        posterior_log_variance=log_variance,
        posterior_mean_coef_x0=np.sqrt(prev) * betas / (1.0 - alphas_cumprod),
        posterior_mean_coef_xt=np.sqrt(1.0 - betas) * (1.0 - prev) / (1.0 - alphas_cumprod),
    )
    return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()})


def at(values: jax.Array, t: jax.Array, ndim: int = 4) -> jax.Array:
    """values[t] for t [B], shaped [B, 1, ..., 1] to broadcast against [B, H, W, C]."""
    return values[t].reshape(t.shape + (1,) * (ndim - t.ndim))


def snr(schedule: Schedule, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t), [B]."""
    alpha_bar = schedule.alphas_cumprod[t]
    return alpha_bar / (1.0 - alpha_bar)


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε, a draw from q(x_t | x_0) (Ho et al. eq. 4)."""
    alpha_bar = at(schedule.alphas_cumprod, t, x0.ndim)
    return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def q_mean_variance(schedule: Schedule, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean √ᾱ_t x_0 and variance 1 - ᾱ_t (broadcast [B, 1, 1, 1]) of q(x_t | x_0)."""
    alpha_bar = at(schedule.alphas_cumprod, t, x0.ndim)
    return jnp.sqrt(alpha_bar) * x0, 1.0 - alpha_bar


def q_posterior(
    schedule: Schedule, x0: jax.Array, xt: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7)."""
    mean = (
        at(schedule.posterior_mean_coef_x0, t, xt.ndim) * x0
        + at(schedule.posterior_mean_coef_xt, t, xt.ndim) * xt
    )
    variance = at(schedule.posterior_variance, t, xt.ndim)
    log_variance = at(schedule.posterior_log_variance, t, xt.ndim)
    return mean, variance, log_variance


def model_log_variance(schedule: Schedule, t: jax.Array, choice: str, ndim: int = 4) -> jax.Array:
    """log σ_t² of the reverse step p(x_{t-1} | x_t): "beta" (σ² = β) or "beta_tilde" (σ² = β̃).

    "beta" uses β̃_1 at t = 0 instead of β_1, as Ho et al.'s "fixedlarge" does, so the
    decoder L_0 is not needlessly wide.
    """
    if choice == "beta":
        values = jnp.log(jnp.append(schedule.posterior_variance[1], schedule.betas[1:]))
    elif choice == "beta_tilde":
        values = schedule.posterior_log_variance
    else:
        raise ValueError(f"unknown reverse variance {choice!r}; choose from beta, beta_tilde")
    return at(values, t, ndim)


VARIANCES = ("beta", "beta_tilde")


# -- parameterisations ------------------------------------------------------------------


def eps_to_x0(schedule: Schedule, xt: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x_0 = (x_t - √(1 - ᾱ_t) ε) / √ᾱ_t."""
    alpha_bar = at(schedule.alphas_cumprod, t, xt.ndim)
    return (xt - jnp.sqrt(1.0 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)


def x0_to_eps(schedule: Schedule, xt: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """ε = (x_t - √ᾱ_t x_0) / √(1 - ᾱ_t)."""
    alpha_bar = at(schedule.alphas_cumprod, t, xt.ndim)
    return (xt - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1.0 - alpha_bar)


def v_target(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """v = √ᾱ_t ε - √(1 - ᾱ_t) x_0 (Salimans & Ho 2022, "Progressive distillation", sec. 4)."""
    alpha_bar = at(schedule.alphas_cumprod, t, x0.ndim)
    return jnp.sqrt(alpha_bar) * eps - jnp.sqrt(1.0 - alpha_bar) * x0


def v_to_x0_eps(
    schedule: Schedule, xt: jax.Array, t: jax.Array, v: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """x_0 = √ᾱ_t x_t - √(1 - ᾱ_t) v and ε = √(1 - ᾱ_t) x_t + √ᾱ_t v."""
    alpha_bar = at(schedule.alphas_cumprod, t, xt.ndim)
    a, s = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    return a * xt - s * v, s * xt + a * v


class Parameterisation(NamedTuple):
    """What the network predicts.

    target(schedule, x0, t, eps) -> the regression target for the network output;
    to_x0_eps(schedule, xt, t, output) -> (x0, eps) implied by an output.
    """

    target: Callable[..., jax.Array]
    to_x0_eps: Callable[..., tuple[jax.Array, jax.Array]]


PARAMETERISATIONS.register("eps")(
    Parameterisation(
        target=lambda schedule, x0, t, eps: eps,
        to_x0_eps=lambda schedule, xt, t, out: (eps_to_x0(schedule, xt, t, out), out),
    )
)
PARAMETERISATIONS.register("x0")(
    Parameterisation(
        target=lambda schedule, x0, t, eps: x0,
        to_x0_eps=lambda schedule, xt, t, out: (out, x0_to_eps(schedule, xt, t, out)),
    )
)
PARAMETERISATIONS.register("v")(Parameterisation(target=v_target, to_x0_eps=v_to_x0_eps))
