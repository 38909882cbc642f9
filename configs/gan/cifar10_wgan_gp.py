"""WGAN-GP on CIFAR-10 with the paper's optimiser settings (Gulrajani et al. 2017).

    python -m experiments.train --config=configs/gan/cifar10_wgan_gp.py --workdir=/tmp/gan_wgan_gp
    python -m experiments.train --config=configs/gan/cifar10_wgan_gp.py:smoke --workdir=/tmp/gan_smoke
    python -m experiments.train --config=configs/gan/cifar10_wgan_gp.py:fid --workdir=/tmp/gan_wgan_gp

The CIFAR-10 recipe of configs/gan/cifar10_dcgan.py (data, DCGAN networks, generator EMA,
intervals, evals, smoke on MNIST) with WGAN-GP's loss, critic normalisation and optimiser.
CIFAR-10 comes from the TFDS catalog (downloaded by TFDS on first use); the smoke
variant trains the same code on MNIST so that it runs offline.
Arguments (comma-separated): "smoke" shrinks everything to run on CPU in seconds (tests
rely on it); "conditional" feeds the class to both networks and samples one row per class;
"fid" adds FID/KID/IS of 50k samples with Inception-v3 ($JAXGEN_INCEPTION_WEIGHTS; see the
README's Evaluation section).
Expected: the paper's Inception score 7.86 is for its ResNet; this config keeps the
paper's loss and optimiser (Adam 1e-4, β = (0, 0.9), n_critic 5, λ 10, batch 64) on the
DCGAN architecture with a LayerNorm critic, which scores lower. Not measured here (needs
a GPU and the Inception weights).
"""

from jaxgen.config import ConfigDict, sibling_config


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "conditional", "fid"}
    if unknown:
        raise ValueError(f"configs/gan/cifar10_wgan_gp.py: unknown argument(s) {sorted(unknown)}")
    config = sibling_config(__file__, "cifar10_dcgan.py", arg)
    smoke = "smoke" in args

    if not smoke:
        config.model.latent_dim = 128  # the paper's noise size
    # No BatchNorm in the critic: the penalty is on each example's own gradient. Layer
    # normalisation is the paper's suggested drop-in (section 4).
    config.model.norm = "layer"

    config.loss.name = "wgan_gp"
    config.loss.kw.gp_weight = 10.0  # λ = 10 (the paper's)

    # Algorithm 1: Adam α = 1e-4, β1 = 0, β2 = 0.9 for both players. (The paper also decays
    # the lr linearly to 0; "constant" here, "cosine" is the nearest schedule we have.)
    config.optim.update(lr=1e-4, b1=0.0, b2=0.9)
    config.optim_d = config.optim.copy_and_resolve_references()
    config.optim_d.ema_decay = 0.0  # only the generator keeps an EMA

    # n_critic = 5 critic updates per generator update, each on a fresh real batch of 64:
    # the global batch holds 5 * 64 examples, one slice per critic update (100k generator
    # iterations, as in the paper). Smoke: still several critic updates per step.
    config.train.n_critic = 2 if smoke else 5
    config.train.batch_size = config.train.n_critic * (16 if smoke else 64)
    return config
