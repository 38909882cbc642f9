"""VAE on dynamically binarised MNIST (Kingma & Welling 2014; Burda et al. 2016 protocol).

    python -m experiments.train --config=configs/vae/mnist.py --workdir=/tmp/vae_mlp
    python -m experiments.train --config=configs/vae/mnist.py:conv --workdir=/tmp/vae_conv
    python -m experiments.train --config=configs/vae/mnist.py:smoke --workdir=/tmp/vae_smoke
    python -m experiments.evaluate --workdir=/tmp/vae_mlp --config.evals.nll.num_samples=5000
    python -m experiments.build_domain_network --dataset=mnist   # once, for "fid"
    python -m experiments.train --config=configs/vae/mnist.py:quick,fid --workdir=/tmp/vae_fid

Arguments (comma-separated): "mlp" (default) or "conv" picks the model;
"quick" is the short run `make run` uses; "smoke" shrinks everything to run on
CPU in seconds (tests rely on it); "iwae" trains on the IWAE bound with k=5;
"gaussian" models pixels in [-1, 1] with a Gaussian decoder instead of
binarised pixels with a Bernoulli one (its nats are not comparable); "fid" adds
domain-FID/KID/IS of 10k prior samples (the Bernoulli means 2p - 1, against the
grey-level train split) with the MNIST domain network.
Fashion-MNIST: add --config.data.name=fashion_mnist.
"""

from jaxgen.config import ConfigDict, base_config, sample_evals, smoke


def get_config(arg: str = "mlp") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"mlp", "conv", "quick", "smoke", "iwae", "gaussian", "fid"}
    if unknown:
        raise ValueError(f"configs/vae/mnist.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "vae"

    config.data.name = "mnist"
    config.data.pixels = "binary"  # Bernoulli likelihood on dynamically binarised pixels

    config.model.name = "conv" if "conv" in args else "mlp"
    config.model.likelihood = "bernoulli"
    config.model.latent_dim = 50  # as in the IWAE paper's single-stochastic-layer models
    config.model.hidden = (500, 500)  # mlp: encoder widths, mirrored in the decoder
    config.model.features = (16, 32)  # conv: channels of the two stride-2 stages
    if "conv" in args:
        config.model.hidden = (512,)  # one dense layer after the convs; (512, 512) was worse

    config.loss.name = "elbo"
    config.loss.num_samples = 1  # posterior samples per example in training
    config.loss.kw = ConfigDict({"beta": 1.0})  # beta-VAE: config.loss.kw.beta = 4.0
    if "iwae" in args:
        config.loss.name, config.loss.num_samples = "iwae", 5
        config.loss.kw = ConfigDict()

    config.optim.name = "adam"
    config.optim.lr = 1e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 500
    config.optim.min_lr_ratio = 0.05
    config.optim.ema_decay = 0.999  # evaluate and sample with the EMA of params
    if "conv" in args:
        config.optim.lr = 2e-3  # measured best for the conv VAE (3e-3 was worse)

    config.train.num_steps = 30_000  # about 64 epochs at batch 128
    if "conv" in args:
        config.train.num_steps = 10_000  # the conv step costs ~4x the MLP's on CPU
    config.train.batch_size = 128
    config.train.log_every = 500
    config.train.eval_every = 10_000
    config.train.ckpt_every = 5_000
    config.train.sample_every = 10_000

    config.evals = ConfigDict(
        {
            # Test −ELBO in nats over the whole test split (binarised with a fixed seed).
            "elbo": {"type": "elbo", "batch_size": 500, "num_examples": 0},
            # Importance-sampled −log p(x); papers use 5000 samples on all 10k images:
            # --config.evals.nll.num_samples=5000 --config.evals.nll.num_examples=0.
            "nll": {
                "type": "nll",
                "num_samples": 1000,
                "chunk": 100,
                "batch_size": 100,
                "num_examples": 1000,
            },
        }
    )

    config.sample.num_samples = 64
    config.sample.num_interpolations = 8  # rows of the latent interpolation grid
    config.sample.interpolation_steps = 10

    if "gaussian" in args:
        config.model.likelihood = "gaussian"
        config.data.pixels = "symmetric"

    if "quick" in args:  # recognisable digits in a few minutes of a 2-core CPU
        config.train.num_steps = 4_000
        config.train.eval_every = config.train.ckpt_every = config.train.sample_every = 2_000
        config.optim.warmup_steps = 200
        config.evals.nll.num_samples = 100

    if "smoke" in args:
        smoke(
            config,
            model=dict(hidden=(64,), features=(8, 16), latent_dim=8),
            evals=dict(
                elbo=dict(batch_size=64, num_examples=256),
                nll=dict(num_samples=16, chunk=8, batch_size=64, num_examples=128),
            ),
            sample=dict(num_samples=16, num_interpolations=4, interpolation_steps=6),
        )
    if "fid" in args:  # 10k prior draws against all 60k train digits
        sample_evals(config, smoke="smoke" in args)
    return config
