"""The offline domain network: a small CNN classifier of the dataset, built once and cached.

    python -m experiments.build_domain_network --dataset=mnist

trains configs/classifier/<dataset>.py with the generic trainer into
$JAXGEN_CACHE_DIR/domain/<dataset> (default ~/.cache/jaxgen/domain/<dataset>),
an ordinary run directory; evaluators with network "domain" load its final
params. Its penultimate activations (config.model.hidden of them) are the
features of domain-FID/KID, its class probabilities give a domain Inception
Score and the accuracy of class-conditional samples. Numbers are comparable
only between runs scored by the same network (same cache directory).
"""

import functools
import os

from jaxgen import runs
from jaxgen.config import ConfigError, load_workdir_config
from jaxgen.metrics.networks import FeatureNetwork, cache_root, fingerprint
from jaxgen.models import classifier as models


def network_dir(dataset: str) -> str:
    return os.path.join(cache_root(), "domain", dataset)


def build_command(dataset: str) -> str:
    return f"python -m experiments.build_domain_network --dataset={dataset}"


def is_built(directory: str) -> bool:
    """A finished classifier run: config.json and a checkpoint at its last step."""
    if not os.path.exists(os.path.join(directory, "config.json")):
        return False
    config = load_workdir_config(directory)
    checkpoints = os.path.join(directory, "checkpoints")
    steps = (
        [int(n) for n in os.listdir(checkpoints) if n.isdigit()]
        if os.path.isdir(checkpoints)
        else []
    )
    return config.family == "classifier" and max(steps, default=-1) >= config.train.num_steps


def load(dataset: str, field: str = "network") -> FeatureNetwork:
    """The built domain network of `dataset`; a one-line ConfigError naming `field` if missing."""
    directory = network_dir(dataset)
    if not is_built(directory):
        raise ConfigError(
            f"{field}: no domain network for {dataset!r} in {directory}; "
            f"build it once with: {build_command(dataset)}"
        )
    return _load(directory, os.path.getmtime(os.path.join(directory, "config.json")))


@functools.cache  # fid, kid and is entries share one loaded network
def _load(directory: str, mtime: float) -> FeatureNetwork:
    config = load_workdir_config(directory)
    run = runs.load_run(config, directory)
    model = models.make_model(config.model, run.info.num_classes)
    params = run.state.eval_params

    def apply(params, images):
        out = model.apply({"params": params}, images)
        return out.features, out.logits

    return FeatureNetwork(
        name=f"domain{config.model.hidden}",
        params=params,
        apply=apply,
        image_shape=tuple(run.info.image_shape),
        num_classes=run.info.num_classes,
        cache_dir=directory,
        fingerprint=fingerprint(params),
    )
