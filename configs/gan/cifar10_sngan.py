"""SN-GAN on CIFAR-10: hinge loss, spectral normalisation (Miyato et al. 2018).

    python -m experiments.train --config=configs/gan/cifar10_sngan.py --workdir=/tmp/gan_sngan
    python -m experiments.train --config=configs/gan/cifar10_sngan.py:smoke --workdir=/tmp/gan_smoke
    python -m experiments.train --config=configs/gan/cifar10_sngan.py:fid --workdir=/tmp/gan_sngan

The CIFAR-10 recipe of configs/gan/cifar10_dcgan.py (data, generator EMA, intervals, evals,
smoke on MNIST) with SN-GAN's networks, loss and optimiser. CIFAR-10 comes from the TFDS
catalog (downloaded by TFDS on first use); the smoke variant trains the same code on MNIST
so that it runs offline.
Arguments (comma-separated): "smoke" shrinks everything to run on CPU in seconds (tests
rely on it); "conditional" adds the projection discriminator (Miyato & Koyama 2018) and a
class input to G, and samples one row per class; "fid" adds FID/KID/IS of 50k samples
with Inception-v3 ($JAXGEN_INCEPTION_WEIGHTS; see the README's Evaluation section).
Expected: the paper's IS 8.22 / FID 21.7 are for its ResNet; its "standard CNN", which
this is, scores lower (IS about 7.4-7.6 in table 2). Not measured here (needs a GPU
and the Inception weights).
"""

from jaxgen.config import ConfigDict, sibling_config


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "conditional", "fid"}
    if unknown:
        raise ValueError(f"configs/gan/cifar10_sngan.py: unknown argument(s) {sorted(unknown)}")
    config = sibling_config(__file__, "cifar10_dcgan.py", arg)
    smoke = "smoke" in args

    # Table 3 of the paper: G 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 3 (BatchNorm,
    # ReLU); D seven spectrally normalised convs 64 ... 512 with LeakyReLU 0.1.
    config.model.name = "sngan"
    config.model.latent_dim = 16 if smoke else 128
    config.model.features = 4 if smoke else 64
    del config.model["norm"], config.model["spectral_norm"]  # fixed in SN-GAN's networks

    config.loss.name = "hinge"

    # The paper's hinge-loss setting (as for its ResNet): Adam α = 2e-4, β1 = 0, β2 = 0.9,
    # n_dis = 5, for both players.
    config.optim.update(lr=2e-4, b1=0.0, b2=0.9)
    config.optim_d = config.optim.copy_and_resolve_references()
    config.optim_d.ema_decay = 0.0  # only the generator keeps an EMA

    # n_dis = 5 discriminator updates per generator update, each on a fresh real batch of
    # 64: the global batch holds 5 * 64 examples, one slice per discriminator update.
    # Smoke: still several discriminator updates per step.
    config.train.n_critic = 2 if smoke else 5
    config.train.batch_size = config.train.n_critic * (16 if smoke else 64)
    if not smoke:
        config.train.num_steps = 50_000  # generator updates, as in the paper's CIFAR-10 runs
    return config
