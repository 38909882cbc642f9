"""Text-to-image of an imported Stable Diffusion run, as diffusers' StableDiffusionPipeline does it.

    pipeline = make_pipeline(tokenizer, 77, scheduler_config=..., unet=..., ...)
    images = pipeline.generate(params, ids [P, L], negative [1, L], rng, settings=Settings(...))

A run written by experiments/import_diffusers.py holds the folder's scheduler_config.json
(config.diffusion.scheduler); its sampling goes through jaxgen.sampling.schedulers (diffusers'
schedulers step for step) instead of the DDIM/DDPM of sampling/latent_diffusion.py, with the
pipeline's semantics:
  text      the negative prompt's ids ("" is tokenizer(""), as diffusers encodes it) and the
            prompts' through the frozen CLIP text model: last_hidden_state;
  guidance  classifier-free only when guidance_scale > 1 (diffusers' do_classifier_free_guidance):
            uncond + s (text - uncond), the U-Net run once on [uncond; text];
  latents   N(0, 1) of shape [P N, H/8, W/8, 4] from the seed, or the given `latents` (diffusers'
            NCHW float32 [P N, 4, H/8, W/8], prompt-major as diffusers repeats prompt embeddings),
            times the scheduler's init_noise_sigma; one lax.scan over the scheduler's calls;
  images    vae.decode(latents / scaling_factor), clamped to [-1, 1].
dtype casts the weights and the U-Net, text and VAE inputs to float32, bfloat16 or float16; the
scheduler's arithmetic stays float32 (schedulers.sample).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.config import ConfigDict, ConfigError, is_count, is_number
from jaxgen.data.captions_kind import encode_captions
from jaxgen.sampling import latent_diffusion, schedulers

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class Settings(NamedTuple):
    """The static settings of one compiled call (each new one compiles)."""

    guidance_scale: float
    sampler: str  # "" (the run's scheduler config) or a key of schedulers.NAMES
    num_inference_steps: int
    eta: float  # DDIM's η (diffusers' pipelines pass it to DDIM only)
    num_images_per_prompt: int
    height: int
    width: int
    dtype: str


def settings_of(sample_config: ConfigDict) -> Settings:
    """The Settings of config.sample (checked by check_settings)."""
    return Settings(
        float(sample_config.guidance_scale),
        sample_config.sampler,
        int(sample_config.num_inference_steps),
        float(sample_config.eta),
        int(sample_config.num_images_per_prompt),
        int(sample_config.height),
        int(sample_config.width),
        sample_config.dtype,
    )


def check_settings(sample_config: ConfigDict, scheduler_config: dict) -> None:
    """ConfigError naming the config.sample field of an imported run that cannot work."""
    latent_diffusion.parse_prompts(sample_config.prompt, "config.sample.prompt")
    if not isinstance(sample_config.negative_prompt, str):
        raise ConfigError("config.sample.negative_prompt: must be a string ('' = the empty prompt)")
    scale = sample_config.guidance_scale
    if not is_number(scale) or scale < 0:
        raise ConfigError(f"config.sample.guidance_scale: must be a finite number >= 0, got {scale!r}")  # fmt: skip
    if sample_config.sampler not in ("", *schedulers.NAMES):
        raise ConfigError(
            f"config.sample.sampler: unknown scheduler {sample_config.sampler!r}; choose from "
            f"{', '.join(schedulers.NAMES)} ('' = the run's scheduler config)"
        )
    if not is_count(sample_config.num_inference_steps):
        raise ConfigError(
            "config.sample.num_inference_steps: must be an integer >= 1, got "
            f"{sample_config.num_inference_steps!r}"
        )
    eta = sample_config.eta
    if not is_number(eta) or eta < 0:
        raise ConfigError(f"config.sample.eta: must be a finite number >= 0, got {eta!r}")
    count = sample_config.num_images_per_prompt
    if not is_count(count):
        raise ConfigError(f"config.sample.num_images_per_prompt: must be >= 1, got {count!r}")
    for field in ("height", "width"):
        value = sample_config[field]
        if not is_count(value) or value % 8:
            raise ConfigError(f"config.sample.{field}: must be a positive multiple of 8, got {value!r}")  # fmt: skip
    if sample_config.dtype not in DTYPES:
        raise ConfigError(
            f"config.sample.dtype: {sample_config.dtype!r}; choose from {', '.join(DTYPES)}"
        )
    if sample_config.dtype == "float16" and jax.default_backend() == "cpu":
        raise ConfigError(
            "config.sample.dtype: float16 needs a GPU (XLA's CPU matmuls have no float16 with "
            "float32 accumulation, which the U-Net's attention uses); use bfloat16 or float32"
        )
    if not isinstance(sample_config.latents, str):
        raise ConfigError("config.sample.latents: must be a path to a .npy file ('' = none)")
    try:  # the scheduler is built on the host: its config errors name the key, before compile
        make_scheduler(scheduler_config, settings_of(sample_config))
    except ConfigError as error:
        raise ConfigError(f"config.diffusion.scheduler: {error}") from None


def read_latents(sample_config: ConfigDict, num_prompts: int) -> np.ndarray | None:
    """config.sample.latents as NHWC float32 [P N, H/8, W/8, 4], or None when not given;
    ConfigError naming the field for a file that cannot be read or has the wrong shape."""
    path = sample_config.latents
    if not path:
        return None
    try:
        latents = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ConfigError(f"config.sample.latents: cannot read {path} ({error})") from None
    shape = (
        num_prompts * sample_config.num_images_per_prompt,
        4,
        sample_config.height // 8,
        sample_config.width // 8,
    )
    if latents.shape != shape or latents.dtype.kind != "f":
        raise ConfigError(
            f"config.sample.latents: {path} holds {latents.dtype} {latents.shape}; need float32 "
            f"{shape} (prompts x images per prompt, 4, height/8, width/8: diffusers' NCHW)"
        )
    if not np.all(np.isfinite(latents)):
        raise ConfigError(f"config.sample.latents: {path} holds non-finite values")
    return np.ascontiguousarray(latents.astype(np.float32).transpose(0, 2, 3, 1))


def make_scheduler(scheduler_config: dict, settings: Settings) -> schedulers.Scheduler:
    """The scheduler of `StableDiffusionPipeline.from_pretrained(folder)` (its fix-ups of an
    outdated config: steps_offset 1, clip_sample off), or settings.sampler's class swapped in as
    users swap it, `Cls.from_config(pipe.scheduler.config)`: from the folder's class's fixed-up
    config (the fix-ups apply to the folder's class only, so DDIM swapped in for PNDM clips as
    diffusers' DDIM does by default)."""
    steps, eta = settings.num_inference_steps, settings.eta  # eta: read by DDIM only
    own = schedulers.make(None, scheduler_config, steps, stable_diffusion_pipeline=True, eta=eta)
    if not settings.sampler or settings.sampler == own.name:
        return own
    config = {**scheduler_config, **own.config}  # pipe.scheduler.config: all its class's keys
    return schedulers.make(settings.sampler, config, steps, eta=eta)


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)  # fmt: skip


