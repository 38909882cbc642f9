"""A run's folder: the files training writes besides metrics and checkpoints, and the reads of
earlier runs, below the loop and the evaluators.

A workdir W holds config.json, data_info.json (the dataset's shapes, classes and split sizes),
the tokenizers of its data (<field>.json for each of the kind's tokenizer fields, e.g.
tokenizer.json), checkpoints/, metrics.jsonl and samples/. With those, sampling, evaluating,
exporting and resuming need nothing else: no copy of the training data, no earlier run.

Here: the checks of a run's config that need no compilation (`check_config`), writing and
reading the data info and tokenizers, the example batch init reads (Steps.batch_spec), the
fixed batch a sampler may read, writing sample files, and reading another run read-only:
`check_stage` (a later stage's check of an earlier run it names, e.g. latent diffusion's
config.model.autoencoder) and `load_params` (that run's eval params). Nothing under a run read
here is created, moved or deleted. Loading a whole run for sampling is jaxgen.runs.
"""

import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxgen import checkpoint, data, optim, parallel
from jaxgen.config import ConfigDict, ConfigError, is_count, load_workdir_config
from jaxgen.family import Family, Steps, check_loss_kw, get_family
from jaxgen.workdir import has_checkpoint, write_atomic, writing

PyTree = Any
DTYPES = ("float32", "bfloat16", "float16")
INTERVALS = ("log_every", "eval_every", "ckpt_every", "sample_every")
INFO_FILE = "data_info.json"


def check_config(config: ConfigDict, info: data.DatasetInfo | None = None) -> data.DatasetInfo:
    """Every check of a run's config that needs no compilation, but its evaluators (which
    jaxgen.metrics checks); returns the dataset info. Raises ConfigError naming the field.

    info: a saved run's (load_info); then the data itself is neither checked nor opened.
    """
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
    check_sample_values(config.sample)
    optim.check_config(config.optim)
    parallel.check_config(config)
    num_devices = parallel.num_data_devices(config.mesh)
    num_samples = config.sample.num_samples
    if not is_count(num_samples) or num_samples % num_devices:
        raise ConfigError(
            f"config.sample.num_samples: must be a positive multiple of the {num_devices} devices, "
            f"got {config.sample.num_samples}"
        )
    size = config.sample.get("batch_size", num_devices)
    if not is_count(size) or size % num_devices:
        raise ConfigError(
            f"config.sample.batch_size: must be a positive multiple of the {num_devices} "
            f"devices, got {size!r}"
        )
    if config.init_from and not os.path.exists(config.init_from):
        raise ConfigError(f"config.init_from: no such path {config.init_from!r}")
    if info is None:
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


def check_sample_values(sample_config: ConfigDict, prefix: str = "config.sample") -> None:
    """ConfigError naming the field for a NaN or infinite number anywhere in config.sample (no
    sampler setting means anything non-finite), text that is not UTF-8 (bytes a command line
    could not decode: prompts, sources), or a seed that is not an integer >= 0; each family
    checks the ranges of its own settings (Family.validate)."""
    for key, value in sample_config.items():
        field = f"{prefix}.{key}"
        if isinstance(value, ConfigDict):
            check_sample_values(value, field)
            continue
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{field}: must be a finite number, got {value!r}")
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:  # undecodable argv bytes (surrogateescape)
                    raise ConfigError(f"{field}: not UTF-8 text: {item!r}") from None
    seed = sample_config.get("seed", 0)
    if prefix == "config.sample" and (
        isinstance(seed, bool) or not isinstance(seed, int) or seed < 0
    ):
        raise ConfigError(f"{prefix}.seed: must be an integer >= 0, got {seed!r}")


# ----------------------------------------------------------------------------- data of a run


def save_info(info: data.DatasetInfo, workdir: str) -> str:
    """Writes the dataset info as <workdir>/data_info.json; returns the path."""
    path = os.path.join(workdir, INFO_FILE)
    write_atomic(path, json.dumps(info._asdict(), indent=1))
    return path


def load_info(workdir: str) -> data.DatasetInfo | None:
    """The dataset info the run saved (save_info), or None for a run saved without one."""
    path = os.path.join(workdir, INFO_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            fields = json.load(f)
        fields["image_shape"] = tuple(fields["image_shape"])
        return data.DatasetInfo(**fields)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"{path}: unreadable ({error})") from None


def save_tokenizers(data_config: ConfigDict, workdir: str) -> list[str]:
    """Writes each tokenizer of the run's data as <workdir>/<field>.json; returns the paths."""
    paths = []
    for field, tokenizer in data.get_tokenizers(data_config).items():
        paths.append(os.path.join(workdir, f"{field}.json"))
        with writing(paths[-1]):
            tokenizer.save(paths[-1])
    return paths


