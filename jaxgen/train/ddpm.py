"""DDPM family: pure init / train / eval / sample steps for the generic loop.

Each example draws its timestep, its noise, its label dropout (classifier-free
guidance), its horizontal flip and its dropout masks from its own key
(parallel.example_rngs), so the update does not depend on the device count or on
microbatching. Flips happen here, on device, rather than in the data pipeline.
Evaluation is bits/dim from the variational bound ("bpd", metrics/likelihood.py), over
all T terms or an unbiased subsample of them; sampling is DDPM ancestral or DDIM, with
classifier-free guidance for class-conditional models, one lax.scan inside the compiled
sample step. The pieces are module-level pure functions (train_inputs, denoise_loss,
denoise_images, ...); make_steps only binds them to the config with functools.partial, the
train step being train_state.train_step over train_inputs and denoise_loss.
"""

import functools
import logging
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen import diffusion
from jaxgen.config import ConfigDict, ConfigError, is_count, is_number
from jaxgen.family import FAMILIES, Family, Steps
from jaxgen.losses import ddpm as losses
from jaxgen.metrics import likelihood
from jaxgen.models import ddpm as models
from jaxgen.parallel import example_rngs
from jaxgen.sampling import ddpm as sampling
from jaxgen.train import state as train_state

PyTree = Any
log = logging.getLogger("jaxgen")


def _fail(field: str, message: str) -> None:
    raise ConfigError(f"config.{field}: {message}")


def validate(config: ConfigDict, info: Any) -> None:
    models.MODELS.get(config.model.name)
    models.check_model_config(config.model, info.image_shape)
    diffusion.SCHEDULES.get(config.diffusion.schedule)
    diffusion.PARAMETERISATIONS.get(config.diffusion.parameterisation)
    num_steps = config.diffusion.num_timesteps
    if not isinstance(num_steps, int) or num_steps < 2:
        _fail("diffusion.num_timesteps", f"must be an integer >= 2, got {num_steps!r}")
    losses.LOSSES.get(config.loss.name)
    losses.WEIGHTINGS.get(config.loss.kw.weighting)
    if config.data.pixels != "symmetric":
        _fail(
            "data.pixels",
            f"diffusion models take pixels in [-1, 1] ('symmetric'), got {config.data.pixels!r}",
        )
    conditional = config.model.class_conditional
    if conditional and info.num_classes < 1:
        _fail("model.class_conditional", f"{config.data.name} has no class labels")
    if not 0.0 <= config.loss.label_dropout < 1.0:
        _fail("loss.label_dropout", f"must be in [0, 1), got {config.loss.label_dropout}")
    if config.loss.label_dropout and not conditional:
        _fail("loss.label_dropout", "label dropout needs config.model.class_conditional=True")

    sample = config.sample
    if sample.sampler not in sampling.SAMPLERS:
        _fail(
            "sample.sampler",
            f"unknown sampler {sample.sampler!r}; choose from {', '.join(sampling.SAMPLERS)}",
        )
    if not is_count(sample.num_inference_steps) or sample.num_inference_steps > num_steps:
        _fail(
            "sample.num_inference_steps",
            f"must be in [1, T = {num_steps}], got {sample.num_inference_steps}",
        )
    if not is_number(sample.eta) or sample.eta < 0:
        _fail("sample.eta", f"must be a finite number >= 0, got {sample.eta!r}")
    if not is_number(sample.guidance_scale) or sample.guidance_scale < 0:
        _fail(
            "sample.guidance_scale", f"must be a finite number >= 0, got {sample.guidance_scale!r}"
        )
    if sample.variance not in diffusion.VARIANCES:
        _fail(
            "sample.variance",
            f"unknown variance {sample.variance!r}; choose from {', '.join(diffusion.VARIANCES)}",
        )
    if sample.guidance_scale != 1.0 and not conditional:
        _fail(
            "sample.guidance_scale",
            "guidance needs a class-conditional model (config.model.class_conditional)",
        )
    if sample.guidance_scale != 1.0 and not config.loss.label_dropout:
        _fail(
            "sample.guidance_scale",
            "guidance needs an unconditional model: train with config.loss.label_dropout > 0",
        )
    if sample.labels and not conditional:
        _fail("sample.labels", "labels need a class-conditional model")
    bad = [label for label in sample.labels if not 0 <= label < info.num_classes]
    if bad:
        _fail("sample.labels", f"{bad} out of range [0, {info.num_classes})")
    if not is_count(sample.samples_per_class):
        _fail("sample.samples_per_class", f"must be >= 1, got {sample.samples_per_class}")
    for name, entry in config.evals.items():
        if entry.type != "bpd":
            continue
        if not 0 <= entry.num_timesteps <= num_steps:
            _fail(
                f"evals.{name}.num_timesteps", f"must be in [0, T = {num_steps}] (0: all T terms)"
            )
        if entry.variance not in diffusion.VARIANCES:
            _fail(
                f"evals.{name}.variance",
                f"unknown variance {entry.variance!r}; choose from {', '.join(diffusion.VARIANCES)}",
            )


