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
