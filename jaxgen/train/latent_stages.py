"""The earlier runs a latent diffusion run builds on, read once when it starts.

config.model.autoencoder=W_AE and config.model.text_encoder=W_CLIP name them. When the run starts
(Family.resolve), `resolve` copies what the run needs of them into its own config, as
config.model.stages:

    autoencoder:  workdir, data (its dataset's name), image_shape, model (W_AE's config.model),
                  scale_factor (W_AE's config.model.scale_factor if it declares one, e.g. an
                  imported VAE; else its last logged latent_scale/scale_factor)
    text_encoder: workdir, data, image_shape, caption_len, tokenizer (the fingerprint of W_CLIP's
                  saved tokenizer), model (W_CLIP's config.model)

and Steps.setup copies their eval params into the run's state (`load_frozen`). From then on the
run is self-contained: config.json holds the architectures and the scale factor, the checkpoint
the params, W/tokenizer.json the tokenizer, and sampling, evaluating and resuming never open
W_AE or W_CLIP (they may be moved or deleted). A config without config.model.stages (a new run,
before it starts) reads them from the stage runs: `stages_of`.
"""

import os
from typing import Any

import jax.numpy as jnp

from jaxgen import data, rundir
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models import clip as clips
from jaxgen.train import autoencoder

STAGES = {"autoencoder": "autoencoder", "text_encoder": "clip"}  # config.model field -> family


def read_stages(config: ConfigDict) -> ConfigDict:
    """config.model.stages, read from the runs that config.model.autoencoder and .text_encoder
    name; ConfigError naming the field if one is missing, unfinished or of another family."""
    stages = ConfigDict()
    for field, family in STAGES.items():
        workdir = config.model[field]
        stage = rundir.check_stage(workdir, f"config.model.{field}", family)
        info = rundir.run_info(stage, workdir)
        stages[field] = ConfigDict(
            {
                "workdir": os.path.abspath(workdir),
                "data": stage.data.name,
                "image_shape": list(info.image_shape),
                "model": stage.model.to_dict(),
            }
        )
    ae_dir, clip_dir = config.model.autoencoder, config.model.text_encoder
    ae_model = stages.autoencoder.model
    if ae_model.get("scale_factor"):
        scale_factor = float(ae_model.scale_factor)  # declared by the run (an imported VAE)
    else:
        scale_factor = autoencoder.read_scale_factor(ae_dir)  # names W_AE/metrics.jsonl if none
    stages.autoencoder.scale_factor = scale_factor
    clip_config = rundir.check_stage(clip_dir, "config.model.text_encoder", "clip")
    saved = rundir.with_saved_tokenizers(clip_config.data, clip_dir)
    # An imported CLIP's config already names its W/tokenizer.json: the file is what counts.
    if not os.path.isfile(os.path.join(clip_dir, "tokenizer.json")):
        raise ConfigError(f"config.model.text_encoder: {clip_dir} has no saved tokenizer.json")
    stages.text_encoder.caption_len = clip_config.data.caption_len
    stages.text_encoder.tokenizer = data.get_tokenizers(saved)["tokenizer"].fingerprint()
    return stages


def stages_of(config: ConfigDict) -> ConfigDict:
    """The run's config.model.stages, or (a run not started yet) those read from its stages."""
    return config.model.stages if "stages" in config.model else read_stages(config)


def resolve(config: ConfigDict) -> ConfigDict:
    """A new run's config with config.model.stages (Family.resolve)."""
    if "stages" in config.model:
        return config
    stages = read_stages(config)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.stages = stages
    return config


def check_stages(config: ConfigDict, info: Any, stages: ConfigDict) -> None:
    """The stages match this run's data: image shape, caption_len and tokenizer."""
    for field in STAGES:
        shape, stage = tuple(stages[field].image_shape), stages[field]
        # A published CLIP (clip_pretrained) resizes any image to its input: no shape to match.
        any_shape = stage.model.get("name") == clips.PRETRAINED
        if shape != tuple(info.image_shape) and not any_shape:
            raise ConfigError(
                f"config.model.{field}: {stage.workdir} trained on {stage.data} images {shape}; "
                f"this run's {config.data.name} images are {tuple(info.image_shape)}"
            )
    text_encoder = stages.text_encoder
    if text_encoder.caption_len != config.data.caption_len:
        raise ConfigError(
            f"config.data.caption_len: {config.data.caption_len}, but the text encoder "
            f"{text_encoder.workdir} was trained with caption_len {text_encoder.caption_len}"
        )
    ours = data.get_tokenizers(config.data)["tokenizer"]
    if ours.fingerprint() != text_encoder.tokenizer:
        raise ConfigError(
            f"config.data.tokenizer: {config.data.tokenizer!r} is not the text encoder's "
            f"tokenizer; set config.data.tokenizer="
            f"{os.path.join(text_encoder.workdir, 'tokenizer.json')}"
        )


def load_frozen(config: ConfigDict) -> dict:
    """The frozen params (eval params: EMA when kept) of the stage runs, and the scale factor:
    what Steps.setup copies into a new run's state."""
    stages = stages_of(config)
    frozen = {}
    for field, family in STAGES.items():
        workdir = config.model[field]
        stage = rundir.check_stage(workdir, f"config.model.{field}", family)
        frozen[field] = rundir.load_params(workdir, stage)
    frozen["scale_factor"] = jnp.float32(stages.autoencoder.scale_factor)
    return frozen
