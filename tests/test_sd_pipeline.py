"""An imported Stable Diffusion gives diffusers' StableDiffusionPipeline images (≤ 2/255).

tests/fixtures/make_sd_fixture.py saved, for the tiny v1 and v2 folders, the pipeline's images
(uint8, as its PIL output) for fixed latents `pipe_latents`, the prompt PROMPT and guidance 7.5:
v1 with its own PNDM at 50 steps (the seed's call shape: 51 U-Net calls) and with DDIM, Euler
and DPM-Solver++(2M) swapped in at 10 steps; v2 (v_prediction) with its DDIM and with Euler.
Here experiments.import_diffusers writes the run and experiments.sample samples it with
--config.sample.latents=<those latents as .npy>: the single image it writes must be diffusers'.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxgen import runs, text_to_image
from jaxgen.config import ConfigError, load_workdir_config
from jaxgen.sampling import stable_diffusion
from tests.e2e import run_script, stderr_lines

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
PROMPT = "a red apple on a table"  # make_sd_fixture.PROMPT
TOLERANCE = 2  # of 255


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """{"v1"/"v2": (workdir, latents .npy, golden npz)} imported once for the module."""
    root = tmp_path_factory.mktemp("sd")
    out = {}
    for version in ("v1", "v2"):
        workdir = root / version
        run_script(
            "import_diffusers",
            f"--hf_dir={FIXTURES / f'sd_tiny_{version}'}",
            f"--workdir={workdir}",
        )
        golden = np.load(FIXTURES / f"sd_tiny_{version}.npz")
        latents = root / f"{version}_latents.npy"
        np.save(latents, golden["pipe_latents"])
        out[version] = (workdir, latents, golden)
    return out


def sample(workdir, *args, check=True):
    return run_script(
        "sample",
        f"--workdir={workdir}",
        f"--config.sample.prompt={PROMPT}",
        *args,
        check=check,
    )


def check_image(result, golden_image):
    grid = pathlib.Path(result.stdout.split()[-1])
    assert grid.suffix == ".png" and grid.exists()
    single = np.asarray(Image.open(grid.with_suffix("") / "0_0.png").convert("RGB"))
    (want,) = golden_image
    assert single.shape == want.shape == (64, 64, 3)
    diff = np.abs(single.astype(int) - want.astype(int))
    assert diff.max() <= TOLERANCE, (diff.max(), diff.mean())
    assert want.std() > 10  # not a flat image: the comparison can fail
    return grid


def test_imported_run_is_complete(imported):
    workdir, _, _ = imported["v1"]
    config = json.loads((workdir / "config.json").read_text())
    assert config["family"] == "latent_diffusion" and config["model"]["name"] == "sd_unet"
    assert config["model"]["autoencoder"] == str(workdir / "vae")
    assert config["model"]["text_encoder"] == str(workdir / "text_encoder")
    assert config["diffusion"]["schedule"] == "scaled_linear"
    assert config["diffusion"]["parameterisation"] == "eps"
    assert config["diffusion"]["scheduler"]["_class_name"] == "PNDMScheduler"
    sample_config = config["sample"]
    assert sample_config["guidance_scale"] == 7.5 and sample_config["num_inference_steps"] == 50
    assert (sample_config["height"], sample_config["width"]) == (64, 64)
    for stage, family in (("vae", "autoencoder"), ("text_encoder", "clip")):
        assert json.loads((workdir / stage / "config.json").read_text())["family"] == family
    v2 = json.loads((imported["v2"][0] / "config.json").read_text())
    assert v2["diffusion"]["parameterisation"] == "v"


def test_pndm_50_steps_is_diffusers(imported):
    """The seed's call shape: one prompt, guidance 7.5 and 50 PNDM steps, the run's defaults."""
    workdir, latents, golden = imported["v1"]
    result = sample(workdir, f"--config.sample.latents={latents}")
    grid = check_image(result, golden["pipe_pndm_50"])
    settings = json.loads(grid.with_suffix(".json").read_text())
    assert settings["prompts"] == [PROMPT] and settings["latents"] == str(latents)


@pytest.mark.slow  # one sampler compile each (about 30 s on an idle CPU)
@pytest.mark.parametrize(
    "version,sampler",
    [("v1", "ddim"), ("v1", "euler"), ("v1", "dpmpp_2m"), ("v2", "ddim"), ("v2", "euler")],
)
def test_swapped_schedulers_are_diffusers(imported, version, sampler):
    workdir, latents, golden = imported[version]
    result = sample(
        workdir,
        f"--config.sample.latents={latents}",
        f"--config.sample.sampler={sampler}",
        "--config.sample.num_inference_steps=10",
    )
    check_image(result, golden[f"pipe_{sampler}_10"])


def test_bad_latents_are_one_line(imported, tmp_path):
    workdir, _, _ = imported["v1"]
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((1, 4, 4, 4), np.float32))
    result = sample(workdir, f"--config.sample.latents={wrong}", check=False)
    assert result.returncode == 2
    assert stderr_lines(result) == [
        f"error: config.sample.latents: {wrong} holds float32 (1, 4, 4, 4); need float32 "
        "(1, 4, 8, 8) (prompts x images per prompt, 4, height/8, width/8: diffusers' NCHW)"
    ]
    result = sample(workdir, "--config.sample.height=60", check=False)
    assert result.returncode == 2
    assert stderr_lines(result) == [
        "error: config.sample.height: must be a positive multiple of 8, got 60"
    ]


TOLERANCE_LATENTS = 1e-4  # float32 against diffusers' float32, after up to 51 U-Net calls


@pytest.mark.parametrize(
    "version,sampler,steps",
    [
        ("v1", "", 50),
        ("v1", "ddim", 10),
        ("v1", "euler", 10),
        ("v1", "dpmpp_2m", 10),
        ("v2", "", 10),
        ("v2", "euler", 10),
    ],
)
def test_final_latents_are_diffusers(imported, version, sampler, steps):
    """The pipeline's final latents (output_type="latent"): where the samplers differ (the tiny
    VAE's images hardly depend on the latents, so the image tests alone could not tell them)."""
    workdir, _, golden = imported[version]
    run = runs.load_run(load_workdir_config(str(workdir)), str(workdir))
    pipeline = run.steps.predict_fns["text_to_image"]
    settings = stable_diffusion.settings_of(run.config.sample)._replace(
        sampler=sampler, num_inference_steps=steps
    )
    generate = jax.jit(functools.partial(pipeline.generate, settings=settings, decode=False))
    latents = jnp.asarray(golden["pipe_latents"].transpose(0, 2, 3, 1))
    ids, negative = pipeline.prepare([PROMPT]), pipeline.prepare([""])
    out = generate(pipeline.params(run.state), ids, negative, jax.random.PRNGKey(0), latents)
    name = f"pipe_{sampler or ('pndm' if version == 'v1' else 'ddim')}_{steps}_latents"
    want = golden[name]
    np.testing.assert_allclose(
        np.asarray(out)[0].transpose(0, 3, 1, 2), want, rtol=0, atol=TOLERANCE_LATENTS
    )
    assert np.abs(want - golden["pipe_latents"]).max() > 0.1  # the sampler moved them


