"""Diffusion maths against NumPy written here: schedules, q(x_t|x_0), posterior, parameterisations, losses, samplers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion
from jaxgen.losses import ddpm as losses
from jaxgen.sampling import ddpm as sampling

T = 1000


def numpy_linear(num_steps=T):
    betas = np.linspace(1e-4, 0.02, num_steps)
    return betas, np.cumprod(1 - betas)


def numpy_cosine(num_steps=T, s=0.008):
    f = np.cos((np.arange(num_steps + 1) / num_steps + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    return betas, np.cumprod(1 - betas)


def test_linear_schedule_endpoints():
    schedule = diffusion.make_schedule("linear", T)
    betas, alpha_bar = numpy_linear()
    np.testing.assert_allclose(schedule.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(schedule.alphas_cumprod, alpha_bar, rtol=1e-5)
    assert float(schedule.betas[0]) == pytest.approx(1e-4)
    assert float(schedule.betas[-1]) == pytest.approx(0.02)
    # Ho et al.: ᾱ_T ≈ 4.0e-5, so x_T is almost pure noise.
    assert float(schedule.alphas_cumprod[-1]) == pytest.approx(4.036e-5, rel=1e-3)


def test_cosine_schedule_matches_nichol_dhariwal():
    schedule = diffusion.make_schedule("cosine", T)
    betas, alpha_bar = numpy_cosine()
    np.testing.assert_allclose(schedule.betas, betas, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(schedule.alphas_cumprod, alpha_bar, rtol=1e-4, atol=1e-9)
    assert float(schedule.betas[-1]) == pytest.approx(0.999)
    assert float(schedule.alphas_cumprod[0]) > 0.9999


@pytest.mark.parametrize("num_steps", [10, 4000])
def test_linear_schedule_for_other_t_follows_the_rescaled_formula(num_steps):
    """Nichol & Dhariwal's rescaling: β from 1e-4·1000/T to 0.02·1000/T, here at most 0.999
    (at T = 10 the formula's β_T is 2: ᾱ would go negative). ᾱ_t as the product of α_s."""
    schedule = diffusion.make_schedule("linear", num_steps)
    scale = 1000 / num_steps
    t = np.arange(num_steps)
    formula = scale * (1e-4 + (0.02 - 1e-4) * t / (num_steps - 1))
    betas = np.minimum(formula, 0.999)
    alpha_bar = np.array([np.prod(1 - betas[: i + 1]) for i in t])
    np.testing.assert_allclose(schedule.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(schedule.alphas_cumprod, alpha_bar, rtol=1e-5, atol=1e-30)
    for name, values in schedule._asdict().items():
        assert np.all(np.isfinite(values)), name
    assert np.all(np.diff(schedule.alphas_cumprod) < 0) and schedule.alphas_cumprod[-1] > 0
    if num_steps == 4000:  # ᾱ_T about Ho et al.'s 4.0e-5 at T = 1000, as the rescaling intends
        assert 1e-5 < float(schedule.alphas_cumprod[-1]) < 1e-4


@pytest.mark.parametrize("num_steps", [10, 4000])
def test_cosine_schedule_for_other_t_is_the_closed_form_alpha_bar(num_steps):
    """ᾱ_t = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2), s = 0.008 (eq. 17), read off
    directly for t = 1..T-1 (schedule index t - 1); only the last β is clipped at 0.999."""
    schedule = diffusion.make_schedule("cosine", num_steps)
    s = 0.008
    steps = np.arange(num_steps + 1)
    f = np.cos((steps / num_steps + s) / (1 + s) * math.pi / 2) ** 2
    np.testing.assert_allclose(schedule.alphas_cumprod[:-1], f[1:-1] / f[0], rtol=1e-5)
    assert float(schedule.betas[-1]) == pytest.approx(0.999)
    assert float(schedule.alphas_cumprod[-1]) == pytest.approx(f[-2] / f[0] * 0.001, rel=1e-4)


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (6, 4, 4, 2)).astype(np.float32)
    eps = rng.standard_normal((6, 4, 4, 2)).astype(np.float32)
    t = np.array([0, 1, 10, 500, 998, 999])
    return x0, eps, t


def test_q_sample_moments(arrays):
    x0, eps, t = arrays
    schedule = diffusion.make_schedule("linear", T)
    _, alpha_bar = numpy_linear()
    a = alpha_bar[t][:, None, None, None]
    np.testing.assert_allclose(
        diffusion.q_sample(schedule, x0, t, eps), np.sqrt(a) * x0 + np.sqrt(1 - a) * eps, atol=1e-5
    )
    mean, variance = diffusion.q_mean_variance(schedule, x0, t)
    np.testing.assert_allclose(mean, np.sqrt(a) * x0, atol=1e-6)
    np.testing.assert_allclose(variance, 1 - a, rtol=1e-5, atol=1e-7)  # 1 - ᾱ in float32
    # Empirical moments of many draws at one t.
    draws = diffusion.q_sample(
        schedule,
        jnp.full((20_000, 1, 1, 1), 0.5),
        jnp.full((20_000,), 300),
        jax.random.normal(jax.random.PRNGKey(0), (20_000, 1, 1, 1)),
    )
    assert float(draws.mean()) == pytest.approx(0.5 * math.sqrt(alpha_bar[300]), abs=0.02)
    assert float(draws.var()) == pytest.approx(1 - alpha_bar[300], rel=0.03)


def test_posterior_mean_and_variance(arrays):
    x0, eps, t = arrays
    schedule = diffusion.make_schedule("linear", T)
    betas, alpha_bar = numpy_linear()
    prev = np.append(1.0, alpha_bar[:-1])
    xt = np.asarray(diffusion.q_sample(schedule, x0, t, eps))
    b, a, ap = (v[t][:, None, None, None] for v in (betas, alpha_bar, prev))
    mean = np.sqrt(ap) * b / (1 - a) * x0 + np.sqrt(1 - b) * (1 - ap) / (1 - a) * xt
    variance = b * (1 - ap) / (1 - a)
    got_mean, got_variance, got_log = diffusion.q_posterior(schedule, x0, xt, t)
    np.testing.assert_allclose(got_mean, mean, atol=1e-5)
    np.testing.assert_allclose(got_variance, variance, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(got_log[1:], np.log(variance[1:]), rtol=1e-5)
    # At t = 0 the posterior is the data itself.
    np.testing.assert_allclose(got_mean[0], x0[0], atol=1e-6)


@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_parameterisations_round_trip(arrays, name):
    x0, eps, t = arrays
    t = t[1:-1]  # ᾱ_0 ≈ 1 and ᾱ_T ≈ 0 make one direction ill-conditioned in float32
    x0, eps = x0[1:-1], eps[1:-1]
    schedule = diffusion.make_schedule("linear", T)
    xt = diffusion.q_sample(schedule, x0, t, eps)
    parameterisation = diffusion.PARAMETERISATIONS.get(name)
    target = parameterisation.target(schedule, x0, t, eps)
    got_x0, got_eps = parameterisation.to_x0_eps(schedule, xt, t, target)
    np.testing.assert_allclose(got_x0, x0, atol=2e-3)
    np.testing.assert_allclose(got_eps, eps, atol=2e-3)


def test_v_target_in_numpy(arrays):
    x0, eps, t = arrays
    schedule = diffusion.make_schedule("linear", T)
    a = numpy_linear()[1][t][:, None, None, None]
    np.testing.assert_allclose(
        diffusion.v_target(schedule, x0, t, eps), np.sqrt(a) * eps - np.sqrt(1 - a) * x0, atol=1e-5
    )


def test_weightings_make_every_target_the_same_x0_error(arrays):
    x0, eps, t = arrays
    t = t[1:-1]
    schedule = diffusion.make_schedule("linear", T)
    xt = diffusion.q_sample(schedule, x0[1:-1], t, eps[1:-1])
    wrong_x0 = x0[1:-1] + 0.1  # a prediction off by 0.1 in x0 space
    snr = diffusion.snr(schedule, t)
    values = {}
    for name in ("eps", "x0", "v"):
        p = diffusion.PARAMETERISATIONS.get(name)
        wrong_eps = diffusion.x0_to_eps(schedule, xt, t, wrong_x0)
        output = p.target(schedule, wrong_x0, t, wrong_eps)
        target = p.target(schedule, x0[1:-1], t, eps[1:-1])
        values[name], _ = losses.mse_loss(
            output, target, snr, parameterisation=name, weighting="min_snr"
        )
    # min-SNR weights give the same loss whatever the network predicts.
    assert float(values["eps"]) == pytest.approx(float(values["x0"]), rel=2e-3)
    assert float(values["v"]) == pytest.approx(float(values["x0"]), rel=2e-3)


def numpy_normal_cdf(x):
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def test_normal_kl_and_discretised_likelihood():
    rng = np.random.default_rng(1)
    m1, m2 = rng.standard_normal(5), rng.standard_normal(5)
    v1, v2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    expected = 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)
    np.testing.assert_allclose(
        losses.normal_kl(m1, np.log(v1), m2, np.log(v2)), expected, rtol=1e-5
    )
    assert float(jnp.abs(losses.normal_kl(m1, np.log(v1), m1, np.log(v1))).max()) < 1e-6
    x = np.array([-1.0, -1 + 2 / 255 * 7, 0.0039, 1.0])
    mean, scale = np.array([-0.9, -0.95, 0.01, 0.8]), np.array([0.1, 0.02, 0.05, 0.3])
    upper, lower = (
        numpy_normal_cdf((x - mean + 1 / 255) / scale),
        numpy_normal_cdf((x - mean - 1 / 255) / scale),
    )
    expected = np.log(np.array([upper[0], upper[1] - lower[1], upper[2] - lower[2], 1 - lower[3]]))
    got = losses.discretised_gaussian_log_likelihood(x, mean, np.log(scale))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # The 256 bins sum to one.
    levels = np.linspace(-1, 1, 256)
    total = np.exp(losses.discretised_gaussian_log_likelihood(levels, 0.3, np.log(0.2))).sum()
    assert float(total) == pytest.approx(1.0, abs=1e-4)


def toy_denoiser(weight=0.3):
    """An ε-prediction that is a fixed function of x and t (no network needed)."""
    return lambda x, t: weight * jnp.tanh(x) + 1e-4 * t[:, None, None, None]


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_is_deterministic_given_the_noise_only_for_eta_zero(eta):
    schedule = diffusion.make_schedule("linear", 100)
    noise = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 1))
    run = jax.jit(lambda rng: sampling.ddim(toy_denoiser(), schedule, "eps", noise, rng, 10, eta))
    a, b = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
    if eta == 0.0:
        np.testing.assert_array_equal(a, b)
    else:
        assert float(jnp.abs(a - b).max()) > 1e-3


