"""The six schedulers of jaxgen.sampling.schedulers: host tables (NumPy) and per-call steps (jnp).

One builder per name in schedulers.NAMES, `<name>(name, config, alphas_cumprod, n, **options)`,
replays diffusers 0.42's set_timesteps and step bookkeeping (counters, histories, orders) on the
host, so that what varies from call to call is a row of scalars and the step is branch-free.
Scalars follow diffusers' float32 arithmetic; the comments name the diffusers code each mirrors.
"""

import functools
import math

import jax.numpy as jnp
import numpy as np

from jaxgen.sampling.schedulers import (
    Scheduler,
    _fail,
    clip_x0,
    spaced_timesteps,
)

f32 = np.float32


def _scheduler(name, config, ac, timesteps, table, step, init_state, stochastic, sigma0=1.0):
    n = len(timesteps)
    table = {key: np.asarray(value, np.float32) for key, value in table.items()}
    table.setdefault("input_divisor", np.ones(n, np.float32))
    assert all(value.shape == (n,) for value in table.values()), name
    return Scheduler(
        name=name,
        config=config,
        timesteps=np.asarray(timesteps),
        init_noise_sigma=float(sigma0),
        table=table,
        step=step,
        init_state=init_state,
        stochastic=stochastic,
        alphas_cumprod=ac,
    )


def _no_state(x):
    return {}


def _check_prediction(config, allowed):
    if config["prediction_type"] not in allowed:
        _fail("prediction_type", f"{config['prediction_type']!r}; choose from {allowed}")


def _x0_and_eps(x, out, row, prediction_type):
    """(x̂_0, ε̂) from the model output at ᾱ_t (DDIM and DDPM's step)."""
    sqrt_a, sqrt_b = row["sqrt_alpha"], row["sqrt_beta"]
    if prediction_type == "epsilon":
        return (x - sqrt_b * out) / sqrt_a, out
    if prediction_type == "sample":
        return out, (x - sqrt_a * out) / sqrt_b
    return sqrt_a * x - sqrt_b * out, sqrt_a * out + sqrt_b * x  # v_prediction


# ------------------------------------------------------------------------------------------
# PNDM (Liu et al. 2022): PLMS with the pseudo Runge-Kutta warm-up, or diffusers' skip_prk_steps
# warm-up (one extra call: 51 U-Net calls for 50 steps).


