"""Seconds per image of Stable Diffusion sampling: SD 1.5's architecture, random weights.

    python -m benchmarks.sd_sample --size=256 --steps=10            # CPU: 256 px, 10 PNDM steps
    python -m benchmarks.sd_sample --size=512 --steps=50            # the pipeline's default call
    python -m benchmarks.sd_sample --size=512 --batch=8 --dtype=bfloat16   # GPU
    python -m benchmarks.sd_sample --hf_dir=tests/fixtures/sd_tiny_v1 --size=64 --steps=2  # smoke

Builds the U-Net, VAE and CLIP text model of runwayml/stable-diffusion-v1-5's config.json files
(or of --hf_dir's, sizes only: the weights are always random, drawn by jax.random) and times
sampling/stable_diffusion.text_to_image, the function experiments.sample runs on an imported run:
text encoding, `steps` steps of the folder's PNDM (51 U-Net calls for 50) with classifier-free
guidance (the U-Net on a batch of 2 x batch), and the VAE decode, under one jit. Prints one JSON
line: compile seconds, then the median of --repeats timed calls (seconds per call and per image).
diffusers' side, same sizes (its command in benchmarks/README.md) is timed by
benchmarks/README.md's script in the side venv; compare on the same idle machine only.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jaxgen.models import autoencoder as autoencoders
from jaxgen.models import clip_pretrained, latent_unet, sd_pretrained
from jaxgen.sampling import stable_diffusion

flags.DEFINE_integer("size", 512, "Image height and width in pixels (a multiple of 8).")
flags.DEFINE_integer("steps", 50, "num_inference_steps.")
flags.DEFINE_integer("batch", 1, "Images per call (one prompt, num_images_per_prompt).")
flags.DEFINE_enum("dtype", "float32", list(stable_diffusion.DTYPES), "Weights and compute.")
flags.DEFINE_integer("repeats", 3, "Timed calls after the compiling one.")
flags.DEFINE_string("hf_dir", "", "Take the sizes of this diffusers folder instead of SD 1.5's.")

# runwayml/stable-diffusion-v1-5: the keys of its config.json files that set sizes.
SD15_UNET = dict(
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
    sample_size=64,
)
SD15_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, sample_size=512)
SD15_TEXT = dict(vocab=49408, positions=77, width=768, layers=12, heads=12, intermediate=3072,
                 activation="quick_gelu", epsilon=1e-5, eos_token_id=2)  # fmt: skip
SD15_SCHEDULER = dict(
    _class_name="PNDMScheduler",
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)


def components(hf_dir: str):
    """(unet config.model, vae config.model, scale factor, text sizes, scheduler config)."""
    if hf_dir:
        unet = sd_pretrained.read_unet(hf_dir).model_config
        vae = sd_pretrained.read_vae(hf_dir)
        from jaxgen.sampling import schedulers

        text = clip_pretrained.read_text_config(f"{hf_dir}/text_encoder")
        scheduler = schedulers.read_config(f"{hf_dir}/scheduler")
        return unet, vae.model_config, vae.scaling_factor, text, scheduler
    unet = sd_pretrained.unet_config(SD15_UNET, "SD 1.5 unet")
    vae, scale = sd_pretrained.vae_config(SD15_VAE, "SD 1.5 vae")
    return unet, vae, scale, SD15_TEXT, SD15_SCHEDULER


def main(argv):
    del argv
    f = flags.FLAGS
    unet_config, vae_config, scale, text_sizes, scheduler = components(f.hf_dir)
    latent = f.size // 8
    unet = latent_unet.make_model(unet_config, 4)
    ae = autoencoders.make_model(vae_config, (f.size, f.size, 3))
    clip_config = clip_pretrained.text_model_config(text_sizes)
    clip = clip_pretrained.make_model(
        _Section(clip_config), text_sizes["vocab"], text_sizes["positions"]
    )
    rng = jax.random.PRNGKey(0)
    ids = jnp.zeros((1, text_sizes["positions"]), jnp.int32)
    context = jnp.zeros((1, text_sizes["positions"], text_sizes["width"]))
    z, t = jnp.zeros((1, latent, latent, 4)), jnp.zeros((1,), jnp.int32)
    params = {
        "unet": jax.jit(unet.init)(rng, z, t, context)["params"],
        "frozen": {
            "autoencoder": jax.jit(ae.init)(rng, jnp.zeros((1, f.size, f.size, 3)), z)["params"],
            "text_encoder": jax.jit(clip.init)(rng, None, ids)["params"],
            "scale_factor": jnp.float32(scale),
        },
    }
    settings = stable_diffusion.Settings(7.5, "", f.steps, 0.0, f.batch, f.size, f.size, f.dtype)
    generate = jax.jit(
        lambda p, ids, neg, rng: stable_diffusion.text_to_image(
            p, ids, neg, rng, settings=settings, scheduler_config=scheduler,
            unet=unet, autoencoder=ae, clip=clip,
        )
    )  # fmt: skip
    start = time.perf_counter()
    jax.block_until_ready(generate(params, ids, ids, rng))
    compile_s = time.perf_counter() - start
    times = []
    for k in range(f.repeats):
        start = time.perf_counter()
        jax.block_until_ready(generate(params, ids, ids, jax.random.PRNGKey(k + 1)))
        times.append(time.perf_counter() - start)
    per_call = float(np.median(times))
    count = sum(x.size for x in jax.tree.leaves(params))
    print(json.dumps({
        "size": f.size, "steps": f.steps, "batch": f.batch, "dtype": f.dtype,
        "device": jax.devices()[0].device_kind, "params": count,
        "first_call_s": round(compile_s, 2), "s_per_call": round(per_call, 3),
        "s_per_image": round(per_call / f.batch, 3),
    }))  # fmt: skip


class _Section(dict):
    """A dict read as config.model is (attribute access) by clip_pretrained.make_model."""

    __getattr__ = dict.__getitem__


if __name__ == "__main__":
    app.run(main)
