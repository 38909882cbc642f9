"""Published weights into jaxgen runs: reading tensor files, mapping names, writing a run.

    weights = pretrained.read_weights(hf_dir, "model.safetensors", "pytorch_model.bin")
    tensors = pretrained.Tensors(weights, origin=path)
    params = {"wte": {"embedding": tensors.take("wte.weight", (vocab, width))}, ...}
    tensors.check_all_taken(ignore=("attn.bias",))
    pretrained.write_run(config, params, workdir, info=info, tokenizers={"tokenizer": tok})

A model's converter (the map from the publisher's names to our params) lives beside the model
(jaxgen/models/gpt_pretrained.py for GPT-2); this module holds what every converter shares:
  - `read_safetensors` / `read_weights`: tensors by name as NumPy arrays, with the safetensors
    package's NumPy API (no torch); a .bin file needs torch, and says so in one line;
  - `Tensors`: takes each tensor once, checked against the shape our model needs, and names
    the file and the tensor in a one-line `WeightError` when it is missing or does not fit;
  - `write_run`: a complete run from params and declared shapes, with no dataset: config.json,
    data_info.json, the tokenizers, and a step-0 checkpoint (with checksums) of the family's
    freshly initialised state holding the params (cast to the param dtypes, shapes checked,
    floating point and finite; the EMA starts from them). It writes a new run only, into a
    hidden sibling folder renamed at the end: an existing run is never touched, and a failed
    import leaves nothing behind. experiments.sample, evaluate, train --config.init_from=W and a later
    stage naming W (config.model.autoencoder=W) take it like any trained run.
"""

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from jaxgen import checkpoint, data, rundir
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.family import get_family
from jaxgen.tokenizers import Tokenizer
from jaxgen.train import state as train_state
from jaxgen.workdir import LOCK_FILE, is_locked, write_atomic, writing

PyTree = Any


class WeightError(ValueError):
    """Weights that do not fit the model; the message is one line naming the file and tensor."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def read_json_object(path: str, missing: str) -> dict:
    """A published model's JSON object file (config.json, ...); one WeightError line naming
    the path if it is missing (`missing` says what that means), not JSON, or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise WeightError(f"{path}: missing ({missing})") from None
    except (OSError, ValueError) as error:
        raise WeightError(f"{path}: not JSON ({' '.join(str(error).split())})") from None
    if not isinstance(raw, dict):
        raise WeightError(f"{path}: not a JSON object (a {type(raw).__name__})")
    return raw


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """{name: array} of a .safetensors file, in the dtypes it stores (no torch)."""
    try:
        return dict(safetensors.numpy.load_file(path))
    except (safetensors.SafetensorError, OSError, TypeError, ValueError) as error:
        raise WeightError(f"{path}: unreadable ({error})") from None


