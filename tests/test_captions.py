"""The "captions" kind: captioned MNIST, emoji, a captions.jsonl folder, a TFDS catalog dataset."""

import collections
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxgen import data, tokenizers
from jaxgen.config import ConfigError, base_config
from jaxgen.data import captions, captions_kind, emoji, sources
from jaxgen.data.captions_kind import PAD_ID, decode_caption, splitmix64
from tests.conftest import need_shared_data


def _config(name, **overrides):
    config = base_config().data
    config.update(data.kind_fields("captions"))
    config.name = name
    config.update(overrides)
    return config


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _decode_all(tokenizer, batch):
    return [decode_caption(tokenizer, ids) for ids in batch["caption"]]


def _font_or_skip():
    try:
        return emoji.find_font(_config("emoji"))
    except data.DataError:
        need_shared_data("emoji/NotoColorEmoji.ttf")  # skips, or fails on CI
        raise


def _template_pattern(name, kind):
    return set(captions.TEMPLATES[name][kind])


def _caption_of(text, label, templates):
    word = captions._DIGITS[label]
    return text in {captions.fill(t, word, str(label)) for t in templates}


def test_captioned_mnist_batches_caption_their_class_with_seen_templates_only():
    config = _config("captioned_mnist")
    info = data.get_info(config)
    assert info.image_shape == (28, 28, 1) and info.num_classes == 10
    assert info.num_examples == {"train": 60000, "test": 10000}
    tokenizer = data.load_tokenizer(config)
    assert info.vocab_size == tokenizer.vocab_size and tokenizer.encode("\x00").tolist() == [0]
    train = _take(data.make_iterator(config, "train", 64, 0, train=True), 3)
    seen = captions.TEMPLATES["captioned_mnist"]["seen"]
    heldout = captions.TEMPLATES["captioned_mnist"]["heldout"]
    for batch in train:
        assert batch["caption"].shape == (64, 64) and batch["caption"].dtype == np.int32
        assert batch["image"].dtype == np.float32 and -1 <= batch["image"].min() < 0
        for text, label in zip(_decode_all(tokenizer, batch), batch["label"], strict=True):
            assert _caption_of(text, int(label), seen), text
    evals = next(iter(data.make_iterator(config, "test", 64, 0, train=False)))
    assert set(evals) == {"image", "caption", "label", "mask"}
    for text, label in zip(_decode_all(tokenizer, evals), evals["label"], strict=True):
        assert _caption_of(text, int(label), heldout), text
    seen_eval = next(iter(data.make_iterator(_config("captioned_mnist", eval_captions="seen"),
                                             "test", 64, 0, train=False)))  # fmt: skip
    for text, label in zip(_decode_all(tokenizer, seen_eval), seen_eval["label"], strict=True):
        assert _caption_of(text, int(label), seen), text


def test_captioned_mnist_decodes_only_the_examples_it_reads(monkeypatch):
    monkeypatch.setattr(captions_kind, "_LOADED", {})  # a fresh load and reader in this process
    monkeypatch.setattr(sources, "_READERS", collections.OrderedDict())
    config = _config("captioned_mnist")
    data.get_info(config)  # opens both splits
    split = captions_kind._load(config, "train")
    decoded = split.images._reader._decoded
    assert split.images.shape == (60000, 28, 28, 1) and split.labels.shape == (60000,)
    assert decoded.sum() == 2  # the first and last example, on open
    batches = _take(data.make_iterator(config, "train", 64, 0, train=True), 2)
    assert 128 <= decoded.sum() < 2000  # the batches read (and Grain's read-ahead), not 60,000
    labels = np.concatenate([batch["label"] for batch in batches])
    assert np.isin(labels, split.labels[np.flatnonzero(decoded)]).all()
    images, all_labels = split.images._reader.read(np.array([3, 4, 5, 9]))
    assert split.images[4].shape == (28, 28, 1) and split.labels[4] == all_labels[1]
    np.testing.assert_array_equal(split.images[[3, 9]], images[[0, 3]])
    np.testing.assert_array_equal(split.labels[3:6], all_labels[:3])