@pytest.mark.parametrize(
    "dtype,tolerance",
    [
        ("bfloat16", 0.05),
        pytest.param("float16", 0.01, marks=pytest.mark.skipif(
            jax.default_backend() == "cpu", reason="float16 runs on GPU only (one line on CPU)"
        )),
    ],
)  # fmt: skip
def test_half_precision_latents_are_close(imported, dtype, tolerance):
    """dtype casts the weights and the networks' inputs: DDIM's 10 steps stay near diffusers'
    float32 latents (relative to their scale), farther than float32's 1e-4."""
    workdir, _, golden = imported["v1"]
    run = runs.load_run(load_workdir_config(str(workdir)), str(workdir))
    pipeline = run.steps.predict_fns["text_to_image"]
    settings = stable_diffusion.settings_of(run.config.sample)._replace(
        sampler="ddim", num_inference_steps=10, dtype=dtype
    )
    generate = jax.jit(functools.partial(pipeline.generate, settings=settings, decode=False))
    latents = jnp.asarray(golden["pipe_latents"].transpose(0, 2, 3, 1))
    ids, negative = pipeline.prepare([PROMPT]), pipeline.prepare([""])
    out = generate(pipeline.params(run.state), ids, negative, jax.random.PRNGKey(0), latents)
    want = golden["pipe_ddim_10_latents"]
    error = np.abs(np.asarray(out)[0].transpose(0, 3, 1, 2) - want).max() / np.abs(want).max()
    assert 1e-6 < error < tolerance, error


def test_text_to_image_generate_on_an_imported_run(imported):
    """jaxgen.text_to_image.generate: the run's own scheduler by default, height/width."""
    workdir, _, _ = imported["v1"]
    run = text_to_image.load(str(workdir))
    images = text_to_image.generate(run, PROMPT, num_inference_steps=3, height=32, width=48)
    assert images.shape == (1, 1, 32, 48, 3) and images.dtype == np.uint8
    with pytest.raises(ConfigError, match="config.sample.height: must be a positive multiple"):
        text_to_image.generate(run, PROMPT, height=30)
    if jax.default_backend() == "cpu":
        with pytest.raises(ConfigError, match="config.sample.dtype: float16 needs a GPU"):
            text_to_image.generate(run, PROMPT, dtype="float16")


@pytest.mark.slow  # compiles an SD train step and the sampler (about 1-2 min on an idle CPU)
def test_finetune_sd_trains_the_unet_only(imported, tmp_path):
    """configs/latent_diffusion/finetune_sd.py on the tiny v1 run: two steps on a captions
    folder; the U-Net starts from the imported one and moves, the frozen stages do not."""
    source, _, _ = imported["v1"]
    folder = tmp_path / "captions"
    folder.mkdir()
    lines = []
    for i in range(6):
        pixels = np.random.default_rng(i).integers(0, 255, (70, 64, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "caption": f"a noisy picture {i}"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    workdir = tmp_path / "tuned"
    run_script(
        "train",
        f"--config=configs/latent_diffusion/finetune_sd.py:{source},smoke",
        f"--workdir={workdir}",
        f"--config.data.folder={folder}",
    )
    config = load_workdir_config(str(workdir))
    tuned = runs.load_run(config, str(workdir)).state
    start = runs.load_run(load_workdir_config(str(source)), str(source)).state
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), tuned.params, start.params)
    assert 0 < max(jax.tree.leaves(moved)) < 1e-3  # two steps at lr 1e-5 from the import
    same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), tuned.frozen, start.frozen)
    assert all(jax.tree.leaves(same))
