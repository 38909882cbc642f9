"""jaxgen/models/clip_pretrained.py against transformers: the CLIP tokenizer on the real
vocabulary, and the text transformer on a tiny random CLIPModel (golden values made by
tests/fixtures/make_clip_fixture.py with transformers 5.25)."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from jaxgen import pretrained, tokenizers
from jaxgen.metrics import clip_score
from jaxgen.models import clip_pretrained
from tests import clip_fixture

# /work/shared/data/README.md: open_clip's SimpleTokenizer and transformers agree on these.
ASTRONAUT = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]


def clip_tokenizer(pad_token="<|endoftext|>"):
    folder = clip_fixture.tokenizer_dir()
    return clip_pretrained.clip_bpe(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token
    )


def test_known_ids_of_the_data_readme():
    ids = clip_pretrained.tokenize(
        clip_tokenizer(), ["a photo of an astronaut riding a horse on mars"]
    )
    assert ids.shape == (1, 77) and ids.dtype == np.int32
    assert ids[0, : len(ASTRONAUT)].tolist() == ASTRONAUT
    assert (ids[0, len(ASTRONAUT) :] == 49407).all()  # OpenAI / SD v1 pad with <|endoftext|>


@pytest.mark.parametrize("key, pad", [("pad_endoftext", "<|endoftext|>"), ("pad_exclamation", "!")])
def test_tokenizer_matches_transformers(key, pad):
    """Case, whitespace runs, accents, contractions, digits, emoji, CJK, a literal end token,
    the empty text and a text of 101 tokens truncated to 76 + <|endoftext|>; SD 2's "!" pad."""
    expected = json.loads((clip_fixture.FIXTURE / "tokenizer_ids.json").read_text())
    ids = clip_pretrained.tokenize(clip_tokenizer(pad), expected["texts"])
    assert ids.tolist() == expected[key]
    long = expected[key + "_untruncated"][-1]
    assert len(long) > 77 and ids[-1, -1] == 49407 and ids[-1, :76].tolist() == long[:76]


def test_tokenizer_survives_save_and_load(tmp_path):
    """A run keeps its tokenizer as JSON (pretrained.write_run): padding and truncation too."""
    tokenizer = clip_tokenizer("!")
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = tokenizers.load(tmp_path / "tokenizer.json")
    texts = ["Hello,   WORLD!", " ".join(["many words"] * 50)]
    np.testing.assert_array_equal(
        clip_pretrained.tokenize(loaded, texts), clip_pretrained.tokenize(tokenizer, texts)
    )
    assert loaded.decode(clip_pretrained.tokenize(loaded, ["A Photo, of MARS"])[0][1:6]) == (
        "a photo , of mars"
    )


def test_read_tokenizer_takes_the_pad_token_of_the_folder(tmp_path):
    """SD 2's tokenizer/ names "!" (id 0) in special_tokens_map.json; OpenAI's names the end."""
    for name in ("vocab.json", "merges.txt"):
        os.symlink(clip_fixture.tokenizer_dir() / name, tmp_path / name)
    assert (
        clip_pretrained.tokenize(clip_pretrained.read_tokenizer(str(tmp_path)), ["a"])[0, -1]
        == 49407
    )
    pad = {"pad_token": {"content": "!", "lstrip": False, "normalized": False}}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(pad))
    ids = clip_pretrained.tokenize(clip_pretrained.read_tokenizer(str(tmp_path)), ["a"])
    assert ids[0, :3].tolist() == [49406, 320, 49407] and (ids[0, 3:] == 0).all()


def test_read_tokenizer_bad_folder_is_one_line(tmp_path):
    with pytest.raises(pretrained.WeightError, match="no vocab.json and merges.txt"):
        clip_pretrained.read_tokenizer(str(tmp_path))
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(pretrained.WeightError, match="vocab.json: not a BPE vocabulary") as error:
        clip_pretrained.read_tokenizer(str(tmp_path))
    assert "\n" not in str(error.value)


def run_text_encoder(folder):
    sizes = clip_pretrained.read_text_config(folder)
    weights, origin = pretrained.read_weights(folder, *clip_pretrained.WEIGHT_FILES)
    params = clip_pretrained.text_params(weights, sizes, origin)
    model = clip_pretrained.TextTransformer(**clip_pretrained.text_kwargs(sizes))
    return sizes, params, model