def test_ddim_step_matches_numpy():
    num = 100
    schedule = diffusion.make_schedule("linear", num)
    alpha_bar = np.asarray(schedule.alphas_cumprod, np.float64)
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 1)))
    x = noise.astype(np.float64)
    timesteps = list(range(0, num, num // 5))
    for i in reversed(range(len(timesteps))):
        t = timesteps[i]
        a, a_prev = alpha_bar[t], (alpha_bar[timesteps[i - 1]] if i else 1.0)
        eps = 0.3 * np.tanh(x) + 1e-4 * t
        x0 = np.clip((x - np.sqrt(1 - a) * eps) / np.sqrt(a), -1, 1)
        eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    got = sampling.ddim(toy_denoiser(), schedule, "eps", noise, jax.random.PRNGKey(0), 5, 0.0)
    np.testing.assert_allclose(got, x, atol=1e-4)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ancestral_sampling_matches_numpy(variance):
    num = 50  # the rescaled linear schedule reaches β = 1 (ᾱ_T = 0) at T = 20
    schedule = diffusion.make_schedule("linear", num)
    betas = np.asarray(schedule.betas, np.float64)
    alpha_bar = np.cumprod(1 - betas)
    prev = np.append(1.0, alpha_bar[:-1])
    tilde = betas * (1 - prev) / (1 - alpha_bar)
    sigma2 = np.append(tilde[1], betas[1:]) if variance == "beta" else tilde
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 1)))
    rng = jax.random.PRNGKey(5)
    x = noise.astype(np.float64)
    for index in range(num):
        t = num - 1 - index
        eps = 0.3 * np.tanh(x) + 1e-4 * t
        x0 = np.clip((x - np.sqrt(1 - alpha_bar[t]) * eps) / np.sqrt(alpha_bar[t]), -1, 1)
        mean = (np.sqrt(prev[t]) * betas[t] * x0 + np.sqrt(1 - betas[t]) * (1 - prev[t]) * x) / (
            1 - alpha_bar[t]
        )
        z = np.asarray(jax.random.normal(jax.random.fold_in(rng, index), x.shape))
        x = mean + (np.sqrt(sigma2[t]) * z if t > 0 else 0)
    got = sampling.ddpm(toy_denoiser(), schedule, "eps", noise, rng, variance)
    np.testing.assert_allclose(got, x, atol=1e-4)