def with_saved_tokenizers(data_config: ConfigDict, workdir: str) -> ConfigDict:
    """config.data with each tokenizer field pointing at the run's saved file, where there is
    one: a run decodes with exactly the tokenizers it trained with (and opens no data for
    them, see jaxgen.data.get_tokenizers)."""
    data_config = data_config.copy_and_resolve_references()
    for field in data.kind_of(data_config.name).tokenizer_fields:
        saved = os.path.join(workdir, f"{field}.json")
        if os.path.exists(saved):
            data_config[field] = saved
    return data_config


def write_run_files(config: ConfigDict, info: data.DatasetInfo, workdir: str) -> None:
    """config.json, data_info.json and the tokenizers of a new run (process 0 writes)."""
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
        save_info(info, workdir)
        save_tokenizers(config.data, workdir)  # the workdir alone decodes the run's tokens


# ----------------------------------------------------------------------------- batches


def example_batch(steps: Steps) -> dict[str, jax.Array]:
    """Zeros of the family's Steps.batch_spec: what init reads (shapes only)."""
    return {key: jnp.zeros(spec.shape, spec.dtype) for key, spec in steps.batch_spec.items()}


def first_eval_batch(config: ConfigDict, batch_size: int) -> dict:
    """The first `batch_size` examples of the eval split (host arrays)."""
    iterator = data.make_iterator(
        config.data, config.data.eval_split, batch_size, config.seed, train=False
    )
    return next(iter(iterator))


def sample_batch(config: ConfigDict, steps: Steps) -> dict:
    """The fixed batch Steps.sample reads: the first of Steps.sample_batches when the family
    has them, the first config.sample.num_samples eval examples when its sampler reads data
    (Steps.sample_reads_data), else {} (no data opened)."""
    if steps.sample_batches is not None:
        return steps.sample_batches[0]
    if not steps.sample_reads_data:
        return {}
    return first_eval_batch(config, config.sample.num_samples)


def real_rows(outputs: dict, keep: np.ndarray) -> dict:
    """The output rows of the real examples of a batch of Steps.sample_batches, whose "keep"
    is `keep`: each example has output_rows // len(keep) consecutive rows."""
    keep = np.asarray(keep, bool)
    return {
        name: np.asarray(array)[np.repeat(keep, len(array) // len(keep))]
        for name, array in outputs.items()
    }


def sample_in_batches(sample, state, batches, rng, placement: parallel.Placement) -> dict:
    """The outputs of the compiled sampler over each batch of Steps.sample_batches in turn
    (batch i with fold_in(rng, i)), the real rows of each joined; a progress bar when there
    is more than one batch. Device memory holds one batch at a time."""
    pieces = []
    for index in tqdm(range(len(batches)), desc="sample", unit="batch", disable=len(batches) < 2):
        host = batches[index]
        outputs = sample(
            state, placement.put_batch(host, backend="jit"), jax.random.fold_in(rng, index)
        )
        pieces.append(real_rows(jax.device_get(outputs), host["keep"]))
    return {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}


def write_samples(
    sample, state, batch, rng, workdir: str, step: int, tag: str = "", *, config, family: Family
) -> list[str]:
    """Run the compiled sampler and write each output with the family's writer
    (image grids by default, decoded text for GPT) to workdir/samples/<name>_<step><tag>.*.
    A batch of Steps.sample_batches (with "keep") writes the outputs of its real rows only."""
    outputs = jax.device_get(sample(state, batch, rng))
    if "keep" in batch:
        outputs = real_rows(outputs, jax.device_get(batch["keep"]))
    return write_outputs(outputs, workdir, step, tag, config=config, family=family)


def write_outputs(
    outputs: dict, workdir: str, step: int, tag: str = "", *, config, family: Family
) -> list[str]:
    """Writes each host output with the family's writer to workdir/samples/<name>_<step><tag>.*
    (process 0); returns the paths."""
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


# ----------------------------------------------------------------------------- other runs


def restore_latest(workdir: str, abstract_state: PyTree) -> tuple[PyTree, int]:
    """(state, step) of the latest readable checkpoint of `workdir`. Read-only: a live trainer's
    in-flight save and unreadable steps are left as they are. The one place a run's checkpoint
    is read for sampling and evaluation."""
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


def run_info(config: ConfigDict, workdir: str) -> data.DatasetInfo:
    """The dataset info of the run in `workdir` whose config is given: the saved one, else (a
    run saved before data_info.json existed) the data's, through its saved tokenizers."""
    info = load_info(workdir)
    return info if info is not None else data.get_info(with_saved_tokenizers(config.data, workdir))


def load_params(workdir: str, config: ConfigDict) -> PyTree:
    """The eval params (EMA when kept) of the latest checkpoint of the run `workdir` whose config
    (check_stage) is given, replicated on this job's devices."""
    config = config.copy_and_resolve_references()
    config.mesh.backend = "jit"
    config.data = with_saved_tokenizers(config.data, workdir)
    steps = get_family(config.family).make_steps(config, run_info(config, workdir), None)
    placement = parallel.Placement(config.mesh)
    abstract = jax.eval_shape(steps.init, jax.random.PRNGKey(0), example_batch(steps))
    state, _ = restore_latest(workdir, placement.abstract_state(abstract))
    return state.eval_params