def test_captions_resume_exactly_and_are_redrawn_every_epoch():
    config = _config("captioned_mnist", eval_split="train")
    iterator = data.make_iterator(config, "train", 20000, 0, train=True)  # 3 steps an epoch
    first = _take(iterator, 2)
    state = json.loads(json.dumps(iterator.get_state()))
    rest = _take(iterator, 4)
    resumed = data.make_iterator(config, "train", 20000, 0, train=True)
    resumed.set_state(state)
    for a, b in zip(rest, _take(resumed, 4), strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # Epoch 0 and epoch 1 give the same image a new draw among its 7 templates.
    eval_batch = next(iter(data.make_iterator(config, "train", 60000, 0, train=False)))
    source = captions_kind.CaptionSource(config)
    split = captions_kind._Split(source._splits["train"], source.tokenizer, 64)
    indices = np.arange(60000)
    epoch0, epoch1 = split.batch(indices, (5, 0)), split.batch(indices, (5, 1))
    changed = np.any(epoch0["caption"] != epoch1["caption"], axis=1).mean()
    assert 0.8 < changed < 0.9  # 1 - 1/7 = 0.857
    np.testing.assert_array_equal(epoch0["image"], eval_batch["image"])
    del first


def test_splitmix64_is_deterministic_and_spreads():
    a = splitmix64(1, 2, np.arange(10000))
    np.testing.assert_array_equal(a, splitmix64(1, 2, np.arange(10000)))
    counts = np.bincount((a % np.uint64(7)).astype(np.int64), minlength=7)
    assert counts.min() > 1300  # ~1429 each
    assert not np.array_equal(a, splitmix64(1, 3, np.arange(10000)))


def test_shift_scale_matches_numpy_shift_with_white_fill():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
    same = emoji.shift_scale(images, np.random.default_rng(1), 0.0, 0.0)
    np.testing.assert_allclose(same, images, atol=1e-6)

    class _Fixed:  # scale 1, shift (dy, dx) = (2, -1) for every image
        def __init__(self):
            self._values = iter([1.0, 2.0, -1.0])

        def uniform(self, low, high, shape):
            return np.full(shape, next(self._values))

    fixed_rng = _Fixed()
    moved = emoji.shift_scale(images, fixed_rng, 2.0, 0.1)
    expected = np.ones_like(images)
    expected[:, 2:, :7] = images[:, :6, 1:]
    np.testing.assert_allclose(moved, expected, atol=1e-6)


def test_emoji_images_captions_and_augmentation():
    _font_or_skip()
    config = _config("emoji", augment="shift_scale")
    info = data.get_info(config)
    assert info.image_shape == (32, 32, 3) and 1300 < info.num_examples["train"] < 1500
    images, names = emoji.render(emoji.find_font(config), 32)
    assert "red apple" in names and "cat face" in names
    assert (images[:, 0, :, :] == 255).mean() > 0.9  # white background at the top edge
    tokenizer = data.load_tokenizer(config)
    batches = _take(data.make_iterator(config, "train", 16, 0, train=True), 2)
    again = _take(data.make_iterator(config, "train", 16, 0, train=True), 2)
    plain = _take(data.make_iterator(_config("emoji"), "train", 16, 0, train=True), 2)
    for a, b, c in zip(batches, again, plain, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])  # deterministic in (seed, step)
        np.testing.assert_array_equal(a["caption"], c["caption"])  # same examples and captions
        assert not np.allclose(a["image"], c["image"])  # but moved
    texts = _decode_all(tokenizer, batches[0])
    assert all(any(name in text for name in names) for text in texts), texts


def test_emoji_missing_font_is_one_line_error_naming_the_file(tmp_path):
    config = _config("emoji", font_file=str(tmp_path / "nope.ttf"))
    with pytest.raises(data.DataError, match="nope.ttf"):
        data.get_info(config)


