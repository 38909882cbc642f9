"""Base config sections shared by every experiment, and config validation.

A config file (configs/<family>/<dataset>.py) starts from `base_config()` and
changes only what differs, so `print(config)` shows every value the run uses:
the trainer never invents defaults. `validate` catches values that cannot work
before anything is compiled; each problem is a ConfigError whose message names
the field, which the scripts print as one line and exit with status 2.
"""

import importlib.util
import json
import math
import os
import pathlib

import ml_collections

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the field name."""


def is_count(value) -> bool:
    """Whether a config value is an integer >= 1 (a bool is not: True would pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def is_number(value) -> bool:
    """Whether a config value is a finite int or float (not a bool, NaN or infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def base_config() -> ConfigDict:
    """Every section with the values most experiments share."""
    config = ConfigDict()
    config.family = ""  # which jaxgen/train/<family>.py builds the steps
    config.seed = 0
    # Start a new run from another run's params (a workdir or a checkpoint step
    # directory); optimizer state, step and data order start fresh.
    config.init_from = ""

    # The fields every kind of data reads; a kind's own fields (e.g. the text kind's seq_len
    # and tokenizer) are added by configs of that kind: data.kind_fields("text").
    config.data = ConfigDict(
        dict(
            name="mnist",
            train_split="train",
            eval_split="test",
            # Raw files (e.g. the MNIST IDX .gz files). Empty: $JAXGEN_DATA_DIR,
            # then the dataset's canonical download.
            source_dir="",
            # Where prepared TFDS array_record files live. Empty: $JAXGEN_TFDS_DIR,
            # then ~/tensorflow_datasets.
            tfds_dir="",
            # "symmetric": floats in [-1, 1]; "binary": dynamically binarised {0, 1}
            # (a fresh Bernoulli draw of each pixel every epoch, as in the IWAE paper).
            pixels="symmetric",
            num_threads=2,  # Grain read threads; the host must stay ahead of the device
            prefetch=2,  # batches buffered ahead of the step
        )
    )

    config.model = ConfigDict(
        dict(
            name="",
            dtype="float32",  # compute dtype; "bfloat16" for speed on GPU/TPU
            param_dtype="float32",  # master params stay f32 for stable updates
        )
    )

    config.loss = ConfigDict(dict(name="", kw=ConfigDict()))

    config.optim = ConfigDict(
        dict(
            name="adam",  # "adam", "adamw" or "sgd"
            lr=1e-3,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,  # decoupled (AdamW); applied to params with ndim >= 2 only
            schedule="constant",  # "constant" or "cosine" (after warmup)
            warmup_steps=0,
            min_lr_ratio=0.0,  # cosine floor as a fraction of lr
            grad_clip_norm=0.0,  # 0 disables global-norm clipping
            ema_decay=0.0,  # 0 disables the EMA of params
        )
    )

    config.train = ConfigDict(
        dict(
            num_steps=1000,
            batch_size=128,  # global: split over every device and microbatch
            microbatches=1,  # gradient accumulation: the same update as one big batch
            log_every=100,
            eval_every=1000,
            ckpt_every=1000,
            sample_every=1000,
            # Skip an update whose gradients are NaN/Inf (counted in metrics as
            # nonfinite_steps) instead of stopping the run with an error.
            skip_nonfinite=False,
            # Fault injection for tests: fill the batch of this step with NaN (-1: never).
            fault_nan_step=-1,
        )
    )

    # Named evaluations run every train.eval_every steps and by experiments/evaluate.
    # Each entry has a `type` that the family (or jaxgen.metrics) knows.
    config.evals = ConfigDict()

    config.sample = ConfigDict(dict(num_samples=64, seed=0))

    config.ckpt = ConfigDict(
        dict(
            max_to_keep=3,
            async_save=True,  # write in the background while training continues
        )
    )

    config.mesh = ConfigDict(
        dict(
            backend="jit",  # "jit" over a device mesh, or "pmap"
            data=-1,  # devices on the data axis; -1 means every device (divided by fsdp)
            # Devices that split each large param and its optimizer state (jit only); the
            # batch is split over data x fsdp devices. 1: params replicated.
            fsdp=1,
        )
    )
    return config


def sibling_config(config_file: str, name: str, arg: str = "") -> ConfigDict:
    """get_config(arg) of the config file `name` next to `config_file` (a config's __file__):
    how one recipe is reused on another dataset or for fine-tuning."""
    path = pathlib.Path(config_file).with_name(name)
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _tuples(value):
    """JSON has no tuples: turn lists back into the tuples configs use."""
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def load_workdir_config(workdir: str) -> ConfigDict:
    """The config a run stored in `workdir/config.json`; ConfigError naming the file if bad."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"--workdir: {path} does not exist (not a jaxgen run directory?)")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"--workdir: {path} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg}); truncated or edited?"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--workdir: cannot read {path} ({error})") from error
    if not isinstance(saved, dict):
        raise ConfigError(f"--workdir: {path} holds a {type(saved).__name__}, not a config")
    return ConfigDict(_tuples(saved))


