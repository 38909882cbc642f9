"""A run on disk: what training writes besides metrics and checkpoints, and loading it back.

A run's workdir holds config.json, checkpoints/, metrics.jsonl, samples/ and the tokenizers of
its data (<field>.json for each of the kind's tokenizer fields, e.g. tokenizer.json), so
sampling and evaluation need nothing but the workdir. This module sits below both the loop
(jaxgen.train.loop, which trains) and the evaluators (jaxgen.metrics), which load runs from
here. Importing it registers the built-in families.
"""

import os
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxgen import data, optim, parallel, stages
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.stages import with_saved_tokenizers
from jaxgen.tokenizers import Tokenizer
from jaxgen.train import (
    Family,
    Steps,
    autoencoder,
    check_loss_kw,
    classifier,
    clip,
    ddpm,
    gan,
    get_family,
    gpt,
    latent_diffusion,
    seq2seq,
    vae,
)
from jaxgen.workdir import writing

PyTree = Any
# The built-in families: importing their modules registers them in jaxgen.train.FAMILIES.
BUILT_IN_FAMILIES = (autoencoder, classifier, clip, ddpm, gan, gpt, latent_diffusion, seq2seq, vae)
DTYPES = ("float32", "bfloat16", "float16")
INTERVALS = ("log_every", "eval_every", "ckpt_every", "sample_every")


class Run(NamedTuple):
    """A trained run loaded for sampling or evaluation (always under jit)."""

    state: PyTree  # global, replicated
    step: int
    steps: Steps  # the family's
    placement: parallel.Placement
    info: data.DatasetInfo
    tokenizer: Tokenizer | None  # the run's config.data.tokenizer (workdir/tokenizer.json), if any
    family: Family
    config: ConfigDict  # the config it was loaded with (tokenizer fields point into the workdir)


def save_tokenizers(data_config: ConfigDict, workdir: str) -> list[str]:
    """Writes each tokenizer of the run's data as <workdir>/<field>.json; returns the paths."""
    paths = []
    for field, tokenizer in data.get_tokenizers(data_config).items():
        paths.append(os.path.join(workdir, f"{field}.json"))
        with writing(paths[-1]):
            tokenizer.save(paths[-1])
    return paths


def restore_latest(workdir: str, config: ConfigDict, abstract_state: PyTree) -> tuple[PyTree, int]:
    """(state, step) of the latest readable checkpoint of `workdir` (stages.restore_latest)."""
    del config
    return stages.restore_latest(workdir, abstract_state)


def check_config(config: ConfigDict) -> data.DatasetInfo:
    """Every check of a run's config that needs no compilation, but its evaluators (which
    jaxgen.metrics checks); returns the dataset info. Raises ConfigError naming the field."""
    family = get_family(config.family)
    for field in ("num_steps", "batch_size", "microbatches", *INTERVALS):
        if config.train[field] < 1:
            raise ConfigError(f"config.train.{field}: must be >= 1, got {config.train[field]}")
    if config.seed < 0:
        raise ConfigError(f"config.seed: must be >= 0, got {config.seed}")
    if config.ckpt.max_to_keep < 1:
        raise ConfigError(f"config.ckpt.max_to_keep: must be >= 1, got {config.ckpt.max_to_keep}")
    for field in ("dtype", "param_dtype"):
        if config.model[field] not in DTYPES:
            raise ConfigError(
                f"config.model.{field}: {config.model[field]!r} is not one of {', '.join(DTYPES)}"
            )
    optim.check_config(config.optim)
    parallel.check_config(config)
    num_devices = parallel.num_data_devices(config.mesh)
    if config.sample.num_samples < 1 or config.sample.num_samples % num_devices:
        raise ConfigError(
            f"config.sample.num_samples: must be a positive multiple of the {num_devices} devices, "
            f"got {config.sample.num_samples}"
        )
    if config.init_from and not os.path.exists(config.init_from):
        raise ConfigError(f"config.init_from: no such path {config.init_from!r}")
    data.check_config(config.data)
    info = data.get_info(config.data)
    for split in (config.data.train_split, config.data.eval_split):
        if split not in info.num_examples:
            raise ConfigError(
                f"config.data: split {split!r} not in {config.data.name} "
                f"(has {', '.join(info.num_examples)})"
            )
    check_loss_kw(config, family)
    family.validate(config, info)
    return info


def load_run(config: ConfigDict, workdir: str) -> Run:
    """Restore the latest checkpoint of `workdir` with `config` (the run's, plus overrides)."""
    config = config.copy_and_resolve_references()
    config.mesh.backend = "jit"
    config.data = with_saved_tokenizers(config.data, workdir)
    info = check_config(config)
    family = get_family(config.family)
    placement = parallel.Placement(config.mesh)
    steps = family.make_steps(config, info, None)
    batch = first_eval_batch(config, config.sample.num_samples)
    abstract = jax.eval_shape(steps.init, jax.random.PRNGKey(config.seed), batch)
    state, step = restore_latest(workdir, config, placement.abstract_state(abstract))
    tokenizer = data.get_tokenizers(config.data).get("tokenizer")
    return Run(state, step, steps, placement, info, tokenizer, family, config)


def first_eval_batch(config: ConfigDict, batch_size: int) -> dict:
    """The first `batch_size` examples of the eval split (host arrays)."""
    iterator = data.make_iterator(
        config.data, config.data.eval_split, batch_size, config.seed, train=False
    )
    return next(iter(iterator))


def write_samples(
    sample, state, batch, rng, workdir: str, step: int, tag: str = "", *, config, family
) -> list[str]:
    """Run the compiled sampler and write each output with the family's writer
    (image grids by default, decoded text for GPT) to workdir/samples/<name>_<step><tag>.*."""
    outputs = jax.device_get(sample(state, batch, rng))
    if jax.process_index() != 0:
        return []
    paths, folder = [], os.path.join(workdir, "samples")
    if outputs:  # family writers may assume the folder
        with writing(folder):
            os.makedirs(folder, exist_ok=True)
    for name, array in outputs.items():
        stem = os.path.join(folder, f"{name}_{step:07d}{tag}")
        with writing(stem + ".*"):
            paths.append(family.write_sample(config, name, np.asarray(array), stem))
    return paths
