"""experiments/import_diffusers on the tiny diffusers folders of tests/fixtures (make_sd_fixture.py).

The VAE run it writes is loaded as any autoencoder run is (rundir.load_params, the family's
make_model through config.model.name "sd_vae") and must decode diffusers' golden latents as
diffusers does; the U-Net built through models/latent_unet.make_model from config.model.name
"sd_unet" must give diffusers' ε. Bad folders: one stderr line naming the file, exit 2, nothing
written.
"""

import importlib.util
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import data, rundir
from jaxgen.config import ConfigDict, load_workdir_config
from jaxgen.family import get_family
from jaxgen.models import autoencoder, latent_unet, sd_pretrained
from jaxgen.sampling import latent_diffusion as latent_sampling
from tests.e2e import run_script, stderr_lines
from tests.helpers import ROOT

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TOLERANCE = 1e-5  # float32 against diffusers' float32


def test_vae_run_decodes_as_diffusers(tmp_path):
    workdir = tmp_path / "sd"
    result = run_script(
        "import_diffusers",
        f"--hf_dir={FIXTURES / 'sd_tiny_v2'}",
        f"--workdir={workdir}",
    )
    assert f"into {workdir}/vae" in result.stdout
    config = load_workdir_config(str(workdir / "vae"))
    assert config.family == "autoencoder" and config.model.name == "sd_vae"
    assert config.model.scale_factor == 0.18215 and config.data.image_size == 64
    params = rundir.load_params(str(workdir / "vae"), config)
    model = autoencoder.make_model(config.model, (64, 64, 3))
    golden = np.load(FIXTURES / "sd_tiny_v2.npz")
    latents = jnp.asarray(golden["vae_latents"]).transpose(0, 2, 3, 1)
    decoded = model.apply({"params": params}, latents, method=model.decode)
    np.testing.assert_allclose(
        np.asarray(decoded).transpose(0, 3, 1, 2), golden["vae_decoded"], rtol=0, atol=TOLERANCE
    )
    assert autoencoder.latent_shape(config.model, (64, 64, 3)) == (8, 8, 4)


def test_latent_unet_builds_the_sd_unet():
    golden = np.load(FIXTURES / "sd_tiny_v1.npz")
    unet = sd_pretrained.read_unet(str(FIXTURES / "sd_tiny_v1"))
    latent_unet.check_config(unet.model_config)
    model = latent_unet.make_model(unet.model_config, 4)
    eps = model.apply(
        {"params": unet.params},
        jnp.asarray(golden["unet_latents"]).transpose(0, 2, 3, 1),
        jnp.asarray(golden["unet_t"]),
        jnp.asarray(golden["unet_context"]),
        None,  # the family's dropout_rngs argument
    )
    np.testing.assert_allclose(
        np.asarray(eps).transpose(0, 3, 1, 2), golden["unet_eps"], rtol=0, atol=TOLERANCE
    )


def test_bad_folder_is_one_line(tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(FIXTURES / "sd_tiny_v1", folder)
    shutil.rmtree(folder / "text_encoder")
    workdir = tmp_path / "out"
    result = run_script(
        "import_diffusers", f"--hf_dir={folder}", f"--workdir={workdir}", check=False
    )
    assert result.returncode == 2
    assert stderr_lines(result) == [
        f"error: {folder}/text_encoder: missing (a Stable Diffusion pipeline has unet, vae, "
        "text_encoder, tokenizer, scheduler)"
    ]
    assert not os.path.exists(workdir)


def test_bad_tensor_is_one_line(tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(FIXTURES / "sd_tiny_v1", folder)
    config = folder / "unet" / "config.json"
    config.write_text(config.read_text().replace('"cross_attention_dim": 8', '"cross_attention_dim": 6'))  # fmt: skip
    result = run_script(
        "import_diffusers",
        f"--hf_dir={folder}",
        f"--workdir={tmp_path / 'out'}",
        check=False,
    )
    assert result.returncode == 2
    (line,) = stderr_lines(result)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert line == (
        f"error: {weights}: down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight has "
        "shape (4, 8), the model needs (4, 6)"
    )


def config_file(path: str, arg: str):
    spec = importlib.util.spec_from_file_location("config", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.slow  # compiles a latent diffusion train step (about 1 min on an idle CPU)
def test_latent_diffusion_family_runs_the_sd_modules():
    """The latent diffusion family with config.model.name sd_unet and an sd_vae stage: a train
    step (SD's VAE encodes, SD's U-Net denoises) and the family's decode of diffusers' latents."""
    unet = sd_pretrained.read_unet(str(FIXTURES / "sd_tiny_v1"))
    vae = sd_pretrained.read_vae(str(FIXTURES / "sd_tiny_v1"))
    config = config_file("configs/latent_diffusion/mnist.py", "smoke")
    clip = config_file("configs/clip/mnist.py", "smoke")  # jaxgen's CLIP, at the U-Net's width
    clip.model.update(width=unet.model_config.cross_attention_dim, heads=2)
    shape = (32, 32, 3)
    stage = {"data": "emoji", "image_shape": list(shape)}
    with config.unlocked():
        config.model = ConfigDict(unet.model_config.to_dict() | {"param_dtype": "float32"})
        config.model.stages = ConfigDict(
            {
                "autoencoder": stage
                | {"workdir": "/ae", "scale_factor": vae.scaling_factor}
                | {"model": vae.model_config.to_dict() | {"param_dtype": "float32"}},
                "text_encoder": stage
                | {"workdir": "/clip", "caption_len": config.data.caption_len, "tokenizer": ""}
                | {"model": clip.model.to_dict()},
            }
        )
        config.diffusion.schedule = "scaled_linear"
    info = data.DatasetInfo(shape, 10, {"train": 0, "test": 0}, 40)
    steps = get_family("latent_diffusion").make_steps(config, info, None)
    state = jax.jit(steps.init)(jax.random.PRNGKey(0), None)
    frozen = dict(state.frozen, autoencoder=vae.params)
    state = state.replace(params=unet.params, frozen=frozen)
    captions = jnp.ones((2, config.data.caption_len), jnp.int32)
    batch = {"image": jnp.zeros((2, *shape)), "caption": captions}
    _, metrics = jax.jit(steps.train_step)(state, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0

    golden = np.load(FIXTURES / "sd_tiny_v1.npz")
    latents = jnp.asarray(golden["vae_latents"]).transpose(0, 2, 3, 1) * vae.scaling_factor
    ae = autoencoder.make_model(config.model.stages.autoencoder.model, shape)
    images = latent_sampling.decode_latents(
        vae.params, latents, autoencoder=ae, scale_factor=vae.scaling_factor
    )
    expected = np.clip(golden["vae_decoded"], -1, 1)
    np.testing.assert_allclose(
        np.asarray(images).transpose(0, 3, 1, 2), expected, rtol=0, atol=TOLERANCE
    )
