"""DDPM on Fashion-MNIST: the MNIST recipe (configs/ddpm/mnist.py) on another dataset.

    python -m experiments.train --config=configs/ddpm/fashion_mnist.py --workdir=/tmp/ddpm_fashion
    python -m experiments.train --config=configs/ddpm/fashion_mnist.py:smoke --workdir=/tmp/ddpm_fs

Arguments (comma-separated) are those of configs/ddpm/mnist.py: "quick", "smoke", "x0",
"v", "fid" (with the Fashion-MNIST domain network). Expect recognisable garments from the full run; bits/dim is higher than MNIST's
(more texture, fewer constant pixels). Not measured on this CPU.
"""

from jaxgen.config import ConfigDict, sibling_config


def get_config(arg: str = "") -> ConfigDict:
    config = sibling_config(__file__, "mnist.py", arg)
    config.data.name = "fashion_mnist"
    return config