def _write_folder(folder, n=6, size=20):
    lines = []
    for i in range(n):
        pixels = np.full((size, size + 4, 3), 20 * i, np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "caption": f"a grey square number {i}"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")


def test_captions_folder_batches(tmp_path):
    _write_folder(tmp_path)
    config = _config("captions_folder", folder=str(tmp_path), image_size=16, val_fraction=0.34)
    info = data.get_info(config)
    assert info.image_shape == (16, 16, 3) and info.num_examples == {"train": 4, "test": 2}
    tokenizer = data.load_tokenizer(config)
    batches = list(data.make_iterator(config, "test", 4, 0, train=False))
    assert len(batches) == 1 and batches[0]["mask"].tolist() == [1, 1, 0, 0]
    assert _decode_all(tokenizer, batches[0])[:2] == [
        "a grey square number 4",
        "a grey square number 5",
    ]
    assert np.all(batches[0]["caption"][2:] == PAD_ID)
    np.testing.assert_allclose(batches[0]["image"][1], 100 / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize(
    "breakage, match",
    [
        ("no_jsonl", "captions.jsonl: no such file"),
        ("empty_caption", r"captions.jsonl:2: empty caption"),
        ("unreadable", r"1.png: cannot read the image"),
    ],
)
def test_captions_folder_bad_input_is_one_line_data_error(tmp_path, breakage, match):
    _write_folder(tmp_path)
    if breakage == "no_jsonl":
        (tmp_path / "captions.jsonl").unlink()
    elif breakage == "empty_caption":
        lines = (tmp_path / "captions.jsonl").read_text().splitlines()
        lines[1] = json.dumps({"file": "1.png", "caption": "  "})
        (tmp_path / "captions.jsonl").write_text("\n".join(lines))
    else:
        (tmp_path / "1.png").write_bytes(b"not a png")
    config = _config("captions_folder", folder=str(tmp_path), image_size=16)
    with pytest.raises(data.DataError, match=match) as error:
        data.get_info(config)
    assert "\n" not in str(error.value)


def test_captions_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="config.data.eval_captions"):
        data.check_config(_config("captioned_mnist", eval_captions="other"))
    with pytest.raises(ConfigError, match="config.data.folder"):
        data.check_config(_config("captions_folder", folder=str(tmp_path / "none")))
    with pytest.raises(ConfigError, match="config.data.pixels"):
        data.check_config(_config("captioned_mnist", pixels="binary"))
    with pytest.raises(ConfigError, match="config.data.augment"):
        data.check_config(_config("emoji", augment="flip"))


def test_saved_tokenizer_is_read_back_with_the_same_ids(tmp_path):
    _write_folder(tmp_path)
    config = _config("captions_folder", folder=str(tmp_path), image_size=16)
    tokenizer = data.load_tokenizer(config)
    tokenizer.save(tmp_path / "tokenizer.json")
    reloaded = data.load_tokenizer(_config(
        "captions_folder", folder=str(tmp_path), image_size=16,
        tokenizer=str(tmp_path / "tokenizer.json"),
    ))  # fmt: skip
    assert reloaded.fingerprint() == tokenizer.fingerprint()
    ids = captions_kind.encode_captions(reloaded, ["a grey square?", ""], 8)
    assert ids.shape == (2, 8) and np.all(ids[1] == PAD_ID) and ids[0, 0] != PAD_ID
    not_caption = tokenizers.CharTokenizer("ab")
    not_caption.save(tmp_path / "other.json")
    with pytest.raises(data.DataError, match="other.json: not a caption tokenizer"):
        data.load_tokenizer(_config(
            "captions_folder", folder=str(tmp_path), image_size=16,
            tokenizer=str(tmp_path / "other.json"),
        ))  # fmt: skip


class _FakeCoco:
    """coco_captions-like records: images of several sizes, several captions each."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = np.full((30 + i, 40, 3), 10 * i, np.uint8)
        texts = [f"picture {i} take {j}".encode() for j in range(1 + i % 3)]
        return {"image": image, "captions": {"text": np.array(texts), "id": np.arange(3)}}


def test_tfds_catalog_captions_on_mock_data(tmp_path, monkeypatch):
    # coco_captions' TFDS builder needs TensorFlow even under tfds.testing.mock_data, so the
    # mock replaces tfds.data_source itself with coco_captions-shaped records.
    sizes = {"train": 9, "test": 5}
    calls = []

    def fake_data_source(name, split, data_dir, download):
        calls.append((name, split))
        return _FakeCoco(sizes[split])

    monkeypatch.setattr(tfds, "data_source", fake_data_source)
    config = _config("coco_captions", tfds_dir=str(tmp_path), image_size=16)
    assert data.kind_of("coco_captions").name == "captions"
    info = data.get_info(config)
    assert info.image_shape == (16, 16, 3) and info.num_examples == {"train": 9, "test": 5}
    tokenizer = data.load_tokenizer(config)
    train = _take(data.make_iterator(config, "train", 4, 0, train=True), 6)
    for batch in train:
        for text in _decode_all(tokenizer, batch):
            assert text.startswith("picture ")
    texts = {text for batch in train for text in _decode_all(tokenizer, batch)}
    assert any(text.endswith("take 1") for text in texts)  # several captions drawn
    assert ("coco_captions", "train") in calls


def test_shift_scale_matches_a_per_pixel_bilinear_reference():
    rng = np.random.default_rng(3)
    images = rng.uniform(-1, 1, (2, 6, 5, 2)).astype(np.float32)
    out = emoji.shift_scale(images, np.random.default_rng(4), 1.5, 0.3)
    draws = np.random.default_rng(4)  # the same draws: scale, dy, dx
    scale = draws.uniform(0.7, 1.3, (2, 1))
    dy, dx = draws.uniform(-1.5, 1.5, (2, 1)), draws.uniform(-1.5, 1.5, (2, 1))

    def pixel(i, y, x, c):  # white off the image
        inside = 0 <= y < 6 and 0 <= x < 5
        return images[i, y, x, c] if inside else 1.0

    for i in range(2):
        for y in range(6):
            for x in range(5):
                sy = (y - 2.5 - dy[i, 0]) / scale[i, 0] + 2.5
                sx = (x - 2.0 - dx[i, 0]) / scale[i, 0] + 2.0
                y0, x0 = int(np.floor(sy)), int(np.floor(sx))
                wy, wx = sy - y0, sx - x0
                for c in range(2):
                    expected = (
                        (1 - wy) * (1 - wx) * pixel(i, y0, x0, c)
                        + (1 - wy) * wx * pixel(i, y0, x0 + 1, c)
                        + wy * (1 - wx) * pixel(i, y0 + 1, x0, c)
                        + wy * wx * pixel(i, y0 + 1, x0 + 1, c)
                    )
                    assert out[i, y, x, c] == pytest.approx(expected, abs=1e-5)
