"""GPT cross-entropy against a NumPy reference."""

import numpy as np
import pytest

from jaxgen.losses import gpt as losses


def numpy_cross_entropy(logits, targets, smoothing=0.0):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    smooth = -logp.mean(-1)
    return ((1 - smoothing) * nll + smoothing * smooth).mean(), nll.mean()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_numpy(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4, 7, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (4, 7)).astype(np.int32)
    loss, metrics = losses.cross_entropy(logits, targets, label_smoothing=smoothing)
    want_loss, want_nll = numpy_cross_entropy(logits, targets, smoothing)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["nll"]), want_nll, rtol=1e-5)


def test_uniform_logits_give_log_vocab():
    loss, _ = losses.cross_entropy(np.zeros((2, 3, 65), np.float32), np.zeros((2, 3), np.int32))
    np.testing.assert_allclose(float(loss), np.log(65), rtol=1e-6)


def test_large_logits_stay_finite_in_bfloat16():
    logits = np.full((1, 2, 5), 1e4, np.float32)
    logits[0, 0, 1] = 2e4
    import jax.numpy as jnp

    loss, _ = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), np.array([[1, 0]], np.int32))
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), np.log(5) / 2, rtol=1e-2)
