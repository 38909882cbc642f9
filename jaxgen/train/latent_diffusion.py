"""Latent diffusion with text (Stable Diffusion's recipe): the "latent_diffusion" family.

Stage 3 of text-to-image, after the autoencoder (train/autoencoder.py) and CLIP (train/clip.py),
whose runs config.model.autoencoder=W_AE and config.model.text_encoder=W_CLIP name:
  latents   z_0 = scale_factor * (mean + σ ε) of the frozen autoencoder's posterior (SD samples
            latent_dist and multiplies by 0.18215; ours is W_AE's, copied when the run starts);
  text      the frozen CLIP text tower's hidden states [B, L, width] of the caption, after caption
            dropout: each caption is replaced by the empty prompt (all PAD_ID) with probability
            config.loss.caption_dropout (10%), so one network is both p(z|text) and p(z)
            (Ho & Salimans 2022);
  loss      jaxgen.losses.ddpm's registered losses on z_t = q_sample(z_0, t, ε): the same
            diffusion maths (jaxgen.diffusion) as the pixel DDPM, no second copy;
  step      train_state.train_step over train_inputs (the draws above, from state.frozen)
            and denoise_loss (the U-Net's gradient only);
  sampling  sampling/latent_diffusion.py (DDIM/DDPM with classifier-free guidance, diffusers'
            guidance_scale convention), then the autoencoder's decoder.

When the run starts, what it needs of W_AE and W_CLIP is COPIED into it (train/latent_stages.py):
their architectures and the scale factor into its config (config.model.stages, by
Family.resolve), their eval params into its state (state.frozen, by Steps.setup), checkpointed
with the U-Net. A resumed, sampled or evaluated run uses exactly what it trained with and never
opens W_AE or W_CLIP again, even if they are retrained, moved or deleted. validate checks, before
anything compiles, that both runs exist, have a checkpoint and the right family, that the
autoencoder saw images of this run's shape, and that CLIP's caption_len and saved tokenizer are
this run's. Its text-to-image function (Steps.predict_fns["text_to_image"], what
jaxgen.text_to_image and Steps.sample run) takes prompts and sampler settings as arguments.

Evaluations: "clip_score" (the CLIP score of images generated for the eval split's captions, with
the run's own CLIP, or with the clip run the entry's `clip` field names, e.g. an imported one
sharing the run's tokenizer; entry fields guidance_scale, num_inference_steps, clip), and the sample evaluators
of metrics/generative.py through Steps.generate, whose options an entry's generate_kw sets:
guidance_scale and captions ("seen" or "heldout" class templates; labels i % 10).
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp

from jaxgen import data, diffusion, rundir, tokenizers
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import captions as caption_data
from jaxgen.family import FAMILIES, Family, Steps
from jaxgen.losses import ddpm as losses
from jaxgen.metrics.clip_score import clip_score
from jaxgen.models import autoencoder as autoencoders
from jaxgen.models import clip as clips
from jaxgen.models import latent_unet
from jaxgen.models.clip import PAD_ID
from jaxgen.parallel import example_rngs
from jaxgen.sampling import latent_diffusion as sampling
from jaxgen.sampling import stable_diffusion
from jaxgen.sampling.latent_diffusion import encode_text
from jaxgen.train import latent_stages
from jaxgen.train import state as train_state

PyTree = Any


@flax.struct.dataclass
class LatentDiffusionState(train_state.TrainState):
    # {"autoencoder", "text_encoder": eval params of the earlier runs, "scale_factor": f32 []}:
    # never trained, checkpointed with the U-Net.
    frozen: PyTree


def validate(config: ConfigDict, info: Any) -> None:
    if not info.vocab_size or "caption_len" not in config.data:
        raise ConfigError(
            f"config.data.name: {config.data.name!r} has no captions; latent diffusion trains on "
            "a captions dataset (captioned_mnist, emoji, captions_folder, ...)"
        )
    latent_unet.check_config(config.model)
    diffusion.SCHEDULES.get(config.diffusion.schedule)
    diffusion.PARAMETERISATIONS.get(config.diffusion.parameterisation)
    num_steps = config.diffusion.num_timesteps
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ConfigError(
            f"config.diffusion.num_timesteps: must be an integer >= 2, got {num_steps!r}"
        )
    losses.LOSSES.get(config.loss.name)
    losses.WEIGHTINGS.get(config.loss.kw.weighting)
    if not 0.0 <= config.loss.caption_dropout < 1.0:
        raise ConfigError(
            f"config.loss.caption_dropout: must be in [0, 1), got {config.loss.caption_dropout}"
        )
    if imported(config):  # diffusers' schedulers, from the imported folder's config
        stable_diffusion.check_settings(config.sample, scheduler_config(config))
    else:
        sampling.check_settings(config.sample, num_steps, config.loss.caption_dropout)
    for name, entry in config.evals.items():
        check_eval_entry(config, info, name, entry)
    latent_stages.check_stages(config, info, latent_stages.stages_of(config))


def imported(config: ConfigDict) -> bool:
    """Whether the run is an imported Stable Diffusion (experiments/import_diffusers.py): it
    holds the folder's scheduler_config.json as config.diffusion.scheduler."""
    return "scheduler" in config.diffusion


