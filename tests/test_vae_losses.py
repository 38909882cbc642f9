"""Tests for jaxgen/losses/vae.py against NumPy/SciPy references and known identities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from jaxgen.config import ConfigError
from jaxgen.losses import vae as losses


def _np_bernoulli_log_prob(x, logits):
    """log p(x) for x in {0, 1} by hand, in float64: x log s(l) + (1 - x) log(1 - s(l))."""
    logits = np.asarray(logits, np.float64)
    log_sigmoid = -np.logaddexp(0.0, -logits)  # log s(l)
    log_one_minus = -np.logaddexp(0.0, logits)  # log (1 - s(l))
    return x * log_sigmoid + (1 - x) * log_one_minus


def _random_inputs(rng, batch=3, samples=4, latent=2, shape=(2, 3, 1)):
    """A small bernoulli (image, out, z, mean, logvar) tuple, as float32 NumPy arrays."""
    image = (rng.random((batch, *shape)) < 0.5).astype(np.float32)
    out = rng.normal(0, 2, (batch, samples, *shape)).astype(np.float32)
    mean = rng.normal(0, 1, (batch, latent)).astype(np.float32)
    logvar = rng.normal(0, 0.5, (batch, latent)).astype(np.float32)
    noise = rng.normal(size=(batch, samples, latent)).astype(np.float32)
    z = (mean[:, None] + np.exp(0.5 * logvar)[:, None] * noise).astype(np.float32)
    return image, out, z, mean, logvar


def _np_log_weights(image, out, z, mean, logvar):
    """log p(x|z) + log p(z) - log q(z|x) [B, K] with SciPy densities, float64."""
    log_px_z = _np_bernoulli_log_prob(image[:, None], out).sum(axis=(2, 3, 4))
    log_pz = stats.norm.logpdf(z).sum(-1)
    log_qz = stats.norm.logpdf(z, mean[:, None], np.exp(0.5 * logvar)[:, None]).sum(-1)
    return log_px_z + log_pz - log_qz


def test_gaussian_kl_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mean = rng.normal(0, 1, (3, 4))
    logvar = rng.normal(0, 0.7, (3, 4))
    num = 200_000
    z = mean + np.exp(0.5 * logvar) * rng.standard_normal((num, 3, 4))  # [N, B, D]
    log_ratio = (stats.norm.logpdf(z, mean, np.exp(0.5 * logvar)) - stats.norm.logpdf(z)).sum(-1)
    estimate = log_ratio.mean(0)  # [B]
    std_error = log_ratio.std(0) / math.sqrt(num)
    kl = np.asarray(losses.gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar)))
    assert kl.shape == (3,)
    np.testing.assert_array_less(np.abs(kl - estimate), 5 * std_error + 1e-4)


def test_gaussian_kl_of_standard_normal_is_zero():
    kl = losses.gaussian_kl(jnp.zeros((2, 5)), jnp.zeros((2, 5)))
    np.testing.assert_array_equal(kl, np.zeros(2))


def test_log_normal_matches_scipy():
    rng = np.random.default_rng(1)
    z, mean, logvar = rng.normal(size=(3, 4, 6))
    expected = stats.norm.logpdf(z, mean, np.exp(0.5 * logvar)).sum(-1)
    got = losses.log_normal(jnp.asarray(z), jnp.asarray(mean), jnp.asarray(logvar))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bernoulli_log_likelihood_matches_by_hand():
    rng = np.random.default_rng(2)
    image = (rng.random((2, 3, 4, 2)) < 0.5).astype(np.float32)
    logits = rng.normal(0, 3, (2, 3, 4, 2)).astype(np.float32)
    expected = _np_bernoulli_log_prob(image, logits).sum(axis=(1, 2, 3))
    got = losses.log_likelihood(jnp.asarray(image), jnp.asarray(logits), "bernoulli")
    assert got.shape == (2,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bernoulli_log_likelihood_extreme_logits_are_finite():
    # Pixel by pixel: (x=1, l=50), (x=0, l=50), (x=1, l=-50), (x=0, l=-50).
    image = jnp.array([1.0, 0.0, 1.0, 0.0]).reshape(4, 1, 1, 1)
    logits = jnp.array([50.0, 50.0, -50.0, -50.0]).reshape(4, 1, 1, 1)
    got = losses.log_likelihood(image, logits, "bernoulli")
    np.testing.assert_allclose(got, [0.0, -50.0, -50.0, 0.0], atol=1e-6)


def test_gaussian_log_likelihood_matches_scipy():
    rng = np.random.default_rng(3)
    image = rng.uniform(-1, 1, (2, 3, 4, 3)).astype(np.float32)
    mu = rng.normal(0, 0.5, (2, 3, 4, 3)).astype(np.float32)
    log_scale = rng.normal(-1, 0.5, (2, 3, 4, 3)).astype(np.float32)
    out = np.concatenate([mu, log_scale], axis=-1)  # [B, H, W, 2C]
    expected = stats.norm.logpdf(image, mu, np.exp(log_scale)).sum(axis=(1, 2, 3))
    got = losses.log_likelihood(jnp.asarray(image), jnp.asarray(out), "gaussian")
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_unknown_likelihood_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^config\.model\.likelihood:"):
        losses.log_likelihood(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1)), "poisson")


def test_elbo_matches_by_hand():
    image, out, z, mean, logvar = _random_inputs(np.random.default_rng(4))
    recon = -_np_bernoulli_log_prob(image[:, None], out).sum(axis=(2, 3, 4)).mean(1)  # [B]
    kl = 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar).sum(-1)
    loss, metrics = losses.elbo(image, out, z, mean, logvar)
    np.testing.assert_allclose(loss, np.mean(recon + kl), rtol=1e-5)
    np.testing.assert_allclose(metrics["elbo"], -np.mean(recon + kl), rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["recon"], recon.mean(), rtol=1e-5)


def test_beta_scales_only_the_kl():
    inputs = _random_inputs(np.random.default_rng(5))
    loss_1, metrics_1 = losses.elbo(*inputs, beta=1.0)
    loss_4, metrics_4 = losses.elbo(*inputs, beta=4.0)
    np.testing.assert_allclose(loss_4 - loss_1, 3.0 * metrics_1["kl"], rtol=1e-5)
    for name in ("elbo", "kl", "recon"):
        np.testing.assert_allclose(metrics_4[name], metrics_1[name], rtol=1e-6)


def test_log_weights_match_scipy():
    inputs = _random_inputs(np.random.default_rng(6))
    got = losses.log_weights(*inputs, likelihood="bernoulli")
    np.testing.assert_allclose(got, _np_log_weights(*inputs), rtol=1e-5, atol=1e-4)


def test_iwae_with_one_sample_is_the_monte_carlo_elbo():
    inputs = _random_inputs(np.random.default_rng(7), samples=1)
    loss, metrics = losses.iwae(*inputs)
    expected = _np_log_weights(*inputs)[:, 0].mean()  # log p(x|z) + log p(z) - log q(z|x)
    np.testing.assert_allclose(-loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["iwae_bound"], expected, rtol=1e-5)
    # The elbo/kl/recon metrics are the same as the elbo loss reports on these inputs.
    _, elbo_metrics = losses.elbo(*inputs)
    for name in ("elbo", "kl", "recon"):
        np.testing.assert_allclose(metrics[name], elbo_metrics[name], rtol=1e-6)


def test_iwae_bound_is_at_least_the_elbo_on_the_same_samples():
    inputs = _random_inputs(np.random.default_rng(8), batch=16, samples=8)
    weights = losses.log_weights(*inputs)  # [B, K]
    bound = losses.importance_log_likelihood(*inputs)  # [B]
    assert np.all(np.asarray(bound) >= np.asarray(weights.mean(1)) - 1e-5)
    _, metrics = losses.iwae(*inputs)
    assert metrics["iwae_bound"] >= weights.mean() - 1e-5


def _linear_gaussian(x, sigma, q_mean, q_std, noise):
    """Inputs for p(z) = N(0, 1), p(x|z) = N(z, sigma^2), q = N(q_mean, q_std^2), 1 pixel.

    noise [M, K] gives M independent replicates with K samples each.
    """
    m, k = noise.shape
    z = (q_mean + q_std * noise).astype(np.float32)[..., None]  # [M, K, 1]
    out = np.concatenate(  # a "decoder output" by hand: mean z and log-scale log sigma
        [z.reshape(m, k, 1, 1, 1), np.full((m, k, 1, 1, 1), math.log(sigma), np.float32)], -1
    )  # [M, K, 1, 1, 2]
    image = np.full((m, 1, 1, 1), x, np.float32)
    mean = np.full((m, 1), q_mean, np.float32)
    logvar = np.full((m, 1), 2 * math.log(q_std), np.float32)
    return image, out, z, mean, logvar


def test_iwae_bound_increases_with_k_in_expectation():
    x, sigma = 1.5, 0.5
    log_px = stats.norm.logpdf(x, 0, math.sqrt(1 + sigma**2))
    rng = np.random.default_rng(9)
    estimate = jax.jit(losses.importance_log_likelihood, static_argnames="likelihood")
    means, errors = [], []
    for k in (1, 4, 16, 64):
        inputs = _linear_gaussian(x, sigma, 0.5, 0.4, rng.standard_normal((10_000, k)))
        bound = np.asarray(estimate(*inputs, likelihood="gaussian"))
        means.append(bound.mean())
        errors.append(bound.std() / math.sqrt(bound.size))
    for i in range(len(means) - 1):
        assert means[i + 1] - means[i] > 4 * math.hypot(errors[i], errors[i + 1])
    assert means[-1] < log_px + 4 * errors[-1]


def test_importance_estimate_converges_to_closed_form_log_px():
    # p(z) = N(0, 1), p(x|z) = N(z, sigma^2) => p(x) = N(0, 1 + sigma^2). The proposal is
    # off-centre and wider than the true posterior N(x / (1 + s^2), s^2 / (1 + s^2)).
    sigma, num_samples, chunks = 0.5, 40_000, 4
    rng = np.random.default_rng(10)
    for x in (-2.0, 0.3, 1.5):
        log_px = stats.norm.logpdf(x, 0, math.sqrt(1 + sigma**2))
        q_mean = x / (1 + sigma**2) + 0.2
        inputs = _linear_gaussian(x, sigma, q_mean, 0.7, rng.standard_normal((1, num_samples)))
        estimate = losses.importance_log_likelihood(*inputs, likelihood="gaussian")
        np.testing.assert_allclose(estimate, [log_px], atol=0.01)
        # The same estimate from chunks of K / 4 samples, combined by logsumexp.
        image, out, z, mean, logvar = inputs
        size = num_samples // chunks
        parts = [
            losses.importance_log_likelihood(
                image, out[:, i : i + size], z[:, i : i + size], mean, logvar, "gaussian"
            )
            + math.log(size)
            for i in range(0, num_samples, size)
        ]
        combined = logsumexp(np.stack(parts), axis=0) - math.log(num_samples)
        np.testing.assert_allclose(combined, estimate, rtol=1e-5)


def test_losses_are_registered():
    assert losses.LOSSES.get("elbo") is losses.elbo
    assert losses.LOSSES.get("iwae") is losses.iwae
    with pytest.raises(ConfigError, match=r"^config\.loss\.name:"):
        losses.LOSSES.get("hinge")
