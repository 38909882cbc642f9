"""DDPM on CIFAR-10 with the settings of Ho et al. (2020), "Denoising Diffusion Probabilistic Models".

    python -m experiments.train --config=configs/ddpm/cifar10.py --workdir=/tmp/ddpm_cifar10
    python -m experiments.train --config=configs/ddpm/cifar10.py:smoke --workdir=/tmp/ddpm_c_smoke
    python -m experiments.sample --workdir=/tmp/ddpm_cifar10 --config.sample.sampler=ddim \
        --config.sample.num_inference_steps=50
    python -m experiments.evaluate --workdir=/tmp/ddpm_cifar10
    python -m experiments.train --config=configs/ddpm/cifar10.py:fid --workdir=/tmp/ddpm_cifar10

Expected on real hardware (the paper, 800k steps, EMA params, ancestral sampling with
σ² = β): FID 3.17, Inception score 9.46, test NLL <= 3.75 bits/dim (all 1000 terms of
the bound on the whole test split, the "bpd" eval below). Not run here: the data comes
from the TFDS catalog ("cifar10"), which these machines cannot download; tests run the
config on mock data.

Arguments (comma-separated): "smoke" shrinks everything to run on CPU in seconds; "fid"
adds FID/KID/IS of 50k samples with Inception-v3 ($JAXGEN_INCEPTION_WEIGHTS; see the
README's Evaluation section; with "smoke", 256 samples and the domain network).
"""

from jaxgen.config import ConfigDict, base_config, sample_evals, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "fid"}
    if unknown:
        raise ValueError(f"configs/ddpm/cifar10.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "ddpm"

    config.data.name = "cifar10"  # the TFDS catalog dataset
    config.data.pixels = "symmetric"

    config.diffusion = ConfigDict(
        dict(schedule="linear", num_timesteps=1000, parameterisation="eps")  # L_simple
    )

    config.model.name = "unet"
    config.model.channels = 128
    config.model.channel_multipliers = (1, 2, 2, 2)  # 32 -> 16 -> 8 -> 4
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (16,)
    config.model.dropout = 0.1
    config.model.groups = 32
    config.model.class_conditional = False
    # The paper trains in float32; "bfloat16" roughly doubles GPU throughput
    # (benchmarks/ddpm_train.py) with float32 master params.
    config.model.dtype = "float32"

    config.loss.name = "mse"
    config.loss.kw = ConfigDict({"weighting": "none"})
    config.loss.label_dropout = 0.0

    config.optim.name = "adam"
    config.optim.lr = 2e-4
    config.optim.schedule = "constant"  # after warmup, as in the paper
    config.optim.warmup_steps = 5000
    config.optim.grad_clip_norm = 1.0
    config.optim.ema_decay = 0.9999

    config.train.num_steps = 800_000
    config.train.batch_size = 128
    config.train.random_flip = True  # horizontal flips, on device in the train step
    config.train.log_every = 1000
    config.train.eval_every = 100_000
    config.train.ckpt_every = 10_000
    config.train.sample_every = 50_000

    config.evals = ConfigDict(
        {
            # The full bound: all 1000 terms for each of the 10k test images (10M U-Net
            # evaluations: about an hour on one H100). Ho et al.'s "fixedlarge" variance.
            "bpd": {
                "type": "bpd",
                "batch_size": 500,
                "num_examples": 0,
                "num_timesteps": 0,
                "variance": "beta",
                "clip_denoised": True,
            },
        }
    )

    config.sample.num_samples = 64
    config.sample.sampler = "ddpm"  # 1000-step ancestral, as in the paper
    config.sample.num_inference_steps = 50  # DDIM steps when sampler="ddim"
    config.sample.eta = 0.0
    config.sample.variance = "beta"  # σ² = β gave the paper's best FID on CIFAR-10
    config.sample.clip_denoised = True  # x̂_0 clipped to [-1, 1] (diffusers' clip_sample)
    # DDIM: ε̂ recomputed from the clipped x̂_0 (diffusers' use_clipped_model_output=True;
    # False, diffusers' default, keeps the network's ε̂ in the direction term).
    config.sample.use_clipped_model_output = True
    config.sample.guidance_scale = 1.0
    config.sample.labels = ()
    config.sample.samples_per_class = 8
    config.sample.progress = False

    if "smoke" in args:
        config.diffusion.num_timesteps = 100
        smoke(
            config,
            num_steps=4,
            batch_size=8,
            log_every=2,
            every=4,
            model=dict(channels=32, channel_multipliers=(1, 2), num_res_blocks=1),
            evals=dict(bpd=dict(batch_size=8, num_examples=8, num_timesteps=2)),
            sample=dict(num_samples=4, sampler="ddim", num_inference_steps=4),
        )
    if "fid" in args:  # FID-50k as in the paper, of config.sample's sampler
        sample_evals(config, smoke="smoke" in args, num_samples=50_000)
    return config
