"""StyleGAN2 config F at 256x256 on a folder of images (FFHQ, or any other).

    python -m experiments.train --config=configs/stylegan2/ffhq.py --workdir=/tmp/sg2_ffhq \
        --config.data.name=folder --config.data.image_dir=~/datasets/ffhq256
    python -m experiments.train --config=configs/stylegan2/ffhq.py:fid --workdir=/tmp/sg2_ffhq \
        --config.data.image_dir=~/datasets/ffhq256
    python -m experiments.train --config=configs/stylegan2/ffhq.py:smoke --workdir=/tmp/sg2_ffhq_smoke \
        --config.data.image_dir=/tmp/some_pngs

The folder dataset (jaxgen/data/folder.py) reads every image file under image_dir, centre-crops
and resizes it to image_size; the last val_fraction of the files is the test split. Config F
(Karras et al. 2020, table 1) as stylegan2-ada's `stylegan2` preset sets it: z and w 512, 8
mapping layers at lr multiplier 0.01, channel_base 32768 / channel_max 512, residual D with
minibatch std group 4, batch 32, Adam 0.002 betas (0, 0.99), R1 γ 10 every 16 D steps, path
length weight 2 every 4 G steps on half the batch, style mixing 0.9, an EMA half-life of 10
kimg, 25000 kimg. At 256 px stylegan2-ada's paper256 preset uses γ = 1 (its heuristic
0.0002 * 256^2 / 64 = 1.0): γ 10 is for 1024 px and over-regularises at 256, so γ = 1 here.
Arguments (comma-separated): "smoke" shrinks everything to a 32-pixel run of seconds (tests
rely on it; it still needs an image_dir); "augment" adds DiffAugment (color, translation,
cutout); "fid" adds FID/KID/IS of 50k samples with Inception-v3 ($JAXGEN_INCEPTION_WEIGHTS).
Paper number: FFHQ at 1024 px, config F, FID 2.84 (Karras et al. 2020, table 1); no 256 px
number is claimed here.
Not measured here: it needs GPUs for days.
"""

from jaxgen.config import ConfigDict, sample_evals, sibling_config, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "augment", "fid"}
    if unknown:
        raise ValueError(f"configs/stylegan2/ffhq.py: unknown argument(s) {sorted(unknown)}")
    config = sibling_config(__file__, "mnist.py", ",".join(sorted(args & {"augment"})))
    config.data.name = "folder"
    config.data.image_dir = ""  # --config.data.image_dir=...: a folder of images
    config.data.image_size = 256
    config.data.val_fraction = 0.01  # the last 1% of the sorted files: the "test" split
    config.model.resolution = 256
    config.model.z_dim = config.model.w_dim = 512
    config.model.channel_base = 32768
    config.model.channel_max = 512
    config.loss.kw.r1_gamma = 1.0  # paper256's γ (see the docstring)
    config.train.batch_size = 32
    config.train.num_steps = 25_000_000 // 32  # 25000 kimg
    config.train.ema_kimg = 10.0
    config.train.log_every = 1_000
    config.train.eval_every = 50_000
    config.train.ckpt_every = 10_000
    config.train.sample_every = 10_000
    config.evals = ConfigDict(
        {"discriminator": {"type": "discriminator", "batch_size": 64, "num_examples": 640}}
    )
    config.sample.num_samples = 32
    config.sample.mixing_rows = 5
    config.sample.mixing_cols = 6

    if "smoke" in args:
        config.data.image_size = 32
        config.data.val_fraction = 0.25
        config.model.resolution = 32
        config.model.z_dim = config.model.w_dim = 8
        smoke(
            config,
            batch_size=8,
            model=dict(mapping_layers=2, channel_base=64, channel_max=16),
            loss=dict(kw=dict(r1_interval=4, pl_interval=2)),
            evals=dict(discriminator=dict(batch_size=8, num_examples=8)),
            sample=dict(
                num_samples=8,
                mixing_rows=2,
                mixing_cols=3,
                interpolation_rows=2,
                interpolation_steps=4,
            ),
        )
    if "fid" in args:
        sample_evals(config, smoke="smoke" in args, num_samples=50_000)
    return config
