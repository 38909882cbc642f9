"""StyleGAN2 family: one jit-compiled step with the four phases of stylegan2-ada's training loop.

This file checks the config (`validate`), builds the step's fixed parts (`make_setup`), the
state (`init`), sampling and evaluation, and registers the family; the step itself (G main,
path length, D main, lazy R1, the EMA) is in train/stylegan2_phases.py, whose docstring gives
the phases, their schedule and the state besides params.

Data smaller than the model's resolution (28x28 MNIST in a 32x32 model) is padded with -1
(background) on each side; the generator's output is cropped to the data size and padded the
same way before D sees it, so D cannot tell them apart by the border, and generate / sample
return data-sized images. Minibatch std and the path length mean couple the whole batch, so
the step runs under jit on the global batch (per_device_step=False; the pmap backend is
refused).
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxgen import diffaugment, optim
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.family import FAMILIES, Family, Steps
from jaxgen.losses import stylegan2 as losses
from jaxgen.models import stylegan2 as models
from jaxgen.parallel import num_data_devices
from jaxgen.sampling import stylegan2 as sampling
from jaxgen.train import state as train_state
from jaxgen.train.stylegan2_phases import (
    Setup,
    StyleGAN2State,
    crop_to_data,
    pad_to_model,
    train_step,
)

PLAYERS = ("generator", "discriminator")
LOSS_KEYWORDS = (
    "r1_gamma",
    "r1_interval",
    "pl_weight",
    "pl_decay",
    "pl_interval",
    "pl_batch_shrink",
    "style_mixing_prob",
)
TRAIN_FIELDS = ("ema_kimg", "ema_rampup", "w_avg_beta", "diffaugment")
SAMPLE_FIELDS = (
    "truncation_psi",
    "truncation_cutoff",
    "noise_mode",
    "mixing_rows",
    "mixing_cols",
    "interpolation_rows",
    "interpolation_steps",
)


def _check_range(section: str, config: ConfigDict, name: str, low, high=None, integer=False):
    value = config[name]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and value >= low and (high is None or value <= high)
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"config.{section}.{name}: must be {kind} {bound}, got {value!r}")


def validate(config: ConfigDict, info: Any) -> None:
    models.check_config(config.model, info.image_shape)
    for section, fields in (("loss.kw", LOSS_KEYWORDS), ("train", TRAIN_FIELDS)):
        source = config.loss.kw if section == "loss.kw" else config.train
        for name in fields:
            if name not in source:
                raise ConfigError(f"config.{section}.{name}: missing; the stylegan2 step reads it")
    kw = config.loss.kw
    _check_range("loss.kw", kw, "r1_gamma", 0)
    _check_range("loss.kw", kw, "pl_weight", 0)
    _check_range("loss.kw", kw, "pl_decay", 0, 1)
    _check_range("loss.kw", kw, "style_mixing_prob", 0, 1)
    for name in ("r1_interval", "pl_interval", "pl_batch_shrink"):
        _check_range("loss.kw", kw, name, 1, integer=True)
    _check_range("train", config.train, "ema_kimg", 0)
    _check_range("train", config.train, "ema_rampup", 0)
    _check_range("train", config.train, "w_avg_beta", 0, 1)
    try:
        diffaugment.parse(config.train.diffaugment)
    except ValueError as error:
        raise ConfigError(f"config.train.diffaugment: {error}") from None
    for field in ("optim", "optim_d"):
        if field not in config:
            raise ConfigError(f"config.{field}: missing (the {field} section of a player)")
        optim.check_config(config[field], f"config.{field}")
        if config[field].ema_decay:
            raise ConfigError(
                f"config.{field}.ema_decay: must be 0; the generator's EMA is set by "
                "config.train.ema_kimg (a half-life in images)"
            )
    if config.mesh.backend == "pmap":
        raise ConfigError(
            "config.mesh.backend: stylegan2 runs under jit only (minibatch std and the path "
            "length mean couple the whole batch)"
        )
    if config.train.microbatches != 1:
        raise ConfigError(
            f"config.train.microbatches: stylegan2 takes no accumulation, got "
            f"{config.train.microbatches}"
        )
    batch = config.train.batch_size
    devices = num_data_devices(config.mesh)
    if batch % devices:
        raise ConfigError(
            f"config.train.batch_size: {batch} must split evenly over the {devices} devices"
        )
    group = config.model.mbstd_group_size
    if group and batch % min(group, batch):
        raise ConfigError(
            f"config.train.batch_size: {batch} must be a multiple of "
            f"config.model.mbstd_group_size={group}"
        )
    shrunk = batch // kw.pl_batch_shrink
    if kw.pl_weight and (shrunk < 1 or (group and shrunk % min(group, shrunk))):
        raise ConfigError(
            f"config.loss.kw.pl_batch_shrink: {kw.pl_batch_shrink} leaves {shrunk} of a batch "
            f"of {batch} (must be >= 1, a multiple of the minibatch std group)"
        )
    if config.model.conditional and info.num_classes < 1:
        raise ConfigError(f"config.model.conditional: {config.data.name} has no class labels")
    for name in SAMPLE_FIELDS:
        if name not in config.sample:
            raise ConfigError(f"config.sample.{name}: missing; stylegan2 sampling reads it")
    if config.sample.noise_mode not in models.NOISE_MODES:
        raise ConfigError(
            f"config.sample.noise_mode: {config.sample.noise_mode!r} is not one of "
            f"{', '.join(models.NOISE_MODES)}"
        )
    for name in ("mixing_rows", "mixing_cols", "interpolation_rows", "interpolation_steps"):
        _check_range("sample", config.sample, name, 0, integer=True)


def make_setup(config: ConfigDict, info: Any) -> Setup:
    num_classes = info.num_classes if config.model.conditional else 0
    generator, discriminator = models.make_networks(config.model, info.image_shape, num_classes)
    kw = dict(config.loss.kw)
    optimizers = {}
    for player, section, weight, interval in (
        ("generator", config.optim, kw["pl_weight"], kw["pl_interval"]),
        ("discriminator", config.optim_d, kw["r1_gamma"], kw["r1_interval"]),
    ):
        section = section.copy_and_resolve_references()
        if weight > 0:  # lazy regularisation: an extra step every `interval` updates
            section.lr, section.b1, section.b2 = losses.lazy_adam(
                section.lr, section.b1, section.b2, interval
            )
        num_updates = config.train.num_steps * (2 if weight > 0 else 1)
        optimizers[player] = train_state.make_optimizer(
            section, num_updates, config.train.skip_nonfinite
        )
    return Setup(
        generator=generator,
        # stylegan2-ada trains with the per-sample modulated conv and samples with the fused
        # one (networks.py, SynthesisBlock.forward); both compute the same function.
        train_generator=generator.clone(fused_modconv=False),
        discriminator=discriminator,
        gan_loss=losses.LOSSES.get(config.loss.name),
        optimizers=optimizers,
        image_shape=tuple(info.image_shape),
        num_classes=num_classes,
        kw=kw,
        batch_size=config.train.batch_size,
        ema_kimg=config.train.ema_kimg,
        ema_rampup=config.train.ema_rampup,
        w_avg_beta=config.train.w_avg_beta,
        augment=diffaugment.parse(config.train.diffaugment),
    )


def init(rng, batch, *, setup: Setup) -> StyleGAN2State:
    g_rng, d_rng, state_rng = jax.random.split(rng, 3)
    generator, discriminator = setup.generator, setup.discriminator
    label = jnp.zeros((1,), jnp.int32)
    z = jnp.zeros((1, generator.z_dim))
    params = {
        "generator": generator.init(g_rng, z, label, g_rng)["params"],
        "discriminator": discriminator.init(
            d_rng, pad_to_model(jnp.asarray(batch["image"][:1]), setup), label
        )["params"],
    }
    zero = jnp.zeros((), jnp.float32)
    return StyleGAN2State(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={name: setup.optimizers[name].transform.init(params[name]) for name in PLAYERS},
        ema_params={"generator": jax.tree.map(jnp.copy, params["generator"])},
        w_avg=jnp.zeros((generator.w_dim,), jnp.float32),
        pl_mean=zero,
        penalties={"r1": zero, "pl_penalty": zero, "pl_length": zero},
        rng=state_rng,
    )


# -- evaluation and sampling -------------------------------------------------------------------
class SampleSettings(NamedTuple):
    num_samples: int
    psi: float
    cutoff: int | None
    noise_mode: str
    mixing_rows: int
    mixing_cols: int
    interpolation_rows: int
    interpolation_steps: int


def sample_settings(sample_config: ConfigDict) -> SampleSettings:
    cutoff = sample_config.truncation_cutoff
    return SampleSettings(
        num_samples=sample_config.num_samples,
        psi=float(sample_config.truncation_psi),
        cutoff=None if cutoff < 0 else cutoff,
        noise_mode=sample_config.noise_mode,
        mixing_rows=sample_config.mixing_rows,
        mixing_cols=sample_config.mixing_cols,
        interpolation_rows=sample_config.interpolation_rows,
        interpolation_steps=sample_config.interpolation_steps,
    )


def _crop_grid(grid, setup: Setup):
    lead = grid.shape[:-3]
    images = crop_to_data(grid.reshape((-1,) + grid.shape[-3:]), setup)
    return images.reshape(lead + images.shape[1:])


def sample(state, batch, rng, *, setup: Setup, settings: SampleSettings):
    """{"samples": truncated samples (one row per class when conditional), "mixing_<range>":
    the style-mixing grids, "interpolation": the W interpolations}, at the data's size."""
    del batch
    generator, params = setup.generator, state.eval_params
    truncation = dict(psi=settings.psi, cutoff=settings.cutoff, noise_mode=settings.noise_mode)
    samples_rng, mixing_rng, interpolation_rng, noise_rng = jax.random.split(rng, 4)
    num = settings.num_samples
    if setup.num_classes:
        cols = max(1, num // setup.num_classes)
        z = jnp.tile(
            jax.random.normal(samples_rng, (cols, generator.z_dim)), (setup.num_classes, 1)
        )
        label = jnp.repeat(jnp.arange(setup.num_classes, dtype=jnp.int32), cols)
    else:
        z = jax.random.normal(samples_rng, (num, generator.z_dim))
        label = jnp.zeros((num,), jnp.int32)
    images = sampling.generate(generator, params, state.w_avg, z, label, noise_rng, **truncation)
    images = crop_to_data(images, setup)
    if setup.num_classes:
        images = images.reshape((setup.num_classes, -1) + images.shape[1:])
    outputs = {"samples": images}
    if settings.mixing_rows and settings.mixing_cols:
        for name, layers in sampling.style_ranges(generator.num_ws).items():
            if layers[1] <= layers[0]:
                continue
            grid = sampling.style_mixing_grid(
                generator,
                params,
                state.w_avg,
                mixing_rng,
                settings.mixing_rows,
                settings.mixing_cols,
                layers,
                **truncation,
            )
            outputs[f"mixing_{name}"] = _crop_grid(grid, setup)
    if settings.interpolation_rows and settings.interpolation_steps:
        grid = sampling.interpolation_grid(
            generator,
            params,
            state.w_avg,
            interpolation_rng,
            settings.interpolation_rows,
            settings.interpolation_steps,
            **truncation,
        )
        outputs["interpolation"] = _crop_grid(grid, setup)
    return outputs


def generate(state, rng, num, labels=None, *, setup: Setup):
    """For the sample evaluators (FID, ...): the EMA generator, no truncation, random noise."""
    z_rng, label_rng, noise_rng = jax.random.split(rng, 3)
    z = jax.random.normal(z_rng, (num, setup.generator.z_dim))
    if labels is None:
        labels = jax.random.randint(label_rng, (num,), 0, max(setup.num_classes, 1))
    images = sampling.generate(
        setup.generator, state.eval_params, state.w_avg, z, labels, noise_rng
    )
    return crop_to_data(images, setup)


def discriminator_sums(state, batch, rng, *, setup: Setup):
    """Sums of D's logits on real test images and on as many samples of the EMA generator."""
    image, mask, label = batch["image"], batch["mask"], batch["label"]
    fake = generate(state, rng, image.shape[0], label if setup.num_classes else None, setup=setup)
    d_params = state.params["discriminator"]
    real_logits = setup.discriminator.apply({"params": d_params}, pad_to_model(image, setup), label)
    fake_logits = setup.discriminator.apply({"params": d_params}, pad_to_model(fake, setup), label)
    return {
        "d_real": jnp.sum(real_logits * mask),
        "d_fake": jnp.sum(fake_logits * mask),
        "count": jnp.sum(mask),
    }


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    del axis_name  # jit only (per_device_step=False)
    setup = make_setup(config, info)
    discriminator = functools.partial(discriminator_sums, setup=setup)
    return Steps(
        init=functools.partial(init, setup=setup),
        train_step=functools.partial(train_step, setup=setup),
        eval_steps={"discriminator": lambda entry: discriminator},
        sample=functools.partial(sample, setup=setup, settings=sample_settings(config.sample)),
        batch_spec={"image": jax.ShapeDtypeStruct((1, *info.image_shape), jnp.float32)},
        generate=functools.partial(generate, setup=setup),
    )


def sample_tag(sample_config: ConfigDict) -> str:
    """_seed<S>_psi<psi>[_cut<c>]_<noise mode>: other settings never overwrite a file."""
    cutoff = sample_config.truncation_cutoff
    tag = f"_seed{sample_config.seed}_psi{sample_config.truncation_psi:g}"
    tag += f"_cut{cutoff}" if cutoff >= 0 else ""
    return tag + f"_{sample_config.noise_mode}"


FAMILIES.register("stylegan2")(
    Family(
        validate,
        make_steps,
        losses=losses.LOSSES,
        loss_keywords=LOSS_KEYWORDS,
        sample_tag=sample_tag,
        per_device_step=False,
    )
)