@pytest.mark.parametrize("variant", clip_fixture.VARIANTS)
@pytest.mark.parametrize("prefix", ["text_model.", ""])
def test_text_encoder_matches_transformers(tmp_path, variant, prefix):
    """last_hidden_state and the pooled output of CLIPTextModel, to 1e-4, for the legacy argmax
    pooling (quick_gelu, eos_token_id 2) and the first-end-token pooling (gelu, 49407)."""
    folder = clip_fixture.write_text_encoder(tmp_path, variant, prefix)
    sizes = clip_pretrained.read_text_config(folder)
    model, params = clip_pretrained.load_text_encoder(folder)
    expected = clip_fixture.golden(variant)
    ids = clip_pretrained.tokenize(clip_tokenizer(), clip_fixture.CAPTIONS)
    np.testing.assert_array_equal(ids, expected["input_ids"])
    out = jax.jit(model.apply)({"params": params}, ids)
    np.testing.assert_allclose(out.last_hidden_state, expected["last_hidden_state"], atol=1e-4)
    np.testing.assert_allclose(out.pooled, expected["pooler_output"], atol=1e-4)
    assert sizes["eos_token_id"] == {"quick_gelu": 2, "gelu": 49407}[variant]
    # Ids with no end token (a long caption sliced at 77, as torchmetrics does): the pooling
    # rule alone decides the token (argmax of the ids for eos_token_id 2, else position 0).
    sliced = model.apply({"params": params}, expected["sliced_ids"])
    np.testing.assert_allclose(sliced.pooled, expected["sliced_pooled"], atol=1e-4)


def test_init_params_have_the_imported_structure(tmp_path):
    """The map fills exactly the params the module declares (write_run relies on it)."""
    folder = clip_fixture.write_text_encoder(tmp_path, "gelu")
    _, params, model = run_text_encoder(folder)
    init = model.init(jax.random.PRNGKey(0), np.zeros((1, 77), np.int32))["params"]
    fitted = pretrained.fit_params(init, params, "test")
    assert jax.tree.structure(fitted) == jax.tree.structure(init)


