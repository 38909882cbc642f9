"""jaxgen.sampling.schedulers against diffusers 0.42, step by step (golden file).

tests/fixtures/schedulers.npz is made by tests/fixtures/make_scheduler_fixture.py (its docstring
has the command): each case runs a diffusers scheduler on a fake model, reimplemented here as
`fake_model`. Timesteps must be equal (Euler's fractional Karras/exponential ones to 1e-6),
every intermediate sample within 1e-5 of the largest
|value| of that step, and the model must be called as often as diffusers calls it.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.config import ConfigError
from jaxgen.sampling import schedulers

FIXTURE = np.load(pathlib.Path(__file__).parent / "fixtures" / "schedulers.npz")
META = json.loads(str(FIXTURE["meta"]))
CASES = sorted(case for case in META if not case.startswith("_"))
TOLERANCE = 1e-5


def fake_model(x: jax.Array, t: jax.Array) -> jax.Array:
    """make_scheduler_fixture.fake_model: 0.1 x + 0.05 cos(t / 150) sin(0.37 i)."""
    pattern = np.sin(0.37 * np.arange(x.size)).astype(np.float32).reshape(x.shape)
    return 0.1 * x + 0.05 * jnp.cos(t.astype(jnp.float32) / 150) * pattern


def fake_learned(x: jax.Array, t: jax.Array, variance_type: str) -> jax.Array:
    """make_scheduler_fixture.fake_learned on NHWC arrays: ε and the variance block are made in
    NCHW (the fixture's element order) and concatenated on the channel axis, last here."""
    x = jnp.transpose(x, (0, 3, 1, 2))
    pattern = np.cos(0.23 * np.arange(x.size)).astype(np.float32).reshape(x.shape)
    if variance_type == "learned_range":
        variance = 0.8 * jnp.cos(t.astype(jnp.float32) / 300) * pattern
    else:
        variance = 1e-3 * (1.5 + pattern)
    out = jnp.concatenate([fake_model(x, t), variance], axis=1)
    return jnp.transpose(out, (0, 2, 3, 1))


def nhwc(array: np.ndarray) -> np.ndarray:
    """[..., N, C, H, W] -> [..., N, H, W, C]."""
    return np.moveaxis(array, -3, -1)


def run_case(case: str, calls: list | None = None):
    """diffusers' loop of `case` through schedulers.sample; returns every step's x_prev. The
    learned-variance cases run in jaxgen's NHWC layout (the split is on the last axis)."""
    meta = META[case]
    scheduler = schedulers.make(meta["name"], meta["config"], meta["steps"], **meta["options"])
    latents = FIXTURE["latents"]
    noise = FIXTURE[f"{case}/noises"] if f"{case}/noises" in FIXTURE else None
    variance_type = meta["config"].get("variance_type")
    learned = variance_type in ("learned", "learned_range")
    if learned:
        latents, noise = nhwc(latents), nhwc(noise)

    def model(x, t):
        if calls is not None:
            jax.debug.callback(lambda: calls.append(1))
        return fake_learned(x, t, variance_type) if learned else fake_model(x, t)

    loop = functools.partial(schedulers.sample, model, scheduler=scheduler, return_all=True)
    _, history = jax.jit(loop)(latents, rng=jax.random.key(0), noise=noise)
    history = np.asarray(history)
    return scheduler, np.moveaxis(history, -1, -3) if learned else history


def _respaced(config: dict) -> bool:
    return bool(config.get("use_karras_sigmas") or config.get("use_exponential_sigmas"))


@pytest.mark.parametrize("case", CASES)
def test_steps_match_diffusers(case):
    meta = META[case]
    calls = []
    scheduler, history = run_case(case, calls)
    expected_timesteps = FIXTURE[f"{case}/timesteps"]
    if meta["name"] == "euler" and _respaced(meta["config"]):
        # Fractional timesteps from Karras/exponential sigmas go through log σ of torch's
        # `** 0.5`, which is not correctly rounded on CPU: equal to a float32 ulp or two.
        np.testing.assert_allclose(scheduler.timesteps, expected_timesteps, rtol=1e-6)
    else:
        np.testing.assert_array_equal(scheduler.timesteps, expected_timesteps)
    assert scheduler.timesteps.dtype.kind == expected_timesteps.dtype.kind
    assert scheduler.init_noise_sigma == pytest.approx(meta["init_noise_sigma"], rel=1e-7)
    assert len(calls) == meta["calls"] == len(expected_timesteps)
    expected = FIXTURE[f"{case}/samples"]
    assert history.shape == expected.shape
    axes = tuple(range(1, expected.ndim))
    error = np.abs(history - expected).max(axis=axes) / np.abs(expected).max(axis=axes)
    assert error.max() <= TOLERANCE, f"worst step {error.argmax()}: {error.max():.2e}"


def test_pndm_sd14_is_51_model_calls_for_50_steps():
    assert META["pndm_sd1_50"]["calls"] == 51
    scheduler = schedulers.make(None, META["pndm_sd1_50"]["config"], 50)  # the config's class
    assert scheduler.name == "pndm"
    assert len(scheduler.timesteps) == 51
    # The PLMS warm-up evaluates the second timestep twice (diffusers' skip_prk_steps).
    assert list(scheduler.timesteps[:3]) == [981, 961, 961] and scheduler.timesteps[-1] == 1


@pytest.mark.parametrize("case", CASES)
def test_resolved_config_matches_from_config(case):
    """Every __init__ value diffusers used (after the pipeline's fix-ups where the case has
    them) is the scheduler's config."""
    meta = META[case]
    scheduler = schedulers.make(meta["name"], meta["config"], meta["steps"], **meta["options"])
    assert scheduler.config == meta["resolved"]


@pytest.mark.parametrize("name", sorted(schedulers.NAMES))
def test_swapped_scheduler_keeps_from_config_defaults(name):
    swap = META["_swap"]
    resolved = schedulers.from_config(schedulers.NAMES[name], swap["live"])
    assert resolved == swap["resolved"][name]


def test_swap_uses_the_new_class_defaults():
    """The SD 1.4 config with Euler swapped in: its own linspace spacing and prediction default,
    the PNDM config's betas and steps_offset."""
    live = META["_swap"]["live"]
    assert "timestep_spacing" in live["_use_default_values"]
    euler = schedulers.from_config("EulerDiscreteScheduler", live)
    assert euler["timestep_spacing"] == "linspace" and live["timestep_spacing"] == "leading"
    assert euler["beta_schedule"] == "scaled_linear" and euler["steps_offset"] == 1
    ddim = schedulers.from_config("DDIMScheduler", META["pndm_sd1_50"]["config"])
    assert ddim["clip_sample"] is False and ddim["set_alpha_to_one"] is False


@pytest.mark.parametrize("case", sorted(k.split("/")[0] for k in FIXTURE if "alphas" in k))
def test_alphas_cumprod_equal_torch(case):
    meta = META[case]
    scheduler = schedulers.make(meta["name"], meta["config"], meta["steps"])
    np.testing.assert_array_equal(scheduler.alphas_cumprod, FIXTURE[f"{case}/alphas_cumprod"])


def test_sample_draws_fresh_noise_per_call_from_rng():
    scheduler = schedulers.make("euler_ancestral", META["pndm_sd1_10"]["config"], 10)
    latents = jnp.asarray(FIXTURE["latents"])
    run = jax.jit(functools.partial(schedulers.sample, fake_model, scheduler=scheduler))
    a, b = run(latents, rng=jax.random.key(0)), run(latents, rng=jax.random.key(1))
    assert np.isfinite(np.asarray(a)).all() and not np.allclose(a, b)
    np.testing.assert_array_equal(a, run(latents, rng=jax.random.key(0)))
    deterministic = schedulers.make("dpmpp_2m", META["pndm_sd1_10"]["config"], 10)
    run = jax.jit(functools.partial(schedulers.sample, fake_model, scheduler=deterministic))
    np.testing.assert_array_equal(
        run(latents, rng=jax.random.key(0)), run(latents, rng=jax.random.key(1))
    )


@pytest.mark.parametrize(
    "name, config, key",
    [
        ("euler", {"use_beta_sigmas": True}, "use_beta_sigmas"),
        ("dpmpp_2m", {"use_karras_sigmas": True, "use_exponential_sigmas": True}, "karras"),
        ("ddim", {"timestep_spacing": "uniform"}, "timestep_spacing"),
        ("ddim", {"beta_schedule": "sigmoid"}, "beta_schedule"),
        ("dpmpp_2m", {"solver_order": 3}, "solver_order"),
        ("dpmpp_2m", {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
        ("ddpm", {"variance_type": "fixed_large_log"}, "variance_type"),
        ("euler_ancestral", {"prediction_type": "sample"}, "prediction_type"),
        ("heun", {}, "sample.sampler"),
        (None, {"_class_name": "LMSDiscreteScheduler"}, "_class_name"),
    ],
)
def test_unsupported_settings_name_the_key(name, config, key):
    with pytest.raises(ConfigError, match=key):
        schedulers.make(name, config, 10)


def test_bfloat16_model_keeps_the_loop_in_float32():
    """A model computing in bfloat16 (and bf16 latents): x stays float32 through the scan and
    lands near the float32 run."""
    scheduler = schedulers.make("dpmpp_2m", META["pndm_sd1_10"]["config"], 10)

    def bf16_model(x, t):
        return fake_model(x.astype(jnp.bfloat16), t).astype(jnp.bfloat16)

    latents = jnp.asarray(FIXTURE["latents"])
    low = schedulers.sample(bf16_model, latents.astype(jnp.bfloat16), scheduler, jax.random.key(0))
    full = schedulers.sample(fake_model, latents, scheduler, jax.random.key(0))
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, full, atol=0.05 * float(jnp.abs(full).max()))


def test_read_config_names_the_file(tmp_path):
    folder = tmp_path / "scheduler"
    folder.mkdir()
    with pytest.raises(ConfigError, match="scheduler_config.json: cannot read"):
        schedulers.read_config(folder)
    (folder / "scheduler_config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="scheduler_config.json: a scheduler config is a JSON"):
        schedulers.read_config(folder)
    config = META["pndm_sd1_50"]["config"]
    (folder / "scheduler_config.json").write_text(json.dumps(config))
    assert schedulers.read_config(folder) == config
    assert schedulers.read_config(folder / "scheduler_config.json") == config
