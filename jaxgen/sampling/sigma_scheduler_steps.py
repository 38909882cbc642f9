"""Euler, Euler ancestral and DPM-Solver for jaxgen.sampling.schedulers: σ = sqrt((1 - ᾱ) / ᾱ).

As scheduler_steps does for PNDM, DDIM and DDPM: each builder replays diffusers 0.42's
set_timesteps (interpolated, Karras or exponential σ) and step bookkeeping (solver orders) on the
host into per-call rows of float32 scalars; the jnp steps are branch-free.
"""

import functools
import math

import jax.numpy as jnp
import numpy as np

from jaxgen.sampling.scheduler_base import (
    build,
    check_prediction,
    clip_x0,
    fail,
    no_state,
    spaced_timesteps,
)

f32 = np.float32


# ------------------------------------------------------------------------------------------
# Euler and Euler ancestral (Karras et al. 2022's Algorithm 2 with s_churn = 0; k-diffusion's
# ancestral sampler) on the σ = sqrt((1 - ᾱ) / ᾱ) scale, σ interpolated at the timesteps.


def _sigma_to_t(sigma, log_sigmas):
    """diffusers' _sigma_to_t: the fractional timestep whose log σ interpolates to log sigma."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


def _respaced_sigmas(config, in_sigmas, n):
    """use_karras_sigmas (Karras et al. 2022, ρ = 7) or use_exponential_sigmas: n σ from
    in_sigmas' largest to smallest (or the config's sigma_max / sigma_min), in float64."""
    low, high = config.get("sigma_min"), config.get("sigma_max")
    low = in_sigmas[-1].item() if low is None else low
    high = in_sigmas[0].item() if high is None else high
    if config.get("use_karras_sigmas"):
        rho = 7.0
        ramp = np.linspace(0, 1, n)
        return (high ** (1 / rho) + ramp * (low ** (1 / rho) - high ** (1 / rho))) ** rho
    return np.exp(np.linspace(math.log(high), math.log(low), n))


def _check_sigma_kind(config):
    if config.get("use_karras_sigmas") and config.get("use_exponential_sigmas"):
        fail("use_karras_sigmas", "only one of use_karras_sigmas, use_exponential_sigmas")
    return config.get("use_karras_sigmas") or config.get("use_exponential_sigmas")


def _euler_sigmas(config, ac, n, final_sigma=0.0):
    timesteps = spaced_timesteps(config, n, np.float32)
    full = ((f32(1) - ac) / ac) ** f32(0.5)
    sigmas = np.interp(timesteps, np.arange(0, len(full)), full)
    if _check_sigma_kind(config):
        sigmas = _respaced_sigmas(config, sigmas, n)
        timesteps = _sigma_to_t(sigmas, np.log(full)).astype(np.float32)
    sigmas = np.concatenate([sigmas, [final_sigma]]).astype(np.float32)
    if config["timestep_spacing"] in ("linspace", "trailing"):
        init_noise_sigma = sigmas.max()
    else:
        init_noise_sigma = (sigmas.max() ** 2 + f32(1)) ** f32(0.5)
    return timesteps, sigmas, init_noise_sigma


def _euler_x0(x, out, row, prediction_type):
    if prediction_type == "epsilon":
        return x - row["sigma"] * out
    if prediction_type == "v_prediction":
        return out * row["v_out"] + x / row["v_x"]
    return out  # sample / original_sample


def _euler_table(sigmas):
    sigma = sigmas[:-1]
    return dict(
        sigma=sigma,
        input_divisor=(sigma**2 + f32(1)) ** f32(0.5),
        v_out=-sigma / (sigma**2 + f32(1)) ** f32(0.5),
        v_x=sigma**2 + f32(1),
    )


def euler(name, config, ac, n, **options):
    check_prediction(config, ("epsilon", "v_prediction", "sample", "original_sample"))
    kind = config["final_sigmas_type"]
    if kind not in ("zero", "sigma_min"):
        fail("final_sigmas_type", f"{kind!r}; choose from zero, sigma_min")
    final = ((1 - ac[0]) / ac[0]) ** 0.5 if kind == "sigma_min" else 0.0
    timesteps, sigmas, sigma0 = _euler_sigmas(config, ac, n, final)
    table = _euler_table(sigmas)
    table["dt"] = sigmas[1:] - sigmas[:-1]
    step = functools.partial(euler_step, prediction_type=config["prediction_type"])
    return build(name, config, ac, timesteps, table, step, no_state, False, sigma0)


def euler_step(state, x, out, row, noise, *, prediction_type):
    x0 = _euler_x0(x, out, row, prediction_type)
    derivative = (x - x0) / row["sigma"]
    return x + derivative * row["dt"], state


def euler_ancestral(name, config, ac, n, **options):
    check_prediction(config, ("epsilon", "v_prediction"))
    timesteps, sigmas, sigma0 = _euler_sigmas(config, ac, n)
    sigma_from, sigma_to = sigmas[:-1], sigmas[1:]
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** f32(0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** f32(0.5)
    table = _euler_table(sigmas)
    table.update(dt=sigma_down - sigma_from, sigma_up=sigma_up)
    step = functools.partial(euler_ancestral_step, prediction_type=config["prediction_type"])
    return build(name, config, ac, timesteps, table, step, no_state, True, sigma0)


def euler_ancestral_step(state, x, out, row, noise, *, prediction_type):
    x0 = _euler_x0(x, out, row, prediction_type)
    derivative = (x - x0) / row["sigma"]
    return x + derivative * row["dt"] + noise * row["sigma_up"], state


# ------------------------------------------------------------------------------------------
# DPM-Solver++(2M) (Lu et al. 2022): multistep, second order, on x̂_0 (or ε for "dpmsolver").


def _dpm_timesteps(config, ac, n):
    """DPMSolverMultistepScheduler.set_timesteps (its own "linspace" and "leading" rules)."""
    n_train, spacing = config["num_train_timesteps"], config["timestep_spacing"]
    lambdas = np.log(ac**0.5) - np.log((f32(1) - ac) ** 0.5)
    clipped = np.searchsorted(lambdas[::-1], config["lambda_min_clipped"])
    last = n_train - int(clipped)
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        timesteps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64)
        return timesteps + config["steps_offset"]
    return np.arange(last, 0, -n_train / n).round().astype(np.int64) - 1


def _alpha_sigma(sigma):
    alpha = f32(1) / (sigma**2 + f32(1)) ** f32(0.5)
    return alpha, sigma * alpha


def dpmpp_2m(name, config, ac, n, **options):
    algorithm, solver = config["algorithm_type"], config["solver_type"]
    if algorithm not in ("dpmsolver++", "dpmsolver"):
        fail("algorithm_type", f"{algorithm!r} is not supported (dpmsolver++, dpmsolver)")
    if solver not in ("midpoint", "heun"):
        fail("solver_type", f"{solver!r}; choose from midpoint, heun")
    if config["variance_type"] is not None:
        fail("variance_type", f"{config['variance_type']!r} is not supported (None)")
    if config["solver_order"] not in (1, 2):
        fail("solver_order", f"{config['solver_order']} is not supported (1 or 2)")
    if config["final_sigmas_type"] not in ("zero", "sigma_min"):
        fail("final_sigmas_type", f"{config['final_sigmas_type']!r}; choose from zero, sigma_min")
    if algorithm == "dpmsolver" and config["final_sigmas_type"] == "zero":
        fail("final_sigmas_type", "diffusers allows 'zero' only with dpmsolver++")
    if algorithm == "dpmsolver" and config["thresholding"]:
        fail("thresholding", "supported with dpmsolver++ only")
    check_prediction(config, ("epsilon", "sample", "v_prediction"))
    timesteps = _dpm_timesteps(config, ac, n)
    full = ((f32(1) - ac) / ac) ** f32(0.5)
    if _check_sigma_kind(config):
        sigmas = _respaced_sigmas(config, np.flip(full).copy(), n)
        timesteps = _sigma_to_t(sigmas, np.log(full))
        if config["use_karras_sigmas"] and config["beta_schedule"] != "squaredcos_cap_v2":
            timesteps = timesteps.round()
        timesteps = timesteps.astype(np.int64)  # torch's int64 cast truncates
    else:
        sigmas = np.interp(timesteps, np.arange(0, len(full)), full)
    final = ((1 - ac[0]) / ac[0]) ** 0.5 if config["final_sigmas_type"] == "sigma_min" else 0.0
    sigmas = np.concatenate([sigmas, [final]]).astype(np.float32)
    calls = len(timesteps)
    table = {key: np.zeros(calls, np.float32) for key in "c_x c_0 c_1 inv_r0".split()}
    table["alpha"], table["sigma"] = _alpha_sigma(sigmas[:-1])
    plus = algorithm == "dpmsolver++"
    with np.errstate(divide="ignore"):  # σ = 0 at the end: λ = inf, exp(-h) = 0 as in torch
        for i in range(calls):
            last_call = i == calls - 1
            first_order = (
                config["solver_order"] == 1
                or i == 0
                or last_call
                and (
                    config["euler_at_final"]
                    or (config["lower_order_final"] and calls < 15)
                    or config["final_sigmas_type"] == "zero"
                )
            )
            alpha_t, sigma_t = _alpha_sigma(sigmas[i + 1])
            alpha_s0, sigma_s0 = _alpha_sigma(sigmas[i])
            lambda_t = np.log(alpha_t) - np.log(sigma_t)
            lambda_s0 = np.log(alpha_s0) - np.log(sigma_s0)
            h = lambda_t - lambda_s0
            if plus:
                c_x, c_0 = sigma_t / sigma_s0, alpha_t * (np.exp(-h) - f32(1))
            else:
                c_x, c_0 = alpha_t / alpha_s0, sigma_t * (np.exp(h) - f32(1))
            table["c_x"][i], table["c_0"][i] = c_x, c_0
            if first_order:
                continue
            alpha_s1, sigma_s1 = _alpha_sigma(sigmas[i - 1])
            r0 = (lambda_s0 - (np.log(alpha_s1) - np.log(sigma_s1))) / h
            table["inv_r0"][i] = f32(1.0) / r0
            if solver == "midpoint":
                table["c_1"][i] = f32(0.5) * c_0
            elif plus:
                table["c_1"][i] = -(alpha_t * ((np.exp(-h) - f32(1)) / h + f32(1)))
            else:
                table["c_1"][i] = sigma_t * ((np.exp(h) - f32(1)) / h - f32(1))
    step = functools.partial(dpm_step, config=config)
    return build(name, config, ac, timesteps, table, step, _dpm_state, False)


def _dpm_state(x):
    return dict(previous=jnp.zeros_like(x))


def dpm_step(state, x, out, row, noise, *, config):
    """convert_model_output, then x_t = c_x x - c_0 D0 - c_1 D1 with D1 = (m0 - m1) / r0."""
    alpha, sigma, prediction_type = row["alpha"], row["sigma"], config["prediction_type"]
    if config["algorithm_type"] == "dpmsolver++":
        if prediction_type == "epsilon":
            m0 = (x - sigma * out) / alpha
        elif prediction_type == "v_prediction":
            m0 = alpha * x - sigma * out
        else:
            m0 = out
        m0 = clip_x0(m0, config)
    elif prediction_type == "epsilon":
        m0 = out
    elif prediction_type == "v_prediction":
        m0 = alpha * out + sigma * x
    else:
        m0 = (x - alpha * out) / sigma
    d1 = row["inv_r0"] * (m0 - state["previous"])
    prev = row["c_x"] * x - row["c_0"] * m0 - row["c_1"] * d1
    return prev, dict(previous=m0)
