"""Import a diffusers Stable Diffusion folder (SD 1.x, 2.x) as a complete latent diffusion run.

    python -m experiments.import_diffusers --hf_dir=/data/stable-diffusion-v1-5 --workdir=/tmp/sd
    python -m experiments.sample --workdir=/tmp/sd --config.sample.prompt="an astronaut" \
        --config.sample.seed=1024                       # PNDM, 50 steps, guidance 7.5
    python -m experiments.evaluate --workdir=/tmp/sd/vae        # reconstructions, latent scale

The folder is what StableDiffusionPipeline.save_pretrained writes (or a Hub snapshot):
model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/. Every component is read
and checked first: the U-Net and VAE configs and weights (models/sd_pretrained.py; safetensors
or their fp16 variants), the CLIP text encoder (models/clip_pretrained.py), its tokenizer and
scheduler_config.json (sampling/schedulers.py). Then, through jaxgen.pretrained.write_run:
  W/vae           an "autoencoder" run of SD's AutoencoderKL (config.model.name "sd_vae",
                  scale_factor = the folder's scaling_factor);
  W/text_encoder  a "clip" run of the CLIPTextModel alone (clip_pretrained, vision None) with
                  the folder's tokenizer as W/text_encoder/tokenizer.json (77 tokens, its pad);
  W               the "latent_diffusion" run: config.model = the U-Net's config (name "sd_unet")
                  with autoencoder=W/vae and text_encoder=W/text_encoder (copied into its
                  state as any latent diffusion run copies its stages), diffusion.schedule
                  scaled_linear, parameterisation eps or v from prediction_type, the scheduler
                  config itself as config.diffusion.scheduler (the run is self-contained), and
                  StableDiffusionPipeline's sample defaults: guidance 7.5, 50 steps, the
                  folder's scheduler, height = width = the U-Net's sample_size * 8.
All three are built in one hidden sibling folder renamed to W at the end: an import that fails
leaves no W. Sampling such a run: sampling/stable_diffusion.py.

Bad folders (a missing component, an unsupported block type or option, a tensor missing or of
the wrong shape, .bin weights without torch, a scheduler jaxgen lacks) are one line on stderr
naming the file and the tensor or key, and exit status 2, before anything is written.
"""

import json
import os
import shutil
import tempfile

import jax
from absl import flags

from jaxgen import cli, data, pretrained
from jaxgen.config import ConfigDict, ConfigError, sibling_config
from jaxgen.models import clip_pretrained, sd_pretrained
from jaxgen.sampling import schedulers
from jaxgen.workdir import write_atomic, writing

# scheduler_config.json's prediction_type -> config.diffusion.parameterisation
PARAMETERISATIONS = {"epsilon": "eps", "v_prediction": "v"}

flags.DEFINE_string("hf_dir", None, "A diffusers Stable Diffusion pipeline folder.")
flags.DEFINE_string(
    "workdir", None, "The latent diffusion run to write (with W/vae, W/text_encoder)."
)
flags.mark_flags_as_required(["hf_dir", "workdir"])

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_folder(hf_dir: str) -> None:
    """WeightError naming the first thing a pipeline folder lacks."""
    index = os.path.join(hf_dir, "model_index.json")
    if not os.path.isfile(index):
        raise pretrained.WeightError(f"{index}: missing (not a diffusers pipeline folder?)")
    for component in COMPONENTS:
        if not os.path.isdir(os.path.join(hf_dir, component)):
            raise pretrained.WeightError(
                f"{os.path.join(hf_dir, component)}: missing (a Stable Diffusion pipeline has "
                f"{', '.join(COMPONENTS)})"
            )


def read_text_encoder(hf_dir: str) -> tuple[dict, dict]:
    """(sizes, params) of text_encoder/, checked tensor by tensor."""
    folder = os.path.join(hf_dir, "text_encoder")
    sizes = clip_pretrained.read_text_config(folder)
    weights, origin = pretrained.read_weights(folder, *clip_pretrained.WEIGHT_FILES)
    return sizes, clip_pretrained.text_params(weights, sizes, origin)


