"""The latent_diffusion family on untrained autoencoder and CLIP smoke runs (tests/stages.py):
the checks of the earlier stages, the frozen params copied into the state, one train step,
generate() (determinism, a row per prompt, the negative prompt, bad settings) and the
text-to-image evaluators (clip_score; class_accuracy's wiring of labels to captions)."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

from jaxgen import data, metrics, parallel, rundir, text_to_image
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import captions as caption_data
from jaxgen.data.captions_kind import encode_captions
from jaxgen.family import Steps, get_family
from jaxgen.metrics import generative, networks
from jaxgen.sampling import latent_diffusion as sampling
from tests.e2e import run_script, stderr_lines
from tests.helpers import load_config
from tests.stages import nonzero, untrained_run

SCALE = 0.5  # the untrained autoencoder's "logged" scale factor


@pytest.fixture(scope="module")
def stage_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    ae = untrained_run(load_config("configs/autoencoder/mnist.py", "smoke"), root / "ae", SCALE)
    clip = untrained_run(load_config("configs/clip/mnist.py", "smoke"), root / "clip")
    return ae, clip


def ldm_config(stage_dirs, **sample):
    config = load_config("configs/latent_diffusion/mnist.py", "smoke")
    config.model.autoencoder, config.model.text_encoder = stage_dirs
    config.sample.update(sample)
    return config


@pytest.fixture(scope="module")
def run(stage_dirs, tmp_path_factory):
    """A saved, untrained LDM run whose U-Net output depends on its inputs, loaded."""
    workdir = tmp_path_factory.mktemp("ldm")
    untrained_run(ldm_config(stage_dirs), workdir, params_fn=nonzero)
    return text_to_image.load(str(workdir))


def test_stage_checks_are_one_line_errors_naming_the_field(stage_dirs, tmp_path):
    ae, clip = stage_dirs

    def error_of(**changes):
        config = ldm_config(stage_dirs)
        for field, value in changes.items():
            section, name = field.split("__")
            config[section][name] = value
        with pytest.raises(ConfigError) as caught:
            rundir.check_config(config)
        return str(caught.value)

    assert error_of(model__autoencoder="").startswith("config.model.autoencoder: empty")
    missing = str(tmp_path / "missing")
    assert error_of(model__autoencoder=missing) == (
        f"config.model.autoencoder: {missing!r} does not exist (train the autoencoder run first)"
    )
    assert "is a 'clip' run, not a 'autoencoder' run" in error_of(model__autoencoder=clip)
    assert "is a 'autoencoder' run, not a 'clip' run" in error_of(model__text_encoder=ae)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(f"{ae}/config.json", unfinished)
    message = error_of(model__autoencoder=str(unfinished))
    assert message == f"config.model.autoencoder: {unfinished} has no checkpoint (train the autoencoder run first)"  # fmt: skip
    assert error_of(data__caption_len=40).startswith(
        f"config.data.caption_len: 40, but the text encoder {clip} was trained with caption_len 48"
    )
    other = tmp_path / "tokenizer.json"
    tokenizer = data.get_tokenizers(ldm_config(stage_dirs).data)["tokenizer"]
    type(tokenizer)("\x00abc", unknown=True).save(other)
    assert error_of(data__tokenizer=str(other)).startswith(
        f"config.data.tokenizer: {str(other)!r} is not the text encoder's tokenizer; "
        f"set config.data.tokenizer={clip}/tokenizer.json"
    )
    # An autoencoder of other images: its config.json says emoji, its data_info.json 32x32x3.
    emoji_ae = tmp_path / "emoji_ae"
    shutil.copytree(ae, emoji_ae)
    saved = json.loads((emoji_ae / "config.json").read_text())
    saved["data"]["name"] = "emoji"
    (emoji_ae / "config.json").write_text(json.dumps(saved))
    info = json.loads((emoji_ae / "data_info.json").read_text())
    (emoji_ae / "data_info.json").write_text(json.dumps(info | {"image_shape": [32, 32, 3]}))
    expected = (
        f"config.model.autoencoder: {os.path.abspath(emoji_ae)} trained on emoji images "
        "(32, 32, 3); this run's captioned_mnist images are (28, 28, 1)"
    )
    assert error_of(model__autoencoder=str(emoji_ae)) == expected
    # A run saved before data_info.json existed: its shape comes from its dataset.
    (emoji_ae / "data_info.json").unlink()
    assert error_of(model__autoencoder=str(emoji_ae)) == expected
    shutil.copy(f"{ae}/config.json", emoji_ae / "config.json")  # back to MNIST
    (emoji_ae / "metrics.jsonl").unlink()
    assert "no latent_scale/scale_factor logged" in error_of(model__autoencoder=str(emoji_ae))


def test_experiments_train_refuses_a_missing_stage_in_one_line(tmp_path):
    result = run_script(
        "train",
        "--config=configs/latent_diffusion/mnist.py:smoke",
        f"--workdir={tmp_path / 'run'}",
        f"--config.model.autoencoder={tmp_path / 'nowhere'}",
        check=False,
    )
    assert result.returncode == 2
    assert stderr_lines(result) == [
        f"error: config.model.autoencoder: '{tmp_path / 'nowhere'}' does not exist "
        "(train the autoencoder run first)"
    ]
    assert not (tmp_path / "run").exists()


def test_setup_copies_the_frozen_stages_and_a_step_trains_the_unet_only(stage_dirs):
    config = ldm_config(stage_dirs)
    config.mesh.backend = "jit"
    info = rundir.check_config(config)
    steps = get_family("latent_diffusion").make_steps(config, info, None)
    batch = rundir.first_eval_batch(config, 8)
    batch = {key: batch[key] for key in ("image", "caption")}
    state = steps.setup(jax.jit(steps.init)(jax.random.PRNGKey(0), batch))
    ae_config = rundir.check_stage(stage_dirs[0], "ae", "autoencoder")
    expected = rundir.load_params(stage_dirs[0], ae_config)
    jax.tree.map(np.testing.assert_array_equal, state.frozen["autoencoder"], expected)
    assert float(state.frozen["scale_factor"]) == SCALE
    train_step = jax.jit(steps.train_step)
    new, metrics = train_step(*train_step(state, batch)[:1], batch)  # the first lr is 0 (warmup)
    assert int(new.step) == 2 and np.isfinite(float(metrics["loss"]))
    jax.tree.map(np.testing.assert_array_equal, new.frozen, state.frozen)
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), new.params, state.params)
    assert any(jax.tree.leaves(changed))


def test_generate_is_deterministic_has_a_row_per_prompt_and_follows_the_negative_prompt(run):
    generate = functools.partial(
        text_to_image.generate, run, guidance_scale=5.0, num_inference_steps=3, seed=42,
        num_images_per_prompt=2, output="float",
    )  # fmt: skip
    two = generate(["a handwritten digit one", "7"])
    assert two.shape == (2, 2, 28, 28, 1) and two.dtype == np.float32
    np.testing.assert_array_equal(two, generate("a handwritten digit one|7"))  # bit for bit
    assert not np.allclose(two[0], two[1])  # the prompts differ
    # Row p is prompt p's, whatever the other prompts: the same images as a call with it alone.
    np.testing.assert_allclose(generate(["7"])[0], two[1], atol=1e-5)
    negative = generate(["a handwritten digit one", "7"], negative_prompt="a handwritten digit 0")
    assert not np.allclose(negative, two)
    other_seed = text_to_image.generate(
        run, "7", guidance_scale=5.0, num_inference_steps=3, seed=43, num_images_per_prompt=2
    )
    assert other_seed.dtype == np.uint8 and not np.array_equal(other_seed[0], generate("7")[0])


def test_generate_draws_what_the_familys_sample_step_draws(run):
    """experiments.sample (Steps.sample on config.sample) and text_to_image.generate run the
    same text-to-image function."""
    sample = run.config.sample
    steps_grid = jax.jit(run.steps.sample)(run.state, {}, jax.random.PRNGKey(sample.seed))
    images = text_to_image.generate(
        run,
        sample.prompt,
        negative_prompt=sample.negative_prompt,
        guidance_scale=sample.guidance_scale,
        num_inference_steps=sample.num_inference_steps,
        seed=sample.seed,
        num_images_per_prompt=sample.num_images_per_prompt,
        sampler=sample.sampler,
        eta=sample.eta,
        output="float",
    )
    np.testing.assert_allclose(images, np.asarray(steps_grid["prompts"]), atol=1e-6)


def test_generate_compiles_once_per_setting_not_per_prompt_or_seed(run):
    compiles = []
    monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: (
            compiles.append(event)
            if event == "/jax/core/compile/backend_compile_duration"
            else None
        )
    )
    settings = dict(guidance_scale=2.0, num_inference_steps=2, num_images_per_prompt=1)
    first = text_to_image.generate(run, "a handwritten digit 5|9", seed=1, **settings)
    assert compiles  # the sampler of a new setting compiles
    compiles.clear()
    second = text_to_image.generate(run, "a handwritten digit 5|9", seed=2, **settings)
    assert not compiles and not np.array_equal(first, second)  # a new seed: no compile
    third = text_to_image.generate(run, "the digit three|a 4", seed=2, **settings)
    assert not compiles and not np.array_equal(second, third)  # new prompts: no compile
    negative = text_to_image.generate(run, "a 4|9", negative_prompt="x", seed=2, **settings)
    assert not compiles and negative.shape == third.shape  # a negative prompt: no compile
    text_to_image.generate(run, "a handwritten digit 5|9", seed=2, **settings | {"eta": 1.0})
    assert compiles  # a new setting compiles again


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(prompts=[]), "prompts: no prompt given"),
        (dict(prompts="a||b"), "prompts: an empty prompt in 'a||b'"),
        (dict(guidance_scale=-1.0), "config.sample.guidance_scale: must be a finite number >= 0"),
        (dict(num_inference_steps=0), "config.sample.num_inference_steps: must be in [1, T = 100]"),
        (dict(sampler="euler"), "config.sample.sampler: unknown sampler 'euler'"),
        (dict(num_images_per_prompt=0), "config.sample.num_images_per_prompt: must be >= 1"),
    ],
)
def test_bad_prompt_settings_are_one_line_errors(run, settings, message):
    settings = {"prompts": "7", **settings}
    with pytest.raises(ConfigError) as caught:
        text_to_image.generate(run, **settings)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_clip_score_of_generated_images_is_computed(run):
    config = run.config.copy_and_resolve_references()
    evaluators = metrics.build(config, run.steps, run.placement)
    scores = evaluators["clip_score_g3"](run.state)
    assert scores["count"] == 8 and 0 <= scores["score"] <= 100


def _fake_domain_network(tables: np.ndarray) -> networks.FeatureNetwork:
    """A "classifier" that reads which class's caption an image was generated for: the fake
    generator writes the caption's token ids into the image's first pixels."""
    table = jnp.asarray(tables)  # [classes, templates, L]

    def apply(params, images):
        tokens = jnp.round(images.reshape(images.shape[0], -1)[:, : table.shape[-1]] * 100)
        hits = jnp.all(tokens[:, None, None] == table[None], axis=-1)  # [B, classes, templates]
        logits = jnp.any(hits, axis=-1).astype(jnp.float32)
        return logits, logits

    return networks.FeatureNetwork(
        name="fake", params={}, apply=apply, image_shape=(28, 28, 1), num_classes=10,
        cache_dir="", fingerprint="fake",
    )  # fmt: skip


def test_class_accuracy_prompts_each_label_with_its_captions(run, monkeypatch):
    """class_accuracy through metrics/generative.py and the family's generate, with a generator
    that writes its caption into the image: 1.0 exactly when labels reach the right captions."""
    config = run.config.copy_and_resolve_references()
    tokenizer = data.get_tokenizers(config.data)["tokenizer"]
    # The test's own table of the held-out captions, from the templates' strings.
    heldout = np.stack(
        [
            encode_captions(tokenizer, texts, 48)
            for texts in caption_data.class_captions("captioned_mnist", "heldout")
        ]  # fmt: skip
    )
    assert "a scribbled seven" in caption_data.class_captions("captioned_mnist", "heldout")[7]
    seen_scales = []

    def images_of(**overrides):
        seen_scales.append(overrides.get("guidance_scale"))

        def images(params, frozen, captions, negative, noise, rng):
            pixels = jnp.zeros((captions.shape[0], 28 * 28)).at[:, :48].set(captions / 100)
            return pixels.reshape(-1, 28, 28, 1)

        return images

    tables = sampling.caption_tables(config.data, tokenizer)
    generate = functools.partial(
        sampling.generate, images_of=images_of, tables=tables, num_classes=10,
        latent_shape=(7, 7, 2),
    )  # fmt: skip
    steps = Steps(None, None, {}, None, {}, generate=generate)
    monkeypatch.setattr(networks, "get_network", lambda *a: _fake_domain_network(heldout))
    placement = parallel.Placement(config.mesh)
    entry = {"type": "class_accuracy", "num_samples": 40, "batch_size": 20}

    def accuracy(**kw):
        entry_config = ConfigDict(entry | {"generate_kw": kw})
        return generative.ClassAccuracy(config, entry_config, steps, placement)(run.state)

    assert accuracy(captions="heldout", guidance_scale=3.0) == {"accuracy": 1.0}
    assert seen_scales[-1] == 3.0
    assert accuracy(captions="seen")["accuracy"] == pytest.approx(0.1)  # no held-out caption
    with pytest.raises(ConfigError, match=r"generate_kw.scale: not an option of this family's generate"):  # fmt: skip
        accuracy(scale=3.0)


def test_grid_file_tags_differ_for_any_setting_but_the_seed_and_guidance_they_name():
    sample = load_config("configs/latent_diffusion/mnist.py", "smoke").sample
    tag = sampling.file_tag(sample)
    assert tag.startswith(f"_seed{sample.seed}_g3_") and len(tag.rsplit("_", 1)[1]) == 8
    for field, value in (("prompt", "7"), ("negative_prompt", "0"), ("num_inference_steps", 3)):
        other = ConfigDict(sample.to_dict() | {field: value})
        assert sampling.file_tag(other) != tag, field
    reseeded = ConfigDict(sample.to_dict() | {"seed": 5, "guidance_scale": 5.0})
    assert sampling.file_tag(reseeded).rsplit("_", 1)[1] == tag.rsplit("_", 1)[1]
