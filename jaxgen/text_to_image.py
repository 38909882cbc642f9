"""Text-to-image generation from a latent diffusion run, for notebooks and experiments.

    from jaxgen.text_to_image import generate
    images = generate("/tmp/ldm_mnist", ["a handwritten digit 3", "the digit seven"],
                      guidance_scale=5.0, num_inference_steps=50, seed=42, num_images_per_prompt=4)
    images.shape  # (2, 4, 28, 28, 1) uint8: a row per prompt

`generate` checks its arguments (one-line ConfigError naming the field: an empty prompt list,
guidance_scale < 0, num_inference_steps < 1 or > T, an unknown sampler), tokenizes the prompts
with the run's tokenizer and calls the run family's text-to-image function
(Steps.predict_fns["text_to_image"], a sampling.latent_diffusion.TextToImage): the function
`python -m experiments.sample --workdir=W --config.sample.prompt="a|b" ...` runs too. Every
prompt of a call goes through one compiled call, and the same seed gives the same images bit for
bit. guidance_scale follows diffusers (0 unconditional, 1 conditional, > 1 guided) and
negative_prompt replaces the empty prompt as the unconditional branch. Pass a loaded `runs.Run`
(`load(workdir)`) to call it many times: the checkpoint is read once, and the compiled sampler of
each setting (everything but the prompts and the seed) is kept for the last few settings, so new
prompts (as many as before) and new seeds cost only the sampling.
"""

import collections
from collections.abc import Callable

import jax
import numpy as np

from jaxgen import images, runs
from jaxgen.config import ConfigError, load_workdir_config
from jaxgen.sampling import latent_diffusion as sampling
from jaxgen.sampling import stable_diffusion

# (id(run), settings) -> (run, compiled generate), most recent last. The run is kept beside its
# id so that an id reused by a later object never hits a stale entry.
_SAMPLERS: collections.OrderedDict = collections.OrderedDict()
_KEEP_SAMPLERS = 4


def load(workdir: str) -> runs.Run:
    """The run in `workdir` (its config.json and latest checkpoint), which must be one whose
    family generates images from text."""
    run = runs.load_run(load_workdir_config(workdir), workdir)
    if "text_to_image" not in run.steps.predict_fns:
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
    sampler: str | None = None,
    eta: float = 0.0,
    output: str = "uint8",
    **imported,
) -> np.ndarray:
    """Images [P, N, H, W, C] for P prompts (a list, or one string with '|' between prompts),
    N = num_images_per_prompt each: uint8 in [0, 255], or floats in [-1, 1] with output="float".

    sampler None: "ddim", or for an imported Stable Diffusion (experiments/import_diffusers.py)
    its own scheduler; such a run also takes height, width and dtype (sampling/stable_diffusion)."""
    run = load(run_or_workdir) if isinstance(run_or_workdir, str) else run_or_workdir
    if output not in ("uint8", "float"):
        raise ConfigError(f"output: {output!r}; choose from uint8, float")
    prompts = sampling.parse_prompts(prompts, "prompts")
    if any("|" in prompt for prompt in prompts):
        raise ConfigError("prompts: a prompt may not contain '|' (it separates prompts)")
    sample = run.config.sample.copy_and_resolve_references()
    is_imported = "scheduler" in run.config.diffusion
    if sampler is None:
        sampler = "" if is_imported else "ddim"
    for key in imported:
        if not is_imported or key not in ("height", "width", "dtype"):
            raise ConfigError(f"{key}: not an argument of generate for this run")
    sample.update(imported)
    sample.update(
        prompt="|".join(prompts),
        negative_prompt=negative_prompt,
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
        seed=seed,
        num_images_per_prompt=num_images_per_prompt,
        sampler=sampler,
        eta=eta,
    )
    config = run.config
    if is_imported:
        stable_diffusion.check_settings(sample, config.diffusion.scheduler.to_dict())
        settings = stable_diffusion.settings_of(sample)
    else:
        sampling.check_settings(sample, config.diffusion.num_timesteps, config.loss.caption_dropout)
        settings = sampling.image_settings(sample)
    pipeline = run.steps.predict_fns["text_to_image"]
    compiled = _compiled(run, pipeline, settings)
    ids, negative = pipeline.prepare(prompts), pipeline.prepare([negative_prompt])
    grid = compiled(run.state, ids, negative, jax.random.PRNGKey(seed))
    grid = np.asarray(jax.device_get(grid))
    return images.to_uint8(grid) if output == "uint8" else grid


def _compiled(run: runs.Run, pipeline: sampling.TextToImage, settings) -> Callable:
    """pipeline.generate under jit for `settings`, reused across prompts and seeds."""
    key = (id(run), settings)
    if key in _SAMPLERS and _SAMPLERS[key][0] is run:
        _SAMPLERS.move_to_end(key)
        return _SAMPLERS[key][1]

    def generate(state, ids, negative_ids, rng):
        return pipeline.generate(pipeline.params(state), ids, negative_ids, rng, settings=settings)

    _SAMPLERS[key] = (run, run.placement.compile_eval(generate))
    while len(_SAMPLERS) > _KEEP_SAMPLERS:
        _SAMPLERS.popitem(last=False)
    return _SAMPLERS[key][1]