def scheduler_config(config: ConfigDict) -> dict:
    return config.diffusion.scheduler.to_dict()


def check_eval_entry(config: ConfigDict, info: Any, name: str, entry: ConfigDict) -> None:
    field, dropout = f"config.evals.{name}", config.loss.caption_dropout
    if entry.get("type") == "clip_score" and "guidance_scale" in entry:
        sampling.check_guidance(entry.guidance_scale, dropout, f"{field}.guidance_scale")
    if entry.get("type") == "clip_score" and entry.get("clip"):
        check_scorer(config, entry.clip, f"{field}.clip")
    options = entry.get("generate_kw", {})
    for key in options:
        if key not in ("guidance_scale", "captions"):
            raise ConfigError(
                f"{field}.generate_kw.{key}: not an option; known: captions, guidance_scale"
            )
    if "guidance_scale" in options:
        sampling.check_guidance(
            options.guidance_scale, dropout, f"{field}.generate_kw.guidance_scale"
        )
    if options.get("captions", "seen") not in sampling.TEMPLATE_SETS:
        raise ConfigError(
            f"{field}.generate_kw.captions: {options.captions!r}; choose from seen, heldout"
        )
    uses_generate = entry.get("type") in ("fid", "kid", "is", "class_accuracy")
    if uses_generate and caption_data.class_captions(config.data.name, "seen") is None:
        raise ConfigError(
            f"{field}.type: {entry.type!r} prompts with class captions; {config.data.name} has none"
        )


def check_scorer(config: ConfigDict, workdir: str, field: str) -> ConfigDict:
    """The config of the clip run `workdir` that a clip_score entry scores with instead of the
    run's own CLIP (e.g. an imported ViT-L/14: experiments/import_clip.py); ConfigError naming
    `field` unless it is a clip run whose tokenizer gives this run's caption ids."""
    scorer = rundir.check_stage(workdir, field, "clip")
    saved = rundir.with_saved_tokenizers(scorer.data, workdir)
    theirs = data.get_tokenizers(saved)["tokenizer"]
    ours = data.get_tokenizers(config.data)["tokenizer"]
    if not same_ids(ours, theirs) or scorer.data.caption_len != config.data.caption_len:
        raise ConfigError(
            f"{field}: {workdir}'s tokenizer and caption_len are not this run's: the scorer "
            "reads the run's caption ids (a CLIP's own, as the text encoder's, fit)"
        )
    return scorer


