"""Feature networks for sample-quality metrics, and their cached dataset statistics.

A FeatureNetwork is a pure function images [B, H, W, C] in [-1, 1] ->
(features [B, D], logits [B, K]) with its params. An evals entry picks one by name from the
NETWORKS registry (config.evals.<name>.network): "inception", the FID Inception-v3
(metrics/inception.py), or "domain", the offline classifier of the dataset (metrics/domain.py);
a new network is one registered `Network` in its own module.
`reference` computes the feature Gaussian of a dataset split once and caches it
on disk, keyed by dataset, split and network (and checked against the params'
fingerprint, so a rebuilt network never reuses stale statistics).
Deliberately not here: the FID/KID/IS maths (metrics/fid.py) and drawing
samples (metrics/generative.py).
"""

import hashlib
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import data
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.metrics import fid
from jaxgen.parallel import Placement
from jaxgen.registry import Registry

PyTree = Any
NETWORKS = Registry("feature network", "config.evals.<name>.network")
# Reference features kept for KID (rows); the Gaussian uses every example.
MAX_KID_FEATURES = 10_000


class FeatureNetwork(NamedTuple):
    name: str  # "domain" or "inception": part of the statistics cache key
    params: PyTree
    apply: Callable[[PyTree, jax.Array], tuple[jax.Array, jax.Array]]  # -> (features, logits)
    image_shape: tuple[int, ...] | None  # the input it takes; None: any (it resizes)
    num_classes: int
    cache_dir: str  # where its dataset statistics are kept
    fingerprint: str  # a hash of the params


class Network(NamedTuple):
    """A registered feature network: how an evals entry loads and checks it."""

    # load(config, entry, field) -> FeatureNetwork; field: "config.evals.<name>" for errors
    load: Callable[[ConfigDict, ConfigDict, str], "FeatureNetwork"]
    # check(config, entry, field) -> None: ConfigError before compiling (e.g. missing weights)
    check: Callable[[ConfigDict, ConfigDict, str], None] = lambda config, entry, field: None
    classifies_data: bool = False  # its logits are the dataset's classes (class_accuracy)


def get_network(config: ConfigDict, entry: ConfigDict, field: str) -> FeatureNetwork:
    """The network an evals entry names (entry.network); `field` (config.evals.<name>)
    prefixes errors."""
    return get_entry(entry.network, field).load(config, entry, field)


def get_entry(name: str, field: str) -> Network:
    """The registered Network `name`; a ConfigError naming <field>.network if unknown."""
    if name not in NETWORKS:
        raise ConfigError(
            f"{field}.network: unknown network {name!r}; choose from {', '.join(NETWORKS.names())}"
        )
    return NETWORKS.get(name)


class Reference(NamedTuple):
    gaussian: fid.Gaussian
    features: np.ndarray  # [<= MAX_KID_FEATURES, D] float32, for KID


def cache_root() -> str:
    """$JAXGEN_CACHE_DIR, else ~/.cache/jaxgen: built networks and statistics, outside the repo."""
    return os.environ.get("JAXGEN_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "jaxgen"
    )


def fingerprint(params: PyTree) -> str:
    digest = hashlib.sha1()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()[:16]


def compile_apply(network: FeatureNetwork, placement: Placement) -> Callable:
    """(params, images sharded on the batch) -> (features, logits), under jit."""
    return placement.compile_eval(network.apply)


def reference(
    network: FeatureNetwork,
    data_config: ConfigDict,
    split: str,
    batch_size: int,
    placement: Placement,
    num_examples: int = 0,
) -> Reference:
    """Feature statistics of a split of real data (every example, or the first num_examples).

    Images are read as "symmetric" pixels in [-1, 1] whatever the run trains on,
    so a model of binarised pixels is compared with the real grey-level data.
    """
    data_config = ConfigDict(data_config.to_dict())
    data_config.pixels = "symmetric"
    limit = f"_first{num_examples}" if num_examples else ""
    path = os.path.join(
        network.cache_dir, "stats", f"{data_config.name}_{split}{limit}_{network.name}.npz"
    )
    if os.path.exists(path):
        with np.load(path) as cached:
            if str(cached["fingerprint"]) == network.fingerprint:
                return Reference(fid.Gaussian(cached["mean"], cached["cov"]), cached["features"])
    apply = compile_apply(network, placement)
    iterator = data.make_iterator(data_config, split, batch_size, 0, train=False)
    statistics, kept, seen = None, [], 0
    for host_batch in iterator:
        batch = placement.put_batch({"image": host_batch["image"]}, backend="jit")
        features, _ = jax.device_get(apply(network.params, batch["image"]))
        mask = np.asarray(host_batch["mask"]) > 0
        if num_examples:
            mask &= np.arange(seen, seen + len(mask)) < num_examples
        if statistics is None:
            statistics = fid.FeatureStatistics(features.shape[1])
        statistics.add(features, mask)
        kept.append(np.asarray(features[mask], np.float32))
        seen += len(mask)
        if num_examples and seen >= num_examples:
            break
    gaussian = statistics.gaussian()
    features = np.concatenate(kept)[:MAX_KID_FEATURES]
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(
            path + ".tmp.npz",
            mean=gaussian.mean,
            cov=gaussian.cov,
            features=features,
            fingerprint=network.fingerprint,
        )
        os.replace(path + ".tmp.npz", path)  # never a half-written cache
    return Reference(gaussian, features)


def features_of(
    network: FeatureNetwork, images: np.ndarray, batch_size: int, placement: Placement
) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of host images [N, H, W, C] in [-1, 1], in batches (N % batch == 0)."""
    apply = compile_apply(network, placement)
    outputs = [
        jax.device_get(
            apply(network.params, placement.put_batch({"x": images[i : i + batch_size]})["x"])
        )
        for i in range(0, len(images), batch_size)
    ]
    return tuple(np.concatenate(parts) for parts in zip(*outputs, strict=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1), np.float64)
