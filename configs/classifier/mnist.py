"""CNN classifier on MNIST: the domain network for domain-FID/KID/IS (jaxgen/metrics/domain.py).

    python -m experiments.build_domain_network --dataset=mnist   # trains it once into the cache
    python -m experiments.train --config=configs/classifier/mnist.py --workdir=/tmp/cls_mnist

Expect >= 99.0% test accuracy (eval "accuracy/accuracy") after 4 epochs, a few
minutes on a 2-core CPU.

Arguments (comma-separated): "smoke" shrinks everything to run on CPU in
seconds (tests rely on it). Fashion-MNIST: configs/classifier/fashion_mnist.py.
"""

from jaxgen.config import ConfigDict, base_config, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke"}
    if unknown:
        raise ValueError(f"configs/classifier/mnist.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "classifier"

    config.data.name = "mnist"
    config.data.pixels = "symmetric"  # generated images are compared in [-1, 1]

    config.model.name = "cnn"
    config.model.features = (16, 32)  # conv widths of the two 2x-pooled stages; cheap on CPU
    config.model.hidden = 128  # the feature dimension of domain-FID

    config.loss.name = "xent"
    config.loss.kw = ConfigDict({"label_smoothing": 0.0})

    config.optim.name = "adam"
    config.optim.lr = 2e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 100
    config.optim.min_lr_ratio = 0.0
    config.optim.ema_decay = 0.0  # features come from the final params

    config.train.num_steps = 1_880  # 4 epochs at batch 128
    config.train.batch_size = 128
    config.train.log_every = 100
    config.train.eval_every = 940
    config.train.ckpt_every = 940
    config.train.sample_every = 1_880

    config.evals = ConfigDict(
        {"accuracy": {"type": "accuracy", "batch_size": 500, "num_examples": 0}}
    )
    config.sample.num_samples = 8  # the classifier writes no images

    if "smoke" in args:
        smoke(
            config,
            model=dict(features=(4, 8), hidden=16),
            optim=dict(lr=3e-2, schedule="constant"),  # 20 steps: at 2e-3 it stays near chance
            evals=dict(accuracy=dict(batch_size=64, num_examples=256)),
        )
    return config
