"""DDPM on Fashion-MNIST: the MNIST recipe (configs/ddpm/mnist.py) on another dataset.

    python -m experiments.train --config=configs/ddpm/fashion_mnist.py --workdir=/tmp/ddpm_fashion
    python -m experiments.train --config=configs/ddpm/fashion_mnist.py:smoke --workdir=/tmp/ddpm_fs

Arguments (comma-separated) are those of configs/ddpm/mnist.py: "quick", "smoke", "x0",
"v". Expect recognisable garments from the full run; bits/dim is higher than MNIST's
(more texture, fewer constant pixels). Not measured on this CPU.
"""

import importlib.util
import pathlib

from jaxgen.config import ConfigDict


def _mnist_config(arg: str) -> ConfigDict:
    path = pathlib.Path(__file__).with_name("mnist.py")
    spec = importlib.util.spec_from_file_location("configs_ddpm_mnist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg: str = "") -> ConfigDict:
    config = _mnist_config(arg)
    config.data.name = "fashion_mnist"
    return config
