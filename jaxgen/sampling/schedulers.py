"""Diffusers' noise schedulers in pure JAX, built from a `scheduler_config.json` dict.

    config = read_config(f"{hf_dir}/scheduler")               # scheduler_config.json
    scheduler = make("pndm", config, num_inference_steps=50)   # or make(None, config): its class
    x_0 = sample(model_fn, latents, scheduler, rng)             # one lax.scan, len(timesteps) calls

Each scheduler equals diffusers 0.42's class of the same algorithm (`NAMES`) step for step: the
config is resolved as `<Class>.from_config(config)` resolves it (the class's own defaults for the
keys the config lacks or lists in `_use_default_values`, other classes' keys ignored), and
everything that depends only on the config and the number of steps (betas, alphas_cumprod,
timesteps, sigmas, the multistep weights of each call) is computed on the host with NumPy,
mirroring torch's float32 arithmetic where it matters (torch.linspace, cumprod). What is left is
one pure jnp function per model call, `scheduler.step(state, x, model_output, row, noise)`, where
`row` holds that call's scalars, so a sampling loop is one lax.scan with a fixed number of model
calls. A diffusers loop and this one line up call by call:

    x = latents * init_noise_sigma
    for t in timesteps:  out = model(scale_model_input(x, t), t);  x = step(out, t, x)

`model_fn(x_in, t)` gets the scaled input and the call's timestep (a scalar: int32, or float32 for
Euler's interpolated timesteps) and returns what the U-Net returns (ε, v or x_0, per
`prediction_type`); classifier-free guidance belongs inside it. Arrays may have any layout:
every update is elementwise, apart from the learned DDPM variances (split on the last axis, NHWC)
and dynamic thresholding (per example). Ancestral steps (DDPM, Euler ancestral, DDIM with eta > 0)
draw step k's noise from fold_in(rng, k).

Left out: sigma schedules other than diffusers' interpolated, Karras and exponential ones (beta,
Lu's lambdas, flow), `rescale_betas_zero_snr`, Euler's s_churn, DPM-Solver's third order and
SDE variants, custom timestep lists. A config asking for one fails with one line naming the key.
"""

import json
import math
import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxgen.config import ConfigError
from jaxgen.sampling import scheduler_steps, sigma_scheduler_steps
from jaxgen.sampling.scheduler_base import Scheduler, cumulative_alphas, fail

# jaxgen's short names -> diffusers class names.
NAMES = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
}

_BETAS = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    trained_betas=None,
)
_CLIP = dict(
    clip_sample=True,
    thresholding=False,
    dynamic_thresholding_ratio=0.995,
    clip_sample_range=1.0,
    sample_max_value=1.0,
)
_SIGMAS_OFF = dict(use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False)
# Each class's __init__ keywords and defaults in diffusers 0.42 (what from_config falls back to).
DEFAULTS = {
    "PNDMScheduler": dict(
        **_BETAS,
        skip_prk_steps=False,
        set_alpha_to_one=False,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=0,
    ),
    "DDIMScheduler": dict(
        **_BETAS,
        **_CLIP,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
        timestep_spacing="leading",
        rescale_betas_zero_snr=False,
    ),
    "DDPMScheduler": dict(
        **_BETAS,
        **_CLIP,
        variance_type="fixed_small",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=0,
        rescale_betas_zero_snr=False,
    ),
    "EulerDiscreteScheduler": dict(
        **_BETAS,
        **_SIGMAS_OFF,
        prediction_type="epsilon",
        interpolation_type="linear",
        sigma_min=None,
        sigma_max=None,
        timestep_spacing="linspace",
        timestep_type="discrete",
        steps_offset=0,
        rescale_betas_zero_snr=False,
        final_sigmas_type="zero",
    ),
    "EulerAncestralDiscreteScheduler": dict(
        **_BETAS,
        prediction_type="epsilon",
        timestep_spacing="linspace",
        steps_offset=0,
        rescale_betas_zero_snr=False,
    ),
    "DPMSolverMultistepScheduler": dict(
        **_BETAS,
        **{k: v for k, v in _CLIP.items() if k not in ("clip_sample", "clip_sample_range")},
        **_SIGMAS_OFF,
        solver_order=2,
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        euler_at_final=False,
        use_lu_lambdas=False,
        use_flow_sigmas=False,
        flow_shift=1.0,
        final_sigmas_type="zero",
        lambda_min_clipped=-math.inf,
        variance_type=None,
        timestep_spacing="linspace",
        steps_offset=0,
        rescale_betas_zero_snr=False,
        use_dynamic_shifting=False,
        time_shift_type="exponential",
    ),
}
# Values this module does not implement: (key, the only value accepted).
_ONLY = (
    ("rescale_betas_zero_snr", False),
    ("use_beta_sigmas", False),
    ("use_lu_lambdas", False),
    ("use_flow_sigmas", False),
    ("use_dynamic_shifting", False),
    ("interpolation_type", "linear"),
    ("timestep_type", "discrete"),
)
_SPACINGS = ("leading", "linspace", "trailing")
# Built by sigma_scheduler_steps (on σ = sqrt((1 - ᾱ) / ᾱ)); the rest by scheduler_steps.
_SIGMA_SCHEDULERS = ("euler", "euler_ancestral", "dpmpp_2m")