def same_ids(ours, theirs) -> bool:
    """Whether two caption tokenizers give the same ids but perhaps the padding after the end
    token (OpenAI's CLIPs pad with <|endoftext|>, SD 2's with "!": CLIP never reads it)."""
    if ours.fingerprint() == theirs.fingerprint():
        return True
    length = tokenizers.fixed_length(ours)
    return (
        bool(length)
        and length == tokenizers.fixed_length(theirs)
        and (ours.hf.get_vocab() == theirs.hf.get_vocab())
    )


def draw_example(key, *, latent_shape, num_steps):
    """One example's t, diffusion noise ε, posterior noise and dropout key."""
    t_key, noise_key, posterior_key, dropout_key = jax.random.split(key, 4)
    return {
        "t": jax.random.randint(t_key, (), 0, num_steps),
        "noise": jax.random.normal(noise_key, latent_shape),
        "posterior_noise": jax.random.normal(posterior_key, latent_shape),
        "dropout_rng": dropout_key,
    }


def drop_captions(captions: jax.Array, rng: jax.Array, rate: float, axis_name=None) -> jax.Array:
    """int32 [B, L]: each caption replaced by the empty prompt with probability `rate`, drawn
    per example from its index in the global batch (device-count independent)."""
    keys = example_rngs(rng, captions.shape[0], axis_name)
    dropped = jax.vmap(lambda key: jax.random.bernoulli(key, rate))(keys)  # [B]
    return jnp.where(dropped[:, None], PAD_ID, captions)


def encode_latents(ae_params, image, noise, *, autoencoder, scale_factor) -> jax.Array:
    """scale_factor * a posterior draw [B, h, w, c] of the frozen autoencoder (noise ε [B, h, w, c])."""
    mean, logvar = autoencoder.apply({"params": ae_params}, image, method=autoencoder.encode)
    z = mean + jnp.exp(0.5 * logvar) * noise
    return jax.lax.stop_gradient(scale_factor * z)


def train_inputs(
    state,
    batch,
    rng,
    *,
    autoencoder,
    clip,
    latent_shape,
    num_steps,
    caption_dropout,
    axis_name=None,
):
    """The denoising batch {"latents", "context", "t", "noise", "dropout_rng"} of a data batch
    {"image", "caption"}: every draw from the example's own key; the frozen encoders
    (state.frozen) run outside the gradient."""
    frozen = state.frozen
    caption_rng, example_rng = jax.random.split(rng)
    captions = drop_captions(batch["caption"], caption_rng, caption_dropout, axis_name)
    keys = example_rngs(example_rng, captions.shape[0], axis_name)
    draw = functools.partial(draw_example, latent_shape=latent_shape, num_steps=num_steps)
    draws = jax.vmap(draw)(keys)
    latents = encode_latents(
        frozen["autoencoder"],
        batch["image"],
        draws["posterior_noise"],
        autoencoder=autoencoder,
        scale_factor=frozen["scale_factor"],
    )
    return {
        "latents": latents,
        "context": encode_text(frozen["text_encoder"], captions, clip=clip),
        "t": draws["t"],
        "noise": draws["noise"],
        "dropout_rng": draws["dropout_rng"],
    }


def denoise_loss(params, batch, *, unet, schedule, parameterisation, loss_fn, loss_kw):
    """(loss, metrics) of the U-Net on {"latents", "context", "t", "noise"[, "dropout_rng"]}
    (one t, ε per example): `loss_fn` (losses.ddpm.LOSSES) of its output against the
    parameterisation's target."""
    z0, t, noise = batch["latents"], batch["t"], batch["noise"]
    zt = diffusion.q_sample(schedule, z0, t, noise)
    output = unet.apply({"params": params}, zt, t, batch["context"], batch.get("dropout_rng"))
    target = diffusion.PARAMETERISATIONS.get(parameterisation).target(schedule, z0, t, noise)
    snr = diffusion.snr(schedule, t)
    return loss_fn(output, target, snr, parameterisation=parameterisation, **loss_kw)


