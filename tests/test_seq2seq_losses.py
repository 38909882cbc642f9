"""The seq2seq loss against NumPy: label smoothing over non-padding tokens."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.losses import seq2seq


def _numpy_loss(logits, targets, weights, s):
    logits = logits.astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    vocab = logits.shape[-1]
    smooth = np.full(logits.shape, s / vocab)
    for index in np.ndindex(targets.shape):
        smooth[index + (targets[index],)] += 1 - s
    per_token = -(smooth * logp).sum(-1)
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    count = weights.sum()
    correct = (logits.argmax(-1) == targets) * weights
    return (per_token * weights).sum() / count, (nll * weights).sum() / count, correct.sum() / count


@pytest.mark.parametrize("s", [0.0, 0.1])
def test_label_smoothed_cross_entropy_matches_numpy(s):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, (3, 5))
    weights = np.ones((3, 5), np.float32)
    weights[1, 3:] = 0
    weights[2, 1:] = 0
    loss, metrics = seq2seq.cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), label_smoothing=s
    )
    expected, nll, accuracy = _numpy_loss(logits, targets, weights, s)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["nll"]) == pytest.approx(nll, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(accuracy, rel=1e-6)
    # Padding positions do not matter at all.
    changed = logits.copy()
    changed[weights == 0] = 100.0
    again, _ = seq2seq.cross_entropy(
        jnp.asarray(changed), jnp.asarray(targets), jnp.asarray(weights), label_smoothing=s
    )
    assert float(again) == pytest.approx(float(loss), rel=1e-6)
