"""GAN losses: values worked out by hand, the penalties against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.config import ConfigError
from jaxgen.losses import gan as losses

REAL = jnp.array([0.0, 2.0])
FAKE = jnp.array([-1.0, 1.0])


def softplus(x):
    return math.log(1.0 + math.exp(x))


# log(1 + e^x) by hand for the logits above: D loss = mean softplus(-real) + mean softplus(fake).
NS_D = (softplus(0.0) + softplus(-2.0)) / 2 + (softplus(-1.0) + softplus(1.0)) / 2
NS_G = (softplus(1.0) + softplus(-1.0)) / 2  # mean softplus(-fake)
EXPECTED = {
    # name: (D loss, G loss)
    "non_saturating": (NS_D, NS_G),
    "minimax": (NS_D, -(softplus(-1.0) + softplus(1.0)) / 2),
    # hinge: D = mean(relu(1 - [0, 2])) + mean(relu(1 + [-1, 1])) = 1/2 + 2/2; G = -mean(fake).
    "hinge": (1.5, 0.0),
    # Wasserstein: D = mean(fake) - mean(real) = 0 - 1; G = -mean(fake) = 0.
    "wgan_gp": (-1.0, 0.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loss_values_match_hand_computation(name):
    loss = losses.LOSSES.get(name)
    d_loss, d_metrics = loss.discriminator(REAL, FAKE)
    g_loss, _ = loss.generator(FAKE)
    expected_d, expected_g = EXPECTED[name]
    np.testing.assert_allclose(d_loss, expected_d, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g_loss, expected_g, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(d_metrics["d_real"], 1.0)
    np.testing.assert_allclose(d_metrics["d_fake"], 0.0)


def test_every_registered_loss_has_a_hand_computed_value():
    assert set(losses.LOSSES.names()) == set(EXPECTED)


def test_only_wgan_gp_requires_a_regularizer_and_it_is_the_gradient_penalty():
    required = {n: losses.LOSSES.get(n).requires for n in losses.LOSSES.names()}
    assert {n: r for n, r in required.items() if r} == {"wgan_gp": ("gradient_penalty",)}
    for names in required.values():
        assert all(name in losses.REGULARIZERS for name in names)


def test_regularizers_keep_the_config_keywords_and_scales_of_saved_runs():
    # gp_weight and r1_gamma are in every GAN config.json written so far: they must not move.
    entries = {n: losses.REGULARIZERS.get(n) for n in losses.REGULARIZERS.names()}
    assert {n: (e.keyword, e.metric, e.scale) for n, e in entries.items()} == {
        "gradient_penalty": ("gp_weight", "gp", 1.0),
        "r1": ("r1_gamma", "r1", 0.5),  # γ / 2 (Mescheder et al. 2018, eq. 9)
    }
    assert {(e.player, e.interval) for e in entries.values()} == {("discriminator", 1)}


def test_regularizer_inputs_are_interpolates_or_real_images():
    real, fake, mix = jnp.ones((2, 1, 1, 1)), jnp.zeros((2, 1, 1, 1)), jnp.array([0.25, 1.0])
    gp, r1 = losses.REGULARIZERS.get("gradient_penalty"), losses.REGULARIZERS.get("r1")
    np.testing.assert_array_equal(gp.inputs(real, fake, mix)[:, 0, 0, 0], [0.25, 1.0])
    np.testing.assert_array_equal(r1.inputs(real, fake, mix), real)


def test_unknown_loss_names_the_field():
    with pytest.raises(ConfigError, match=r"^config\.loss\.name: unknown loss 'lsgan'"):
        losses.LOSSES.get("lsgan")


def test_gradient_penalty_of_a_linear_critic_is_its_closed_form():
    # C(x) = <w, x> + b has gradient w everywhere: GP = (||w|| - 1)^2, R1 = ||w||^2.
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(4, 4, 2)).astype(np.float32))

    def critic(x):
        return jnp.sum(x * w, axis=(1, 2, 3)) + 0.7

    x = jnp.asarray(rng.normal(size=(5, 4, 4, 2)).astype(np.float32))
    norm = float(np.linalg.norm(np.asarray(w)))
    gp, metrics = losses.gradient_penalty(critic, x)
    np.testing.assert_allclose(gp, (norm - 1.0) ** 2, rtol=1e-5)
    np.testing.assert_allclose(metrics["gp_grad_norm"], norm, rtol=1e-5)
    r1, _ = losses.r1_penalty(critic, x)
    np.testing.assert_allclose(r1, norm**2, rtol=1e-5)


def test_gradient_penalty_is_per_example():
    # C(x) = ||x||^2 / 2 has gradient x: GP = mean_i (||x_i|| - 1)^2, one norm per example.
    x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 3, 3, 1)).astype(np.float32))
    gp, _ = losses.gradient_penalty(lambda x: 0.5 * jnp.sum(x**2, axis=(1, 2, 3)), x)
    norms = np.linalg.norm(np.asarray(x).reshape(6, -1), axis=1)
    np.testing.assert_allclose(gp, np.mean((norms - 1.0) ** 2), rtol=1e-5)


def test_interpolate_mixes_each_example_with_its_own_weight():
    real, fake = jnp.ones((3, 2, 2, 1)), jnp.zeros((3, 2, 2, 1))
    mixed = losses.interpolate(real, fake, jnp.array([0.0, 0.25, 1.0]))
    np.testing.assert_allclose(mixed[:, 0, 0, 0], [0.0, 0.25, 1.0])


def test_penalties_are_differentiable_in_the_critic_params():
    # The penalty enters the D loss, so its gradient w.r.t. the critic's params must exist:
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||.
    w = jnp.array([3.0, 4.0])
    x = jnp.ones((2, 1, 1, 2))
    grad = jax.grad(
        lambda w: losses.gradient_penalty(lambda x: jnp.sum(x * w, axis=(1, 2, 3)), x)[0]
    )(w)
    np.testing.assert_allclose(grad, 2 * (5.0 - 1.0) * np.array([3.0, 4.0]) / 5.0, rtol=1e-5)
