"""Text-to-image sampling of a latent diffusion run: prompts -> text encodings -> latents -> images.

    images = text_images(params, frozen, captions [B, L], negative [1, L], rng, ...)  # [B, H, W, C]

`sample_latents` runs jaxgen.sampling.ddpm's DDIM or DDPM (one lax.scan) on the U-Net under
classifier-free guidance (sampling.ddpm.guided_on) and `decode_latents` maps the latents through
the frozen autoencoder's decoder. guidance_scale follows diffusers' convention: 0 is the
unconditional model (the U-Net on the empty or negative prompt), 1 the conditional one, > 1 guided
(out_u + s (out_c - out_u)). The negative prompt replaces the empty prompt as the unconditional
branch, as in diffusers. Every prompt of a call goes through one compiled call. The settings are
checked on the host by `check_settings`, before anything compiles. Loading a run and writing
PNGs are left to jaxgen.text_to_image and the family's writer.
"""

import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import images, samples
from jaxgen.config import ConfigDict, ConfigError, is_count, is_number
from jaxgen.data import captions as caption_data
from jaxgen.data.captions_kind import encode_captions
from jaxgen.models.clip import PAD_ID
from jaxgen.sampling import ddpm as sampling
from jaxgen.workdir import writing

PyTree = Any
TEMPLATE_SETS = ("seen", "heldout")  # the class caption templates generate() prompts with


class SamplerSettings(NamedTuple):
    """What the sampler reads: the static settings of one compiled call."""

    guidance_scale: float
    sampler: str  # "ddim" or "ddpm"
    num_inference_steps: int  # DDIM steps
    eta: float  # DDIM's η (0: deterministic)
    parameterisation: str  # the U-Net's output: "eps", "x0" or "v"


class ImageSettings(NamedTuple):
    """The settings of one compiled text-to-image call (static: each new one compiles; new
    prompts of the same count and new seeds do not)."""

    guidance_scale: float  # diffusers' convention: 0 unconditional, 1 conditional, > 1 guided
    sampler: str  # "ddim" or "ddpm"
    num_inference_steps: int  # DDIM steps
    eta: float  # DDIM's η (0: deterministic)
    num_images_per_prompt: int


def image_settings(sample_config: ConfigDict) -> ImageSettings:
    """The ImageSettings of config.sample (checked by check_settings)."""
    return ImageSettings(
        float(sample_config.guidance_scale),
        sample_config.sampler,
        int(sample_config.num_inference_steps),
        float(sample_config.eta),
        int(sample_config.num_images_per_prompt),
    )


class TextToImage(NamedTuple):
    """A latent diffusion run's text-to-image function: its Steps.predict_fns["text_to_image"].

        ids = pipeline.prepare(["a red apple", "a cat"])       # int32 [P, L], host
        negative = pipeline.prepare([""])                       # [1, L]: the empty prompt
        images = pipeline.generate(pipeline.params(state), ids, negative, rng,
                                   settings=ImageSettings(...))  # [P, N, H, W, C] in [-1, 1]

    generate is pure and jittable with `settings` static (jaxgen.text_to_image compiles it once
    per setting); Steps.sample runs the same function on config.sample's prompts.
    """

    prepare: Callable[[Sequence[str]], np.ndarray]
    generate: Callable[..., jax.Array]
    params: Callable[[Any], PyTree]  # state -> what generate reads: {"unet", "frozen"}


def text_to_image(
    params, ids, negative_ids, rng, *, settings: ImageSettings, parameterisation, latent_shape, **kw
) -> jax.Array:
    """[P, N, H, W, C] in [-1, 1]: N = settings.num_images_per_prompt images for each prompt of
    ids [P, L] (prompt_grid), against negative_ids [1, L]; params {"unet", "frozen"}. kw: the
    unet, autoencoder, clip and schedule."""
    sampler = SamplerSettings(
        settings.guidance_scale,
        settings.sampler,
        settings.num_inference_steps,
        settings.eta,
        parameterisation,
    )
    return prompt_grid(
        params["unet"],
        params["frozen"],
        ids,
        negative_ids,
        rng,
        num_per_prompt=settings.num_images_per_prompt,
        latent_shape=latent_shape,
        settings=sampler,
        **kw,
    )


def make_pipeline(tokenizer, caption_len: int, **kw) -> TextToImage:
    """The TextToImage of a latent diffusion model: prompts tokenized with the run's tokenizer
    and padded to caption_len; kw: text_to_image's bound arguments (unet, autoencoder, clip,
    schedule, parameterisation, latent_shape)."""
    return TextToImage(
        prepare=functools.partial(encode_captions, tokenizer, length=caption_len),
        generate=functools.partial(text_to_image, **kw),
        params=unet_and_frozen,
    )


def unet_and_frozen(state) -> PyTree:
    """What text_to_image reads of a latent diffusion state: the U-Net's eval params (EMA when
    kept) and the frozen stages."""
    return {"unet": state.eval_params, "frozen": state.frozen}


