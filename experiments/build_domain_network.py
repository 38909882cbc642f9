"""Build (once) the offline domain network of a dataset, then print its sanity figures.

    python -m experiments.build_domain_network --dataset=mnist
    python -m experiments.build_domain_network --dataset=fashion_mnist

Trains configs/classifier/<dataset>.py with the generic trainer into
$JAXGEN_CACHE_DIR/domain/<dataset> (default ~/.cache/jaxgen/domain/<dataset>);
a finished network there is reused, and an interrupted build resumes. Then
caches the real-data feature statistics and prints (and writes to
summary.json there): the classifier's test accuracy, the domain-FID of the
eval split against the train split (the floor a perfect model would reach) and
of uniform noise against the train split (a ceiling). Delete the folder to
rebuild. `--smoke` builds the tiny network the tests use.
"""

import json
import os
import time

import jax
import numpy as np
from absl import flags

from jaxgen import cli, parallel
from jaxgen.config import ConfigError, load_workdir_config
from jaxgen.metrics import domain, fid, generative, networks
from jaxgen.train import loop
from jaxgen.train.writer import read_metrics

flags.DEFINE_string("dataset", None, "Dataset with a configs/classifier/<dataset>.py.")
flags.DEFINE_bool("smoke", False, "Build the config's smoke variant (seconds on CPU; for tests).")
flags.DEFINE_integer("num_examples", 0, "Real examples per split in the FID figures (0: all).")
flags.DEFINE_integer("batch_size", 500, "Images per feature batch.")
flags.mark_flags_as_required(["dataset"])

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def classifier_config(dataset: str, smoke: bool):
    path = os.path.join(ROOT, "configs", "classifier", f"{dataset}.py")
    if not os.path.exists(path):
        raise ConfigError(f"--dataset: no classifier config {path} for {dataset!r}")
    import importlib.util

    spec = importlib.util.spec_from_file_location("classifier_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("smoke" if smoke else "")


def main(argv):
    del argv
    options = flags.FLAGS
    directory = domain.network_dir(options.dataset)
    if domain.is_built(directory):
        print(f"reusing the domain network in {directory}")
        config = load_workdir_config(directory)
    else:
        config = classifier_config(options.dataset, options.smoke)
        info = loop.check(config, directory)
        start = time.perf_counter()
        loop.train(config, directory, info)
        print(f"trained in {time.perf_counter() - start:.0f} s: {directory}")
    evals = [row for row in read_metrics(directory) if row["split"] == "eval"]
    network = domain.load(options.dataset, "--dataset")
    placement = parallel.Placement(config.mesh)
    batch = options.batch_size // placement.num_devices * placement.num_devices

    def reference(split):
        return networks.reference(
            network, config.data, split, batch, placement, options.num_examples
        )

    train = reference(config.data.train_split)
    test = reference(config.data.eval_split)
    count = options.num_examples or 10_000
    noise = np.random.default_rng(0).uniform(-1, 1, (count, *network.image_shape))
    noise_features, _ = generative.sample_features(network, noise.astype(np.float32), placement)
    summary = {
        "test_accuracy": evals[-1].get("accuracy/accuracy") if evals else None,
        "fid_eval_vs_train": fid.frechet_distance(test.gaussian, train.gaussian),
        "fid_noise_vs_train": fid.frechet_distance(fid.gaussian_of(noise_features), train.gaussian),
        "kid_eval_vs_train": fid.kernel_inception_distance(test.features, train.features)[0],
        "feature_dim": int(train.gaussian.mean.shape[0]),
        "num_examples": options.num_examples,
    }
    if jax.process_index() == 0:
        with open(os.path.join(directory, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    cli.run(main)