def _merge(section: ConfigDict, fields: dict) -> None:
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(section.get(key), ConfigDict):
            _merge(section[key], value)
        else:
            section[key] = value


def smoke(
    config: ConfigDict,
    *,
    num_steps: int = 20,
    batch_size: int = 32,
    log_every: int = 5,
    every: int = 10,
    warmup_steps: int = 2,
    **sections: dict,
) -> ConfigDict:
    """Shrinks `config` in place to run on a CPU in seconds: every config's "smoke" argument.

    Training takes `num_steps` steps of `batch_size`, logs every `log_every` steps and
    evaluates, checkpoints and samples every `every` steps; warmup is capped at
    `warmup_steps`. `sections` are further updates, {field: value} per config section
    (nested for entries: evals={"bpd": {"batch_size": 8}}). Returns `config`.
    """
    config.optim.warmup_steps = min(config.optim.warmup_steps, warmup_steps)
    config.train.update(
        num_steps=num_steps,
        batch_size=batch_size,
        log_every=log_every,
        eval_every=every,
        ckpt_every=every,
        sample_every=every,
    )
    for name, fields in sections.items():
        _merge(config[name], fields)
    return config


# Datasets with a domain network (configs/classifier/<name>.py, metrics/domain.py).
DOMAIN_DATASETS = ("mnist", "fashion_mnist")


def sample_evals(config: ConfigDict, smoke: bool = False, num_samples: int = 10_000) -> ConfigDict:
    """The ":fid" argument of every image config: fid, kid and inception_score entries
    (jaxgen/metrics/generative.py) of `num_samples` model samples against the whole train
    split, the same draws at every evaluation. The network is the domain classifier for
    MNIST-like data (build it once: python -m experiments.build_domain_network
    --dataset=NAME) and Inception-v3 otherwise (standard FID; $JAXGEN_INCEPTION_WEIGHTS).
    With `smoke` the entries shrink to 256 samples and use the domain network, so that a
    smoke config validates without the Inception weights. Returns `config`.
    """
    domain = smoke or config.data.name in DOMAIN_DATASETS
    sample_eval = {"network": "domain" if domain else "inception"}
    sample_eval |= {"num_samples": num_samples, "batch_size": 500}
    sample_eval |= {"split": "train", "num_examples": 0}  # against the whole train split
    if smoke:
        sample_eval |= {"num_samples": 256, "batch_size": 128, "num_examples": 512}
    config.evals.update(
        {
            "fid": {"type": "fid", **sample_eval},
            "kid": {"type": "kid", **sample_eval, "num_subsets": 100, "subset_size": 1000},
            # not "is": a Python keyword cannot be overridden from the command line
            "inception_score": {"type": "is", **sample_eval, "splits": 10},
        }
    )
    return config
