"""StyleGAN2 on Fashion-MNIST padded to 32x32: the MNIST recipe on another dataset.

    python -m experiments.train --config=configs/stylegan2/fashion_mnist.py:quick --workdir=/tmp/sg2_fashion
    python -m experiments.train --config=configs/stylegan2/fashion_mnist.py:smoke --workdir=/tmp/sg2_fashion_smoke
    python -m experiments.build_domain_network --dataset=fashion_mnist   # once, for "fid"
    python -m experiments.train --config=configs/stylegan2/fashion_mnist.py:quick,fid --workdir=/tmp/sg2_fashion_fid

Arguments: those of configs/stylegan2/mnist.py ("quick", "smoke", "conditional", "augment",
"fid"). Expected ("quick"): garment silhouettes; the README's StyleGAN2 section has the
command that compares it with configs/gan/fashion_mnist_dcgan.py:quick at equal wall time.
"""

from jaxgen.config import ConfigDict, sibling_config


def get_config(arg: str = "") -> ConfigDict:
    config = sibling_config(__file__, "mnist.py", arg)  # the same networks and training
    config.data.name = "fashion_mnist"
    return config
