"""SN-GAN on CIFAR-10: hinge loss, spectral normalisation (Miyato et al. 2018).

    python -m experiments.train --config=configs/gan/cifar10_sngan.py --workdir=/tmp/gan_sngan
    python -m experiments.train --config=configs/gan/cifar10_sngan.py:smoke --workdir=/tmp/gan_smoke

CIFAR-10 comes from the TFDS catalog (downloaded by TFDS on first use); the smoke
variant trains the same code on MNIST so that it runs offline.
Arguments (comma-separated): "smoke" shrinks everything to run on CPU in seconds (tests
rely on it); "conditional" adds the projection discriminator (Miyato & Koyama 2018) and a
class input to G, and samples one row per class.
Expected: the paper's IS 8.22 / FID 21.7 are for its ResNet; its "standard CNN", which
this is, scores lower (IS about 7.4-7.6 in table 2). Not measured here (needs a GPU
and the Inception weights; see the README's Evaluation section).
"""

from jaxgen.config import ConfigDict, base_config


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "conditional"}
    if unknown:
        raise ValueError(f"configs/gan/cifar10_sngan.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "gan"
    config.data.name = "cifar10"  # TFDS catalog; images become [-1, 1] floats

    # Table 3 of the paper: G 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 3 (BatchNorm,
    # ReLU); D seven spectrally normalised convs 64 ... 512 with LeakyReLU 0.1.
    config.model.name = "sngan"
    config.model.latent_dim = 128
    config.model.features = 64
    config.model.conditional = "conditional" in args

    config.loss.name = "hinge"
    # gp_weight: λ of the WGAN-GP penalty (used by loss "wgan_gp"); r1_gamma: γ of R1, 0 = off.
    config.loss.kw = ConfigDict({"gp_weight": 0.0, "r1_gamma": 0.0})

    # The paper's hinge-loss setting (as for its ResNet): Adam α = 2e-4, β1 = 0, β2 = 0.9,
    # n_dis = 5, for both players.
    config.optim.name = "adam"
    config.optim.lr = 2e-4
    config.optim.b1 = 0.0
    config.optim.b2 = 0.9
    config.optim.ema_decay = 0.999  # sample and evaluate with the EMA of the generator
    config.optim_d = config.optim.copy_and_resolve_references()
    config.optim_d.ema_decay = 0.0  # only the generator keeps an EMA

    # n_dis = 5 discriminator updates per generator update, each on a fresh real batch of
    # 64: the global batch holds 5 * 64 examples, one slice per discriminator update.
    config.train.n_critic = 5
    config.train.batch_size = 5 * 64
    config.train.num_steps = 50_000  # generator updates, as in the paper's CIFAR-10 runs
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
        config.model.features = 4
        config.train.n_critic = 2  # still exercises several discriminator updates per step
        config.train.num_steps = 20
        config.train.batch_size = 2 * 16
        config.train.log_every = 5
        config.train.eval_every = config.train.ckpt_every = config.train.sample_every = 10
        config.evals.discriminator.update(batch_size=64, num_examples=128)
        config.sample.num_samples = 20 if config.model.conditional else 16
    return config
