"""PNDM, DDIM and DDPM for jaxgen.sampling.schedulers: host tables (NumPy), per-call steps (jnp).

One builder per scheduler name, `<name>(name, config, alphas_cumprod, n, **options)`, replays
diffusers 0.42's set_timesteps and step bookkeeping (counters, histories) on the host, so that
what varies from call to call is a row of scalars and the step is branch-free. The scalars
follow diffusers' float32 arithmetic on ᾱ; the comments name the diffusers code each mirrors.
The σ-parameterised schedulers (Euler, Euler ancestral, DPM-Solver) are in
sigma_scheduler_steps.
"""

import functools

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
    check_prediction(config, ("epsilon", "v_prediction"))
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
    return build(name, config, ac, timesteps, rows, step, _pndm_state, False)


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
    check_prediction(config, ("epsilon", "sample", "v_prediction"))
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
    return build(name, config, ac, timesteps, table, step, no_state, eta > 0)


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
    check_prediction(config, ("epsilon", "sample", "v_prediction"))
    if config["variance_type"] not in _VARIANCES:
        fail("variance_type", f"{config['variance_type']!r}; choose from {_VARIANCES}")
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
    return build(name, config, ac, timesteps, table, step, no_state, True)


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
