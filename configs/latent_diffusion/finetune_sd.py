"""Fine-tune an imported Stable Diffusion's U-Net on a captions folder; VAE and text encoder frozen.

    python -m experiments.import_diffusers --hf_dir=/data/stable-diffusion-v1-5 --workdir=/tmp/sd
    python -m experiments.train --config=configs/latent_diffusion/finetune_sd.py:/tmp/sd \
        --workdir=/tmp/sd_pokemon --config.data.folder=/data/pokemon_captions
    python -m experiments.sample --workdir=/tmp/sd_pokemon --config.sample.prompt="a green dragon"

The argument is the imported run W (experiments/import_diffusers.py; ",smoke" appended shrinks
training to two steps on CPU, which tests do on the tiny fixture folder; arguments: "smoke"). The config is W's own
(the SD U-Net, its frozen stages W/vae and W/text_encoder, the scaled_linear schedule, eps or v,
the folder's scheduler and sampling defaults, CLIP's tokenizer W/text_encoder/tokenizer.json),
with `init_from` = W: the U-Net starts from the imported weights (the optimizer and step afresh),
and, as in every latent diffusion run, only the U-Net trains (the VAE encodes images to latents
times its scaling_factor, the text encoder's last_hidden_state conditions, both frozen).
data: a captions_folder (captions.jsonl of {"file", "caption"} lines beside the images), resized
to the U-Net's sample_size x 8. Captions are dropped (the empty prompt) 10% of the time, so
guidance keeps working. Expected: the loss stays near its first value (the model is already
trained) while samples drift toward the folder's style within a few thousand steps at lr 1e-5.
"""

import os

from jaxgen.config import ConfigDict, ConfigError, load_workdir_config, sibling_config


def get_config(arg: str = "") -> ConfigDict:
    args = [a for a in arg.split(",") if a]
    smoke = "smoke" in args
    paths = [a for a in args if a != "smoke"]
    if len(paths) > 1:
        raise ValueError(f"configs/latent_diffusion/finetune_sd.py: one run, got {paths}")
    workdir = paths[0] if paths else "/tmp/sd"
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        # No run there (yet): emoji.py's recipe with this schedule, so that the file loads and
        # its smoke variant validates alone (as the config checks run it); without smoke, the
        # run's checks then name config.init_from, the missing import.
        config = sibling_config(__file__, "emoji.py", "smoke" if smoke else "")
        config.init_from = "" if smoke else os.path.abspath(workdir)
        return finetuning(config, smoke, data=False)
    config = load_workdir_config(workdir)
    if "scheduler" not in config.diffusion:
        raise ConfigError(
            f"configs/latent_diffusion/finetune_sd.py: {workdir} is not an imported Stable "
            "Diffusion (experiments/import_diffusers.py)"
        )
    config.init_from = os.path.abspath(workdir)  # the imported U-Net
    return finetuning(config, smoke)


def finetuning(config: ConfigDict, smoke: bool, data: bool = True) -> ConfigDict:
    """The fine-tuning data, optimizer and schedule on top of a latent diffusion config."""
    if data:
        config.data.name = "captions_folder"
        config.data.folder = ""  # required: captions.jsonl and its images
        config.data.val_fraction = 0.1
        config.data.augment = ""  # SD fine-tunes on the images as they are (resized)

    config.optim.lr = 1e-5  # a pretrained U-Net: a small step (diffusers' examples: 1e-5)
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 100
    config.optim.ema_decay = 0.0

    config.train.batch_size = 8
    config.train.num_steps = 5_000
    config.train.eval_every = config.train.ckpt_every = 500
    config.train.sample_every = 1_000
    config.sample.num_samples = 8  # the loop's fixed eval batch (the sample uses the prompts)
    config.evals = ConfigDict()
    if smoke:
        config.train.batch_size = 4  # a multiple of the test suite's 4 fake devices
        config.train.num_steps = 2
        config.train.eval_every = config.train.ckpt_every = config.train.sample_every = 2
        config.train.log_every = 1
        config.sample.num_samples = 4
        config.sample.num_inference_steps = 2
    return config