def vae_run_config(vae: sd_pretrained.Component) -> ConfigDict:
    """configs/autoencoder/emoji.py's recipe (RGB images) with SD's VAE, in float32."""
    config = sibling_config(os.path.join(CONFIGS, "autoencoder", "emoji.py"), "emoji.py")
    config.model = ConfigDict(
        vae.model_config.to_dict() | {"param_dtype": "float32", "scale_factor": vae.scaling_factor}
    )
    config.data.image_size = vae.model_config.sample_size
    return config


def text_encoder_config(sizes: dict) -> ConfigDict:
    """configs/clip/pretrained.py with SD's CLIPTextModel alone (no image tower)."""
    config = sibling_config(os.path.join(CONFIGS, "clip", "pretrained.py"), "pretrained.py")
    with config.unlocked():
        config.model = ConfigDict(
            clip_pretrained.text_model_config(sizes)
            | {"dtype": config.model.dtype, "param_dtype": config.model.param_dtype}
        )
    config.data.caption_len = sizes["positions"]
    config.evals = ConfigDict()  # no image tower: nothing a clip run evaluates
    return config


def run_config(unet, scheduler: dict, size: int, vae_dir: str, text_dir: str) -> ConfigDict:
    """configs/latent_diffusion/emoji.py's sections with SD's U-Net, its two stages, SD's
    training schedule and the folder's scheduler (config.diffusion.scheduler), sampled as
    StableDiffusionPipeline samples by default (guidance 7.5, 50 steps)."""
    config = sibling_config(os.path.join(CONFIGS, "latent_diffusion", "emoji.py"), "emoji.py")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in PARAMETERISATIONS:
        raise pretrained.WeightError(
            f"scheduler_config.json: prediction_type {prediction!r} is not one of "
            f"{sorted(PARAMETERISATIONS)}"
        )
    with config.unlocked():
        dtypes = {"dtype": config.model.dtype, "param_dtype": "float32"}
        config.model = ConfigDict(unet.model_config.to_dict() | dtypes)
        config.model.autoencoder = vae_dir
        config.model.text_encoder = text_dir
        config.diffusion.scheduler = ConfigDict(scheduler)  # the run is self-contained
        config.sample.height = size  # pixels: multiples of 8
        config.sample.width = size
        config.sample.latents = ""  # a .npy of diffusers' NCHW latents replaces the seed's
        config.sample.dtype = "float32"  # weights and compute: float32, bfloat16, float16
    config.data.image_size = size
    config.data.caption_len = 77
    config.data.tokenizer = os.path.join(text_dir, "tokenizer.json")
    config.diffusion.schedule = "scaled_linear"
    config.diffusion.num_timesteps = int(scheduler.get("num_train_timesteps", 1000))
    config.diffusion.parameterisation = PARAMETERISATIONS[prediction]
    config.loss.caption_dropout = 0.1  # SD's: the U-Net is also the unconditional model
    config.sample.prompt = "a photograph of an astronaut riding a horse"
    config.sample.negative_prompt = ""
    config.sample.guidance_scale = 7.5  # StableDiffusionPipeline's defaults
    config.sample.num_inference_steps = 50
    config.sample.num_images_per_prompt = 1
    config.sample.sampler = ""  # "": the folder's scheduler; or one of schedulers.NAMES
    config.sample.eta = 0.0
    config.evals = ConfigDict()
    return config