def read_config(path: str | os.PathLike) -> dict:
    """A diffusers `scheduler_config.json` (a file, or the pipeline's scheduler/ folder), or one
    line naming the file when it is missing or not a JSON object."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "scheduler_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read the scheduler config ({error})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a scheduler config is a JSON object")
    return config


def from_config(class_name: str, config: dict) -> dict:
    """The keyword arguments `<class_name>.from_config(config)` passes to __init__ in diffusers:
    the config's values for the class's own keys, the class's defaults for the rest (and for keys
    the config lists in `_use_default_values`, which diffusers records when a scheduler was built
    with defaults: a swapped-in class then uses its own)."""
    if class_name not in DEFAULTS:
        fail("_class_name", f"unsupported scheduler {class_name!r}; choose from {sorted(DEFAULTS)}")
    used_defaults = set(config.get("_use_default_values", ()))
    defaults = DEFAULTS[class_name]
    return {
        key: config[key] if key in config and key not in used_defaults else default
        for key, default in defaults.items()
    }


def make(
    name: str | None,
    config: dict,
    num_inference_steps: int,
    *,
    stable_diffusion_pipeline: bool = False,
    **options,
) -> Scheduler:
    """The scheduler `name` (a key of NAMES; None: the config's `_class_name`) from a diffusers
    scheduler config dict, for num_inference_steps.

    stable_diffusion_pipeline: also apply what StableDiffusionPipeline's constructor does to an
        outdated scheduler config (steps_offset -> 1, clip_sample True -> False): the scheduler
        `StableDiffusionPipeline.from_pretrained(folder)` runs with.
    options: eta and use_clipped_model_output for DDIM (diffusers' step() arguments; its
        pipelines pass eta=0), ignored by the others as diffusers' pipelines pass eta only to a
        step that takes it.
    """
    if name is None:
        by_class = {v: k for k, v in NAMES.items()}
        class_name = config.get("_class_name")
        if class_name not in by_class:
            fail("_class_name", f"unsupported {class_name!r}; choose from {sorted(by_class)}")
        name = by_class[class_name]
    if name not in NAMES:
        raise ConfigError(f"sample.sampler: unknown scheduler {name!r}; choose from {list(NAMES)}")
    resolved = from_config(NAMES[name], config)
    if stable_diffusion_pipeline:
        resolved["steps_offset"] = 1
        if resolved.get("clip_sample") is True:
            resolved["clip_sample"] = False
    for key, only in _ONLY:
        if key in resolved and resolved[key] != only:
            fail(key, f"{resolved[key]!r} is not supported by jaxgen (only {only!r})")
    if resolved["timestep_spacing"] not in _SPACINGS:
        fail("timestep_spacing", f"{resolved['timestep_spacing']!r}; choose from {_SPACINGS}")
    if not 1 <= num_inference_steps <= resolved["num_train_timesteps"]:
        raise ConfigError(
            "sample.num_inference_steps: must be in [1, num_train_timesteps = "
            f"{resolved['num_train_timesteps']}], got {num_inference_steps}"
        )
    module = sigma_scheduler_steps if name in _SIGMA_SCHEDULERS else scheduler_steps
    alphas_cumprod = cumulative_alphas(resolved)
    return getattr(module, name)(name, resolved, alphas_cumprod, num_inference_steps, **options)


# ------------------------------------------------------------------------------------------
# Host-side schedules (NumPy, float32 where diffusers computes in torch float32)


# ------------------------------------------------------------------------------------------
# Pieces of the per-call update shared by several schedulers (jnp)


# ------------------------------------------------------------------------------------------
# The loop


def sample(
    model_fn: Callable[[jax.Array, jax.Array], jax.Array],
    latents: jax.Array,
    scheduler: Scheduler,
    rng: jax.Array,
    *,
    noise: jax.Array | None = None,
    return_all: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Runs the whole denoising loop as one lax.scan: len(scheduler.timesteps) model calls.

    Args:
        model_fn: (x_in, t) -> model output of x's shape, t a scalar of the timesteps' dtype.
        latents: unit-variance noise; scaled by init_noise_sigma first, as diffusers' pipelines do.
            The loop keeps x in float32 whatever model_fn computes in (diffusers' Euler and
            DPM-Solver upcast inside step too); model_fn casts x_in to its compute dtype.
        rng: the ancestral noise of call k is normal(fold_in(rng, k)).
        noise: [calls, *x.shape] fixed noises to use instead of rng's (to replay a run).
        return_all: also return every call's x_prev [calls, *x.shape].
    Returns:
        the final sample, float32 (and the intermediate ones).
    """
    x = latents.astype(jnp.float32) * jnp.float32(scheduler.init_noise_sigma)
    timesteps = jnp.asarray(scheduler.timesteps)
    rows = {key: jnp.asarray(value) for key, value in scheduler.table.items()}

    def call(carry, inputs):
        x, state = carry
        k, t, row, fixed = inputs
        output = model_fn(x / row["input_divisor"], t).astype(jnp.float32)
        step_noise = None
        if scheduler.stochastic:
            step_noise = fixed if fixed is not None else _normal(rng, k, x)
        x, state = scheduler.step(state, x, output, row, step_noise)
        return (x, state), (x if return_all else None)

    inputs = (jnp.arange(len(scheduler.timesteps)), timesteps, rows, noise)
    (x, _), history = jax.lax.scan(call, (x, scheduler.init_state(x)), inputs)
    return (x, history) if return_all else x


def _normal(rng: jax.Array, k: jax.Array, x: jax.Array) -> jax.Array:
    return jax.random.normal(jax.random.fold_in(rng, k), x.shape, x.dtype)
