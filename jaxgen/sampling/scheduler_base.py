"""The pieces every diffusers scheduler builder shares: the Scheduler record, one-line config
errors, betas and timesteps computed on the host as diffusers computes them (torch's float32
linspace and cumprod), and x_0 clipping. `schedulers.make` picks a builder; the builders
(`scheduler_steps`, `sigma_scheduler_steps`) fill a Scheduler from these.
"""

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.config import ConfigError


def fail(key: str, message: str):
    """Raises the one-line error naming a scheduler config key."""
    raise ConfigError(f"scheduler_config.json: {key}: {message}")


@dataclasses.dataclass(frozen=True)
class Scheduler:
    """One scheduler for one number of inference steps: host constants and a pure step.

    timesteps: [calls] what the model is given at each call (len = the number of model calls).
    table: per-call scalars, each [calls]; row k of it is `row` in step. "input_divisor" is
        diffusers' scale_model_input (the model sees x / input_divisor).
    step(state, x, model_output, row, noise) -> (x_prev, state): noise is a standard normal
        array of x's shape when `stochastic`, else None.
    init_state(x) -> state: the multistep history (an empty dict for one-step schedulers).
    """

    name: str
    config: dict
    timesteps: np.ndarray
    init_noise_sigma: float
    table: dict
    step: Callable
    init_state: Callable
    stochastic: bool
    alphas_cumprod: np.ndarray


def build(name, config, ac, timesteps, table, step, init_state, stochastic, sigma0=1.0):
    """A Scheduler from a builder's per-call table (lists or arrays, each [calls])."""
    n = len(timesteps)
    table = {key: np.asarray(value, np.float32) for key, value in table.items()}
    table.setdefault("input_divisor", np.ones(n, np.float32))
    assert all(value.shape == (n,) for value in table.values()), name
    return Scheduler(
        name=name,
        config=config,
        timesteps=np.asarray(timesteps),
        init_noise_sigma=float(sigma0),
        table=table,
        step=step,
        init_state=init_state,
        stochastic=stochastic,
        alphas_cumprod=ac,
    )


def no_state(x):
    """init_state of the one-step schedulers."""
    return {}


def check_prediction(config, allowed):
    """One line naming prediction_type when the scheduler does not implement it."""
    if config["prediction_type"] not in allowed:
        fail("prediction_type", f"{config['prediction_type']!r}; choose from {allowed}")


def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=float32) bit for bit on CPU: float32 step, each
    half counted from its own end, the multiply-add rounded once (torch's vectorised kernel)."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64((end32 - start32) / np.float32(max(steps - 1, 1)))
    index = np.arange(steps)
    low = (np.float64(start32) + step * index).astype(np.float32)
    high = (np.float64(end32) - step * (steps - 1 - index)).astype(np.float32)
    return np.where(index < steps // 2, low, high).astype(np.float32)


def _betas_for_alpha_bar(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule ("squaredcos_cap_v2"), in float64 then float32."""

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
        for i in range(num_steps)
    ]
    return np.array(betas, np.float32)


def betas(config: dict) -> np.ndarray:
    """[num_train_timesteps] float32 betas of a resolved config."""
    n = config["num_train_timesteps"]
    if config["trained_betas"] is not None:
        return np.asarray(config["trained_betas"], np.float32)
    schedule = config["beta_schedule"]
    if schedule == "linear":
        return torch_linspace(config["beta_start"], config["beta_end"], n)
    if schedule == "scaled_linear":
        return torch_linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n) ** 2
    if schedule == "squaredcos_cap_v2":
        return _betas_for_alpha_bar(n)
    fail("beta_schedule", f"{schedule!r}; choose from linear, scaled_linear, squaredcos_cap_v2")


def cumulative_alphas(config: dict) -> np.ndarray:
    # torch's CPU cumprod of float32 accumulates in float64: this equals it bit for bit.
    alphas = (np.float32(1.0) - betas(config)).astype(np.float64)
    return np.cumprod(alphas).astype(np.float32)


def spaced_timesteps(config: dict, num_inference_steps: int, dtype=np.int64) -> np.ndarray:
    """The descending timesteps of DDIM, DDPM and Euler's set_timesteps (diffusers' three
    `timestep_spacing` rules; steps_offset counts only for "leading")."""
    n_train, n, spacing = (
        config["num_train_timesteps"],
        num_inference_steps,
        config["timestep_spacing"],
    )
    if spacing == "linspace":
        if dtype == np.float32:  # Euler keeps the fractional timesteps
            return np.linspace(0, n_train - 1, n, dtype=np.float32)[::-1].copy()
        return np.linspace(0, n_train - 1, n).round()[::-1].astype(dtype)
    if spacing == "leading":
        ratio = n_train // n
        timesteps = (np.arange(0, n) * ratio).round()[::-1].astype(dtype)
        return timesteps + dtype(config["steps_offset"])
    ratio = n_train / n
    return (np.round(np.arange(n_train, 0, -ratio)) - 1).astype(dtype)


def clip_x0(x0: jax.Array, config: dict) -> jax.Array:
    """diffusers' dynamic thresholding (Saharia et al. 2022) or clip_sample of a predicted x_0."""
    if config["thresholding"]:
        flat = x0.reshape(x0.shape[0], -1).astype(jnp.float32)
        s = jnp.quantile(jnp.abs(flat), config["dynamic_thresholding_ratio"], axis=1)
        s = jnp.clip(s, 1.0, config["sample_max_value"])[:, None]
        return (jnp.clip(flat, -s, s) / s).reshape(x0.shape).astype(x0.dtype)
    if config.get("clip_sample"):
        limit = config["clip_sample_range"]
        return jnp.clip(x0, -limit, limit)
    return x0
