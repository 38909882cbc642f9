"""Text-to-image latent diffusion on Noto Color Emoji captioned by their Unicode names (32x32 RGB).

    python -m experiments.train --config=configs/autoencoder/emoji.py --workdir=/tmp/ae_emoji
    python -m experiments.train --config=configs/clip/emoji.py --workdir=/tmp/clip_emoji
    python -m experiments.train --config=configs/latent_diffusion/emoji.py --workdir=/tmp/ldm_emoji \
        --config.model.autoencoder=/tmp/ae_emoji --config.model.text_encoder=/tmp/clip_emoji
    python -m experiments.sample --workdir=/tmp/ldm_emoji --config.sample.guidance_scale=5 \
        --config.sample.num_images_per_prompt=4 --config.sample.seed=42

The recipe of configs/latent_diffusion/mnist.py on ~1,375 emoji (8x8x4 latents of the emoji
autoencoder; shift/scale augmented, as the AE and CLIP runs are): cross-attention at both latent
sizes. The sample grid has a row for each of ten prompts: eight names the model saw ("red apple",
"cat face", "automobile", ...) and two combinations it never saw ("a red cat", "a blue apple").
Evaluation: clip_score_g3 (the run's own CLIP on images generated for the eval split's held-out
captions). No class accuracy or domain-FID: emoji have no classes and no domain network.
Arguments (comma-separated): "smoke" shrinks everything to run on CPU in seconds; "64" renders
at 64x64 (16x16 latents; GPU) with its 64x64 AE and CLIP runs. Measured shortened only (AE 1,200,
CLIP 1,000, this 2,500 steps, 23 min on an idle 2-core CPU): CLIP score 31.1 at guidance 3; at
guidance 5 colours follow the prompt and shapes are blobs (README, "Measured on emoji").
"""

from jaxgen.config import ConfigDict, sibling_config

PROMPTS = (
    "red apple", "cat face", "automobile", "grinning face", "dog face", "rocket", "snowman",
    "banana", "a red cat", "a blue apple",
)  # fmt: skip


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "64"}
    if unknown:
        raise ValueError(
            f"configs/latent_diffusion/emoji.py: unknown argument(s) {sorted(unknown)}"
        )
    config = sibling_config(__file__, "mnist.py", ",".join(sorted(args & {"smoke"})))
    config.data.name = "emoji"
    config.data.image_size = 64 if "64" in args else 32
    config.data.augment = "shift_scale"  # ~1,400 images only
    config.data.caption_len = 96  # configs/clip/emoji.py's
    suffix = "_64" if "64" in args else ""
    if "smoke" not in args:
        config.model.autoencoder = f"/tmp/ae_emoji{suffix}"
        config.model.text_encoder = f"/tmp/clip_emoji{suffix}"
        config.model.channel_multipliers = (1, 2, 2) if "64" in args else (1, 2)
        latent = config.data.image_size // 4  # the autoencoder's 4x down
        config.model.attention_resolutions = (latent // 2, latent // 4) if "64" in args else (8, 4)
        config.train.num_steps = 10_000
        config.sample.prompt = "|".join(PROMPTS)
        config.sample.num_images_per_prompt = 8
    config.evals = ConfigDict({"clip_score_g3": config.evals.clip_score_g3.to_dict()})
    if "smoke" not in args:
        config.evals.clip_score_g3.num_examples = 0  # all 1,375 held-out captions
        config.evals.clip_score_g3.batch_size = 125
    return config
