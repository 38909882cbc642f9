"""experiments/import_clip and experiments/clip_score on the tiny random CLIPModel of
tests/fixtures/clip/, against what transformers and torchmetrics' CLIP score definition give
(golden.npz, made by tests/fixtures/make_clip_fixture.py)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxgen import metrics, rundir, runs, text_to_image, tokenizers
from jaxgen.config import ConfigError, load_workdir_config
from jaxgen.metrics import clip_score
from jaxgen.models import clip as clip_models
from jaxgen.models import clip_pretrained
from tests import clip_fixture
from tests.e2e import run_script, stderr_lines
from tests.helpers import load_config
from tests.stages import nonzero, untrained_run


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """{variant: (hf folder, workdir)}: both variants imported by the script."""
    made = {}
    for variant in clip_fixture.VARIANTS:
        folder = clip_fixture.write_clip_model(tmp_path_factory.mktemp(f"hf_{variant}"), variant)
        workdir = tmp_path_factory.mktemp("imported") / variant
        run_script("import_clip", f"--hf_dir={folder}", f"--workdir={workdir}")
        made[variant] = (folder, workdir)
    return made


@pytest.mark.slow
@pytest.mark.parametrize("variant", clip_fixture.VARIANTS)
def test_clip_score_of_the_folder_is_torchmetrics_definition(imported, variant, tmp_path):
    """The folder's score within 0.05 of max(mean 100 cos, 0) by transformers (the gelu
    variant's mean is negative: 0), each pair's 100 cos within 0.05."""
    _, workdir = imported[variant]
    out = tmp_path / "scores.json"
    images = clip_fixture.FIXTURE / "images"
    result = run_script(
        "clip_score", f"--clip={workdir}", f"--images={images}", f"--out={out}", "--batch_size=2"
    )
    expected = clip_fixture.golden(variant)
    printed = float(result.stdout.split("clip_score:")[1].split()[0])
    assert abs(printed - float(expected["clip_score"])) < 0.05
    written = json.loads(out.read_text())
    assert written["num_pairs"] == 3 and abs(written["clip_score"] - printed) < 1e-4
    assert [pair["file"] for pair in written["pairs"]] == ["image0.png", "image1.png", "image2.png"]
    got = [pair["score"] for pair in written["pairs"]]
    np.testing.assert_allclose(got, expected["scores"], atol=0.05)


@pytest.mark.slow
def test_imported_run_holds_the_architecture_and_the_tokenizer(imported):
    """config.json names clip_pretrained with the folder's sizes; the run loads (load_run) and
    its scorer gives transformers' image and text embeddings; tokenizer.json is CLIP's BPE."""
    _, workdir = imported["quick_gelu"]
    config = load_workdir_config(str(workdir))
    assert config.model.name == "clip_pretrained" and config.data.caption_len == 77
    assert config.model.text.activation == "quick_gelu" and config.model.text.eos_token_id == 2
    assert config.model.vision.patch_size == 8 and config.data.image_size == 32
    tokenizer = tokenizers.load(workdir / "tokenizer.json")
    assert tokenizers.fixed_length(tokenizer) == 77
    run = runs.load_run(config, str(workdir))
    scorer = run.steps.predict_fns["clip_scorer"]
    expected = clip_fixture.golden("quick_gelu")
    ids = clip_pretrained.tokenize(run.tokenizer, clip_fixture.CAPTIONS)
    np.testing.assert_array_equal(ids, expected["input_ids"])
    params = scorer.params(run.state)
    pixels = expected["pixel_values"].transpose(0, 2, 3, 1)
    image = np.asarray(scorer.image_features(params, pixels))
    text = np.asarray(scorer.text_features(params, ids))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(image, unit(expected["image_embeds"]), atol=1e-5)
    np.testing.assert_allclose(text, unit(expected["text_embeds"]), atol=1e-5)
    assert abs(clip_score.folder_score(clip_score.pair_scores(image, text)) - 36.64) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, message",
    [
        ("no_captions", "captions.jsonl: no such file"),
        ("missing_image", "image1.png: not a readable image"),
        ("broken_image", "image2.png: not a readable image"),
        ("truncated_image", "image0.png: not a readable image"),
        ("not_a_folder", "is not a folder"),
    ],
)
def test_bad_image_folders_are_one_line(imported, tmp_path, case, message):
    _, workdir = imported["gelu"]
    images = tmp_path / "images"
    shutil.copytree(clip_fixture.FIXTURE / "images", images)
    if case == "no_captions":
        (images / "captions.jsonl").unlink()
    elif case == "missing_image":
        (images / "image1.png").unlink()
    elif case == "broken_image":
        (images / "image2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif case == "truncated_image":  # half a PNG: its header is fine
        data = (images / "image0.png").read_bytes()
        (images / "image0.png").write_bytes(data[: len(data) // 2])
    else:
        images = tmp_path / "nothing"
    result = run_script("clip_score", f"--clip={workdir}", f"--images={images}", check=False)
    lines = stderr_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert message in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "break_it, message",
    [
        ("config", "config.json: model_type is 'bert'"),
        ("tensor", "text_projection.weight has shape"),
        ("processor", "no preprocessor_config.json"),
        ("tokenizer", "no vocab.json and merges.txt, nor tokenizer.json"),
    ],
)
def test_bad_hf_folders_are_one_line(tmp_path, break_it, message):
    folder = tmp_path / "hf"
    clip_fixture.write_clip_model(folder, "gelu")
    if break_it == "config":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
    elif break_it == "tensor":
        import safetensors.numpy

        weights = safetensors.numpy.load_file(str(folder / "model.safetensors"))
        weights["text_projection.weight"] = weights["text_projection.weight"][:-1]
        safetensors.numpy.save_file(weights, str(folder / "model.safetensors"))
    elif break_it == "processor":
        (folder / "processor_config.json").unlink()
    else:
        (folder / "vocab.json").unlink()
    result = run_script(
        "import_clip", f"--hf_dir={folder}", f"--workdir={tmp_path / 'w'}", check=False
    )
    lines = stderr_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert message in lines[0]
    assert not (tmp_path / "w" / "config.json").exists()


@pytest.mark.slow
def test_latent_diffusion_conditions_on_and_scores_with_an_imported_clip(imported, tmp_path):
    """A latent diffusion run naming the imported CLIP as config.model.text_encoder (with its
    tokenizer and 77-token captions) validates, copies it, attends to its last hidden states
    (width 32) and its clip_score evaluator scores generated 28x28 gray images with it."""
    _, clip_dir = imported["quick_gelu"]
    ae = untrained_run(load_config("configs/autoencoder/mnist.py", "smoke"), tmp_path / "ae")
    config = load_config("configs/latent_diffusion/mnist.py", "smoke")
    config.model.autoencoder, config.model.text_encoder = ae, str(clip_dir)
    config.data.caption_len = 77
    config.data.tokenizer = str(clip_dir / "tokenizer.json")
    workdir = untrained_run(config, tmp_path / "ldm", params_fn=nonzero)
    run = text_to_image.load(workdir)
    assert run.config.model.stages.text_encoder.model.name == "clip_pretrained"
    frozen = run.state.frozen["text_encoder"]
    assert frozen["text_model"]["token_embedding"]["embedding"].shape == (49408, 32)
    entry = next(name for name, e in run.config.evals.items() if e.type == "clip_score")
    scores = metrics.build(run.config, run.steps, run.placement)[entry](run.state)
    assert scores["count"] > 0 and 0 <= scores["score"] <= 100
    # The entry's `clip` field: the other imported CLIP (same tokenizer) scores instead.
    _, scorer_dir = imported["gelu"]
    config = run.config.copy_and_resolve_references()
    config.evals[entry].clip = str(scorer_dir)
    scored = runs.load_run(config, workdir)
    other = metrics.build(scored.config, scored.steps, scored.placement)[entry](scored.state)
    assert other["count"] == scores["count"] and other["score"] != scores["score"]
    # A scorer whose caption ids differ (our char-level CLIP) is one line naming the field.
    char_clip = untrained_run(load_config("configs/clip/mnist.py", "smoke"), tmp_path / "clip")
    config.evals[entry].clip = char_clip
    with pytest.raises(ConfigError, match=rf"config.evals.{entry}.clip: .* tokenizer"):
        runs.load_run(config, workdir)


def test_a_clip_trained_here_scores_folders_on_its_own_data_size(tmp_path):
    """experiments.clip_score's scoring with our CLIP (configs/clip/mnist.py: 28x28 gray,
    char captions): each image resized bilinearly to 28x28 gray in [-1, 1] in the test, the
    captions cut at caption_len, and the score 100 cos of the family's own embeddings."""
    from experiments import clip_score as script
    from jaxgen.data.captions_kind import encode_captions

    workdir = untrained_run(load_config("configs/clip/mnist.py", "smoke"), tmp_path / "clip")
    run = runs.load_run(load_workdir_config(workdir), workdir)
    folder = clip_fixture.FIXTURE / "images"
    pairs = [(str(folder / f"image{i}.png"), c) for i, c in enumerate(clip_fixture.CAPTIONS)]
    scores = script.score_pairs(run, pairs, batch_size=2)
    images = []
    for path, _ in pairs:
        gray = Image.open(path).convert("L").resize((28, 28), Image.BILINEAR)
        images.append(np.asarray(gray, np.float32)[..., None] / 127.5 - 1)
    ids = encode_captions(run.tokenizer, clip_fixture.CAPTIONS, run.config.data.caption_len)
    model = clip_models.make_model(run.config.model, run.info.vocab_size, ids.shape[1])
    variables = {"params": run.state.eval_params}
    image = model.apply(variables, np.stack(images), method=model.encode_image)
    text, _ = model.apply(variables, ids, method=model.encode_text)
    expected = 100 * np.sum(np.asarray(image) * np.asarray(text), axis=-1)
    np.testing.assert_allclose(scores, expected, atol=1e-3)


