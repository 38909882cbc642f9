"""CNN classifier on Fashion-MNIST: the domain network for domain-FID/KID/IS (jaxgen/metrics/domain.py).

    python -m experiments.build_domain_network --dataset=fashion_mnist   # trains it once into the cache
    python -m experiments.train --config=configs/classifier/fashion_mnist.py --workdir=/tmp/cls_fashion

Expect about 91% test accuracy (eval "accuracy/accuracy") after 4 epochs, a few
minutes on a 2-core CPU.

Arguments (comma-separated): "smoke" shrinks everything to run on CPU in
seconds (tests rely on it). MNIST: configs/classifier/mnist.py.
"""

from jaxgen.config import ConfigDict, sibling_config


def get_config(arg: str = "") -> ConfigDict:
    config = sibling_config(__file__, "mnist.py", arg)  # the same CNN and schedule
    config.data.name = "fashion_mnist"
    return config
