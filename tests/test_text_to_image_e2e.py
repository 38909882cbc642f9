"""End to end: the whole text-to-image chain on tiny sizes, as a user runs it.

experiments.train of the autoencoder smoke config -> CLIP smoke -> latent diffusion smoke naming
both -> experiments.sample with prompts: one grid with a row per prompt, the single images and
the settings, the same PNG bytes again for the same seed, and other settings in other files;
then, with the autoencoder's and CLIP's folders moved away, the same bytes again, an evaluation
and a resumed training.
"""

import json

import pytest
from PIL import Image

from tests.e2e import run_script

pytestmark = pytest.mark.slow

SHORT = ["--config.train.num_steps=4", "--config.train.log_every=2"]


def test_autoencoder_clip_latent_diffusion_sample(tmp_path):
    ae, clip, ldm = tmp_path / "ae", tmp_path / "clip", tmp_path / "ldm"
    run_script("train", "--config=configs/autoencoder/mnist.py:smoke", f"--workdir={ae}", *SHORT)
    run_script("train", "--config=configs/clip/mnist.py:smoke", f"--workdir={clip}", *SHORT)
    run_script(
        "train",
        "--config=configs/latent_diffusion/mnist.py:smoke",
        f"--workdir={ldm}",
        f"--config.model.autoencoder={ae}",
        f"--config.model.text_encoder={clip}",
        *SHORT,
    )
    assert (ldm / "samples" / "prompts_0000004.png").is_file()
    sample = [
        "sample",
        f"--workdir={ldm}",
        "--config.sample.prompt=a handwritten digit 3|the digit seven|1",
        "--config.sample.negative_prompt=",
        "--config.sample.guidance_scale=5",
        "--config.sample.num_inference_steps=3",
        "--config.sample.seed=42",
        "--config.sample.num_images_per_prompt=2",
        "--config.sample.sampler=ddim",
    ]
    result = run_script(*sample)
    grid = next(ldm.glob("samples/prompts_0000004_seed42_g5_*.png"))
    assert str(grid) in result.stdout
    first = grid.read_bytes()
    assert Image.open(grid).size == (2 * 30 + 2, 3 * 30 + 2)  # 3 rows of 2 images, 2 px padding
    singles = sorted(p.name for p in grid.with_suffix("").iterdir())
    assert singles == ["0_0.png", "0_1.png", "1_0.png", "1_1.png", "2_0.png", "2_1.png"]
    settings = json.loads(grid.with_suffix(".json").read_text())
    assert settings["prompts"] == ["a handwritten digit 3", "the digit seven", "1"]
    assert (settings["seed"], settings["guidance_scale"]) == (42, 5)
    run_script(*sample)
    assert grid.read_bytes() == first  # the same seed, the same images
    # Other settings (guidance, prompts) write other files: the first grid is kept.
    run_script(*sample[:-5], "--config.sample.guidance_scale=1", *sample[-4:])
    run_script(*sample[:2], "--config.sample.prompt=4", *sample[3:])
    assert len(list(ldm.glob("samples/prompts_0000004_seed42_*.png"))) == 3
    assert grid.read_bytes() == first
    # The run is self-contained: with the autoencoder's and CLIP's folders gone, it samples the
    # same bytes, evaluates, and resumes training.
    ae.rename(tmp_path / "ae_moved")
    clip.rename(tmp_path / "clip_moved")
    run_script(*sample)
    assert grid.read_bytes() == first
    run_script("evaluate", f"--workdir={ldm}")
    assert (ldm / "eval_4.json").is_file()
    run_script(
        "train",
        "--config=configs/latent_diffusion/mnist.py:smoke",
        f"--workdir={ldm}",
        f"--config.model.autoencoder={ae}",
        f"--config.model.text_encoder={clip}",
        "--config.train.num_steps=6",
        "--config.train.log_every=2",
    )
    assert (ldm / "checkpoints" / "6").is_dir()
