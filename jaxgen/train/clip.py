"""CLIP family: contrastive image-caption training (Radford et al. 2021) on a captions dataset.

The step is the symmetric InfoNCE over the whole global batch (losses/clip.py): under the default
jit path the batch is one array sharded over devices, so every image meets every caption of the
batch whatever the device count. The pmap path and microbatches would contrast only within a
device's or a microbatch's share, a different loss, so validate refuses them. The step is
train_state.train_step over train_inputs and clip_loss, one microbatch, no device axis.

Evaluation "clip_score": over the eval split, the CLIP score (metrics/clip_score.py) of each
image with its own caption and, as the chance baseline, with the next example's caption, and
the in-batch top-1 retrieval accuracy (image -> caption) among the batch's real examples.
The trained text tower is what a latent diffusion model conditions on (encode_text's hidden).

config.model.name "clip_pretrained" is a published CLIP's architecture (models/clip_pretrained.py,
written by experiments/import_clip.py): the same steps and evaluation run on it. Both give
predict_fns["clip_scorer"] (metrics/clip_score.Scorer), with which experiments/clip_score.py
scores image folders.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.family import FAMILIES, Family, Steps
from jaxgen.losses import clip as losses
from jaxgen.metrics import clip_score as metrics
from jaxgen.metrics.clip_score import Scorer, clip_score
from jaxgen.models import clip as models
from jaxgen.train import state as train_state


def validate(config: ConfigDict, info: Any) -> None:
    if not info.vocab_size or "caption_len" not in config.data:
        raise ConfigError(
            f"config.data.name: {config.data.name!r} has no captions; CLIP trains on a captions "
            "dataset (captioned_mnist, emoji, captions_folder, ...)"
        )
    models.check_config(config.model)
    losses.LOSSES.get(config.loss.name)
    if config.train.microbatches != 1:
        raise ConfigError("config.train.microbatches: CLIP contrasts the whole batch; use 1")
    if config.mesh.backend != "jit":
        raise ConfigError("config.mesh.backend: CLIP contrasts the global batch; use 'jit'")


def clip_loss(params, batch, *, model, loss_fn):
    out = model.apply({"params": params}, batch["image"], batch["caption"])
    return loss_fn(out.image_embeds, out.text_embeds, out.logit_scale)


def init(rng, batch, *, model, optimizer):
    params_rng, state_rng = jax.random.split(rng)
    params = model.init(params_rng, batch["image"][:1], batch["caption"][:1])["params"]
    return train_state.create(params, optimizer, state_rng)


def train_inputs(state, batch, rng):
    """{"image", "caption"} of the batch: the step draws nothing (state and rng unused)."""
    del state, rng
    return {"image": batch["image"], "caption": batch["caption"]}


def clip_score_sums(params, batch, rng, *, model):
    """Sums of the matched and mismatched CLIP scores and of top-1 retrieval, with "count"."""
    del rng
    mask = batch["mask"]
    out = model.apply({"params": params}, batch["image"], batch["caption"])
    matched = clip_score(out.image_embeds, out.text_embeds)  # [B]
    mismatched = clip_score(out.image_embeds, jnp.roll(out.text_embeds, 1, axis=0))
    cosines = out.image_embeds @ out.text_embeds.T  # [B images, B captions]
    cosines = jnp.where(mask[None, :] > 0, cosines, -jnp.inf)  # padding is never retrieved
    hits = jnp.argmax(cosines, axis=1) == jnp.arange(cosines.shape[0])
    return {
        "score": jnp.sum(matched * mask),
        "mismatched_score": jnp.sum(mismatched * mask),
        "retrieval": jnp.sum(hits * mask),
        "count": jnp.sum(mask),
    }


def image_features(params, inputs, *, model, method):
    return model.apply({"params": params}, inputs, method=method)


def text_features(params, ids, *, model):
    return model.apply({"params": params}, ids, method=model.encode_text)[0]


def make_scorer(config: ConfigDict, info: Any, model) -> Scorer:
    """predict_fns["clip_scorer"]: an imported CLIP takes CLIPImageProcessor's pixel_values
    (config.model.processor), ours the data's images."""
    # A text encoder alone (vision None) has no image side: its encode_image says so.
    if config.model.name == models.PRETRAINED and config.model.get("vision") is not None:
        processor = config.model.processor.to_dict()
        processor["crop"] = tuple(processor["crop"])
        preprocess = functools.partial(metrics.preprocess, processor=processor)
        method = model.encode_pixels
    else:
        preprocess = functools.partial(metrics.data_preprocess, image_shape=info.image_shape)
        method = model.encode_image
    return Scorer(
        preprocess=preprocess,
        image_features=functools.partial(image_features, model=model, method=method),
        text_features=functools.partial(text_features, model=model),
        params=lambda state: state.eval_params,
    )


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    del axis_name  # validate admits the jit path only
    model = models.make_model(config.model, info.vocab_size, config.data.caption_len)
    optimizer = train_state.from_config(config)
    loss_of = functools.partial(clip_loss, model=model, loss_fn=losses.LOSSES.get(config.loss.name))
    scores = train_state.on_eval_params(functools.partial(clip_score_sums, model=model))
    return Steps(
        init=functools.partial(init, model=model, optimizer=optimizer),
        train_step=functools.partial(
            train_state.train_step, inputs_of=train_inputs, loss_of=loss_of, optimizer=optimizer
        ),
        eval_steps={"clip_score": lambda entry: scores},
        sample=lambda state, batch, rng: {},
        batch_spec={
            "image": jax.ShapeDtypeStruct((1, *info.image_shape), jnp.float32),
            "caption": jax.ShapeDtypeStruct((1, config.data.caption_len), jnp.int32),
        },
        predict_fns={"clip_scorer": make_scorer(config, info, model)},
    )


FAMILIES.register("clip")(Family(validate, make_steps, losses=losses.LOSSES, per_device_step=False))
