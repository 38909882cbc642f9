"""The offline domain network: a small CNN classifier of the dataset, built once and cached.

    python -m experiments.build_domain_network --dataset=mnist

trains configs/classifier/<dataset>.py with the generic trainer into
$JAXGEN_CACHE_DIR/domain/<dataset> (default ~/.cache/jaxgen/domain/<dataset>),
an ordinary run directory; evaluators with network "domain" read its final params
(read-only) and call its family's "features" function (Steps.predict_fns). Its penultimate activations (config.model.hidden of them) are the
features of domain-FID/KID, its class probabilities give a domain Inception
Score and the accuracy of class-conditional samples. Numbers are comparable
only between runs scored by the same network (same cache directory).
"""

import functools
import os

from jaxgen import rundir
from jaxgen.config import ConfigDict, ConfigError, load_workdir_config
from jaxgen.family import get_family
from jaxgen.metrics.networks import NETWORKS, FeatureNetwork, Network, cache_root, fingerprint


def network_dir(dataset: str) -> str:
    return os.path.join(cache_root(), "domain", dataset)


def build_command(dataset: str) -> str:
    return f"python -m experiments.build_domain_network --dataset={dataset}"


def is_built(directory: str) -> bool:
    """A finished run: config.json and a checkpoint at its last step."""
    if not os.path.exists(os.path.join(directory, "config.json")):
        return False
    config = load_workdir_config(directory)
    checkpoints = os.path.join(directory, "checkpoints")
    steps = (
        [int(n) for n in os.listdir(checkpoints) if n.isdigit()]
        if os.path.isdir(checkpoints)
        else []
    )
    return max(steps, default=-1) >= config.train.num_steps


def load(dataset: str, field: str = "network") -> FeatureNetwork:
    """The built domain network of `dataset`; a one-line ConfigError naming `field` if missing."""
    directory = network_dir(dataset)
    if not is_built(directory):
        raise ConfigError(
            f"{field}: no domain network for {dataset!r} in {directory}; "
            f"build it once with: {build_command(dataset)}"
        )
    return _load(directory, os.path.getmtime(os.path.join(directory, "config.json")), field)


@functools.cache  # fid, kid and is entries share one loaded network
def _load(directory: str, mtime: float, field: str) -> FeatureNetwork:
    """The run's eval params (read-only) and its family's "features" predict function:
    features(params, images [B, H, W, C] in [-1, 1]) -> (features [B, D], logits [B, K])."""
    config = load_workdir_config(directory)
    info = rundir.run_info(config, directory)
    steps = get_family(config.family).make_steps(config, info, None)
    if "features" not in steps.predict_fns:
        raise ConfigError(
            f"{field}: {directory} is a {config.family} run, whose family has no 'features' "
            "function (Steps.predict_fns); build it with experiments.build_domain_network"
        )
    params = rundir.load_params(directory, config)
    return FeatureNetwork(
        name=f"domain{config.model.hidden}",
        params=params,
        apply=steps.predict_fns["features"],
        image_shape=tuple(info.image_shape),
        num_classes=info.num_classes,
        cache_dir=directory,
        fingerprint=fingerprint(params),
    )


def _load_entry(config: ConfigDict, entry: ConfigDict, field: str) -> FeatureNetwork:
    return load(entry.get("dataset", config.data.name), f"{field}.network")


NETWORKS.register("domain")(Network(_load_entry, classifies_data=True))
