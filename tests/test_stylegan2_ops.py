"""StyleGAN2 ops against independent references: FIR resampling vs scipy.signal.upfirdn,
the modulated convolution vs a NumPy transcription of the paper's eq. 1-3, equalized lr."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from jaxgen.models import stylegan2_ops as ops

TAPS = np.array([1, 3, 3, 1], np.float64)


def scipy_upfirdn_2d(x, up, down):
    """The separable [1, 3, 3, 1] filter applied by scipy along H then W of x [B, H, W, C]
    (1-D taps normalised to sum 1, times `up` per axis): the full-length output."""
    h = TAPS / TAPS.sum() * up
    y = scipy.signal.upfirdn(h, x, up=up, down=1, axis=1)
    y = scipy.signal.upfirdn(h, y, up=up, down=1, axis=2)
    return y


def test_the_filter_is_the_normalised_outer_product():
    f = ops.setup_filter()
    np.testing.assert_allclose(f, np.outer(TAPS, TAPS) / 64.0)


@pytest.mark.parametrize("size", [4, 7])
def test_upsample2d_matches_scipy(size):
    x = np.random.default_rng(0).normal(size=(2, size, size + 1, 3))
    ours = np.asarray(ops.upsample2d(jnp.asarray(x, jnp.float32), ops.setup_filter()))
    # Zero insertion leaves the sample first, then pads 2 before: ours[i] = full[i + 1].
    full = scipy_upfirdn_2d(x, up=2, down=1)
    expected = full[:, 1 : 1 + 2 * size, 1 : 1 + 2 * (size + 1)]
    assert ours.shape == (2, 2 * size, 2 * (size + 1), 3)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    # Gain 4: a constant image stays constant away from the borders.
    const = np.asarray(ops.upsample2d(jnp.ones((1, 8, 8, 1)), ops.setup_filter()))
    np.testing.assert_allclose(const[:, 2:-2, 2:-2], 1.0, rtol=1e-6)


@pytest.mark.parametrize("size", [8, 6])
def test_downsample2d_matches_scipy(size):
    x = np.random.default_rng(1).normal(size=(2, size, size, 2))
    ours = np.asarray(ops.downsample2d(jnp.asarray(x, jnp.float32), ops.setup_filter()))
    full = scipy_upfirdn_2d(x, up=1, down=1)
    # Padding 1 on each side, a valid 4-tap filter, every 2nd sample: ours[i] = full[2 i + 2].
    expected = full[:, 2 : 2 + size : 2, 2 : 2 + size : 2]
    assert ours.shape == (2, size // 2, size // 2, 2)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def numpy_same_conv(x, w):
    """Correlation with zero padding k // 2: x [H, W, Cin], w [k, k, Cin, Cout]."""
    k = w.shape[0]
    p = k // 2
    xp = np.pad(x, ((p, p), (p, p), (0, 0)))
    out = np.zeros(x.shape[:2] + (w.shape[-1],))
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = np.einsum("abc,abcd->d", xp[i : i + k, j : j + k], w)
    return out


def numpy_modulated_conv(x, weight, styles, demodulate):
    """Karras et al. 2020, eq. 1-3, one sample at a time: w' = s_i w_ijk,
    w'' = w' / sqrt(sum_{i,k} w'^2 + eps)."""
    out = []
    for b in range(x.shape[0]):
        w = weight * styles[b][None, None, :, None]
        if demodulate:
            w = w / np.sqrt(np.sum(w**2, axis=(0, 1, 2)) + 1e-8)
        out.append(numpy_same_conv(x[b], w))
    return np.stack(out)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv_matches_the_numpy_transcription(demodulate, fused):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5, 5, 4))
    weight = rng.normal(size=(3, 3, 4, 6)) / math.sqrt(36)
    styles = rng.normal(size=(3, 4)) + 1.0
    ours = ops.modulated_conv2d(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(weight, jnp.float32),
        jnp.asarray(styles, jnp.float32),
        demodulate=demodulate,
        fused=fused,
    )
    expected = numpy_modulated_conv(x, weight, styles, demodulate)
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=1e-5)
    if demodulate:  # unit-variance input, unit-norm weights: roughly unit-variance output
        assert 0.3 < np.std(expected) < 3.0


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3])
def test_grouped_path_equals_the_per_sample_path(up, kernel):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 4, 4, 5)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 3)), jnp.float32)
    styles = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    for demodulate in (True, False):
        fused = ops.modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, fused=True)
        split = ops.modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, fused=False)
        assert fused.shape == (4, 4 * up, 4 * up, 3)
        np.testing.assert_allclose(np.asarray(fused), np.asarray(split), rtol=1e-4, atol=1e-4)
    # Per sample: sample b's output depends on its own style only.
    every = ops.modulated_conv2d(x, weight, styles, up=up, fused=True)
    alone = ops.modulated_conv2d(x[1:2], weight, styles[1:2], up=up, fused=True)
    np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(every[1]), rtol=1e-4, atol=1e-4)