@pytest.mark.slow
def test_clip_family_evaluates_an_imported_clip_on_emoji_captions(imported):
    """The imported run's own "clip_score" evaluation (experiments.evaluate's path): emoji
    rendered at the model's 32 px, captions through the saved CLIP tokenizer (77 ids each,
    start and end tokens), scored and retrieved by the transformers-exact model."""
    _, workdir = imported["quick_gelu"]
    config = load_workdir_config(str(workdir))
    config.evals.clip_score.update(num_examples=64, batch_size=32)
    run = runs.load_run(config, str(workdir))
    ids = rundir.first_eval_batch(run.config, 8)["caption"]
    assert ids.shape[1] == 77 and (ids[:, 0] == 49406).all() and (ids == 49407).any(axis=1).all()
    result = metrics.build(run.config, run.steps, run.placement)["clip_score"](run.state)
    assert result["count"] == 64 and 0 <= result["retrieval"] <= 1
    assert 0 <= result["score"] <= 100 and np.isfinite(result["mismatched_score"])


def test_clip_score_refuses_a_run_that_is_not_a_clip(tmp_path):
    """--clip naming another family's run (here an autoencoder) is one line naming the flag."""
    ae = untrained_run(load_config("configs/autoencoder/mnist.py", "smoke"), tmp_path / "ae")
    images = clip_fixture.FIXTURE / "images"
    result = run_script("clip_score", f"--clip={ae}", f"--images={images}", check=False)
    lines = stderr_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "--clip:" in lines[0] and "not a clip run" in lines[0]
