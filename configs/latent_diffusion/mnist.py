"""Text-to-image latent diffusion on captioned MNIST (Stable Diffusion's recipe, CPU-sized).

    python -m experiments.train --config=configs/autoencoder/mnist.py --workdir=/tmp/ae_mnist
    python -m experiments.train --config=configs/clip/mnist.py --workdir=/tmp/clip_mnist
    python -m experiments.build_domain_network --dataset=mnist   # for the accuracy/FID entries
    python -m experiments.train --config=configs/latent_diffusion/mnist.py --workdir=/tmp/ldm_mnist \
        --config.model.autoencoder=/tmp/ae_mnist --config.model.text_encoder=/tmp/clip_mnist
    python -m experiments.sample --workdir=/tmp/ldm_mnist --config.sample.guidance_scale=5 \
        --config.sample.prompt="a handwritten digit 3|the digit seven"

A U-Net with cross-attention (models/latent_unet.py) denoises the frozen autoencoder's 7x7x4
latents (scaled by its logged scale factor) conditioned on the frozen CLIP text tower's hidden
states; 10% of captions are dropped to the empty prompt (classifier-free guidance). guidance_scale
is diffusers': 0 unconditional, 1 conditional, > 1 guided. The sample grid has a row per prompt of
config.sample.prompt ("|"-separated; default the ten "a handwritten digit 0" ... "9").
Evaluations at the end of training (eval_every = num_steps): accuracy_g{0,1,3,5}_{seen,unseen}, the
fraction of 500 generated digits that the MNIST domain classifier reads as the prompted digit
(captions from the training templates, or the held-out ones), fid_g3 (domain-FID, sharing
accuracy_g3_seen's samples) and clip_score_g3 (the run's own CLIP on images generated for the
eval split's held-out captions). Re-run them any time with
    python -m experiments.evaluate --workdir=/tmp/ldm_mnist
Arguments (comma-separated): "smoke" shrinks everything to run on CPU in seconds (no domain
network needed); "fashion" uses captioned Fashion-MNIST (with its AE and CLIP runs).
Measured (the AE and CLIP runs at their defaults, this config as it is; idle 2-core CPU): 18.7 min
wall, about 13 of them training at ~3.8 steps/s and 6 for the evaluations; train loss 0.042 at
step 3000. Class accuracy of 500 digits (seen / held-out templates): g0 10.8 / 10.8%, g1 67.2 /
32.2%, g3 96.8 / 44.0%, g5 98.8 / 44.8%; domain-FID (g3) 23.6; CLIP score (g3, held-out
captions) 45.7 (CLIP's score of real test images against such captions: 59.6).
"""

from jaxgen import data
from jaxgen.config import ConfigDict, base_config, smoke


def accuracy_evals(dataset: str, num_samples: int, batch_size: int) -> dict:
    """class_accuracy at guidance 0, 1, 3, 5 with seen and held-out templates, and domain-FID."""
    common = {"network": "domain", "dataset": dataset, "num_samples": num_samples}
    common |= {"batch_size": batch_size}
    evals = {}
    for scale in (0, 1, 3, 5):
        for name, captions in (("seen", "seen"), ("unseen", "heldout")):
            kw = {"guidance_scale": float(scale), "captions": captions}
            evals[f"accuracy_g{scale}_{name}"] = {"type": "class_accuracy", **common, "generate_kw": kw}  # fmt: skip
    fid_kw = {"guidance_scale": 3.0, "captions": "seen"}
    evals["fid_g3"] = {"type": "fid", **common, "generate_kw": fid_kw, "split": "train"}
    return evals


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke", "fashion"}
    if unknown:
        raise ValueError(
            f"configs/latent_diffusion/mnist.py: unknown argument(s) {sorted(unknown)}"
        )
    config = base_config()
    config.family = "latent_diffusion"
    config.data.update(data.kind_fields("captions"))
    fashion = "fashion" in args
    config.data.name = "captioned_fashion_mnist" if fashion else "captioned_mnist"
    config.data.caption_len = 48  # configs/clip/mnist.py's: the text tower's positions
    # "char": the same ids as the CLIP run's saved tokenizer (checked before compiling).

    config.model.name = "latent_unet"
    # The earlier stages' workdirs (the AE's and CLIP's launch commands above).
    config.model.autoencoder = "/tmp/ae_fashion" if fashion else "/tmp/ae_mnist"
    config.model.text_encoder = "/tmp/clip_fashion" if fashion else "/tmp/clip_mnist"
    config.model.channels = 32  # ~1.1M U-Net params: CPU-sized
    config.model.channel_multipliers = (1, 2)  # 7x7 -> 4x4 latents
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (7, 4)  # cross-attention at both latent sizes
    config.model.heads = 4
    config.model.dropout = 0.0
    config.model.groups = 8

    config.diffusion = ConfigDict(
        dict(schedule="linear", num_timesteps=1000, parameterisation="eps")  # SD's: ε, T = 1000
    )
    config.loss.name = "mse"
    config.loss.kw = ConfigDict({"weighting": "none"})  # L_simple
    config.loss.caption_dropout = 0.1  # SD / Ho & Salimans: 10% to the empty prompt

    config.optim.name = "adamw"
    config.optim.lr = 1e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 200
    config.optim.min_lr_ratio = 0.05
    config.optim.ema_decay = 0.999  # sampling and evaluation use the EMA

    config.train.num_steps = 3_000
    config.train.batch_size = 64
    config.train.log_every = 100
    config.train.ckpt_every = config.train.sample_every = 1_000
    config.train.eval_every = config.train.num_steps  # the sampled evaluations are slow on CPU

    words = tuple("0123456789") if not fashion else ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")  # fmt: skip
    prompt = "a handwritten digit {}" if not fashion else "a photo of {}"
    config.sample.prompt = "|".join(prompt.format(w) for w in words)  # a row per prompt
    config.sample.negative_prompt = ""  # "" = the empty prompt (diffusers' default)
    config.sample.guidance_scale = 3.0  # diffusers' convention: 0 uncond, 1 cond, > 1 guided
    config.sample.num_inference_steps = 50
    config.sample.num_images_per_prompt = 8
    config.sample.sampler = "ddim"
    config.sample.eta = 0.0  # deterministic DDIM: the same seed, the same images
    config.sample.num_samples = 16  # the fixed eval batch the loop hands the sampler (unused)

    config.evals = ConfigDict(
        {
            "clip_score_g3": {
                "type": "clip_score", "guidance_scale": 3.0, "batch_size": 250, "num_examples": 500,
            },
            **accuracy_evals("fashion_mnist" if fashion else "mnist", 500, 250),
        }
    )  # fmt: skip

    if "smoke" in args:
        config.model.autoencoder, config.model.text_encoder = "/tmp/ae_smoke", "/tmp/clip_smoke"
        smoke(
            config,
            model=dict(channels=16, heads=2, groups=4, attention_resolutions=(4,)),
            diffusion=dict(num_timesteps=100),
            sample=dict(
                num_inference_steps=4, num_images_per_prompt=2, prompt="a handwritten digit one|7"
            ),
        )
        config.evals = ConfigDict(
            {
                "clip_score_g3": {
                    "type": "clip_score",
                    "guidance_scale": 3.0,
                    "batch_size": 8,
                    "num_examples": 8,
                    "num_inference_steps": 2,
                }
            }  # fmt: skip
        )
    return config
