"""Sampling settings that cannot work (NaN, infinite, out of range, ill-typed) are one-line
ConfigErrors naming the config.sample field, in every family, before anything compiles:
checked in process for each family's settings, and through experiments/sample on saved runs
without params (the check comes before the checkpoint is read)."""

import math

import pytest

from jaxgen import rundir
from jaxgen.config import ConfigError
from tests.e2e import run_script, stderr_lines
from tests.helpers import load_config
from tests.stages import hollow_run, hollow_stages

NAN, INF = math.nan, math.inf

CASES = {
    "configs/ddpm/mnist_cond.py": [
        ("guidance_scale", NAN, "must be a finite number"),
        ("guidance_scale", INF, "must be a finite number"),
        ("guidance_scale", -2.0, "must be a finite number >= 0"),
        ("eta", NAN, "must be a finite number"),
        ("num_inference_steps", 0, "must be in [1, T = "),
        ("num_inference_steps", True, "must be in [1, T = "),
        ("samples_per_class", 0, "must be >= 1"),
        ("seed", -1, "must be an integer >= 0"),
        ("num_samples", 0, "must be a positive multiple"),
    ],
    "configs/gpt/shakespeare_char.py": [
        ("temperature", NAN, "must be a finite number"),
        ("temperature", INF, "must be a finite number"),
        ("temperature", -0.5, "must be a finite number >= 0"),
        ("top_p", NAN, "must be a finite number"),
        ("top_p", 1.5, "must be in (0, 1]"),
        ("top_p", 0.0, "must be in (0, 1]"),
        ("top_k", -1, "must be a non-negative integer"),
        ("num_beams", 0, "must be a positive integer"),
        ("num_beams", True, "must be a positive integer"),
        ("num_return_sequences", 3, "must be <= num_beams=1"),
        ("max_new_tokens", 0, "must be a positive integer"),
        ("length_penalty", INF, "must be a finite number"),
        ("no_repeat_ngram_size", -2, "must be a non-negative integer"),
        ("prompt", "hol\udce1", "not UTF-8 text"),  # a Latin-1 byte on the command line
    ],
    "configs/seq2seq/bible_es_en.py": [
        ("num_beams", -4, "must be a positive integer"),
        ("length_penalty", NAN, "must be a finite number"),
        ("temperature", INF, "must be a finite number"),
    ],
    "configs/vae/mnist.py": [
        ("interpolation_steps", 1, "must be an integer >= 2"),
        ("num_interpolations", 0, "must be an integer >= 1"),
    ],
    "configs/gan/mnist_mlp.py": [("num_samples", -8, "must be a positive multiple")],
}
LATENT = [
    ("guidance_scale", NAN, "must be a finite number"),
    ("guidance_scale", INF, "must be a finite number"),
    ("guidance_scale", -1.0, "must be a finite number >= 0"),
    ("eta", NAN, "must be a finite number"),
    ("eta", -1.0, "must be a finite number >= 0"),
    ("num_inference_steps", 0, "must be in [1, T = "),
    ("num_images_per_prompt", 0, "must be >= 1"),
    ("prompt", "a digit|hol\udce1", "not UTF-8 text"),
    ("negative_prompt", "\udce1", "not UTF-8 text"),
]


def assert_refused(config, field, value, message):
    config.sample[field] = value
    with pytest.raises(ConfigError) as caught:
        rundir.check_config(config)
    text = str(caught.value)
    assert text.startswith(f"config.sample.{field}: ") and message in text and "\n" not in text


@pytest.mark.parametrize(
    "path, field, value, message",
    [(path, *case) for path, cases in CASES.items() for case in cases],
)
def test_bad_settings_are_one_line_naming_the_field(path, field, value, message):
    config = load_config(path, "smoke")
    rundir.check_config(config)  # the smoke config itself is fine
    assert_refused(config, field, value, message)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    return hollow_stages(tmp_path_factory.mktemp("stages"))


def latent_config(stages):
    config = load_config("configs/latent_diffusion/mnist.py", "smoke")
    config.model.autoencoder, config.model.text_encoder = stages
    config.loss.caption_dropout = 0.1  # guidance allowed
    return config


@pytest.mark.parametrize("field, value, message", LATENT)
def test_bad_latent_diffusion_settings_are_one_line_naming_the_field(stages, field, value, message):
    config = latent_config(stages)
    rundir.check_config(config)
    assert_refused(config, field, value, message)


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, override, message",
    [
        ("configs/ddpm/mnist_cond.py", "guidance_scale=nan", "guidance_scale: must be a finite"),
        ("configs/ddpm/mnist.py", "eta=inf", "eta: must be a finite number"),
        ("configs/gpt/shakespeare_char.py", "top_p=nan", "top_p: must be a finite number"),
        ("configs/vae/mnist.py", "seed=-3", "seed: must be an integer >= 0"),
    ],
)
def test_experiments_sample_refuses_bad_settings_in_one_line(tmp_path, path, override, message):
    workdir = hollow_run(load_config(path, "smoke"), tmp_path / "run")
    result = run_script(
        "sample", f"--workdir={workdir}", f"--config.sample.{override}", check=False
    )
    assert result.returncode == 2 and len(stderr_lines(result)) == 1, result.stderr[-2000:]
    assert f"error: config.sample.{message}" in result.stderr


@pytest.mark.slow
def test_experiments_sample_refuses_a_nan_guidance_of_a_text_to_image_run(stages, tmp_path):
    """Before: exit 0, an all-black grid and NaN in the settings JSON."""
    workdir = hollow_run(latent_config(stages), tmp_path / "ldm")
    for override in ("guidance_scale=nan", "eta=inf"):
        result = run_script(
            "sample", f"--workdir={workdir}", f"--config.sample.{override}", check=False
        )
        assert result.returncode == 2 and len(stderr_lines(result)) == 1, result.stderr[-2000:]
        assert "must be a finite number" in result.stderr