def test_bad_text_encoder_folders_are_one_line(tmp_path):
    with pytest.raises(pretrained.WeightError, match="config.json: missing"):
        clip_pretrained.read_text_config(str(tmp_path))
    folder = clip_fixture.write_text_encoder(tmp_path / "te", "gelu")
    sizes = clip_pretrained.read_text_config(folder)
    weights, origin = pretrained.read_weights(folder, *clip_pretrained.WEIGHT_FILES)
    name = "text_model.encoder.layers.1.mlp.fc1.weight"
    bad = dict(weights) | {name: weights[name][:, :-1]}
    with pytest.raises(pretrained.WeightError, match=f"{name} has shape"):
        clip_pretrained.text_params(bad, sizes, origin)
    with pytest.raises(pretrained.WeightError, match="missing text_model.final_layer_norm.bias"):
        clip_pretrained.text_params(
            {k: v for k, v in weights.items() if "final_layer_norm.bias" not in k}, sizes, origin
        )
    with pytest.raises(pretrained.WeightError, match="unexpected weights text_model.extra"):
        clip_pretrained.text_params(weights | {"text_model.extra": weights[name]}, sizes, origin)
    config = json.loads((tmp_path / "te" / "config.json").read_text())
    (tmp_path / "te" / "config.json").write_text(json.dumps(config | {"hidden_act": "relu"}))
    with pytest.raises(pretrained.WeightError, match="hidden_act 'relu'"):
        clip_pretrained.read_text_config(folder)
    (tmp_path / "te" / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
    with pytest.raises(pretrained.WeightError, match="model_type is 'bert'"):
        clip_pretrained.read_text_config(folder)


def load_clip(folder):
    sizes = clip_pretrained.read_clip_config(folder)
    processor = clip_pretrained.read_processor(folder)
    weights, origin = pretrained.read_weights(folder, *clip_pretrained.WEIGHT_FILES)
    params = clip_pretrained.clip_params(weights, sizes, origin)
    model = clip_pretrained.Clip(**clip_pretrained.clip_kwargs(sizes, processor))
    return model, params, processor


def fixture_pixels(processor):
    folder = clip_fixture.FIXTURE / "images"
    names = [json.loads(line)["file"] for line in (folder / "captions.jsonl").open()]
    return np.stack([clip_score.preprocess(Image.open(folder / name), processor) for name in names])


@pytest.mark.parametrize("variant", clip_fixture.VARIANTS)
def test_clip_model_matches_transformers(tmp_path, variant):
    """CLIPImageProcessor's pixel_values (PIL bicubic, crop, mean/std) of 40x56, 32x32 and
    61x45 PNGs to 1e-5, CLIPModel's projected text and image embeddings to 1e-4, its
    logits_per_image, and torchmetrics' CLIP score definition to 0.05."""
    model, params, processor = load_clip(clip_fixture.write_clip_model(tmp_path, variant))
    expected = clip_fixture.golden(variant)
    pixels = fixture_pixels(processor)
    np.testing.assert_allclose(pixels, expected["pixel_values"].transpose(0, 2, 3, 1), atol=1e-5)
    ids = clip_pretrained.tokenize(clip_tokenizer(), clip_fixture.CAPTIONS)
    variables = {"params": params}
    image_features = model.apply(variables, pixels, method=model.image_features)
    text_features, _ = model.apply(variables, ids, method=model.text_features)
    np.testing.assert_allclose(image_features, expected["image_embeds"], atol=1e-4)
    np.testing.assert_allclose(text_features, expected["text_embeds"], atol=1e-4)
    image_embeds = model.apply(variables, pixels, method=model.encode_pixels)
    text_embeds, _ = model.apply(variables, ids, method=model.encode_text)
    logits = np.exp(params["logit_scale"]) * image_embeds @ text_embeds.T
    np.testing.assert_allclose(logits, expected["logits_per_image"], atol=1e-3)
    scores = clip_score.pair_scores(image_features, text_features)
    np.testing.assert_allclose(scores, expected["scores"], atol=0.05)
    assert abs(clip_score.folder_score(scores) - float(expected["clip_score"])) < 0.05
    # torchmetrics slices the long caption's ids instead: its score differs.
    assert abs(float(expected["torchmetrics_score"]) - float(expected["clip_score"])) > 1


def test_preprocess_pads_small_images_and_composites_alpha():
    """An image smaller than the crop with resizing off is centred on zeros (CLIPImageProcessor
    pads); a transparent pixel becomes white before normalising."""
    processor = {
        "size": 4, "crop": (4, 4), "resample": 3, "do_resize": False, "do_center_crop": True,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": False,
        "image_mean": (0, 0, 0), "image_std": (1, 1, 1),
    }  # fmt: skip
    rgba = np.zeros((1, 3, 4), np.uint8)  # one row of 3 transparent black pixels
    pixels = clip_score.preprocess(Image.fromarray(rgba, "RGBA"), processor)
    assert pixels.shape == (4, 4, 3)
    # height 1 -> rows 2 (ceil(3/2) = 2 top rows of padding), width 3 -> columns 1..3
    expected = np.zeros((4, 4, 3), np.float32)
    expected[2, 1:4] = 1.0
    np.testing.assert_array_equal(pixels, expected)


def test_bad_clip_folders_are_one_line(tmp_path):
    folder = clip_fixture.write_clip_model(tmp_path / "m", "gelu", tokenizer=False)
    sizes = clip_pretrained.read_clip_config(folder)
    weights, origin = pretrained.read_weights(folder, *clip_pretrained.WEIGHT_FILES)
    name = "vision_model.embeddings.patch_embedding.weight"
    with pytest.raises(pretrained.WeightError, match=f"{name} has shape"):
        clip_pretrained.clip_params(weights | {name: weights[name][:, :2]}, sizes, origin)
    with pytest.raises(pretrained.WeightError, match="missing logit_scale"):
        clip_pretrained.clip_params(
            {k: v for k, v in weights.items() if k != "logit_scale"}, sizes, origin
        )
    os.remove(os.path.join(folder, "processor_config.json"))
    with pytest.raises(pretrained.WeightError, match="no preprocessor_config.json"):
        clip_pretrained.read_processor(folder)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["vision_config"]["patch_size"] = 5
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(pretrained.WeightError, match="patch_size does not divide image_size"):
        clip_pretrained.read_clip_config(folder)
