"""StyleGAN2 on CIFAR-10: stylegan2-ada-pytorch's `cifar` preset (train.py --cfg=cifar).

    python -m experiments.train --config=configs/stylegan2/cifar10.py --workdir=/tmp/sg2_cifar
    python -m experiments.train --config=configs/stylegan2/cifar10.py:conditional,fid --workdir=/tmp/sg2_cifar_c
    python -m experiments.train --config=configs/stylegan2/cifar10.py:smoke --workdir=/tmp/sg2_cifar_smoke

The preset: channel_base 32768 / channel_max 512 (512 channels at every resolution up to 32),
mapping network of 2 layers, minibatch std group 32, batch 64, Adam lr 0.0025 betas (0, 0.99),
R1 γ = 0.01 every 16 D steps, no path length regularisation, no style mixing, the "orig"
discriminator (no residual connections), an EMA half-life of 500 kimg with ramp-up 0.05,
100k kimg (1.56M steps of 64). Left out: fp16 in the top resolutions and conv_clamp.
Arguments (comma-separated): "conditional" (the paper's CIFAR-10 results are class
conditional); "augment" adds DiffAugment (color, translation, cutout; not ADA); "fid" adds
FID/KID/IS of 50k samples with Inception-v3 ($JAXGEN_INCEPTION_WEIGHTS); "smoke" shrinks
everything and trains on MNIST so that it runs offline in seconds (tests rely on it).
Paper numbers (Karras et al. 2020b, "Training Generative Adversarial Networks with Limited
Data", abstract): ADA improves the record class-conditional CIFAR-10 FID from 5.59 to 2.42;
the paper's CIFAR-10 runs use this preset. DiffAugment (":augment" here) is not ADA.
Not measured here: it needs a GPU for days.
"""

from jaxgen.config import ConfigDict, sample_evals, sibling_config, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "conditional", "augment", "fid"}
    if unknown:
        raise ValueError(f"configs/stylegan2/cifar10.py: unknown argument(s) {sorted(unknown)}")
    # The MNIST recipe without its own smoke / fid, then the preset's differences.
    config = sibling_config(
        __file__, "mnist.py", ",".join(sorted(args & {"conditional", "augment"}))
    )
    config.data.name = "cifar10"  # TFDS catalog; [-1, 1] floats
    config.model.resolution = 32
    config.model.z_dim = config.model.w_dim = 512
    config.model.mapping_layers = 2  # map=2
    config.model.channel_base = 32768  # fmaps=1
    config.model.channel_max = 512
    config.model.architecture = "orig"  # "disable residual skip connections"
    config.model.mbstd_group_size = 32  # mbstd=32

    config.loss.kw.r1_gamma = 0.01  # gamma=0.01
    config.loss.kw.pl_weight = 0.0  # "disable path length regularization"
    config.loss.kw.style_mixing_prob = 0.0  # "disable style mixing"
    config.optim.lr = config.optim_d.lr = 0.0025  # lrate=0.0025

    config.train.batch_size = 64  # mb=64
    config.train.num_steps = 100_000_000 // 64  # kimg=100000
    config.train.ema_kimg = 500.0  # ema=500
    config.train.ema_rampup = 0.05  # ramp=0.05
    config.train.log_every = 1_000
    config.train.eval_every = 50_000
    config.train.ckpt_every = 10_000
    config.train.sample_every = 10_000
    config.sample.num_samples = 100 if config.model.conditional else 64

    if "smoke" in args:
        config.data.name = "mnist"  # offline; the same networks at 32x32
        config.model.z_dim = config.model.w_dim = 8
        smoke(
            config,
            model=dict(channel_base=64, channel_max=16, mbstd_group_size=4),
            loss=dict(kw=dict(r1_interval=4)),
            evals=dict(discriminator=dict(batch_size=64, num_examples=128)),
            sample=dict(
                num_samples=20 if config.model.conditional else 16,
                mixing_rows=2,
                mixing_cols=3,
                interpolation_rows=2,
                interpolation_steps=4,
            ),
        )
    if "fid" in args:  # 50k samples with Inception-v3 (the domain network under smoke)
        sample_evals(config, smoke="smoke" in args, num_samples=50_000)
    return config