def draw_example(key: jax.Array, image: jax.Array, *, num_steps: int, label_dropout: float) -> dict:
    """One example's t, ε, label-dropout and flip draws, and its dropout key."""
    t_key, noise_key, drop_key, flip_key, dropout_key = jax.random.split(key, 5)
    return {
        "t": jax.random.randint(t_key, (), 0, num_steps),
        "noise": jax.random.normal(noise_key, image.shape),
        "drop_label": jax.random.bernoulli(drop_key, label_dropout),
        "flip": jax.random.bernoulli(flip_key, 0.5),
        "dropout_rng": dropout_key,
    }


def train_inputs(
    state: Any,
    batch: dict,
    rng: jax.Array,
    *,
    num_steps: int,
    num_classes: int,
    label_dropout: float,
    random_flip: bool,
    axis_name: str | None = None,
) -> dict:
    """The denoising batch {"image", "t", "noise", "dropout_rng"[, "label"]} of a data batch.

    Flips and label dropout (to the null label `num_classes`) are applied here; every draw
    comes from the example's own key, so the inputs do not depend on the device count.
    The state is unused: the signature is train_state.train_step's `inputs_of`.
    """
    del state
    image = batch["image"]
    keys = example_rngs(rng, image.shape[0], axis_name)
    draw = functools.partial(draw_example, num_steps=num_steps, label_dropout=label_dropout)
    draws = jax.vmap(draw)(keys, image)
    if random_flip:  # horizontal flips (Ho et al. on CIFAR-10)
        image = jnp.where(draws["flip"][:, None, None, None], image[:, :, ::-1], image)
    inputs = {
        "image": image,
        "t": draws["t"],
        "noise": draws["noise"],
        "dropout_rng": draws["dropout_rng"],
    }
    if num_classes:
        inputs["label"] = jnp.where(draws["drop_label"], num_classes, batch["label"])
    return inputs


def denoise_loss(
    params: PyTree,
    batch: dict,
    *,
    model: nn.Module,
    schedule: diffusion.Schedule,
    parameterisation: str,
    loss_fn: Callable,
    loss_kw: dict,
) -> tuple[jax.Array, dict]:
    """(loss, metrics) of the network on the denoising batch of `train_inputs`."""
    to_target = diffusion.PARAMETERISATIONS.get(parameterisation).target
    xt = diffusion.q_sample(schedule, batch["image"], batch["t"], batch["noise"])
    output = model.apply(
        {"params": params}, xt, batch["t"], batch.get("label"), batch["dropout_rng"]
    )
    target = to_target(schedule, batch["image"], batch["t"], batch["noise"])
    snr = diffusion.snr(schedule, batch["t"])
    return loss_fn(output, target, snr, parameterisation=parameterisation, **loss_kw)


def init(rng, batch, *, model, num_classes, optimizer):
    params_rng, state_rng = jax.random.split(rng)
    image = batch["image"][:1]
    label = jnp.zeros((1,), jnp.int32) if num_classes else None
    params = models.init_params(model, params_rng, image, jnp.zeros((1,), jnp.int32), label)
    return train_state.create(params, optimizer, state_rng)


