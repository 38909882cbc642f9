"""FID / KID / IS maths against closed forms and identities (NumPy only)."""

import numpy as np
import pytest
from scipy import linalg

from jaxgen.metrics import fid


def random_gaussian(rng, dim):
    factor = rng.normal(size=(dim, dim))
    return fid.Gaussian(rng.normal(size=dim), factor @ factor.T / dim + 0.1 * np.eye(dim))


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 16))
    stats = fid.gaussian_of(features)
    assert abs(fid.frechet_distance(stats, stats)) < 1e-6


def test_fid_equals_the_closed_form_for_two_gaussians():
    rng = np.random.default_rng(1)
    a, b = random_gaussian(rng, 8), random_gaussian(rng, 8)
    # tr(S_a^{1/2} S_b S_a^{1/2})^{1/2} is the symmetric-PSD form of tr (S_a S_b)^{1/2}.
    root_a = linalg.sqrtm(a.cov).real
    cross = np.linalg.eigvalsh(root_a @ b.cov @ root_a)
    expected = (
        np.sum((a.mean - b.mean) ** 2)
        + np.trace(a.cov)
        + np.trace(b.cov)
        - 2 * np.sum(np.sqrt(np.clip(cross, 0, None)))
    )
    np.testing.assert_allclose(fid.frechet_distance(a, b), expected, rtol=1e-8)


def test_fid_of_diagonal_gaussians_is_the_sum_over_dimensions():
    mean_a, mean_b = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    var_a, var_b = np.array([1.0, 4.0]), np.array([9.0, 0.25])
    expected = np.sum((mean_a - mean_b) ** 2 + (np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    value = fid.frechet_distance(
        fid.Gaussian(mean_a, np.diag(var_a)), fid.Gaussian(mean_b, np.diag(var_b))
    )
    np.testing.assert_allclose(value, expected, rtol=1e-10)


def test_fid_is_symmetric():
    rng = np.random.default_rng(2)
    a, b = random_gaussian(rng, 12), random_gaussian(rng, 12)
    np.testing.assert_allclose(fid.frechet_distance(a, b), fid.frechet_distance(b, a), rtol=1e-8)


def test_fid_of_singular_covariances_is_finite():
    """Fewer samples than dimensions: rank-deficient covariances, the eps fallback."""
    rng = np.random.default_rng(3)
    a = fid.gaussian_of(rng.normal(size=(10, 32)))
    b = fid.gaussian_of(rng.normal(size=(10, 32)) + 1.0)
    value = fid.frechet_distance(a, b)
    assert np.isfinite(value) and value > 0


def test_streaming_statistics_equal_numpy_with_a_mask():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(100, 5))
    stats = fid.FeatureStatistics(5)
    mask = np.ones(110)
    mask[100:] = 0
    padded = np.concatenate([features, np.full((10, 5), 99.0)])
    stats.add(padded[:60], mask[:60])
    stats.add(padded[60:], mask[60:])
    gaussian = stats.gaussian()
    np.testing.assert_allclose(gaussian.mean, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(gaussian.cov, np.cov(features, rowvar=False), rtol=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
    same, same_std = fid.kernel_inception_distance(x, y, num_subsets=20, subset_size=500)
    shifted, _ = fid.kernel_inception_distance(x, y + 1.0, num_subsets=20, subset_size=500)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 0.1 and shifted > 50 * abs(same)


def test_unbiased_mmd_is_symmetric_and_zero_on_equal_sets():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(60, 4)) + 0.5
    np.testing.assert_allclose(fid.polynomial_mmd(x, y), fid.polynomial_mmd(y, x), rtol=1e-10)
    # On one set the unbiased estimate is -(mean of diagonal - mean off-diagonal)·2/n, ~0 only
    # in expectation; on identical copies of a constant vector it is exactly zero.
    constant = np.ones((5, 4))
    assert fid.polynomial_mmd(constant, constant) == pytest.approx(0.0, abs=1e-12)


def test_unbiased_mmd_equals_the_pairwise_sums_of_binkowski_et_al():
    """MMD²_u = Σ_{i≠j} k(x_i, x_j) / m(m-1) + Σ_{i≠j} k(y_i, y_j) / n(n-1) - 2 Σ k(x_i, y_j) / mn
    with k(a, b) = (a·b / d + 1)³ (Bińkowski et al. 2018, eq. 2 and sec. 4), pair by pair."""
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(7, 5)), 0.8 * rng.normal(size=(9, 5)) + 0.3
    m, n, d = len(x), len(y), x.shape[1]

    def k(a, b):
        return (sum(a_i * b_i for a_i, b_i in zip(a, b, strict=True)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert fid.polynomial_mmd(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_inception_score_of_confident_uniform_predictions_is_the_class_count():
    probs = np.eye(10)[np.arange(1000) % 10]
    mean, std = fid.inception_score(probs, splits=10)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_a_constant_prediction_is_one():
    probs = np.tile(np.array([0.1, 0.2, 0.7]), (300, 1))
    assert fid.inception_score(probs, splits=3)[0] == pytest.approx(1.0)
    assert fid.inception_score(np.eye(3)[np.zeros(30, int)], splits=3)[0] == pytest.approx(1.0)
