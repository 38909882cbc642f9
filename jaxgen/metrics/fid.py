"""Sample-quality maths on host arrays: Fréchet distance, KID and Inception Score.

Pure NumPy/SciPy on features and class probabilities that a feature network
(metrics/inception.py or metrics/domain.py) has already computed; nothing here
knows about networks, devices or datasets. Features are accumulated in float64
(`FeatureStatistics`) so that 50k x 2048 sums do not lose precision.
"""

import warnings
from typing import NamedTuple

import numpy as np
from scipy import linalg


class Gaussian(NamedTuple):
    """Mean [D] and covariance [D, D] of a set of features."""

    mean: np.ndarray
    cov: np.ndarray


class FeatureStatistics:
    """Running mean and (unbiased) covariance of feature batches, in float64."""

    def __init__(self, dim: int):
        self.count = 0
        self.total = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def add(self, features: np.ndarray, mask: np.ndarray | None = None) -> None:
        features = np.asarray(features, np.float64)
        if mask is not None:
            features = features[np.asarray(mask) > 0]
        self.count += features.shape[0]
        self.total += features.sum(axis=0)
        self.outer += features.T @ features

    def gaussian(self) -> Gaussian:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        mean = self.total / self.count
        # sum (x - m)(x - m)^T = sum x x^T - n m m^T; n - 1 as np.cov (what pytorch-fid uses).
        cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return Gaussian(mean, cov)


def gaussian_of(features: np.ndarray) -> Gaussian:
    """Mean and unbiased covariance of features [N, D]."""
    statistics = FeatureStatistics(np.shape(features)[1])
    statistics.add(features)
    return statistics.gaussian()


def frechet_distance(a: Gaussian, b: Gaussian, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2}) (Heusel et al. 2017).

    As pytorch-fid: if the product's square root is not finite (near-singular
    covariances, e.g. fewer samples than dimensions), both covariances get
    `eps` added to their diagonal; a numerically imaginary part (|imag| < 1e-3
    on the diagonal) is dropped, a larger one is an error.
    """
    mean_a, mean_b = np.asarray(a.mean, np.float64), np.asarray(b.mean, np.float64)
    cov_a, cov_b = np.atleast_2d(a.cov).astype(np.float64), np.atleast_2d(b.cov).astype(np.float64)
    if mean_a.shape != mean_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(f"statistics differ in shape: {mean_a.shape} vs {mean_b.shape}")
    diff = mean_a - mean_b
    with warnings.catch_warnings():  # singular products are handled just below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(cov_a.shape[0]) * eps
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"imaginary component {np.max(np.abs(covmean.imag))} in the matrix square root"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


def polynomial_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dim = x.shape[1]
    k_xx = (x @ x.T / dim + 1.0) ** 3
    k_yy = (y @ y.T / dim + 1.0) ** 3
    k_xy = (x @ y.T / dim + 1.0) ** 3
    m, n = x.shape[0], y.shape[0]
    # The unbiased estimator leaves out the diagonal k(x_i, x_i) terms.
    sum_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    sum_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(sum_xx + sum_yy - 2.0 * k_xy.mean())


def kernel_inception_distance(
    x: np.ndarray, y: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: the polynomial-kernel MMD^2 averaged over random subsets; (mean, std).

    Each subset draws `subset_size` rows (capped at the smaller set) of x and of
    y without replacement, as in the reference implementation and torch-fidelity.
    """
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError(f"KID needs at least 2 feature vectors in each set, got {size}")
    rng = np.random.default_rng(seed)
    values = [
        polynomial_mmd(
            x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)]
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp E_x KL(p(y|x) || p(y)) over `splits` equal parts (Salimans et al. 2016); (mean, std).

    `probs` are class probabilities [N, K]; the marginal p(y) is taken per split,
    as in the original code.
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ValueError(f"inception score: no class probabilities (shape {probs.shape})")
    if splits < 1 or len(probs) < splits:
        raise ValueError(f"inception score: {len(probs)} predictions cannot fill {splits} splits")
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        # 0 log 0 = 0: xlogy-style guard so confident one-hot predictions are exact.
        log_ratio = np.log(np.where(part > 0, part, 1.0)) - np.log(
            np.where(part > 0, marginal, 1.0)
        )
        scores.append(np.exp(np.mean(np.sum(part * log_ratio, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))