def denoise_images(
    params: PyTree,
    rng: jax.Array,
    num: int,
    label: jax.Array | None,
    *,
    model: nn.Module,
    schedule: diffusion.Schedule,
    parameterisation: str,
    num_classes: int,
    image_shape: tuple[int, ...],
    settings: ConfigDict,
) -> jax.Array:
    """num images in [-1, 1] from settings' (config.sample's) sampler; label [num] or None."""

    def apply(x, t, label):
        return model.apply({"params": params}, x, t, label)

    if label is not None and settings.guidance_scale != 1.0:
        denoise = sampling.guided(apply, label, num_classes, settings.guidance_scale)
    else:
        denoise = sampling.conditional(apply, label)
    noise_rng, sampler_rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, (num,) + tuple(image_shape))
    report = _report(settings) if settings.progress else None
    common = dict(clip=settings.clip_denoised, report=report)
    if settings.sampler == "ddpm":
        images = sampling.ddpm(
            denoise, schedule, parameterisation, noise, sampler_rng, settings.variance, **common
        )
    else:
        images = sampling.ddim(
            denoise,
            schedule,
            parameterisation,
            noise,
            sampler_rng,
            settings.num_inference_steps,
            settings.eta,
            # Runs written before the option existed sampled with True.
            use_clipped_model_output=settings.get("use_clipped_model_output", True),
            **common,
        )
    return jnp.clip(images, -1.0, 1.0)


def sample_grids(state, batch, rng, *, denoise, num_classes, settings):
    """{sampler: images}: one row per class (settings.labels or all) when conditional."""
    del batch
    if num_classes:
        rows = tuple(settings.labels) or tuple(range(num_classes))
        cols = settings.samples_per_class
        label = jnp.repeat(jnp.asarray(rows, jnp.int32), cols)
        images = denoise(state.eval_params, rng, len(rows) * cols, label)
        images = images.reshape((len(rows), cols) + images.shape[1:])  # one row per class
    else:
        images = denoise(state.eval_params, rng, settings.num_samples, None)
    return {settings.sampler: images}


def generate(state, rng, num, labels=None, *, denoise, num_classes):
    """For the sample evaluators (FID, ...): a conditional model without given labels
    draws them uniformly, so its samples follow the (balanced) class distribution."""
    if num_classes and labels is None:
        label_rng, rng = jax.random.split(rng)
        labels = jax.random.randint(label_rng, (num,), 0, num_classes)
    return denoise(state.eval_params, rng, num, labels if num_classes else None)


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    num_classes = info.num_classes if config.model.class_conditional else 0
    diffusion_kw = dict(
        model=models.make_model(config.model, info.image_shape, num_classes),
        schedule=diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps),
        parameterisation=config.diffusion.parameterisation,
    )
    optimizer = train_state.from_config(config)
    inputs_of = functools.partial(
        train_inputs,
        num_steps=config.diffusion.num_timesteps,
        num_classes=num_classes,
        label_dropout=config.loss.label_dropout,
        random_flip=config.train.random_flip,
        axis_name=axis_name,
    )
    loss_of = functools.partial(
        denoise_loss,
        **diffusion_kw,
        loss_fn=losses.LOSSES.get(config.loss.name),
        loss_kw=config.loss.kw.to_dict(),
    )
    denoise = functools.partial(
        denoise_images,
        **diffusion_kw,
        num_classes=num_classes,
        image_shape=info.image_shape,
        settings=config.sample,
    )

    def make_bpd_eval(entry):
        bpd = functools.partial(
            likelihood.bits_per_dim,
            **diffusion_kw,
            num_timesteps=entry.num_timesteps,
            conditional=bool(num_classes),
            variance=entry.variance,
            clip=entry.clip_denoised,
        )
        return train_state.on_eval_params(bpd)

    return Steps(
        init=functools.partial(
            init, model=diffusion_kw["model"], num_classes=num_classes, optimizer=optimizer
        ),
        train_step=functools.partial(
            train_state.train_step,
            inputs_of=inputs_of,
            loss_of=loss_of,
            optimizer=optimizer,
            microbatches=config.train.microbatches,
            axis_name=axis_name,
        ),
        eval_steps={"bpd": make_bpd_eval},
        sample=functools.partial(
            sample_grids, denoise=denoise, num_classes=num_classes, settings=config.sample
        ),
        batch_spec={"image": jax.ShapeDtypeStruct((1, *info.image_shape), jnp.float32)},
        generate=functools.partial(generate, denoise=denoise, num_classes=num_classes),
    )


def _report(settings: ConfigDict):
    total = (
        settings.num_inference_steps if settings.sampler == "ddim" else None
    )  # ddpm: all T steps

    def report(done):
        log.info(
            "sampling (%s): step %d%s", settings.sampler, int(done), f"/{total}" if total else ""
        )

    return report


FAMILIES.register("ddpm")(Family(validate, make_steps, losses=losses.LOSSES))