def write_tree(hf_dir, workdir, vae, unet, text_sizes, text_params, tokenizer, scheduler):
    """W/vae, W/text_encoder and W (the latent diffusion run naming them), all built in one
    hidden sibling folder renamed to W at the end: a failed import leaves no W."""
    workdir = os.path.abspath(workdir)
    pretrained.check_new_workdir(workdir)
    parent, name = os.path.split(workdir)
    os.makedirs(parent, exist_ok=True)
    tree = tempfile.mkdtemp(prefix=f".{name}.tree-", dir=parent)
    try:
        vae_dir, text_dir = os.path.join(tree, "vae"), os.path.join(tree, "text_encoder")
        config = vae_run_config(vae)
        size = vae.model_config.sample_size
        splits = {config.data.train_split: 0, config.data.eval_split: 0}  # declared, not read
        info = data.DatasetInfo((size, size, vae.model_config.out_channels), 0, splits, 0)
        pretrained.write_run(config, vae.params, vae_dir, info=info, origin=vae.origin)

        config = text_encoder_config(text_sizes)
        info = data.DatasetInfo((size, size, 3), 0, splits, tokenizer.vocab_size)
        pretrained.write_run(
            config,
            {"text_model": text_params},  # the Clip's text tower
            text_dir,
            info=info,
            tokenizers={"tokenizer": tokenizer},
            origin=f"{hf_dir}/text_encoder",
        )
        size = unet.model_config.sample_size * 8  # SD's VAE: 8 pixels a latent
        config = run_config(unet, scheduler, size, vae_dir, text_dir)
        info = data.DatasetInfo((size, size, 3), 0, splits, tokenizer.vocab_size)
        run_dir = os.path.join(tree, "run")
        pretrained.write_run(config, unet.params, run_dir, info=info, origin=unet.origin)
        # The stages live inside the run: its config names them where they will be.
        rename_paths(os.path.join(run_dir, "config.json"), tree, workdir)
        for stage in ("vae", "text_encoder"):
            os.rename(os.path.join(tree, stage), os.path.join(run_dir, stage))
            rename_paths(os.path.join(run_dir, stage, "config.json"), os.path.join(tree, stage), os.path.join(workdir, stage))  # fmt: skip
        with writing(workdir):
            os.rename(run_dir, workdir)  # replaces W only if it is still an empty folder
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def rename_paths(path: str, old: str, new: str) -> None:
    """Rewrites the strings of a config.json that name `old` or a path under it to `new`."""

    def fix(value):
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
            return new + value[len(old) :]
        return value

    with open(path, encoding="utf-8") as f:
        config = fix(json.load(f))
    write_atomic(path, json.dumps(config, indent=2))


def main(argv):
    del argv
    hf_dir, workdir = flags.FLAGS.hf_dir, flags.FLAGS.workdir
    try:
        check_folder(hf_dir)
        vae = sd_pretrained.read_vae(hf_dir)
        unet = sd_pretrained.read_unet(hf_dir)
        sizes, text_params = read_text_encoder(hf_dir)
        tokenizer = clip_pretrained.read_tokenizer(os.path.join(hf_dir, "tokenizer"))
        scheduler = schedulers.read_config(os.path.join(hf_dir, "scheduler"))
        schedulers.make(None, scheduler, 50, stable_diffusion_pipeline=True)  # supported?
    except (pretrained.WeightError, ConfigError) as error:
        cli.fail(error)
    if unet.model_config.cross_attention_dim != sizes["width"]:
        cli.fail(
            f"{hf_dir}/unet/config.json: cross_attention_dim is "
            f"{unet.model_config.cross_attention_dim}, the text encoder's width {sizes['width']}"
        )
    if tokenizer.vocab_size > sizes["vocab"]:
        cli.fail(f"{hf_dir}/tokenizer: {tokenizer.vocab_size} tokens, the text encoder has {sizes['vocab']}")  # fmt: skip
    try:
        write_tree(hf_dir, workdir, vae, unet, sizes, text_params, tokenizer, scheduler)
    except pretrained.WeightError as error:
        cli.fail(error)
    for part, origin, params in (
        ("vae", vae.origin, vae.params),
        ("text_encoder", f"{hf_dir}/text_encoder", text_params),
        ("", unet.origin, unet.params),
    ):
        count = sum(x.size for x in jax.tree.leaves(params))
        print(
            f"imported {origin} ({count:,} params) into {os.path.join(workdir, part) if part else workdir}"
        )
    print(f"scale factor {vae.scaling_factor}; sample with: python -m experiments.sample --workdir={workdir}")  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
