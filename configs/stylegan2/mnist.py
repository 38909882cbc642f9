"""StyleGAN2 (Karras et al. 2020, config F) on MNIST padded to 32x32, narrowed to train on a CPU.

    python -m experiments.train --config=configs/stylegan2/mnist.py --workdir=/tmp/sg2_mnist
    python -m experiments.train --config=configs/stylegan2/mnist.py:quick --workdir=/tmp/sg2_quick
    python -m experiments.train --config=configs/stylegan2/mnist.py:smoke --workdir=/tmp/sg2_smoke
    python -m experiments.build_domain_network --dataset=mnist   # once, for "fid"
    python -m experiments.train --config=configs/stylegan2/mnist.py:quick,fid --workdir=/tmp/sg2_fid
    python -m experiments.sample --workdir=/tmp/sg2_quick --config.sample.truncation_psi=0.7

Arguments (comma-separated): "quick" is the short run compared with configs/gan/mnist_dcgan.py
:quick at equal wall time (README, StyleGAN2 section); "smoke" shrinks everything to run on CPU
in seconds (tests rely on it); "conditional" maps the class with z (and projects it in D);
"augment" turns on DiffAugment (color, translation, cutout); "fid" adds domain-FID/KID/IS of
10k samples against the train split with the MNIST domain network.

The 28x28 digits sit in the middle of a 32x32 canvas of -1 (the synthesis doubles from 4x4),
and generated images are cropped back to 28x28 for sampling and evaluation. Everything but the
widths is config F: mapping 8 layers with lr multiplier 0.01, modulated convs with demodulation,
noise inputs, skip generator, residual discriminator with minibatch std (group 4), R1 every 16
D steps, path length (weight 2, every 4 G steps, batch / 2), style mixing 0.9, Adam 0.002 with
betas (0, 0.99). The widths are channel_base 2048 / channel_max 128 (128 channels at 4x4 and
8x8, 64 at 16x16 and 32x32): config F's 32768 / 512 is 16x the FLOPs and MNIST needs far less.
r1_gamma is the heuristic of stylegan2-ada's auto preset, 0.0002 * res^2 / batch = 0.0032 at 32 px and
batch 64, rounded up to 0.01 as the cifar preset uses.
Expected ("quick"): recognisable digits; see the README's StyleGAN2 section for the measure.
"""

from jaxgen.config import ConfigDict, base_config, sample_evals, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"quick", "smoke", "conditional", "augment", "fid"}
    if unknown:
        raise ValueError(f"configs/stylegan2/mnist.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "stylegan2"
    config.data.name = "mnist"  # pixels in [-1, 1]

    config.model.name = "stylegan2"
    config.model.resolution = 32  # 28x28 padded with 2 pixels of background on each side
    config.model.z_dim = 128  # config F: 512; MNIST's few factors need much less
    config.model.w_dim = 128
    config.model.mapping_layers = 8
    config.model.mapping_lr_multiplier = 0.01
    config.model.channel_base = 2048  # channels at res r: min(channel_base / r, channel_max)
    config.model.channel_max = 128
    config.model.architecture = "resnet"  # D: residual blocks (config F)
    config.model.mbstd_group_size = 4
    config.model.cmap_dim = 0  # conditional D: project on a w-sized embedding (0: D's width)
    # Sampling and evaluation: one grouped conv per layer; training always uses the per-sample
    # path, as stylegan2-ada does (the same function either way).
    config.model.fused_modconv = True
    config.model.conditional = "conditional" in args

    config.loss.name = "non_saturating"
    config.loss.kw = ConfigDict(
        dict(
            r1_gamma=0.01,  # γ of R1 on real images (config F at 1024 px: 10)
            r1_interval=16,  # lazy R1: every 16 D steps, weighted by 16
            pl_weight=2.0,  # path length regularisation
            pl_decay=0.01,  # of its running mean of lengths
            pl_interval=4,  # every 4 G steps, weighted by 4
            pl_batch_shrink=2,  # on half the batch
            style_mixing_prob=0.9,
        )
    )

    # Adam (0, 0.99), lr 0.002 for both players (config F); the family rescales lr and betas
    # by interval / (interval + 1) for each lazily regularised player.
    config.optim.name = "adam"
    config.optim.lr = 0.002
    config.optim.b1 = 0.0
    config.optim.b2 = 0.99
    config.optim.eps = 1e-8
    config.optim.ema_decay = 0.0  # the EMA is train.ema_kimg
    config.optim_d = config.optim.copy_and_resolve_references()

    config.train.batch_size = 64
    config.train.num_steps = 20_000
    config.train.ema_kimg = 64 * 10 / 32  # the auto preset: a half-life of batch * 10 / 32 kimg
    config.train.ema_rampup = 0.0  # 0: none
    config.train.w_avg_beta = 0.995
    # Differentiable augmentation of D's inputs ("color,translation,cutout"; "" = none).
    config.train.diffaugment = "color,translation,cutout" if "augment" in args else ""
    config.train.log_every = 250
    config.train.eval_every = 5_000
    config.train.ckpt_every = 2_500
    config.train.sample_every = 2_500

    config.evals = ConfigDict(
        {"discriminator": {"type": "discriminator", "batch_size": 500, "num_examples": 2000}}
    )
    config.sample.num_samples = 100 if config.model.conditional else 64
    config.sample.truncation_psi = 1.0  # 1: none; 0: every sample is w_avg's
    config.sample.truncation_cutoff = -1  # truncate the first ws only (-1: all)
    config.sample.noise_mode = "const"  # "random", "const" or "none"
    config.sample.mixing_rows = 5  # style-mixing figure: row sources x column sources
    config.sample.mixing_cols = 6
    config.sample.interpolation_rows = 6  # W interpolations: rows x steps
    config.sample.interpolation_steps = 8

    if "quick" in args:  # the same wall time as mnist_dcgan.py:quick (README)
        config.model.channel_base = 1024  # 64 channels at 4x4-16x16, 32 at 32x32
        config.model.channel_max = 64
        config.model.z_dim = config.model.w_dim = 64
        config.train.num_steps = 1_500
        config.train.log_every = 100
        config.train.eval_every = config.train.ckpt_every = config.train.sample_every = 500

    if "smoke" in args:
        smoke(
            config,
            model=dict(z_dim=8, w_dim=8, mapping_layers=2, channel_base=64, channel_max=16),
            loss=dict(kw=dict(r1_interval=4, pl_interval=2)),  # both lazy phases run in 20 steps
            evals=dict(discriminator=dict(batch_size=64, num_examples=128)),
            sample=dict(
                num_samples=20 if config.model.conditional else 16,
                mixing_rows=2,
                mixing_cols=3,
                interpolation_rows=2,
                interpolation_steps=4,
            ),
        )
    if "fid" in args:
        sample_evals(config, smoke="smoke" in args)
    return config
