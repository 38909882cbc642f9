"""DCGAN on CIFAR-10 with the paper's settings (Radford et al. 2016).

    python -m experiments.train --config=configs/gan/cifar10_dcgan.py --workdir=/tmp/gan_cifar_dcgan
    python -m experiments.train --config=configs/gan/cifar10_dcgan.py:smoke --workdir=/tmp/gan_smoke

CIFAR-10 comes from the TFDS catalog (downloaded by TFDS on first use); the smoke
variant trains the same code on MNIST so that it runs offline.
Arguments (comma-separated): "smoke" shrinks everything to run on CPU in seconds (tests
rely on it); "conditional" feeds the class to both networks and samples one row per class.
Expected: Inception score about 6.2 (6.16 for DCGAN in Gulrajani et al. 2017, table 3);
not measured here (needs a GPU and the Inception weights; see the README's Evaluation section).
"""

from jaxgen.config import ConfigDict, base_config


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "conditional"}
    if unknown:
        raise ValueError(f"configs/gan/cifar10_dcgan.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "gan"
    config.data.name = "cifar10"  # TFDS catalog; images become [-1, 1] floats

    config.model.name = "dcgan"
    config.model.latent_dim = 100
    # G: 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 32x32x3; D: 64 -> 128 -> 256.
    config.model.features = 64
    config.model.norm = "batch"  # BatchNorm in D after the first conv, as in the paper
    config.model.spectral_norm = False
    config.model.conditional = "conditional" in args

    config.loss.name = "non_saturating"
    # gp_weight: λ of the WGAN-GP penalty (used by loss "wgan_gp"); r1_gamma: γ of R1, 0 = off.
    config.loss.kw = ConfigDict({"gp_weight": 0.0, "r1_gamma": 0.0})

    # Radford et al., section 4: Adam 2e-4 with β1 = 0.5 (0.9 oscillated), both players.
    config.optim.name = "adam"
    config.optim.lr = 2e-4
    config.optim.b1 = 0.5
    config.optim.ema_decay = 0.999  # sample and evaluate with the EMA of the generator
    config.optim_d = config.optim.copy_and_resolve_references()
    config.optim_d.ema_decay = 0.0  # only the generator keeps an EMA

    config.train.n_critic = 1
    config.train.batch_size = 128  # the paper's mini-batch
    config.train.num_steps = 100_000  # 256 epochs; the paper does not state a count
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
        config.train.num_steps = 20
        config.train.batch_size = 32
        config.train.log_every = 5
        config.train.eval_every = config.train.ckpt_every = config.train.sample_every = 10
        config.evals.discriminator.update(batch_size=64, num_examples=128)
        config.sample.num_samples = 20 if config.model.conditional else 16
    return config