def read_weights(folder: str, *names: str) -> tuple[dict[str, np.ndarray], str]:
    """({name: array}, the file read) of the first of `names` present in `folder`: .safetensors
    files without torch; .bin files (torch pickles) only if torch is installed."""
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".safetensors"):
            return read_safetensors(path), path
        try:
            import torch  # optional: only .bin files need it
        except ImportError:
            raise WeightError(
                f"{path}: reading .bin weights needs torch (pip install torch), or save the "
                "model as .safetensors"
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key, value in state.items():
            if not value.is_floating_point():
                raise WeightError(f"{path}: {key} holds {value.dtype} values, not floating point")
        return {key: value.to(torch.float32).numpy() for key, value in state.items()}, path
    raise WeightError(f"{folder}: no {' or '.join(names)}")


class Tensors:
    """A file's tensors, each taken once by name with the shape the model needs."""

    def __init__(self, weights: Mapping[str, np.ndarray], origin: str):
        self._weights, self.origin = dict(weights), origin

    def __contains__(self, name: str) -> bool:
        return name in self._weights

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name` as float32, which must have `shape` and finite floating-point
        values; WeightError naming it if not."""
        if name not in self._weights:
            raise WeightError(f"{self.origin}: missing {name}")
        value = self._weights.pop(name)
        if tuple(value.shape) != tuple(shape):
            raise WeightError(
                f"{self.origin}: {name} has shape {tuple(value.shape)}, the model needs {tuple(shape)}"
            )
        return check_values(value, f"{self.origin}: {name}").astype(np.float32)

    def check_all_taken(self, ignore: Iterable[str] = ()) -> None:
        """WeightError naming the first tensors no mapping took (but names ending in `ignore`)."""
        left = sorted(name for name in self._weights if not name.endswith(tuple(ignore)))
        if left:
            raise WeightError(f"{self.origin}: unexpected weights {', '.join(left[:3])}")


def check_values(value: Any, name: str) -> np.ndarray:
    """`value` as a NumPy array; WeightError naming it if its dtype is not floating point (raw
    integers would be cast to meaningless weights) or it holds NaN or infinite values."""
    array = np.asarray(value)
    if array.dtype.kind != "f" and array.dtype != jnp.bfloat16:
        raise WeightError(f"{name} holds {array.dtype} values, not floating point")
    finite = np.isfinite(array.astype(np.float32))
    if not finite.all():
        raise WeightError(f"{name} holds {array.size - int(finite.sum())} NaN or infinite values")
    return array


def fit_params(init_params: PyTree, params: PyTree, origin: str) -> PyTree:
    """`params` in the structure, shapes and dtypes of a model's freshly initialised params;
    WeightError naming the first param that is missing, extra, of another shape, not floating
    point or not finite."""
    flat_init = {
        jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(init_params)
    }
    flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
    for name in sorted(flat_init.keys() ^ flat.keys()):
        where = "missing" if name in flat_init else "not a param of the model"
        raise WeightError(f"{origin}: params{name}: {where}")
    for name, want in flat_init.items():
        if tuple(np.shape(flat[name])) != tuple(want.shape):
            raise WeightError(
                f"{origin}: params{name} has shape {tuple(np.shape(flat[name]))}, "
                f"the model needs {tuple(want.shape)}"
            )
        check_values(flat[name], f"{origin}: params{name}")
    return jax.tree.map(lambda want, x: jnp.asarray(x, want.dtype), init_params, params)


def check_new_workdir(workdir: str) -> None:
    """ConfigError naming --workdir unless it is a new or empty folder: an import never
    touches an existing run (its config.json, checkpoints*, tokenizers, or a trainer's lock)."""
    if not os.path.exists(workdir):
        return
    if not os.path.isdir(workdir):
        raise ConfigError(f"--workdir: {workdir} is a file, not a folder; name a new folder")
    if is_locked(os.path.join(workdir, LOCK_FILE)):
        raise ConfigError(f"--workdir: {workdir} is being trained (its {LOCK_FILE} is held)")
    held = sorted(os.listdir(workdir))
    if held:
        runs = [name for name in held if name == "config.json" or name.startswith("checkpoint")]
        shown = ", ".join((runs or held)[:3]) + (", ..." if len(held) > 3 else "")
        raise ConfigError(
            f"--workdir: {workdir} already holds {'a run' if runs else 'files'} ({shown}); an "
            "import writes a new run: name a new or empty folder"
        )


def write_run(
    config: ConfigDict,
    params: PyTree,
    workdir: str,
    *,
    info: data.DatasetInfo,
    tokenizers: Mapping[str, Tokenizer] | None = None,
    origin: str = "params",
) -> None:
    """Writes a complete run of `config`'s family holding `params` at step 0 as `workdir`.

    info: the dataset shapes the model was made for (no data is opened); tokenizers: the run's
    tokenizers by config.data field (saved as W/<field>.json, which the config then names).
    W must be a new or empty folder (check_new_workdir): an existing run is never touched.
    The run is checked (the config: a ConfigError naming the field; the params against the
    family's own init: a WeightError naming the param), then written into a hidden sibling
    folder that is renamed to W at the end: an import that fails or is killed leaves no W.
    """
    workdir = os.path.abspath(workdir)
    check_new_workdir(workdir)
    parent, name = os.path.split(workdir)
    with writing(workdir):
        os.makedirs(parent, exist_ok=True)
        building = tempfile.mkdtemp(prefix=f".{name}.import-", dir=parent)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(building, 0o777 & ~umask)  # mkdtemp's 0o700 would stay on W
    try:
        config = _write_run(config, params, building, info, tokenizers or {}, origin, workdir)
        with writing(workdir):
            try:
                os.rename(building, workdir)  # replaces W only if it is still an empty folder
            except OSError as error:
                if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    check_new_workdir(workdir)  # something appeared meanwhile: name it
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _write_run(config, params, building, info, tokenizers, origin, workdir) -> ConfigDict:
    """write_run's files, into the folder `building` (renamed to `workdir` afterwards)."""
    config = config.copy_and_resolve_references()
    with config.unlocked():  # check_config reads the tokenizer files the config names
        for field in tokenizers:
            config.data[field] = os.path.join(building, f"{field}.json")
    for field, tokenizer in tokenizers.items():
        with writing(config.data[field]):
            tokenizer.save(config.data[field])
    family = get_family(config.family)
    if family.resolve is not None:  # as a new run starts: copy what it names
        config = family.resolve(config)
    rundir.check_config(config, info)
    steps = family.make_steps(config, info, None)
    state = jax.jit(steps.init)(jax.random.PRNGKey(config.seed), rundir.example_batch(steps))
    if steps.setup is not None:  # e.g. the frozen params of a later stage's stages
        state = steps.setup(state)
    state = train_state.start_from_params(state, fit_params(state.params, params, origin))
    ckpt = checkpoint.Checkpointer(building, config.ckpt)
    try:
        ckpt.save(0, state, {})  # no data stream: training it starts the data afresh
    finally:
        ckpt.close()
    rundir.save_info(info, building)
    with config.unlocked():  # where the tokenizers will be once the folder is renamed
        for field in tokenizers:
            config.data[field] = os.path.join(workdir, f"{field}.json")
    write_atomic(os.path.join(building, "config.json"), config.to_json_best_effort(indent=2))
    return config