def text_to_image(
    params,
    ids,
    negative_ids,
    rng,
    latents=None,
    *,
    settings: Settings,
    scheduler_config: dict,
    unet,
    autoencoder,
    clip,
    decode: bool = True,
) -> jax.Array:
    """[P, N, H, W, C] in [-1, 1]: N = settings.num_images_per_prompt images for each prompt
    of ids [P, L] against negative_ids [1, L]; params {"unet", "frozen"}; latents: NHWC
    [P N, H/8, W/8, 4] to start from instead of the seed's noise. decode False: the final
    latents [P, N, H/8, W/8, 4] (diffusers' output_type="latent")."""
    dtype = DTYPES[settings.dtype]
    unet_params, frozen = _cast(params["unet"], dtype), _cast(params["frozen"], dtype)
    num_prompts, count = ids.shape[0], settings.num_images_per_prompt
    encode = functools.partial(latent_diffusion.encode_text, frozen["text_encoder"], clip=clip)
    context = encode(jnp.repeat(ids, count, axis=0))  # [P N, L, D], prompt-major
    guided = settings.guidance_scale > 1.0  # diffusers' do_classifier_free_guidance
    if guided:
        null = jnp.broadcast_to(encode(negative_ids), context.shape)
        context = jnp.concatenate([null, context])  # [2 P N, L, D]: diffusers' order
    shape = (num_prompts * count, settings.height // 8, settings.width // 8, 4)
    noise_rng, sampler_rng = jax.random.split(rng)
    if latents is None:
        latents = jax.random.normal(noise_rng, shape)
    scheduler = make_scheduler(scheduler_config, settings)

    def model_fn(x, t):  # x: the scaled latents [P N, h, w, 4], t: the call's timestep
        x = jnp.concatenate([x, x]) if guided else x
        t = jnp.full((x.shape[0],), t)
        out = unet.apply({"params": unet_params}, x.astype(dtype), t, context.astype(dtype), None)
        out = out.astype(jnp.float32)
        if not guided:
            return out
        uncond, text = jnp.split(out, 2)
        return uncond + settings.guidance_scale * (text - uncond)

    z = schedulers.sample(model_fn, latents, scheduler, sampler_rng)
    if not decode:
        return z.reshape((num_prompts, count) + z.shape[1:])
    scale_factor = frozen["scale_factor"].astype(jnp.float32)
    images = autoencoder.apply(
        {"params": frozen["autoencoder"]},
        (z / scale_factor).astype(dtype),
        method=autoencoder.decode,
    )
    images = jnp.clip(images.astype(jnp.float32), -1.0, 1.0)
    return images.reshape((num_prompts, count) + images.shape[1:])


def make_pipeline(tokenizer, caption_len: int, **kw) -> latent_diffusion.TextToImage:
    """The TextToImage of an imported SD run; kw: text_to_image's bound arguments
    (scheduler_config, unet, autoencoder, clip). generate takes Settings, and `latents`."""
    return latent_diffusion.TextToImage(
        prepare=functools.partial(encode_captions, tokenizer, length=caption_len),
        generate=functools.partial(text_to_image, **kw),
        params=latent_diffusion.unet_and_frozen,
    )


def sample_grid(state, batch, rng, *, pipeline, prompt_ids, negative_ids, settings, latents):
    """{"prompts": [P, N, H, W, C]}: config.sample's prompts (Steps.sample of an imported run)."""
    del batch
    params = pipeline.params(state)
    grid = pipeline.generate(params, prompt_ids, negative_ids, rng, latents, settings=settings)
    return {"prompts": grid}
