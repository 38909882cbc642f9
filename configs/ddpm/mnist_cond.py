"""Class-conditional DDPM on MNIST with classifier-free guidance (Ho & Salimans 2022).

    python -m experiments.train --config=configs/ddpm/mnist_cond.py --workdir=/tmp/ddpm_cond
    python -m experiments.train --config=configs/ddpm/mnist_cond.py:smoke --workdir=/tmp/ddpm_cs
    python -m experiments.sample --workdir=/tmp/ddpm_cond --config.sample.sampler=ddim \
        --config.sample.num_inference_steps=50 --config.sample.guidance_scale=3 \
        --config.sample.labels=(3,4,5)

The U-Net of configs/ddpm/mnist.py with a label embedding; 10% of training labels are
replaced by the "null" label so the same network is also the unconditional model, and
sampling mixes the two with guidance scale 3. The sample grid has one row per class
(all ten, or config.sample.labels). Expect each row to show its own digit.

Arguments (comma-separated) are those of configs/ddpm/mnist.py: "quick", "smoke", "x0", "v",
"fid" (samples with labels drawn uniformly).
"""

from jaxgen.config import ConfigDict, sibling_config


def get_config(arg: str = "") -> ConfigDict:
    config = sibling_config(__file__, "mnist.py", arg)
    config.model.class_conditional = True
    config.loss.label_dropout = 0.1  # p_uncond: trains the unconditional model too
    config.sample.guidance_scale = 3.0  # > 1 trades diversity for class fidelity
    config.sample.samples_per_class = 8 if "smoke" not in arg else 2
    return config
