"""DCGAN on MNIST (Radford et al. 2016), narrowed to train on a CPU.

    python -m experiments.train --config=configs/gan/mnist_dcgan.py --workdir=/tmp/gan_dcgan
    python -m experiments.train --config=configs/gan/mnist_dcgan.py:quick --workdir=/tmp/gan_quick
    python -m experiments.train --config=configs/gan/mnist_dcgan.py:smoke --workdir=/tmp/gan_smoke
    python -m experiments.build_domain_network --dataset=mnist   # once, for "fid"
    python -m experiments.train --config=configs/gan/mnist_dcgan.py:quick,fid --workdir=/tmp/gan_fid

Arguments (comma-separated): "quick" is the short run measured in the README (half the
widths, 1500 steps: 10-30 minutes on a 2-core CPU, depending on what else runs); "smoke"
shrinks everything to run on CPU in seconds (tests rely on it); "conditional" feeds the
class to both networks and samples one row per class; "fid" adds domain-FID/KID/IS of 10k
samples against the train split with the MNIST domain network.
Expected ("quick"): see the README's GAN section for the measured run and its samples.
"""

from jaxgen.config import ConfigDict, base_config, sample_evals, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"quick", "smoke", "conditional", "fid"}
    if unknown:
        raise ValueError(f"configs/gan/mnist_dcgan.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "gan"
    config.data.name = "mnist"  # pixels in [-1, 1], matching the generator's tanh

    config.model.name = "dcgan"
    config.model.latent_dim = 100
    # G: 7x7x128 -> 14x14x64 -> 28x28x32 -> 28x28x1; D: 32 -> 64 channels. The paper's
    # widths are 2x these (features=64); half of them trains 3-4x faster on a CPU and
    # MNIST does not need more.
    config.model.features = 32
    config.model.norm = "batch"  # BatchNorm in D after the first conv, as in the paper
    config.model.spectral_norm = False
    config.model.conditional = "conditional" in args

    config.loss.name = "non_saturating"
    # Regularizer weights (losses/gan.py REGULARIZERS), 0 = off: gp_weight, λ of the WGAN-GP
    # gradient penalty (loss "wgan_gp" requires it); r1_gamma, γ of R1.
    config.loss.kw = ConfigDict({"gp_weight": 0.0, "r1_gamma": 0.0})

    # Radford et al.: Adam 2e-4 with β1 = 0.5 (0.9 oscillated in their runs), both players.
    config.optim.name = "adam"
    config.optim.lr = 2e-4
    config.optim.b1 = 0.5
    config.optim.ema_decay = 0.999  # sample and evaluate with the EMA of the generator
    config.optim_d = config.optim.copy_and_resolve_references()
    config.optim_d.ema_decay = 0.0  # only the generator keeps an EMA

    config.train.n_critic = 1
    config.train.batch_size = 64
    config.train.num_steps = 10_000  # about 11 epochs
    config.train.log_every = 250
    config.train.eval_every = 2_500
    config.train.ckpt_every = 2_500
    config.train.sample_every = 1_000

    # Mean D logits on test images and on as many generated ones (a cheap health check;
    # domain-FID/KID/IS: the "fid" argument).
    config.evals = ConfigDict(
        {"discriminator": {"type": "discriminator", "batch_size": 500, "num_examples": 2000}}
    )
    config.sample.num_samples = 100 if config.model.conditional else 64  # 10 per class

    if "quick" in args:  # 0.2-1.5 s a step on a 2-core CPU, depending on its load
        config.model.features = 16  # 4x cheaper than 32: the conv FLOPs grow as features^2
        config.train.num_steps = 1_500  # 1.6 epochs
        config.train.log_every = 100
        config.train.eval_every = config.train.ckpt_every = config.train.sample_every = 500

    if "smoke" in args:
        smoke(
            config,
            model=dict(latent_dim=16, features=8),
            evals=dict(discriminator=dict(batch_size=64, num_examples=128)),
            sample=dict(num_samples=20 if config.model.conditional else 16),
        )
    if "fid" in args:  # 10k samples of the EMA generator against the whole train split
        sample_evals(config, smoke="smoke" in args)
    return config
