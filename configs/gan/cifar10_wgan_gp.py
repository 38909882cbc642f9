"""WGAN-GP on CIFAR-10 with the paper's optimiser settings (Gulrajani et al. 2017).

    python -m experiments.train --config=configs/gan/cifar10_wgan_gp.py --workdir=/tmp/gan_wgan_gp
    python -m experiments.train --config=configs/gan/cifar10_wgan_gp.py:smoke --workdir=/tmp/gan_smoke

CIFAR-10 comes from the TFDS catalog (downloaded by TFDS on first use); the smoke
variant trains the same code on MNIST so that it runs offline.
Arguments (comma-separated): "smoke" shrinks everything to run on CPU in seconds (tests
rely on it); "conditional" feeds the class to both networks and samples one row per class.
Expected: the paper's Inception score 7.86 is for its ResNet; this config keeps the
paper's loss and optimiser (Adam 1e-4, β = (0, 0.9), n_critic 5, λ 10, batch 64) on the
DCGAN architecture with a LayerNorm critic, which scores lower. Not measured here (needs
a GPU and the Inception weights; see the README's Evaluation section).
"""

from jaxgen.config import ConfigDict, base_config


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "conditional"}
    if unknown:
        raise ValueError(f"configs/gan/cifar10_wgan_gp.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "gan"
    config.data.name = "cifar10"  # TFDS catalog; images become [-1, 1] floats

    config.model.name = "dcgan"
    config.model.latent_dim = 128  # the paper's noise size
    config.model.features = 64
    # No BatchNorm in the critic: the penalty is on each example's own gradient. Layer
    # normalisation is the paper's suggested drop-in (section 4).
    config.model.norm = "layer"
    config.model.spectral_norm = False
    config.model.conditional = "conditional" in args

    config.loss.name = "wgan_gp"
    config.loss.kw = ConfigDict({"gp_weight": 10.0, "r1_gamma": 0.0})  # λ = 10 (the paper's)

    # Algorithm 1: Adam α = 1e-4, β1 = 0, β2 = 0.9 for both players. (The paper also decays
    # the lr linearly to 0; "constant" here, "cosine" is the nearest schedule we have.)
    config.optim.name = "adam"
    config.optim.lr = 1e-4
    config.optim.b1 = 0.0
    config.optim.b2 = 0.9
    config.optim.ema_decay = 0.999  # sample and evaluate with the EMA of the generator
    config.optim_d = config.optim.copy_and_resolve_references()
    config.optim_d.ema_decay = 0.0  # only the generator keeps an EMA

    # n_critic = 5 critic updates per generator update, each on a fresh real batch of 64:
    # the global batch holds 5 * 64 examples, one slice per critic update.
    config.train.n_critic = 5
    config.train.batch_size = 5 * 64
    config.train.num_steps = 100_000  # generator iterations, as in the paper
    config.train.log_every = 500
    config.train.eval_every = 10_000
    config.train.ckpt_every = 5_000
    config.train.sample_every = 5_000

    config.evals = ConfigDict(
        {"discriminator": {"type": "discriminator", "batch_size": 500, "num_examples": 2000}}
    )
    config.sample.num_samples = 100 if config.model.conditional else 64  # 10 per class

    if "smoke" in args:
        config.data.name = "mnist"  # offline; the 28x28 path of the same models
        config.model.latent_dim = 16
        config.model.features = 8
        config.train.n_critic = 2  # still exercises several critic updates per step
        config.train.num_steps = 20
        config.train.batch_size = 2 * 16
        config.train.log_every = 5
        config.train.eval_every = config.train.ckpt_every = config.train.sample_every = 10
        config.evals.discriminator.update(batch_size=64, num_examples=128)
        config.sample.num_samples = 20 if config.model.conditional else 16
    return config
