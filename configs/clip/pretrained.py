"""A published CLIP (OpenAI's ViT-B/32 by default) as a clip family run, on emoji captions.

    python -m experiments.import_clip --hf_dir=/data/clip-vit-base-patch32 --workdir=/tmp/clip_b32
    python -m experiments.clip_score --clip=/tmp/clip_b32 --images=/data/generated
    python -m experiments.evaluate --workdir=/tmp/clip_b32

experiments/import_clip.py starts from this config and writes the folder's sizes into
config.model (name "clip_pretrained": models/clip_pretrained.py, transformers' CLIPModel),
its preprocessor_config.json into config.model.processor and its tokenizer as W/tokenizer.json
(config.data.tokenizer): nothing here needs editing for B/16, L/14 or L/14-336. The data
section is what `evaluate` and fine-tuning use: the Noto emoji rendered at the model's input
size, captions padded to CLIP's 77 tokens. Arguments: "smoke" (tiny towers on 32x32 emoji with
the char tokenizer: the config validates and trains on CPU in seconds; tests rely on it).
"""

from jaxgen.config import ConfigDict, sibling_config, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke"}
    if unknown:
        raise ValueError(f"configs/clip/pretrained.py: unknown argument(s) {sorted(unknown)}")
    config = sibling_config(__file__, "emoji.py", "smoke" if "smoke" in args else "")
    config.data.image_size = 224  # the ViT's input; import_clip sets the model's own
    config.data.caption_len = 77  # CLIP's context: the tokenizer pads and cuts to it
    config.data.tokenizer = ""  # import_clip writes W/tokenizer.json (CLIP's BPE) here
    config.data.augment = ""  # evaluation as published; fine-tuning may set shift_scale

    text = dict(vocab_size=49408, positions=77, width=512, layers=12, heads=8, intermediate=2048)
    vision = dict(image_size=224, patch_size=32, width=768, layers=12, heads=12, intermediate=3072)
    config.model = ConfigDict(
        {
            "name": "clip_pretrained",
            "text": text | {"activation": "quick_gelu", "epsilon": 1e-5, "eos_token_id": 2},
            "vision": vision | {"activation": "quick_gelu", "epsilon": 1e-5},
            "projection_dim": 512,
            "processor": {  # CLIPImageProcessor's, as preprocessor_config.json gives it
                "size": 224,
                "crop": [224, 224],
                "resample": 3,
                "do_resize": True,
                "do_center_crop": True,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            },  # fmt: skip
            "dtype": config.model.dtype,
            "param_dtype": config.model.param_dtype,
        }
    )
    config.optim.lr = 1e-5  # fine-tuning a pretrained CLIP: a small step
    config.optim.warmup_steps = 100
    if "smoke" in args:
        config.data.image_size = 32
        config.data.tokenizer = "char"
        tiny = dict(width=16, layers=1, heads=2, intermediate=32)
        smoke(
            config,
            model=dict(
                text=dict(config.model.text.to_dict(), **tiny),
                vision=dict(config.model.vision.to_dict(), image_size=32, patch_size=8, **tiny),
                projection_dim=8,
            ),
        )
    return config
