"""Text-to-image generation from a latent diffusion run, for notebooks and experiments.sample.

    from jaxgen.text_to_image import generate
    images = generate("/tmp/ldm_mnist", ["a handwritten digit 3", "the digit seven"],
                      guidance_scale=5.0, num_inference_steps=50, seed=42, num_images_per_prompt=4)
    images.shape  # (2, 4, 28, 28, 1) uint8: a row per prompt

`generate` overrides the run's config.sample with its arguments, checks them (one-line
ConfigError naming the field: an empty prompt list, guidance_scale < 0, num_inference_steps < 1
or > T, an unknown sampler) and runs the family's Steps.sample, which is exactly what
`python -m experiments.sample --workdir=W --config.sample.prompt="a|b" ...` runs: every prompt of
a call in one compiled sampler call, and the same seed gives the same images bit for bit.
guidance_scale follows diffusers (0 unconditional, 1 conditional, > 1 guided) and
negative_prompt replaces the empty prompt as the unconditional branch. Pass a loaded `runs.Run`
(`load(workdir)`) to call it many times: the checkpoint is read once, and the compiled sampler
of each setting (prompts and everything but the seed) is kept for the last few settings, so a
new seed costs only the sampling.
"""

import collections
from collections.abc import Callable

import jax
import numpy as np

from jaxgen import images, runs
from jaxgen.config import ConfigDict, ConfigError, load_workdir_config
from jaxgen.sampling import latent_diffusion as sampling

# (id(run), settings but the seed) -> (run, compiled sampler), most recent last. The run is kept
# beside its id so that an id reused by a later object never hits a stale entry.
_SAMPLERS: collections.OrderedDict = collections.OrderedDict()
_KEEP_SAMPLERS = 4


def load(workdir: str) -> runs.Run:
    """The latent diffusion run in `workdir` (its config.json and latest checkpoint)."""
    run = runs.load_run(load_workdir_config(workdir), workdir)
    if run.config.family != "latent_diffusion":
        raise ConfigError(f"--workdir: {workdir} is a {run.config.family!r} run, not text-to-image")
    return run


def generate(
    run_or_workdir: runs.Run | str,
    prompts: list[str] | str,
    *,
    negative_prompt: str = "",
    guidance_scale: float = 7.5,
    num_inference_steps: int = 50,
    seed: int = 0,
    num_images_per_prompt: int = 1,
    sampler: str = "ddim",
    eta: float = 0.0,
    output: str = "uint8",
) -> np.ndarray:
    """Images [P, N, H, W, C] for P prompts (a list, or one string with '|' between prompts),
    N = num_images_per_prompt each: uint8 in [0, 255], or floats in [-1, 1] with output="float"."""
    run = load(run_or_workdir) if isinstance(run_or_workdir, str) else run_or_workdir
    if output not in ("uint8", "float"):
        raise ConfigError(f"output: {output!r}; choose from uint8, float")
    prompts = sampling.parse_prompts(prompts, "prompts")
    if any("|" in prompt for prompt in prompts):
        raise ConfigError("prompts: a prompt may not contain '|' (it separates prompts)")
    config = run.config.copy_and_resolve_references()
    config.sample.update(
        prompt="|".join(prompts),
        negative_prompt=negative_prompt,
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
        seed=seed,
        num_images_per_prompt=num_images_per_prompt,
        sampler=sampler,
        eta=eta,
    )
    sampling.check_settings(
        config.sample, config.diffusion.num_timesteps, config.loss.caption_dropout
    )
    sample = _sampler(run, config)
    grid = np.asarray(jax.device_get(sample(run.state, {}, jax.random.PRNGKey(seed))["prompts"]))
    return images.to_uint8(grid) if output == "uint8" else grid


def _sampler(run: runs.Run, config: ConfigDict) -> Callable:
    """The compiled Steps.sample of run under config.sample, reused across seeds."""
    settings = {k: v for k, v in config.sample.to_dict().items() if k != "seed"}
    key = (id(run), repr(sorted(settings.items())))
    if key in _SAMPLERS and _SAMPLERS[key][0] is run:
        _SAMPLERS.move_to_end(key)
        return _SAMPLERS[key][1]
    steps = run.family.make_steps(config, run.info, None)
    _SAMPLERS[key] = (run, run.placement.compile_eval(steps.sample))
    while len(_SAMPLERS) > _KEEP_SAMPLERS:
        _SAMPLERS.popitem(last=False)
    return _SAMPLERS[key][1]
