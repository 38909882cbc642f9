"""Earlier runs that a later stage builds on, read-only: text-to-image's frozen autoencoder and CLIP.

A later stage names an earlier run by its workdir (the latent diffusion config's
config.model.autoencoder=W_AE and config.model.text_encoder=W_CLIP). `check_stage` checks, before
anything compiles, that W is a run of the expected family with a committed checkpoint and returns
its config; `load_params` restores that run's latest checkpoint and returns its eval params (the EMA
when the run keeps one). Nothing under W is created, moved or deleted.

This module sits below jaxgen.runs, which imports every family: a family may import it, and the
earlier run's family is looked up in the FAMILIES registry only when called (it must be registered
by then, e.g. by the later family importing its module). `restore_latest` is the one place a run's
checkpoint is read for sampling and evaluation (jaxgen.runs.load_run uses it too).
"""

import os
from typing import Any

import jax

from jaxgen import checkpoint, data, parallel
from jaxgen.config import ConfigDict, ConfigError, load_workdir_config
from jaxgen.train import get_family
from jaxgen.workdir import has_checkpoint

PyTree = Any


def restore_latest(workdir: str, abstract_state: PyTree) -> tuple[PyTree, int]:
    """(state, step) of the latest readable checkpoint of `workdir`. Read-only: a live trainer's
    in-flight save and unreadable steps are left as they are."""
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    try:
        state, _, step = ckpt.restore(abstract_state)
    finally:
        ckpt.close()
    return state, step


def check_stage(workdir: str, field: str, family: str) -> ConfigDict:
    """The config of the earlier run `workdir` named by `field` (e.g. "config.model.autoencoder");
    a ConfigError naming `field` if it is not a `family` run with a checkpoint."""
    if not workdir:
        raise ConfigError(f"{field}: empty; set it to the workdir of a trained {family} run")
    if not os.path.isdir(workdir):
        raise ConfigError(f"{field}: {workdir!r} does not exist (train the {family} run first)")
    try:
        config = load_workdir_config(workdir)
    except ConfigError as error:
        raise ConfigError(f"{field}: {str(error).removeprefix('--workdir: ')}") from error
    if config.get("family") != family:
        raise ConfigError(
            f"{field}: {workdir} is a {config.get('family')!r} run, not a {family!r} run"
        )
    if not has_checkpoint(workdir):
        raise ConfigError(f"{field}: {workdir} has no checkpoint (train the {family} run first)")
    return config


def with_saved_tokenizers(data_config: ConfigDict, workdir: str) -> ConfigDict:
    """config.data with each tokenizer field pointing at the run's saved file, where there is
    one: a run decodes with exactly the tokenizers it trained with."""
    data_config = data_config.copy_and_resolve_references()
    for field in data.kind_of(data_config.name).tokenizer_fields:
        saved = os.path.join(workdir, f"{field}.json")
        if os.path.exists(saved):
            data_config[field] = saved
    return data_config


def load_params(workdir: str, config: ConfigDict, info: data.DatasetInfo) -> PyTree:
    """The eval params (EMA when kept) of the latest checkpoint of the run `workdir` whose config
    (check_stage) and dataset info are given, replicated on this job's devices."""
    config = config.copy_and_resolve_references()
    config.mesh.backend = "jit"
    steps = get_family(config.family).make_steps(config, info, None)
    placement = parallel.Placement(config.mesh)
    abstract = jax.eval_shape(steps.init, jax.random.PRNGKey(0), example_spec(config, info))
    state, _ = restore_latest(workdir, placement.abstract_state(abstract))
    return state.eval_params


def example_spec(config: ConfigDict, info: data.DatasetInfo) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of one example of a captions-kind batch ("image", "caption"): what the
    autoencoder's and CLIP's init read."""
    spec = {"image": jax.ShapeDtypeStruct((1, *info.image_shape), "float32")}
    if "caption_len" in config.data:
        spec["caption"] = jax.ShapeDtypeStruct((1, config.data.caption_len), "int32")
    return spec
