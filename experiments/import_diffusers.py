"""Import a diffusers Stable Diffusion folder (SD 1.x, 2.x): its VAE as a jaxgen autoencoder run.

    python -m experiments.import_diffusers --hf_dir=/data/stable-diffusion-v1-5 --workdir=/tmp/sd
    python -m experiments.evaluate --workdir=/tmp/sd/vae        # reconstructions, latent scale

The folder is what StableDiffusionPipeline.save_pretrained writes (or a Hub snapshot):
model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/. Every component is read
and checked first: the U-Net and VAE configs and weights (models/sd_pretrained.py; safetensors
or their fp16 variants), the CLIP text encoder (models/clip_pretrained.py) and its tokenizer.
Then W/vae is written through jaxgen.pretrained.write_run: an "autoencoder" family run whose
config.model names Stable Diffusion's AutoencoderKL (name "sd_vae", diffusers' architecture,
scale_factor = the folder's scaling_factor), at the VAE's sample_size. A latent diffusion run
names it as its first stage (config.model.autoencoder=W/vae); the U-Net (name "sd_unet") is built
by that family from config.model as models/latent_unet.make_model does.

Bad folders (a missing component, an unsupported block type or option, a tensor missing or of
the wrong shape, .bin weights without torch) are one line on stderr naming the file and the
tensor, and exit status 2, before anything is written.
"""

import os

import jax
from absl import flags

from jaxgen import cli, data, pretrained
from jaxgen.config import ConfigDict, sibling_config
from jaxgen.models import clip_pretrained, sd_pretrained

flags.DEFINE_string("hf_dir", None, "A diffusers Stable Diffusion pipeline folder.")
flags.DEFINE_string("workdir", None, "The folder to write the runs into (W/vae).")
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


def main(argv):
    del argv
    hf_dir, workdir = flags.FLAGS.hf_dir, flags.FLAGS.workdir
    try:
        check_folder(hf_dir)
        vae = sd_pretrained.read_vae(hf_dir)
        unet = sd_pretrained.read_unet(hf_dir)
        sizes, _ = read_text_encoder(hf_dir)
        tokenizer = clip_pretrained.read_tokenizer(os.path.join(hf_dir, "tokenizer"))
    except pretrained.WeightError as error:
        cli.fail(error)
    if unet.model_config.cross_attention_dim != sizes["width"]:
        cli.fail(
            f"{hf_dir}/unet/config.json: cross_attention_dim is "
            f"{unet.model_config.cross_attention_dim}, the text encoder's width {sizes['width']}"
        )
    if tokenizer.vocab_size > sizes["vocab"]:
        cli.fail(f"{hf_dir}/tokenizer: {tokenizer.vocab_size} tokens, the text encoder has {sizes['vocab']}")  # fmt: skip
    config = vae_run_config(vae)
    size = vae.model_config.sample_size
    splits = {config.data.train_split: 0, config.data.eval_split: 0}  # declared, not read
    info = data.DatasetInfo((size, size, vae.model_config.out_channels), 0, splits, 0)
    vae_dir = os.path.join(workdir, "vae")
    pretrained.write_run(config, vae.params, vae_dir, info=info, origin=vae.origin)
    count = sum(x.size for x in jax.tree.leaves(vae.params))
    print(f"imported {vae.origin} ({count:,} params, scale factor {vae.scaling_factor}) into {vae_dir}")  # fmt: skip
    count = sum(x.size for x in jax.tree.leaves(unet.params))
    print(f"checked {unet.origin} ({count:,} params): config.model.name=sd_unet")


if __name__ == "__main__":
    cli.run(main)
