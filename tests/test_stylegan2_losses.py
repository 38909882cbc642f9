"""StyleGAN2 penalties and schedule scalars against independent references: R1 vs finite
differences, the path length penalty vs its closed form on a linear generator, the EMA's
half-life, the lazy-regularisation correction of Adam, the style-mixing draw."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.losses import stylegan2 as losses
from jaxgen.models import stylegan2 as models
from tests.test_stylegan2_model import tiny_model_config


def test_r1_matches_finite_differences():
    _, discriminator = models.make_networks(tiny_model_config(resolution=8), (8, 8, 1))
    rng = np.random.default_rng(0)
    real = rng.uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32)
    label = jnp.zeros((4,), jnp.int32)
    params = discriminator.init(jax.random.PRNGKey(0), jnp.asarray(real), label)["params"]

    def critic(x):
        return discriminator.apply({"params": params}, x, label)

    value, metrics = losses.r1_penalty(critic, jnp.asarray(real))
    # Central differences of the sum of logits (minibatch std couples the examples: the
    # gradient of the sum is what R1 differentiates, as stylegan2-ada's autograd.grad does).
    eps = 1e-2
    flat = real.reshape(-1)
    bumps = np.eye(flat.size, dtype=np.float32) * eps
    total = jax.jit(jax.vmap(lambda x: jnp.sum(critic(x.reshape(real.shape)))))
    up = np.asarray(total(jnp.asarray(flat[None] + bumps)))
    down = np.asarray(total(jnp.asarray(flat[None] - bumps)))
    grads = ((up - down) / (2 * eps)).reshape(4, -1)
    expected = np.mean(np.sum(grads**2, axis=1))  # E_x ||grad D(x)||^2
    np.testing.assert_allclose(float(value), expected, rtol=2e-2)
    assert float(metrics["r1_grad_norm"]) > 0


def test_path_length_penalty_matches_the_closed_form_of_a_linear_generator():
    rng = np.random.default_rng(1)
    batch, num_ws, w_dim, height, width, channels = 3, 4, 5, 6, 6, 2
    a = rng.normal(size=(num_ws, w_dim, height, width, channels))
    ws = rng.normal(size=(batch, num_ws, w_dim))
    noise = rng.normal(size=(batch, height, width, channels)) / math.sqrt(height * width)
    pl_mean, decay = 0.7, 0.01

    def synthesize(ws):  # G(ws) = sum over layers and w of ws * A: linear in ws
        return jnp.einsum("bnw,nwhxc->bhxc", ws, jnp.asarray(a, ws.dtype))

    penalty, new_mean, metrics = losses.path_length_penalty(
        synthesize, jnp.asarray(ws, jnp.float32), jnp.asarray(noise, jnp.float32), pl_mean, decay
    )
    # J^T y: the Jacobian of a linear map is A itself, so the gradient is A contracted with y.
    jty = np.einsum("nwhxc,bhxc->bnw", a, noise)  # [B, num_ws, w_dim]
    lengths = np.sqrt(np.mean(np.sum(jty**2, axis=2), axis=1))
    expected_mean = pl_mean + decay * (lengths.mean() - pl_mean)
    np.testing.assert_allclose(float(new_mean), expected_mean, rtol=1e-5)
    np.testing.assert_allclose(float(penalty), np.mean((lengths - expected_mean) ** 2), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["pl_length"]), lengths.mean(), rtol=1e-5)


def test_ema_half_life_is_ema_kimg_thousand_images():
    batch, ema_kimg = 64, 10.0
    beta = float(losses.ema_beta(batch, ema_kimg, images_seen=10**9))
    steps = ema_kimg * 1000 / batch  # a half-life's worth of steps
    np.testing.assert_allclose(beta**steps, 0.5, rtol=1e-5)
    # Ramp-up: the half-life is at most images_seen * ema_rampup; a copy at the start.
    assert float(losses.ema_beta(batch, ema_kimg, 0, ema_rampup=0.05)) == 0.0
    ramped = float(losses.ema_beta(batch, ema_kimg, 64_000, ema_rampup=0.05))
    np.testing.assert_allclose(ramped, 0.5 ** (batch / 3200.0), rtol=1e-6)


def test_lazy_regularisation_corrects_lr_and_betas():
    lr, b1, b2 = losses.lazy_adam(0.002, 0.0, 0.99, 16)
    np.testing.assert_allclose((lr, b1, b2), (0.002 * 16 / 17, 0.0, 0.99 ** (16 / 17)))
    assert losses.lazy_adam(0.002, 0.5, 0.99, 1) == (0.002, 0.5, 0.99)


def test_mixing_cutoff():
    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    never = jax.vmap(lambda k: losses.mixing_cutoff(k, 8, 0.0))(keys)
    assert (np.asarray(never) == 8).all()  # probability 0: no layer takes the second w
    always = np.asarray(jax.vmap(lambda k: losses.mixing_cutoff(k, 8, 1.0))(keys))
    assert always.min() == 1 and always.max() == 7
    often = np.asarray(jax.vmap(lambda k: losses.mixing_cutoff(k, 8, 0.9))(keys))
    assert 0.8 < np.mean(often < 8) < 0.97