def init(rng, batch, *, unet, latent_shape, context_shape, frozen_shapes, optimizer):
    """A new state; state.frozen is zeros until Steps.setup copies the earlier runs' params."""
    del batch
    params_rng, state_rng = jax.random.split(rng)
    z, t = jnp.zeros((1, *latent_shape)), jnp.zeros((1,), jnp.int32)
    params = unet.init(params_rng, z, t, jnp.zeros((1, *context_shape)))["params"]
    base = train_state.create(params, optimizer, state_rng)
    frozen = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), frozen_shapes)
    return LatentDiffusionState(
        step=base.step,
        params=base.params,
        opt_state=base.opt_state,
        ema_params=base.ema_params,
        rng=base.rng,
        frozen=frozen,
    )


def setup(state, *, config):
    return state.replace(frozen=latent_stages.load_frozen(config))


def clip_score_sums(state, batch, rng, *, images_of, clip, latent_shape, scorer_params=None):
    """Sums of the CLIP score of an image generated for each eval caption, with "count";
    scored by `clip` with `scorer_params` (another clip run's), else the frozen text encoder."""
    mask = batch["mask"]
    negative = jnp.full((1, batch["caption"].shape[1]), PAD_ID, jnp.int32)
    noise_rng, rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, (mask.shape[0], *latent_shape))
    images = images_of(state.eval_params, state.frozen, batch["caption"], negative, noise, rng)
    params = state.frozen["text_encoder"] if scorer_params is None else scorer_params
    variables = {"params": params}
    image_embeds = clip.apply(variables, images, method=clip.encode_image)
    text_embeds, _ = clip.apply(variables, batch["caption"], method=clip.encode_text)
    return {"score": jnp.sum(clip_score(image_embeds, text_embeds) * mask), "count": jnp.sum(mask)}


def sample_grid(state, batch, rng, *, pipeline, prompt_ids, negative_ids, settings):
    """{"prompts": [P, N, H, W, C]}: config.sample's prompts through the text-to-image function."""
    del batch
    params = pipeline.params(state)
    return {"prompts": pipeline.generate(params, prompt_ids, negative_ids, rng, settings=settings)}