def settings_of(sample_config: ConfigDict, parameterisation: str, **overrides) -> SamplerSettings:
    """The SamplerSettings of config.sample, with `overrides` (e.g. guidance_scale=3.0)."""
    fields = {name: sample_config[name] for name in SamplerSettings._fields[:-1]}
    fields |= overrides
    return SamplerSettings(
        float(fields["guidance_scale"]),
        fields["sampler"],
        int(fields["num_inference_steps"]),
        float(fields["eta"]),
        parameterisation,
    )


def parse_prompts(prompt: str | list[str] | tuple[str, ...], field: str) -> list[str]:
    """The prompts of `prompt` ("a|b" or a list), stripped; a ConfigError naming `field` for an
    empty list or an empty prompt."""
    prompts = prompt.split("|") if isinstance(prompt, str) else list(prompt)
    prompts = [str(p).strip() for p in prompts]
    if not prompts or not any(prompts):
        raise ConfigError(f"{field}: no prompt given (prompts are separated by '|')")
    if not all(prompts):
        raise ConfigError(f"{field}: an empty prompt in {prompt!r}")
    return prompts


def check_settings(sample_config: ConfigDict, num_timesteps: int, caption_dropout: float) -> None:
    """ConfigError naming the config.sample field for a sampler setting that cannot work."""
    parse_prompts(sample_config.prompt, "config.sample.prompt")
    if not isinstance(sample_config.negative_prompt, str):
        raise ConfigError("config.sample.negative_prompt: must be a string ('' = the empty prompt)")
    check_guidance(sample_config.guidance_scale, caption_dropout, "config.sample.guidance_scale")
    if sample_config.sampler not in sampling.SAMPLERS:
        raise ConfigError(
            f"config.sample.sampler: unknown sampler {sample_config.sampler!r}; "
            f"choose from {', '.join(sampling.SAMPLERS)}"
        )
    steps = sample_config.num_inference_steps
    if not is_count(steps) or steps > num_timesteps:
        raise ConfigError(
            f"config.sample.num_inference_steps: must be in [1, T = {num_timesteps}], got {steps!r}"
        )
    eta = sample_config.eta
    if not is_number(eta) or eta < 0:
        raise ConfigError(f"config.sample.eta: must be a finite number >= 0, got {eta!r}")
    count = sample_config.num_images_per_prompt
    if not is_count(count):
        raise ConfigError(f"config.sample.num_images_per_prompt: must be >= 1, got {count!r}")


def check_guidance(scale: Any, caption_dropout: float, field: str) -> None:
    if not is_number(scale) or scale < 0:
        raise ConfigError(
            f"{field}: must be a finite number >= 0 (diffusers' convention), got {scale!r}"
        )
    if scale != 1 and not caption_dropout:
        raise ConfigError(
            f"{field}: guidance needs the unconditional model; train with "
            "config.loss.caption_dropout > 0 (or sample with guidance_scale=1)"
        )


def encode_text(clip_params: PyTree, captions: jax.Array, *, clip) -> jax.Array:
    """The frozen text tower's hidden states [B, L, width]: what the U-Net cross-attends to."""
    _, features = clip.apply({"params": clip_params}, captions, method=clip.encode_text)
    return jax.lax.stop_gradient(features.hidden)


def decode_latents(ae_params, latents, *, autoencoder, scale_factor) -> jax.Array:
    """Images [B, H, W, C] in [-1, 1] from latents scaled by scale_factor."""
    images = autoencoder.apply(
        {"params": ae_params}, latents / scale_factor, method=autoencoder.decode
    )
    return jnp.clip(images, -1.0, 1.0)


def sample_latents(params, context, null_context, noise, rng, *, unet, schedule, settings):
    """Latents [B, h, w, c] for text encodings `context` [B, L, D] under classifier-free guidance
    with scale settings.guidance_scale against `null_context` [1, L, D]; settings.sampler "ddim"
    (num_inference_steps, eta) or "ddpm". No clipping: latents are not confined to [-1, 1]
    (SD's clip_sample=False)."""

    def apply(z, t, text):
        return unet.apply({"params": params}, z, t, text)

    if settings.guidance_scale == 1.0:
        denoise = sampling.conditional(apply, context)
    elif settings.guidance_scale == 0.0:  # the unconditional model alone: half the work
        denoise = sampling.conditional(apply, jnp.broadcast_to(null_context, context.shape))
    else:
        denoise = sampling.guided_on(apply, context, null_context, settings.guidance_scale)
    if settings.sampler == "ddim":
        return sampling.ddim(
            denoise,
            schedule,
            settings.parameterisation,
            noise,
            rng,
            num_inference_steps=settings.num_inference_steps,
            eta=settings.eta,
            clip=False,
        )
    return sampling.ddpm(denoise, schedule, settings.parameterisation, noise, rng, clip=False)