def test_guidance_scale_one_is_the_conditional_model():
    def apply(x, t, label):  # a "network" whose output depends on the label
        return jnp.tanh(x) * (1.0 + label[:, None, None, None]) + 1e-3 * t[:, None, None, None]

    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 1))
    t, label = jnp.array([5, 6, 7, 8]), jnp.array([0, 1, 2, 3])
    conditional = sampling.conditional(apply, label)(x, t)
    np.testing.assert_allclose(sampling.guided(apply, label, 10, 1.0)(x, t), conditional, atol=1e-6)
    unconditional = apply(x, t, jnp.full_like(label, 10))
    np.testing.assert_allclose(
        sampling.guided(apply, label, 10, 3.0)(x, t),
        unconditional + 3.0 * (conditional - unconditional),
        atol=1e-5,
    )


def diffusers_ddim_step(
    model_output,
    t,
    x,
    alpha_bar,
    *,
    step_ratio,
    prediction,
    eta,
    clip,
    use_clipped_model_output,
    variance_noise,
):
    """NumPy transcription of diffusers' DDIMScheduler.step (set_alpha_to_one=True,
    clip_sample=clip, clip_sample_range=1, no thresholding)."""
    t_prev = t - step_ratio
    a, a_prev = alpha_bar[t], (alpha_bar[t_prev] if t_prev >= 0 else 1.0)
    b = 1 - a
    if prediction == "epsilon":
        x0 = (x - np.sqrt(b) * model_output) / np.sqrt(a)
        eps = model_output
    else:  # "v_prediction"
        x0 = np.sqrt(a) * x - np.sqrt(b) * model_output
        eps = np.sqrt(a) * model_output + np.sqrt(b) * x
    if clip:
        x0 = np.clip(x0, -1, 1)
    variance = (1 - a_prev) / b * (1 - a / a_prev)
    std = eta * np.sqrt(variance)
    if use_clipped_model_output:
        eps = (x - np.sqrt(a) * x0) / np.sqrt(b)
    x_prev = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - std**2) * eps
    if eta > 0:
        x_prev = x_prev + std * variance_noise
    return x_prev


