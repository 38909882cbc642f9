"""DCGAN on CIFAR-10 with the paper's settings (Radford et al. 2016).

    python -m experiments.train --config=configs/gan/cifar10_dcgan.py --workdir=/tmp/gan_cifar_dcgan
    python -m experiments.train --config=configs/gan/cifar10_dcgan.py:smoke --workdir=/tmp/gan_smoke
    python -m experiments.train --config=configs/gan/cifar10_dcgan.py:fid --workdir=/tmp/gan_cifar_dcgan

CIFAR-10 comes from the TFDS catalog (downloaded by TFDS on first use); the smoke
variant trains the same code on MNIST so that it runs offline.
Arguments (comma-separated): "smoke" shrinks everything to run on CPU in seconds (tests
rely on it); "conditional" feeds the class to both networks and samples one row per class;
"fid" adds FID/KID/IS of 50k samples with Inception-v3 ($JAXGEN_INCEPTION_WEIGHTS; see the
README's Evaluation section). configs/gan/cifar10_sngan.py and cifar10_wgan_gp.py start
from this config and change only the networks, the loss and the optimiser.
Expected: Inception score about 6.2 (6.16 for DCGAN in Gulrajani et al. 2017, table 3);
not measured here (needs a GPU and the Inception weights).
"""

from jaxgen.config import ConfigDict, base_config, sample_evals, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "conditional", "fid"}
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
    # Regularizer weights (losses/gan.py REGULARIZERS), 0 = off: gp_weight, λ of the WGAN-GP
    # gradient penalty (loss "wgan_gp" requires it); r1_gamma, γ of R1.
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
        smoke(
            config,
            model=dict(latent_dim=16, features=8),
            evals=dict(discriminator=dict(batch_size=64, num_examples=128)),
            sample=dict(num_samples=20 if config.model.conditional else 16),
        )
    if "fid" in args:  # FID-50k / IS with Inception-v3, as the papers report them
        sample_evals(config, smoke="smoke" in args, num_samples=50_000)
    return config
