"""The module-level pieces of the train steps, each alone: losses of params against NumPy,
the per-example input draws, the shared optimizer update, step and EMA."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion
from jaxgen.config import ConfigDict, base_config
from jaxgen.losses import ddpm as ddpm_losses
from jaxgen.losses import gan as gan_losses
from jaxgen.losses import gpt as gpt_losses
from jaxgen.metrics import likelihood
from jaxgen.train import ddpm, gan
from jaxgen.train import state as train_state


class ScaledInput:
    """A stand-in denoiser: output = w * x_t (its only param is the scalar w)."""

    def apply(self, variables, x, t, label=None, dropout_rng=None):
        return variables["params"]["w"] * x


class LinearCritic:
    """A stand-in critic C(x) = <w, x> per example: ||∇_x C|| = ||w|| everywhere."""

    def apply(self, variables, x, label, train):
        return jnp.sum(variables["params"]["w"] * x, axis=(1, 2, 3))


def test_denoise_loss_and_its_gradient_match_numpy():
    rng = np.random.default_rng(0)
    schedule = diffusion.make_schedule("linear", 20)
    alpha_bar = np.asarray(schedule.alphas_cumprod, np.float64)
    image = rng.uniform(-1, 1, (3, 4, 4, 1))
    noise = rng.normal(size=image.shape)
    t = np.array([0, 7, 19])
    batch = {
        "image": jnp.asarray(image, jnp.float32),
        "noise": jnp.asarray(noise, jnp.float32),
        "t": jnp.asarray(t),
        "dropout_rng": jax.random.split(jax.random.PRNGKey(0), 3),
    }
    loss_of = lambda params: ddpm.denoise_loss(  # noqa: E731
        params,
        batch,
        model=ScaledInput(),
        schedule=schedule,
        parameterisation="eps",
        loss_fn=ddpm_losses.LOSSES.get("mse"),
        loss_kw={"weighting": "none"},
    )
    w = 0.7
    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)({"w": jnp.float32(w)})
    a = alpha_bar[t][:, None, None, None]
    xt = np.sqrt(a) * image + np.sqrt(1 - a) * noise
    residual = w * xt - noise  # the ε-target is the noise
    np.testing.assert_allclose(loss, np.mean(residual**2), rtol=1e-5)
    np.testing.assert_allclose(metrics["mse"], np.mean(residual**2), rtol=1e-5)
    np.testing.assert_allclose(grads["w"], np.mean(2 * residual * xt), rtol=1e-4)


def test_train_inputs_draw_per_example_and_apply_label_dropout_and_flips():
    rng = np.random.default_rng(1)
    batch = {
        "image": jnp.asarray(rng.uniform(-1, 1, (8, 4, 4, 1)), jnp.float32),
        "label": jnp.arange(8, dtype=jnp.int32),
    }
    key = jax.random.PRNGKey(3)
    draw = dict(num_steps=50, num_classes=10, random_flip=True)
    everything = ddpm.train_inputs(None, batch, key, label_dropout=1.0, **draw)
    assert np.all(np.asarray(everything["label"]) == 10)  # all dropped to the null label
    kept = ddpm.train_inputs(None, batch, key, label_dropout=0.0, **draw)
    np.testing.assert_array_equal(kept["label"], batch["label"])
    image, flipped = np.asarray(batch["image"]), np.asarray(kept["image"])
    same = np.all(flipped == image, axis=(1, 2, 3))
    mirrored = np.all(flipped == image[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored) and mirrored.any() and (~mirrored).any()
    assert np.all((0 <= np.asarray(kept["t"])) & (np.asarray(kept["t"]) < 50))
    # Each example's draws come from its index: the first half alone draws the same.
    half = ddpm.train_inputs(
        None, {k: v[:4] for k, v in batch.items()}, key, label_dropout=0.0, **draw
    )
    for name in ("t", "noise", "image"):
        np.testing.assert_array_equal(half[name], np.asarray(kept[name])[:4])


def critic_setup(loss: str, gp_weight: float = 0.0, r1_gamma: float = 0.0) -> gan.Setup:
    loss_kw = ConfigDict({"gp_weight": gp_weight, "r1_gamma": r1_gamma})
    return gan.Setup(
        generator=None,
        discriminator=LinearCritic(),
        gan_loss=gan_losses.LOSSES.get(loss),
        optimizers={},
        latent_dim=2,
        num_classes=0,
        n_critic=1,
        regularizers=gan_losses.active_regularizers(loss_kw),
    )


@pytest.mark.parametrize("r1_gamma", [0.0, 2.0])
def test_wgan_gp_discriminator_loss_has_its_closed_form(r1_gamma):
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 3, 1))
    real, fake = rng.normal(size=(4, 3, 3, 1)), rng.normal(size=(4, 3, 3, 1))
    setup = critic_setup("wgan_gp", gp_weight=10.0, r1_gamma=r1_gamma)
    loss, (metrics, new_state) = gan.discriminator_loss(
        {"w": jnp.asarray(w, jnp.float32)},
        {},
        {"image": jnp.asarray(real, jnp.float32), "label": jnp.zeros(4, jnp.int32)},
        {
            "image": jnp.asarray(fake, jnp.float32),
            "label": jnp.zeros(4, jnp.int32),
            "mix": jnp.asarray(rng.uniform(size=4), jnp.float32),
        },
        setup=setup,
    )
    norm = np.sqrt(np.sum(w**2))
    critic = lambda x: np.sum(w * x, axis=(1, 2, 3))  # noqa: E731
    expected = np.mean(critic(fake)) - np.mean(critic(real)) + 10.0 * (norm - 1.0) ** 2
    expected += 0.5 * r1_gamma * norm**2
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["d_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["gp"], (norm - 1.0) ** 2, rtol=1e-4)
    assert ("r1" in metrics) == bool(r1_gamma) and new_state == {}


def test_gradient_step_is_one_sgd_update_of_the_mean_loss():
    optim = base_config().optim
    optim.update(name="sgd", lr=0.1, b1=0.0)
    optimizer = train_state.make_optimizer(optim, num_steps=10, skip_nonfinite=False)
    params = {"w": jnp.array([1.0, -2.0])}
    state = train_state.create(params, optimizer, jax.random.PRNGKey(0))
    batch = {"x": jnp.array([1.0, 3.0])}

    def loss_fn(params, batch):  # mean over the batch of x * |w|^2 / 2
        loss = jnp.mean(batch["x"]) * 0.5 * jnp.sum(params["w"] ** 2)
        return loss, {}

    new_state, metrics = train_state.gradient_step(
        state, batch, loss_fn=loss_fn, optimizer=optimizer, microbatches=2
    )
    # ∇ = mean(x) w = 2 w; w' = w - 0.1 * 2 w = 0.8 w.
    np.testing.assert_allclose(new_state.params["w"], [0.8, -1.6], rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], 2.0 * 0.5 * 5.0, rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], 2.0 * np.sqrt(5.0), rtol=1e-6)
    np.testing.assert_allclose(metrics["lr"], 0.1, rtol=1e-6)
    assert int(new_state.step) == 1 and new_state.ema_params == {}


def test_train_step_is_gradient_step_on_the_inputs_of_the_step_key():
    """train_state.train_step == gradient_step on inputs_of(state, batch, fold_in(rng, step)),
    at a later step too (the key changes with state.step), with microbatches."""
    optim = base_config().optim
    optim.update(name="adam", lr=0.1, ema_decay=0.9)
    optimizer = train_state.make_optimizer(optim, num_steps=10, skip_nonfinite=False)
    state = train_state.create({"w": jnp.array([1.0, -2.0])}, optimizer, jax.random.PRNGKey(3))
    batch = {"x": jnp.array([1.0, 3.0, -1.0, 0.5]), "unused": jnp.zeros(4)}

    def inputs_of(state, batch, rng):  # the batch plus a per-step draw
        del state
        return {"x": batch["x"], "noise": jax.random.normal(rng, batch["x"].shape)}

    def loss_fn(params, inputs):
        loss = jnp.mean((inputs["x"] + inputs["noise"]) * jnp.sum(params["w"] ** 2))
        return loss, {"noise": jnp.mean(inputs["noise"])}

    kw = dict(optimizer=optimizer, microbatches=2)
    step = jax.jit(
        functools.partial(train_state.train_step, inputs_of=inputs_of, loss_of=loss_fn, **kw)
    )
    by_hand = jax.jit(functools.partial(train_state.gradient_step, loss_fn=loss_fn, **kw))
    for _ in range(2):
        new_state, metrics = step(state, batch)
        rng = jax.random.fold_in(state.rng, state.step)
        inputs = {"x": batch["x"], "noise": jax.random.normal(rng, (4,))}
        expected, expected_metrics = by_hand(state, inputs)
        jax.tree.map(np.testing.assert_array_equal, new_state, expected)
        jax.tree.map(np.testing.assert_array_equal, metrics, expected_metrics)
        state = new_state
    assert int(state.step) == 2


def test_train_step_passes_the_state_to_inputs_of():
    """A family whose inputs need more than params (latent diffusion's state.frozen) reads
    them from the state that train_step hands to inputs_of."""
    optimizer = train_state.make_optimizer(base_config().optim, 10, skip_nonfinite=False)
    state = train_state.create({"w": jnp.ones(2)}, optimizer, jax.random.PRNGKey(0))

    def inputs_of(state, batch, rng):
        del rng
        return {"x": batch["x"] * state.params["w"][0] + state.step}

    def loss_fn(params, inputs):
        return jnp.sum(params["w"]) * jnp.mean(inputs["x"]), {"x": jnp.mean(inputs["x"])}

    state = state.replace(step=jnp.asarray(5, jnp.int32))
    _, metrics = train_state.train_step(
        state,
        {"x": jnp.array([2.0, 4.0])},
        inputs_of=inputs_of,
        loss_of=loss_fn,
        optimizer=optimizer,
    )
    assert float(metrics["x"]) == 3.0 + 5.0


def test_perplexity_is_exp_of_the_mean_nll():
    means = {"loss": 2.0, "bits_per_token": 2.0 / math.log(2.0)}
    assert gpt_losses.add_perplexity(means) == {**means, "perplexity": pytest.approx(math.exp(2))}


@pytest.mark.parametrize("loss", [700.0, 1e4, float("inf")])
def test_perplexity_of_a_diverged_run_is_finite(loss):
    """A huge mean NLL caps the exponent (math.exp(1e4) raises OverflowError)."""
    perplexity = gpt_losses.add_perplexity({"loss": loss})["perplexity"]
    assert math.isfinite(perplexity) and perplexity == math.exp(700.0)


@pytest.mark.parametrize("step,decay", [(0, 0.1), (90, 0.91), (10_000, 0.999)])
def test_ema_update_warms_up_as_tf_num_updates(step, decay):
    params, ema = {"w": jnp.array([1.0])}, {"w": jnp.array([5.0])}
    new = train_state.ema_update(params, ema, jnp.asarray(step), 0.999)
    # decay_eff = min(0.999, (1 + step) / (10 + step)); ema' = decay_eff ema + (1 - decay_eff) w
    np.testing.assert_allclose(new["w"], [decay * 5.0 + (1 - decay) * 1.0], rtol=1e-6)


class Oracle:
    """A stand-in ε-model that knows x_0: it returns the exact noise of x_t."""

    def __init__(self, image, schedule):
        self.image, self.schedule = image, schedule

    def apply(self, variables, xt, t, label=None):
        a = diffusion.at(self.schedule.alphas_cumprod, t)
        return (xt - jnp.sqrt(a) * self.image) / jnp.sqrt(1.0 - a)


class BiasedOracle(Oracle):
    """The exact noise plus a constant δ: x̂_0 = x_0 - √((1 - ᾱ_t) / ᾱ_t) δ at every t."""

    def __init__(self, image, schedule, delta):
        super().__init__(image, schedule)
        self.delta = delta

    def apply(self, variables, xt, t, label=None):
        return super().apply(variables, xt, t, label) + self.delta


def numpy_bits_per_dim(image, num_steps, variance, delta):
    """Ho et al.'s bound L_T + Σ_{t=1}^{T-1} L_{t-1} + L_0 in bits/dim [B], in NumPy, for a model
    whose ε is off by δ: every term is then closed form, whatever the noise draws."""
    from math import erf, log, sqrt

    x0 = np.asarray(image, np.float64).reshape(len(image), -1)
    dims = x0.shape[1]
    betas = np.minimum(np.linspace(1e-4, 0.02, num_steps) * 1000 / num_steps, 0.999)
    alpha_bar = np.cumprod(1 - betas)
    prev = np.append(1.0, alpha_bar[:-1])
    tilde = betas * (1 - prev) / (1 - alpha_bar)  # β̃_t; β̃_0 = 0
    sigma2 = np.append(tilde[1], (tilde if variance == "beta_tilde" else betas)[1:])
    # L_T: KL(N(√ᾱ_T x_0, 1 - ᾱ_T) || N(0, 1)) per dimension.
    mean, var = np.sqrt(alpha_bar[-1]) * x0, 1 - alpha_bar[-1]
    prior = np.sum(0.5 * (-1 - np.log(var) + var + mean**2), axis=1)
    # L_{t-1}, t >= 1: the posterior means differ by coef_x0 (x_0 - x̂_0), variances β̃ vs σ².
    kl = 0.0
    for t in range(1, num_steps):
        diff = np.sqrt(prev[t]) * betas[t] / (1 - alpha_bar[t])
        diff *= np.sqrt((1 - alpha_bar[t]) / alpha_bar[t]) * delta
        s2 = sigma2[t]
        kl += dims * 0.5 * (-1 + np.log(s2) - np.log(tilde[t]) + tilde[t] / s2 + diff**2 / s2)
    # L_0: -log of the Gaussian mass of x_0's bin of width 2/255 (the edge bins to ±∞), mean x̂_0.
    model_mean = x0 - np.sqrt((1 - alpha_bar[0]) / alpha_bar[0]) * delta
    scale = sqrt(sigma2[0])

    def cdf(z):
        return 0.5 * (1 + erf(z / sqrt(2)))

    decoder = np.zeros(len(x0))
    for i, j in np.ndindex(x0.shape):
        x, m = x0[i, j], model_mean[i, j]
        upper = 1.0 if x > 0.999 else cdf((x - m + 1 / 255) / scale)
        lower = 0.0 if x < -0.999 else cdf((x - m - 1 / 255) / scale)
        decoder[i] -= log(upper - lower)
    to_bits = 1 / (dims * log(2))
    return (prior + kl + decoder) * to_bits, prior * to_bits, decoder * to_bits


@pytest.mark.parametrize(
    "variance,delta", [("beta_tilde", 0.0), ("beta_tilde", 0.05), ("beta", 0.05)]
)
def test_bits_per_dim_against_numpy(variance, delta):
    """L_T (Gaussian KL), the KL terms and L_0 (discretised Gaussian CDF) of all T terms."""
    schedule = diffusion.make_schedule("linear", 50)
    levels = np.random.default_rng(4).integers(0, 256, (3, 4, 4, 1))
    levels[0, 0, :2, 0] = [0, 255]  # both edge bins
    image = jnp.asarray(levels / 127.5 - 1.0, jnp.float32)
    sums = likelihood.bits_per_dim(
        {},
        {"image": image, "mask": jnp.array([1.0, 1.0, 0.0])},
        jax.random.PRNGKey(0),
        num_timesteps=0,
        conditional=False,
        model=BiasedOracle(image, schedule, delta),
        schedule=schedule,
        parameterisation="eps",
        variance=variance,
        clip=False,
    )
    bpd, prior, decoder = numpy_bits_per_dim(image, 50, variance, delta)
    assert float(sums["count"]) == 2
    assert float(sums["prior_bpd"]) == pytest.approx(prior[:2].sum(), rel=1e-4)
    assert float(sums["decoder_bpd"]) == pytest.approx(decoder[:2].sum(), rel=1e-3)
    assert float(sums["bpd"]) == pytest.approx(bpd[:2].sum(), rel=1e-3)


@pytest.mark.parametrize("num_timesteps", [0, 5])
def test_bits_per_dim_of_an_exact_denoiser_is_prior_plus_decoder(num_timesteps):
    """With x̂_0 = x_0 and the posterior variance β̃, every KL term L_{t-1}, t > 1 is 0:
    the bound is L_T + L_0 only, whether all T terms are summed or k of them sampled."""
    schedule = diffusion.make_schedule("linear", 50)
    image = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (3, 4, 4, 1)), jnp.float32)
    sums = likelihood.bits_per_dim(
        {},
        {"image": image, "mask": jnp.array([1.0, 1.0, 0.0])},
        jax.random.PRNGKey(0),
        num_timesteps=num_timesteps,
        conditional=False,
        model=Oracle(image, schedule),
        schedule=schedule,
        parameterisation="eps",
        variance="beta_tilde",
        clip=False,
    )
    assert float(sums["count"]) == 2
    expected = float(sums["prior_bpd"]) + float(sums["decoder_bpd"])
    assert float(sums["bpd"]) == pytest.approx(expected, rel=1e-4)
    assert float(sums["decoder_bpd"]) > 0 and float(sums["prior_bpd"]) >= 0