def pndm(name, config, ac, n, **options):
    _check_prediction(config, ("epsilon", "v_prediction"))
    n_train, spacing = config["num_train_timesteps"], config["timestep_spacing"]
    ratio = n_train // n
    # PNDMScheduler.set_timesteps: ascending _timesteps, then the PRK and PLMS lists.
    if spacing == "linspace":
        base = np.linspace(0, n_train - 1, n).round().astype(np.int64)
    elif spacing == "leading":
        base = (np.arange(0, n) * ratio).round() + config["steps_offset"]
    else:
        base = np.round(np.arange(n_train, 0, -n_train / n))[::-1].astype(np.int64) - 1
    if config["skip_prk_steps"]:
        prk = np.array([], np.int64)
        plms = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1]
    else:
        prk = np.array(base[-4:]).repeat(2) + np.tile(np.array([0, ratio // 2]), 4)
        prk = prk[:-1].repeat(2)[1:-1][::-1]
        plms = base[:-3][::-1]
    timesteps = np.concatenate([prk, plms]).astype(np.int64)
    final = f32(1.0) if config["set_alpha_to_one"] else ac[0]

    keys = "w_new w_acc w1 w2 w3 acc_keep acc_add push store use_cur t prev".split()
    rows = {key: [] for key in keys}
    history = 0  # len(self.ets)
    for counter, t in enumerate(timesteps):
        row = dict(w_new=1, w_acc=0, w1=0, w2=0, w3=0, acc_keep=1, acc_add=0)
        row.update(push=0, store=0, use_cur=0)
        if counter < len(prk):  # step_prk
            prev = t - (0 if counter % 2 else ratio // 2)
            t = prk[counter // 4 * 4]
            phase = counter % 4
            row["use_cur"] = 1
            if phase == 0:
                row.update(acc_add=1 / 6, push=1, store=1)
                history += 1
            elif phase in (1, 2):
                row["acc_add"] = 1 / 3
            else:
                row.update(w_new=1 / 6, w_acc=1, acc_keep=0)
        else:  # step_plms
            prev = t - ratio
            if counter != 1:
                row["push"] = 1
                history = min(history, 3) + 1
            else:
                prev, t = t, t + ratio
            if history == 1 and counter == 0:
                row["store"] = 1
            elif history == 1 and counter == 1:
                row.update(w_new=0.5, w1=0.5, use_cur=1)
            elif history == 2:
                row.update(w_new=1.5, w1=-0.5)
            elif history == 3:
                row.update(w_new=23 / 12, w1=-16 / 12, w2=5 / 12)
            else:
                row.update(w_new=55 / 24, w1=-59 / 24, w2=37 / 24, w3=-9 / 24)
        row.update(t=t, prev=prev)
        for key in keys:
            rows[key].append(row[key])
    t, prev = np.array(rows.pop("t")), np.array(rows.pop("prev"))
    # PNDMScheduler._get_prev_sample, formula (9) of the paper, in float32.
    a_t = ac[t]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(np.float32)
    b_t, b_prev = f32(1) - a_t, f32(1) - a_prev
    rows.update(
        sqrt_alpha=a_t**0.5,
        sqrt_beta=b_t**0.5,
        sample_coeff=(a_prev / a_t) ** 0.5,
        alpha_diff=a_prev - a_t,
        denom=a_t * b_prev**0.5 + (a_t * b_t * a_prev) ** 0.5,
    )
    step = functools.partial(pndm_step, prediction_type=config["prediction_type"])
    return _scheduler(name, config, ac, timesteps, rows, step, _pndm_state, False)


def _pndm_state(x):
    zeros = jnp.zeros_like(x)
    return dict(h1=zeros, h2=zeros, h3=zeros, acc=zeros, cur=zeros)


def pndm_step(state, x, out, row, noise, *, prediction_type):
    """One PRK or PLMS call: the combined ε from this output, the PRK sum and the last three
    stored outputs (h1 newest), applied to x or to the sample the warm-up started from."""
    h1, h2, h3 = state["h1"], state["h2"], state["h3"]
    eps = row["w_new"] * out + row["w_acc"] * state["acc"] + row["w1"] * h1
    eps = eps + row["w2"] * h2 + row["w3"] * h3
    cur = jnp.where(row["store"] > 0, x, state["cur"])
    sample = jnp.where(row["use_cur"] > 0, cur, x)
    if prediction_type == "v_prediction":
        eps = row["sqrt_alpha"] * eps + row["sqrt_beta"] * sample
    prev = row["sample_coeff"] * sample - (row["alpha_diff"] * eps) / row["denom"]
    push = row["push"] > 0
    state = dict(
        h1=jnp.where(push, out, h1),
        h2=jnp.where(push, h1, h2),
        h3=jnp.where(push, h2, h3),
        acc=row["acc_keep"] * state["acc"] + row["acc_add"] * out,
        cur=cur,
    )
    return prev, state


# ------------------------------------------------------------------------------------------
# DDIM (Song et al. 2021) and DDPM (Ho et al. 2020)


def ddim(name, config, ac, n, eta=0.0, use_clipped_model_output=False):
    _check_prediction(config, ("epsilon", "sample", "v_prediction"))
    timesteps = spaced_timesteps(config, n)
    prev = timesteps - config["num_train_timesteps"] // n  # also for linspace/trailing
    final = f32(1.0) if config["set_alpha_to_one"] else ac[0]
    a_t = ac[timesteps]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(np.float32)
    b_t, b_prev = f32(1) - a_t, f32(1) - a_prev
    variance = (b_prev / b_t) * (f32(1) - a_t / a_prev)  # DDIMScheduler._get_variance
    std = f32(eta) * variance**0.5
    table = dict(
        sqrt_alpha=a_t**0.5,
        sqrt_beta=b_t**0.5,
        sqrt_alpha_prev=a_prev**0.5,
        direction=(f32(1) - a_prev - std**2) ** 0.5,
        std=std,
    )
    step = functools.partial(
        ddim_step, config=config, clipped_eps=use_clipped_model_output, stochastic=eta > 0
    )
    return _scheduler(name, config, ac, timesteps, table, step, _no_state, eta > 0)


def ddim_step(state, x, out, row, noise, *, config, clipped_eps, stochastic):
    x0, eps = _x0_and_eps(x, out, row, config["prediction_type"])
    x0 = clip_x0(x0, config)
    if clipped_eps:
        eps = (x - row["sqrt_alpha"] * x0) / row["sqrt_beta"]
    prev = row["sqrt_alpha_prev"] * x0 + row["direction"] * eps
    if stochastic:
        prev = prev + row["std"] * noise
    return prev, state


_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range")


def ddpm(name, config, ac, n, **options):
    _check_prediction(config, ("epsilon", "sample", "v_prediction"))
    if config["variance_type"] not in _VARIANCES:
        _fail("variance_type", f"{config['variance_type']!r}; choose from {_VARIANCES}")
    timesteps = spaced_timesteps(config, n)
    prev = np.append(timesteps[1:], -1)  # DDPMScheduler.previous_timestep
    a_t = ac[timesteps]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], f32(1)).astype(np.float32)
    b_t, b_prev = f32(1) - a_t, f32(1) - a_prev
    alpha_now = a_t / a_prev
    beta_now = f32(1) - alpha_now
    variance = np.maximum((f32(1) - a_prev) / (f32(1) - a_t) * beta_now, f32(1e-20))
    kind = config["variance_type"]
    if kind == "fixed_small":
        std = variance**0.5
    elif kind == "fixed_small_log":
        std = np.exp(f32(0.5) * np.log(variance))
    else:
        std = beta_now**0.5  # fixed_large (the learned kinds use the model's output)
    table = dict(
        sqrt_alpha=a_t**0.5,
        sqrt_beta=b_t**0.5,
        x0_coeff=(a_prev**0.5 * beta_now) / b_t,
        x_coeff=alpha_now**0.5 * b_prev / b_t,
        std=std * (timesteps > 0),  # no noise at t = 0
        min_log=np.log(variance),
        max_log=np.log(beta_now),
        noise_on=(timesteps > 0).astype(np.float32),
    )
    step = functools.partial(ddpm_step, config=config)
    return _scheduler(name, config, ac, timesteps, table, step, _no_state, True)


def ddpm_step(state, x, out, row, noise, *, config):
    kind = config["variance_type"]
    learned = None
    if kind in ("learned", "learned_range") and out.shape[-1] == 2 * x.shape[-1]:
        out, learned = jnp.split(out, 2, axis=-1)
    x0, _ = _x0_and_eps(x, out, row, config["prediction_type"])
    x0 = clip_x0(x0, config)
    prev = row["x0_coeff"] * x0 + row["x_coeff"] * x
    if learned is None:
        return prev + row["std"] * noise, state
    if kind == "learned":
        std = learned**0.5
    else:
        fraction = (learned + 1) / 2
        std = jnp.exp(0.5 * (fraction * row["max_log"] + (1 - fraction) * row["min_log"]))
    return prev + row["noise_on"] * (std * noise), state


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
        _fail("use_karras_sigmas", "only one of use_karras_sigmas, use_exponential_sigmas")
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
    _check_prediction(config, ("epsilon", "v_prediction", "sample", "original_sample"))
    kind = config["final_sigmas_type"]
    if kind not in ("zero", "sigma_min"):
        _fail("final_sigmas_type", f"{kind!r}; choose from zero, sigma_min")
    final = ((1 - ac[0]) / ac[0]) ** 0.5 if kind == "sigma_min" else 0.0
    timesteps, sigmas, sigma0 = _euler_sigmas(config, ac, n, final)
    table = _euler_table(sigmas)
    table["dt"] = sigmas[1:] - sigmas[:-1]
    step = functools.partial(euler_step, prediction_type=config["prediction_type"])
    return _scheduler(name, config, ac, timesteps, table, step, _no_state, False, sigma0)


def euler_step(state, x, out, row, noise, *, prediction_type):
    x0 = _euler_x0(x, out, row, prediction_type)
    derivative = (x - x0) / row["sigma"]
    return x + derivative * row["dt"], state


def euler_ancestral(name, config, ac, n, **options):
    _check_prediction(config, ("epsilon", "v_prediction"))
    timesteps, sigmas, sigma0 = _euler_sigmas(config, ac, n)
    sigma_from, sigma_to = sigmas[:-1], sigmas[1:]
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** f32(0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** f32(0.5)
    table = _euler_table(sigmas)
    table.update(dt=sigma_down - sigma_from, sigma_up=sigma_up)
    step = functools.partial(euler_ancestral_step, prediction_type=config["prediction_type"])
    return _scheduler(name, config, ac, timesteps, table, step, _no_state, True, sigma0)


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
        _fail("algorithm_type", f"{algorithm!r} is not supported (dpmsolver++, dpmsolver)")
    if solver not in ("midpoint", "heun"):
        _fail("solver_type", f"{solver!r}; choose from midpoint, heun")
    if config["variance_type"] is not None:
        _fail("variance_type", f"{config['variance_type']!r} is not supported (None)")
    if config["solver_order"] not in (1, 2):
        _fail("solver_order", f"{config['solver_order']} is not supported (1 or 2)")
    if config["final_sigmas_type"] not in ("zero", "sigma_min"):
        _fail("final_sigmas_type", f"{config['final_sigmas_type']!r}; choose from zero, sigma_min")
    if algorithm == "dpmsolver" and config["final_sigmas_type"] == "zero":
        _fail("final_sigmas_type", "diffusers allows 'zero' only with dpmsolver++")
    if algorithm == "dpmsolver" and config["thresholding"]:
        _fail("thresholding", "supported with dpmsolver++ only")
    _check_prediction(config, ("epsilon", "sample", "v_prediction"))
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
    return _scheduler(name, config, ac, timesteps, table, step, _dpm_state, False)


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
