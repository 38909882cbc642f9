"""DCGAN on Fashion-MNIST (Radford et al. 2016), narrowed to train on a CPU.

    python -m experiments.train --config=configs/gan/fashion_mnist_dcgan.py --workdir=/tmp/gan_fashion
    python -m experiments.train --config=configs/gan/fashion_mnist_dcgan.py:quick --workdir=/tmp/gan_fashion_quick
    python -m experiments.train --config=configs/gan/fashion_mnist_dcgan.py:smoke --workdir=/tmp/gan_fashion_smoke

Arguments (comma-separated): "quick" is a short run (half the widths, 1500 steps: 10-30
minutes on a 2-core CPU, depending on what else runs); "smoke" shrinks everything to run
on CPU in seconds (tests rely on it); "conditional" feeds the class to both networks and
samples one row per class; "fid" adds domain-FID/KID/IS with the Fashion-MNIST domain network.
Expected: garment silhouettes (shirts, trousers, shoes, bags) with little texture after
"quick"; the run is not measured here (the README measures mnist_dcgan.py:quick).
"""

from jaxgen.config import ConfigDict, sibling_config


def get_config(arg: str = "") -> ConfigDict:
    config = sibling_config(__file__, "mnist_dcgan.py", arg)  # the same networks and training
    config.data.name = "fashion_mnist"  # pixels in [-1, 1], matching the generator's tanh
    return config
