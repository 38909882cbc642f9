"""KL autoencoder on Noto Color Emoji (32x32 RGB on white): the first stage for emoji text-to-image.

    python -m experiments.train --config=configs/autoencoder/emoji.py --workdir=/tmp/ae_emoji
    python -m experiments.train --config=configs/autoencoder/emoji.py:smoke --workdir=/tmp/ae_smoke
    python -m experiments.train --config=configs/autoencoder/emoji.py:64 --workdir=/tmp/ae_emoji64

32x32x3 -> 8x8x4 latents (4x down); ~1,375 images, so training images are shifted and zoomed
(config.data.augment="shift_scale"; jaxgen/data/captions_kind.py). Logs "reconstruction" and
"latent_scale" like configs/autoencoder/mnist.py. Arguments: "smoke"; "64" renders at 64x64 (GPU).
Measured shortened only (1,200 steps, 2-core CPU): L1 0.075, MSE 0.021, scale factor 1.012.
"""

from jaxgen.config import ConfigDict, sibling_config


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "64"}
    if unknown:
        raise ValueError(f"configs/autoencoder/emoji.py: unknown argument(s) {sorted(unknown)}")
    config = sibling_config(__file__, "mnist.py", ",".join(sorted(args & {"smoke"})))
    config.data.name = "emoji"
    config.data.image_size = 64 if "64" in args else 32
    config.data.augment = "shift_scale"  # +-2 px (at 32) and +-10% zoom: ~1,400 images only
    config.evals.reconstruction.num_examples = 0 if "smoke" not in args else 64
    config.evals.latent_scale.num_examples = 1000 if "smoke" not in args else 64
    config.train.num_steps = 10_000 if "smoke" not in args else config.train.num_steps
    if "64" in args:
        config.model.channels = (64, 128, 128)
    return config