def text_images(
    params, frozen, captions, negative, noise, rng, *, unet, autoencoder, clip, schedule, settings
) -> jax.Array:
    """Images [B, H, W, C] in [-1, 1], one per caption [B, L] (token ids) from its starting
    latent noise [B, h, w, c], with the negative prompt's tokens `negative` [1, L] as the
    unconditional branch. `frozen` holds the "autoencoder" and "text_encoder" params and the
    "scale_factor"."""
    context = encode_text(frozen["text_encoder"], captions, clip=clip)  # [B, L, D]
    null = encode_text(frozen["text_encoder"], negative, clip=clip)  # [1, L, D]
    latents = sample_latents(
        params, context, null, noise, rng, unet=unet, schedule=schedule, settings=settings
    )
    return decode_latents(
        frozen["autoencoder"], latents, autoencoder=autoencoder, scale_factor=frozen["scale_factor"]
    )


def prompt_grid(
    params, frozen, prompts, negative, rng, *, num_per_prompt: int, latent_shape, **kw
) -> jax.Array:
    """[P, N, H, W, C]: N = num_per_prompt images for each of the P prompts [P, L] (a row each),
    all in one sampler call. Column j starts from the same noise in every row, so a prompt's
    images do not depend on the other prompts of the call."""
    noise_rng, sampler_rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, (num_per_prompt, *latent_shape))  # [N, h, w, c]
    noise = jnp.tile(noise, (prompts.shape[0], 1, 1, 1))  # [P * N, ...], prompt-major
    captions = jnp.repeat(prompts, num_per_prompt, axis=0)  # [P * N, L]
    images = text_images(params, frozen, captions, negative, noise, sampler_rng, **kw)
    return images.reshape((prompts.shape[0], num_per_prompt) + images.shape[1:])


def generate(
    state,
    rng,
    num,
    labels=None,
    *,
    images_of,
    tables,
    num_classes,
    latent_shape,
    guidance_scale=None,
    captions="seen",
):
    """`num` images for the sample evaluators (an entry's generate_kw sets guidance_scale and
    captions): each label (drawn uniformly when None) prompts with a random template of the class
    caption table `captions` ("seen" or "heldout"); guidance_scale None: config.sample's."""
    label_rng, template_rng, noise_rng, rng = jax.random.split(rng, 4)
    if labels is None:
        labels = jax.random.randint(label_rng, (num,), 0, num_classes)
    table = jnp.asarray(tables[captions])  # [classes, templates, L]
    template = jax.random.randint(template_rng, (num,), 0, table.shape[1])
    negative = jnp.full((1, table.shape[2]), PAD_ID, jnp.int32)
    fn = images_of() if guidance_scale is None else images_of(guidance_scale=guidance_scale)
    noise = jax.random.normal(noise_rng, (num, *latent_shape))
    return fn(state.eval_params, state.frozen, table[labels, template], negative, noise, rng)


def caption_tables(data_config: ConfigDict, tokenizer) -> dict[str, np.ndarray]:
    """{"seen"/"heldout": int32 [classes, templates, L]} of the dataset's class templates."""
    tables = {}
    for name in TEMPLATE_SETS:
        per_class = caption_data.class_captions(data_config.name, name)
        if per_class is not None:
            ids = [
                encode_captions(tokenizer, texts, data_config.caption_len) for texts in per_class
            ]
            tables[name] = np.stack(ids)
    return tables


GRID_SETTINGS = (
    "prompt", "negative_prompt", "guidance_scale", "num_inference_steps", "num_images_per_prompt",
    "sampler", "eta", "seed",
)  # fmt: skip


# config.sample fields of an imported Stable Diffusion run (sampling/stable_diffusion.py).
IMPORTED_SETTINGS = ("height", "width", "latents", "dtype")


def file_tag(sample_config: ConfigDict) -> str:
    """The end of a prompt grid's file name: _seed<S>_g<guidance>_<8 hex digits of the other
    settings>, so that a call with other prompts or settings never overwrites an earlier grid."""
    names = GRID_SETTINGS + tuple(k for k in IMPORTED_SETTINGS if k in sample_config)
    others = {k: sample_config[k] for k in names if k not in ("seed", "guidance_scale")}
    digest = hashlib.sha1(json.dumps(others, sort_keys=True).encode()).hexdigest()[:8]
    return f"_seed{sample_config.seed}_g{sample_config.guidance_scale:g}_{digest}"


def write_prompt_images(config: ConfigDict, name: str, array: np.ndarray, stem: str) -> str:
    """A grid [prompts, images per prompt] -> `stem`.png (a row per prompt), each image as
    `stem`/<prompt>_<image>.png, and the settings that made them (the prompts, one per row) as
    `stem`.json; returns the grid's path."""
    path = samples.write_image_grid(config, name, array, stem)
    settings = {k: config.sample[k] for k in GRID_SETTINGS}
    settings |= {k: config.sample[k] for k in IMPORTED_SETTINGS if k in config.sample}
    settings["prompts"] = parse_prompts(settings.pop("prompt"), "config.sample.prompt")
    with writing(stem + ".json"), open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1)
    with writing(stem):
        os.makedirs(stem, exist_ok=True)
    for row, col in np.ndindex(*array.shape[:2]):
        single = os.path.join(stem, f"{row}_{col}.png")
        with writing(single):
            images.save_grid(array[row, col][None, None], single, padding=0)
    return path
