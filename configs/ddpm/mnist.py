"""DDPM on MNIST (Ho et al. 2020 recipe with a U-Net sized for 28x28 on a CPU).

    python -m experiments.train --config=configs/ddpm/mnist.py --workdir=/tmp/ddpm_mnist
    python -m experiments.train --config=configs/ddpm/mnist.py:quick --workdir=/tmp/ddpm_quick
    python -m experiments.train --config=configs/ddpm/mnist.py:smoke --workdir=/tmp/ddpm_smoke
    python -m experiments.sample --workdir=/tmp/ddpm_mnist --config.sample.sampler=ddpm
    python -m experiments.evaluate --workdir=/tmp/ddpm_mnist --config.evals.bpd.num_timesteps=0
    python -m experiments.build_domain_network --dataset=mnist   # once, for "fid"
    python -m experiments.train --config=configs/ddpm/mnist.py:quick,fid --workdir=/tmp/ddpm_fid

Arguments (comma-separated): "quick" is a CPU run of 1500 steps (a busy 2-core CPU
reached step 1150 in 27 minutes); at step 1000 about half its samples are recognisable digits and test
bits/dim is 1.97 (README, "DDPM"); "smoke" shrinks
everything to run on CPU in seconds (tests rely on it); "x0" and "v" switch the
parameterisation from ε; "fid" adds domain-FID/KID/IS of 10k samples (config.sample's
sampler) against the train split with the MNIST domain network. The full run (40k steps) is meant for a GPU.
Fashion-MNIST: configs/ddpm/fashion_mnist.py; class-conditional: configs/ddpm/mnist_cond.py.
"""

from jaxgen.config import ConfigDict, base_config, sample_evals, smoke

ARGUMENTS = {"quick", "smoke", "x0", "v", "fid"}


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - ARGUMENTS
    if unknown:
        raise ValueError(f"configs/ddpm/mnist.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "ddpm"

    config.data.name = "mnist"
    config.data.pixels = "symmetric"  # the diffusion runs on [-1, 1]

    config.diffusion = ConfigDict(
        dict(
            schedule="linear",  # 1e-4 -> 0.02 as in Ho et al.; "cosine" for Nichol & Dhariwal
            num_timesteps=1000,
            parameterisation="eps",  # "eps" (Ho et al.), "x0" or "v"
        )
    )
    if "x0" in args or "v" in args:
        config.diffusion.parameterisation = "x0" if "x0" in args else "v"

    config.model.name = "unet"
    # 28 -> 14 -> 7: three levels with no padding to 32; attention on the 7x7 map only,
    # where it is cheap. About 1.1M params: small enough to learn digits on a CPU.
    config.model.channels = 32
    config.model.channel_multipliers = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (7,)
    config.model.dropout = 0.1  # as Ho et al. on CIFAR-10
    config.model.groups = 8  # 32 groups (the paper) would leave one channel per group at width 32
    config.model.class_conditional = False

    config.loss.name = "mse"
    config.loss.kw = ConfigDict({"weighting": "none"})  # L_simple; "min_snr" or "snr" also work
    config.loss.label_dropout = 0.0  # unconditional

    config.optim.name = "adam"
    config.optim.lr = 2e-3  # small model, short run: higher than the paper's 2e-4
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 200
    config.optim.min_lr_ratio = 0.05
    config.optim.grad_clip_norm = 1.0  # as Ho et al.
    config.optim.ema_decay = 0.999  # 0.9999 (the paper) averages over too many steps for short runs

    config.train.num_steps = 40_000
    config.train.batch_size = 128
    config.train.random_flip = False  # flipped digits are not digits
    config.train.log_every = 200
    config.train.eval_every = 10_000
    config.train.ckpt_every = 2_000
    config.train.sample_every = 5_000

    config.evals = ConfigDict(
        {
            # Bits/dim of the variational bound on 1000 test images, with 32 of the T terms
            # per image (an unbiased estimate: T x their mean); num_timesteps=0 uses all T.
            "bpd": {
                "type": "bpd",
                "batch_size": 500,
                "num_examples": 1000,
                "num_timesteps": 32,
                "variance": "beta_tilde",  # the reverse variance of the bound
                "clip_denoised": True,
            },
        }
    )

    config.sample.num_samples = 64
    config.sample.sampler = "ddim"  # 50 steps: 20x cheaper than ancestral on a CPU
    config.sample.num_inference_steps = 50
    config.sample.eta = 0.0  # deterministic DDIM
    config.sample.variance = "beta"  # ancestral σ² = β (Ho et al.'s choice for samples)
    config.sample.clip_denoised = True  # x̂_0 clipped to [-1, 1] (diffusers' clip_sample)
    # DDIM: ε̂ recomputed from the clipped x̂_0 (diffusers' use_clipped_model_output=True;
    # False, diffusers' default, keeps the network's ε̂ in the direction term).
    config.sample.use_clipped_model_output = True
    config.sample.guidance_scale = 1.0  # no guidance: the model is unconditional
    config.sample.labels = ()
    config.sample.samples_per_class = 8
    config.sample.progress = False  # log the sampler's progress (useful for long ancestral runs)

    if "quick" in args:  # first digits within ~25 minutes of a busy 2-core CPU (see README)
        config.model.channels = 16  # ~280k params: ~0.7 s per step of 32 on the shared CPU
        config.model.dropout = 0.0  # too short a run to overfit
        config.optim.ema_decay = 0.995  # an average over ~200 of the 1500 steps
        config.optim.warmup_steps = 100
        config.train.num_steps = 1_500
        config.train.batch_size = 32  # more updates beat bigger batches this early
        config.train.log_every = 50
        config.train.eval_every = 1_500
        config.train.ckpt_every = 250
        config.train.sample_every = 500
        # 500 test images x 16 of the T terms each: a rough but unbiased bits/dim.
        config.evals.bpd.update(num_examples=500, num_timesteps=16)

    if "smoke" in args:
        config.diffusion.num_timesteps = 100  # the linear schedule is rescaled for T != 1000
        smoke(
            config,
            model=dict(
                channels=8, channel_multipliers=(1, 2), attention_resolutions=(14,), groups=4
            ),
            evals=dict(bpd=dict(batch_size=64, num_examples=128, num_timesteps=4)),
            sample=dict(num_samples=16, num_inference_steps=10, samples_per_class=2),
        )
    if "fid" in args:  # 10k samples of config.sample's sampler (50 DDIM steps)
        sample_evals(config, smoke="smoke" in args)
    return config
