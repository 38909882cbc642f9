"""Latent text-to-image diffusion: caption dropout, the loss, the sampler, and the family built on
untrained autoencoder and CLIP runs (tests/stages.py): the checks of the earlier stages, the frozen
params copied into the state, one train step."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import diffusion
from jaxgen.losses import ddpm as ddpm_losses
from jaxgen.models import autoencoder, latent_unet
from jaxgen.sampling import latent_diffusion as sampling
from jaxgen.train import latent_diffusion as ld

UNET = dict(
    channels=8, channel_multipliers=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
    heads=2, dropout=0.0, groups=4, dtype="float32", param_dtype="float32",
)  # fmt: skip


def test_drop_captions_empties_about_rate_of_them():
    captions = jnp.ones((4000, 5), jnp.int32)
    dropped = ld.drop_captions(captions, jax.random.PRNGKey(0), 0.1)
    empty = np.all(np.asarray(dropped) == 0, axis=1)
    assert np.all(np.asarray(dropped)[~empty] == 1)
    assert 0.08 < empty.mean() < 0.12  # 4000 draws: std 0.005
    assert not np.any(np.asarray(ld.drop_captions(captions, jax.random.PRNGKey(0), 0.0)) == 0)


def _unet():
    config = ml_collections.ConfigDict(UNET)
    return latent_unet.make_model(config, latent_channels=2)


def test_denoise_loss_is_mse_against_eps_on_q_sample():
    unet = _unet()
    schedule = diffusion.make_schedule("linear", 100)
    rng = np.random.default_rng(0)
    batch = {
        "latents": jnp.asarray(rng.normal(size=(3, 4, 4, 2)), jnp.float32),
        "context": jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32),
        "t": jnp.array([0, 50, 99]),
        "noise": jnp.asarray(rng.normal(size=(3, 4, 4, 2)), jnp.float32),
    }
    params = unet.init(jax.random.PRNGKey(0), batch["latents"], batch["t"], batch["context"])
    params = params["params"]
    loss, metrics = ld.denoise_loss(
        params, batch, unet=unet, schedule=schedule, parameterisation="eps",
        loss_fn=ddpm_losses.LOSSES.get("mse"), loss_kw={},
    )  # fmt: skip
    # The U-Net's output starts at 0 (zero-initialised output conv): the loss is E[ε²].
    assert float(loss) == pytest.approx(float(np.mean(np.square(batch["noise"]))), rel=1e-5)
    assert float(metrics["mse"]) == pytest.approx(float(loss), rel=1e-5)


class StandIn:
    """A U-Net stand-in whose output depends on z_t, t and the context:
    tanh(w_c z_t) + a t / T + b · mean(context), with w [C], a and b scalars."""

    def apply(self, variables, zt, t, context, dropout_rng=None):
        p = variables["params"]
        m = jnp.mean(context, axis=(1, 2))[:, None, None, None]
        return jnp.tanh(p["w"] * zt) + p["a"] * t[:, None, None, None] / 100 + p["b"] * m


@pytest.mark.parametrize("parameterisation,weighting", [("eps", "none"), ("v", "min_snr")])
def test_denoise_loss_and_gradient_against_numpy(parameterisation, weighting):
    """L = mean_b w(SNR_b) mean_pixels (f(z_t) - target)², z_t = √ᾱ z_0 + √(1-ᾱ) ε, target ε or
    v = √ᾱ ε - √(1-ᾱ) z_0 (Ho et al. eq. 14; Salimans & Ho; Min-SNR-5), and its gradient
    with respect to w, a, b, all in NumPy."""
    schedule = diffusion.make_schedule("linear", 100)
    rng = np.random.default_rng(1)
    z0, eps = rng.normal(size=(2, 3, 4, 4, 2))
    context = rng.normal(size=(3, 5, 6)) + 0.5
    t = np.array([0, 37, 99])
    params = {"w": np.array([0.7, -1.3]), "a": np.array(0.4), "b": np.array(-0.8)}
    batch = {"latents": z0, "context": context, "t": t, "noise": eps}
    loss_fn = ddpm_losses.LOSSES.get("mse")
    kw = dict(unet=StandIn(), schedule=schedule, parameterisation=parameterisation)
    kw |= dict(loss_fn=loss_fn, loss_kw={"weighting": weighting})
    as32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)  # noqa: E731
    (loss, _), grads = jax.value_and_grad(ld.denoise_loss, has_aux=True)(
        as32(params), {**as32(batch), "t": jnp.asarray(t)}, **kw
    )

    betas = np.linspace(1e-4, 0.02, 100) * 10  # Nichol & Dhariwal's rescaling for T = 100
    alpha_bar = np.cumprod(1 - betas)[t][:, None, None, None]
    zt = np.sqrt(alpha_bar) * z0 + np.sqrt(1 - alpha_bar) * eps
    if parameterisation == "eps":
        target = eps
    else:
        target = np.sqrt(alpha_bar) * eps - np.sqrt(1 - alpha_bar) * z0
    snr = alpha_bar[:, 0, 0, 0] / (1 - alpha_bar[:, 0, 0, 0])
    weight = np.ones(3) if weighting == "none" else np.minimum(snr, 5.0) / (snr + 1)
    scaled_t = (t / 100)[:, None, None, None]
    mean_context = context.mean(axis=(1, 2))[:, None, None, None]
    h = np.tanh(params["w"] * zt)
    residual = h + params["a"] * scaled_t + params["b"] * mean_context - target
    pixels = residual[0].size
    expected = np.mean(weight * np.sum(residual**2, axis=(1, 2, 3)) / pixels)
    # dL/dθ = mean_b w_b / N Σ_pixels 2 r ∂f/∂θ
    d = 2 * residual * (weight / pixels / 3)[:, None, None, None]
    expected_grads = {
        "w": np.sum(d * (1 - h**2) * zt, axis=(0, 1, 2)),
        "a": np.sum(d * scaled_t),
        "b": np.sum(d * mean_context),
    }
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    for name, value in expected_grads.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-4, atol=1e-7, err_msg=name)


def test_latents_round_trip_through_the_scale_factor_and_sampling_is_reproducible():
    ae_config = ml_collections.ConfigDict(dict(channels=(8, 8, 8), latent_channels=2, groups=4))
    ae = autoencoder.make_model(ae_config, (16, 16, 3))
    image = jnp.zeros((2, 16, 16, 3))
    ae_params = ae.init(jax.random.PRNGKey(0), image, jnp.zeros((2, 4, 4, 2)))["params"]
    noise = jnp.zeros((2, 4, 4, 2))
    z = ld.encode_latents(ae_params, image, noise, autoencoder=ae, scale_factor=2.0)
    mean, _ = ae.apply({"params": ae_params}, image, method=ae.encode)
    np.testing.assert_allclose(z, 2.0 * mean, rtol=1e-6)
    decoded = sampling.decode_latents(ae_params, z, autoencoder=ae, scale_factor=2.0)
    direct = ae.apply({"params": ae_params}, mean, method=ae.decode)
    np.testing.assert_allclose(decoded, jnp.clip(direct, -1, 1), rtol=1e-5, atol=1e-6)

    unet = _unet()
    context = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 6))
    params = unet.init(jax.random.PRNGKey(0), z, jnp.zeros((2,), jnp.int32), context)["params"]
    params = jax.tree.map(lambda p: jnp.full_like(p, 0.01) if not p.any() else p, params)
    settings = ml_collections.ConfigDict(
        dict(guidance_scale=3.0, sampler="ddim", num_inference_steps=5, eta=0.0,
             parameterisation="eps")
    )  # fmt: skip
    schedule = diffusion.make_schedule("linear", 100)
    start = jax.random.normal(jax.random.PRNGKey(2), z.shape)
    sample = jax.jit(
        lambda p, c, n: sampling.sample_latents(
            p, c, jnp.zeros((1, 5, 6)), n, jax.random.PRNGKey(3),
            unet=unet, schedule=schedule, settings=settings,
        )
    )  # fmt: skip
    first, again = sample(params, context, start), sample(params, context, start)
    assert first.shape == z.shape and np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)  # the same seed, the same latents
    settings.guidance_scale = 1.0
    conditional = sampling.sample_latents(
        params, context, jnp.zeros((1, 5, 6)), start, jax.random.PRNGKey(3),
        unet=unet, schedule=schedule, settings=settings,
    )  # fmt: skip
    assert not np.allclose(conditional, first)