@pytest.mark.parametrize("parameterisation", ["eps", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_diffusers_for_both_clipped_model_output_settings(parameterisation, eta):
    num, steps = 100, 10
    schedule = diffusion.make_schedule("linear", num)
    alpha_bar = np.asarray(schedule.alphas_cumprod, np.float64)
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 1)))
    rng = jax.random.PRNGKey(7)
    # diffusers' set_timesteps ("leading" spacing, steps_offset=0), highest first.
    step_ratio = num // steps
    timesteps = (np.arange(steps) * step_ratio)[::-1]
    # Outputs whose x̂_0 leave [-1, 1], so that clipping matters.
    weight = 0.3 if parameterisation == "eps" else 1.5
    results = {}
    for use_clipped in (True, False):
        x = noise.astype(np.float64)
        for index, t in enumerate(timesteps):
            output = weight * np.tanh(x) + 1e-4 * t  # toy_denoiser(weight)
            z = np.asarray(jax.random.normal(jax.random.fold_in(rng, index), x.shape))
            x = diffusers_ddim_step(
                output,
                t,
                x,
                alpha_bar,
                step_ratio=step_ratio,
                prediction="epsilon" if parameterisation == "eps" else "v_prediction",
                eta=eta,
                clip=True,
                use_clipped_model_output=use_clipped,
                variance_noise=z,
            )
        got = sampling.ddim(
            toy_denoiser(weight),
            schedule,
            parameterisation,
            noise,
            rng,
            steps,
            eta,
            clip=True,
            use_clipped_model_output=use_clipped,
        )
        np.testing.assert_allclose(got, x, atol=1e-4)
        results[use_clipped] = x
    # The two settings are different samplers here: clipping is active.
    assert np.abs(results[True] - results[False]).max() > 1e-3