def frozen_shapes(ae, text_model, image_shape, latent_shape, caption_len) -> dict:
    """Shape structs of state.frozen: what init fills with zeros until Steps.setup."""
    image, rng = jnp.zeros((1, *image_shape)), jax.random.PRNGKey(0)
    caption = jnp.zeros((1, caption_len), jnp.int32)
    ae_init = lambda: ae.init(rng, image, jnp.zeros((1, *latent_shape)))  # noqa: E731
    return {
        "autoencoder": jax.eval_shape(ae_init)["params"],
        "text_encoder": jax.eval_shape(lambda: text_model.init(rng, image, caption))["params"],
        "scale_factor": jax.ShapeDtypeStruct((), jnp.float32),
    }


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    stages = latent_stages.stages_of(config)
    ae_model, clip_model = stages.autoencoder.model, stages.text_encoder.model
    ae = autoencoders.make_model(ae_model, info.image_shape)
    text_model = clips.make_model(clip_model, info.vocab_size, config.data.caption_len)
    latent_shape = autoencoders.latent_shape(ae_model, info.image_shape)
    unet = latent_unet.make_model(config.model, latent_shape[-1])
    schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
    parameterisation, caption_len = config.diffusion.parameterisation, config.data.caption_len
    optimizer = train_state.from_config(config)
    models = dict(unet=unet, autoencoder=ae, clip=text_model, schedule=schedule)

    def images_of(**overrides):  # text_images with config.sample's settings and `overrides`
        settings = sampling.settings_of(config.sample, parameterisation, **overrides)
        return functools.partial(sampling.text_images, **models, settings=settings)

    def make_clip_score(entry):
        overrides = {k: entry[k] for k in ("guidance_scale", "num_inference_steps") if k in entry}
        images = images_of(**overrides)
        score = functools.partial(clip_score_sums, images_of=images, clip=text_model)
        if entry.get("clip"):  # another clip run scores (validate checked it)
            scorer = check_scorer(config, entry.clip, "config.evals.*.clip")
            model = clips.make_model(scorer.model, info.vocab_size, caption_len)
            params = rundir.load_params(entry.clip, scorer)
            score = functools.partial(
                clip_score_sums, images_of=images, clip=model, scorer_params=params
            )
        return functools.partial(score, latent_shape=latent_shape)

    tokenizer = data.get_tokenizers(config.data)["tokenizer"]
    prompts = sampling.parse_prompts(config.sample.prompt, "config.sample.prompt")
    if imported(config):
        pipeline = stable_diffusion.make_pipeline(
            tokenizer,
            caption_len,
            scheduler_config=scheduler_config(config),
            unet=unet,
            autoencoder=ae,
            clip=text_model,
        )
        latents = stable_diffusion.read_latents(config.sample, len(prompts))
        grid = functools.partial(
            stable_diffusion.sample_grid,
            settings=stable_diffusion.settings_of(config.sample),
            latents=None if latents is None else jnp.asarray(latents),
        )
    else:
        pipeline = sampling.make_pipeline(
            tokenizer,
            caption_len,
            **models,
            parameterisation=parameterisation,
            latent_shape=latent_shape,
        )
        grid = functools.partial(sample_grid, settings=sampling.image_settings(config.sample))
    grid = functools.partial(
        grid,
        pipeline=pipeline,
        prompt_ids=jnp.asarray(pipeline.prepare(prompts)),
        negative_ids=jnp.asarray(pipeline.prepare([config.sample.negative_prompt])),
    )
    tables = sampling.caption_tables(config.data, tokenizer)
    return Steps(
        init=functools.partial(
            init,
            unet=unet,
            latent_shape=latent_shape,
            context_shape=(caption_len, clips.text_width(clip_model)),
            frozen_shapes=frozen_shapes(
                ae, text_model, info.image_shape, latent_shape, caption_len
            ),
            optimizer=optimizer,
        ),
        train_step=functools.partial(
            train_state.train_step,
            inputs_of=functools.partial(
                train_inputs,
                autoencoder=ae,
                clip=text_model,
                latent_shape=latent_shape,
                num_steps=config.diffusion.num_timesteps,
                caption_dropout=config.loss.caption_dropout,
                axis_name=axis_name,
            ),
            loss_of=functools.partial(
                denoise_loss,
                unet=unet,
                schedule=schedule,
                parameterisation=parameterisation,
                loss_fn=losses.LOSSES.get(config.loss.name),
                loss_kw=config.loss.kw.to_dict(),
            ),
            optimizer=optimizer,
            microbatches=config.train.microbatches,
            axis_name=axis_name,
        ),
        eval_steps={"clip_score": make_clip_score},
        sample=grid,
        batch_spec={
            "image": jax.ShapeDtypeStruct((1, *info.image_shape), jnp.float32),
            "caption": jax.ShapeDtypeStruct((1, caption_len), jnp.int32),
        },
        # The sample evaluators prompt with class captions: class datasets only.
        generate=functools.partial(
            sampling.generate,
            images_of=images_of,
            tables=tables,
            num_classes=max(info.num_classes, 1),
            latent_shape=latent_shape,
        )
        if tables
        else None,
        setup=functools.partial(setup, config=config),
        predict_fns={"text_to_image": pipeline},
    )


FAMILIES.register("latent_diffusion")(
    Family(
        validate,
        make_steps,
        losses=losses.LOSSES,
        write_sample=sampling.write_prompt_images,
        sample_tag=sampling.file_tag,
        resolve=latent_stages.resolve,
        resolved_fields=("model.stages",),
    )
)
