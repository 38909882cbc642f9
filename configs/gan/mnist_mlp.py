"""The seed's GAN on MNIST: MLP generator and discriminator, non-saturating loss (Goodfellow et al. 2014).

    python -m experiments.train --config=configs/gan/mnist_mlp.py --workdir=/tmp/gan_mlp
    python -m experiments.train --config=configs/gan/mnist_mlp.py:smoke --workdir=/tmp/gan_mlp_smoke
    python -m experiments.build_domain_network --dataset=mnist   # once, for "fid"
    python -m experiments.train --config=configs/gan/mnist_mlp.py:fid --workdir=/tmp/gan_mlp

Arguments (comma-separated): "smoke" shrinks everything to run on CPU in seconds (tests
rely on it); "conditional" feeds the class to both networks (one-hot into G, a projection
discriminator) and samples one row per class; "fid" adds domain-FID/KID/IS of 10k samples
against the train split with the MNIST domain network.
Expected: blurry but recognisable digits with some speckle after the 20k steps (about
7 minutes on a 2-core CPU); the MLP GAN is the baseline the conv configs improve on.
Swap the loss with --config.loss.name=hinge (or minimax, wgan_gp with
--config.loss.kw.gp_weight=10).
"""

from jaxgen.config import ConfigDict, base_config, sample_evals, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "conditional", "fid"}
    if unknown:
        raise ValueError(f"configs/gan/mnist_mlp.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "gan"
    config.data.name = "mnist"  # pixels in [-1, 1], matching the generator's tanh

    config.model.name = "mlp"
    config.model.latent_dim = 100  # the seed's noise size
    config.model.hidden = (256, 256)  # G: 100 -> 256 -> 256 -> 784; D mirrors it
    config.model.spectral_norm = False
    config.model.conditional = "conditional" in args

    config.loss.name = "non_saturating"
    # Regularizer weights (losses/gan.py REGULARIZERS), 0 = off: gp_weight, λ of the WGAN-GP
    # gradient penalty (loss "wgan_gp" requires it); r1_gamma, γ of R1.
    config.loss.kw = ConfigDict({"gp_weight": 0.0, "r1_gamma": 0.0})

    # The seed's optimiser for both players: Adam 3e-4 with Adam's default betas.
    config.optim.name = "adam"
    config.optim.lr = 3e-4
    config.optim.ema_decay = 0.999  # sample and evaluate with the EMA of the generator
    config.optim_d = config.optim.copy_and_resolve_references()
    config.optim_d.ema_decay = 0.0  # only the generator keeps an EMA

    config.train.n_critic = 1  # discriminator updates per generator update
    config.train.batch_size = 64  # the seed's batch
    config.train.num_steps = 20_000  # about 21 epochs
    config.train.log_every = 500
    config.train.eval_every = 5_000
    config.train.ckpt_every = 5_000
    config.train.sample_every = 2_000

    # Mean D logits on test images and on as many generated ones (a cheap health check;
    # domain-FID/KID/IS: the "fid" argument).
    config.evals = ConfigDict(
        {"discriminator": {"type": "discriminator", "batch_size": 500, "num_examples": 2000}}
    )
    config.sample.num_samples = 100 if config.model.conditional else 64  # 10 per class

    if "smoke" in args:
        smoke(
            config,
            model=dict(latent_dim=16, hidden=(32,)),
            evals=dict(discriminator=dict(batch_size=64, num_examples=128)),
            sample=dict(num_samples=20 if config.model.conditional else 16),
        )
    if "fid" in args:  # 10k samples of the EMA generator against all 60k train digits
        sample_evals(config, smoke="smoke" in args)
    return config