def numpy_valid_conv(x, w):
    """Correlation without padding: x [H, W, Cin], w [k, k, Cin, Cout]."""
    k = w.shape[0]
    rows, cols = x.shape[0] - k + 1, x.shape[1] - k + 1
    out = np.zeros((rows, cols, w.shape[-1]))
    for i in range(rows):
        for j in range(cols):
            out[i, j] = np.einsum("abc,abcd->d", x[i : i + k, j : j + k], w)
    return out


def test_upsampling_conv_is_fir_upsampling_then_the_conv():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 4, 4, 2))
    w = rng.normal(size=(3, 3, 2, 3))
    ours = ops.conv2d_resample(
        jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), ops.setup_filter(), up=2
    )
    # The publisher pads once, before the filter, so the conv sees the filter's tails: the
    # valid conv of scipy's whole upsampled-and-filtered signal (length 2 H + 2).
    expected = numpy_valid_conv(scipy_upfirdn_2d(x, up=2, down=1)[0], w)[None]
    assert ours.shape == expected.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=1e-4)


def test_downsampling_conv_is_fir_then_strided_conv():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 8, 8, 2))
    w = rng.normal(size=(3, 3, 2, 3))
    ours = ops.conv2d_resample(
        jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), ops.setup_filter(), down=2
    )
    # FIR with padding 2 (ours[i] = full[i + 1]), then the 3x3 conv with stride 2.
    full = scipy_upfirdn_2d(x, up=1, down=1)[0]
    expected = numpy_valid_conv(full[1:, 1:], w)[::2, ::2][None]
    assert ours.shape == expected.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=1e-4)


def test_equalized_dense_scales_weights_at_run_time():
    layer = ops.EqualDense(7, bias_init=0.5, lr_multiplier=0.01)
    x = jnp.asarray(np.random.default_rng(6).normal(size=(5, 64)), jnp.float32)
    params = layer.init(jax.random.PRNGKey(0), x)["params"]
    w, b = np.asarray(params["weight"]), np.asarray(params["bias"])
    # Stored N(0, 1) / lr_multiplier; stored bias = bias_init.
    assert 80 < np.std(w) < 120 and np.allclose(b, 0.5)
    expected = np.asarray(x) @ (w * 0.01 / 8.0) + b * 0.01
    np.testing.assert_allclose(
        np.asarray(layer.apply({"params": params}, x)), expected, rtol=1e-5, atol=1e-6
    )
    # The gradient wrt the stored weight is the effective one times the gain: an SGD step of
    # size lr moves the effective weight by lr * gain^2 * its gradient.
    grads = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x)))(params)
    effective_grad = np.asarray(x).sum(0)[:, None] * np.ones((1, 7))
    np.testing.assert_allclose(np.asarray(grads["weight"]), effective_grad * 0.01 / 8.0, rtol=1e-5)


def test_equalized_conv_uses_he_gain_and_the_lrelu_gain():
    layer = ops.EqualConv(4, kernel_size=3, activation="lrelu")
    x = jnp.asarray(np.random.default_rng(7).normal(size=(1, 5, 5, 3)), jnp.float32)
    params = layer.init(jax.random.PRNGKey(1), x)["params"]
    w = np.asarray(params["weight"]) / math.sqrt(27)
    pre = numpy_same_conv(np.asarray(x[0]), w) + np.asarray(params["bias"])
    expected = np.where(pre >= 0, pre, 0.2 * pre) * math.sqrt(2)
    np.testing.assert_allclose(
        np.asarray(layer.apply({"params": params}, x))[0], expected, rtol=1e-4, atol=1e-5
    )
