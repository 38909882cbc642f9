"""Tests of the text datasets (jaxgen.data.text) and their pipelines: preparing tiny shakespeare
and text files, tokenizer and token caches, train windows (contiguous, deterministic, resumable,
different per host), the exact eval pass, and DataError / ConfigError messages.

Hermetic: the network is stubbed out. Tiny shakespeare comes from $JAXGEN_DATA_DIR
(../shared/data) when present; everything else runs on text that the tests write.
"""

import io
import json
import os
import pathlib
import shutil
import sys

import jax
import numpy as np
import pytest

from jaxgen import tokenizers
from jaxgen.config import ConfigError, base_config
from jaxgen.data import (
    TEXT_DATASETS,
    DataError,
    DatasetInfo,
    check_config,
    get_info,
    load_tokenizer,
    make_iterator,
    raw,
    text,
)
from tests.conftest import need_shared_data
from tests.helpers import run_concurrently

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("JAXGEN_DATA_DIR") or REPO.parent / "shared" / "data")
TINY_SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"
NEED_TINY_SHAKESPEARE = pytest.mark.shared_data(TINY_SHAKESPEARE.name)
TEXT_FIELDS = dict(seq_len=8, tokenizer="char", vocab_size=0, val_fraction=0.1, text_file="")


def _config(**overrides):
    """config.data with the text fields (the lead adds them to base_config with these names)."""
    config = base_config().data
    for field, value in TEXT_FIELDS.items():
        if field not in config:
            config[field] = value
    config.update(dict(TEXT_FIELDS, eval_split="validation"))
    config.update(overrides)
    return config


def _with(config, **overrides):
    config = config.copy_and_resolve_references()
    config.update(overrides)
    return config


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _as_host(monkeypatch, index, count):
    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(jax, "process_count", lambda: count)


def _sample_text(num_lines: int = 600) -> str:
    rng = np.random.default_rng(1)
    words = ["to", "be", "or", "not", "König", "naïve", "日本", "🎉", "thee", "Romeo", "—", "42"]
    lines = [" ".join(rng.choice(words, int(rng.integers(1, 9)))) for _ in range(num_lines)]
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def no_urlopen(url, timeout):
        raise OSError(f"network disabled in tests ({url})")

    monkeypatch.setattr(raw, "_urlopen", no_urlopen)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """(config.data of a prepared text_file dataset, its text)."""
    folder = tmp_path_factory.mktemp("text")
    content = _sample_text()
    (folder / "sample.txt").write_text(content, encoding="utf-8")
    config = _config(
        name="text_file", text_file=str(folder / "sample.txt"), tfds_dir=str(folder / "tfds")
    )
    get_info(config)
    return config, content


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    need_shared_data(TINY_SHAKESPEARE.name)
    config = _config(
        name="tiny_shakespeare",
        source_dir=str(SHARED_DATA),
        tfds_dir=str(tmp_path_factory.mktemp("tfds")),
    )
    get_info(config)
    return config


def _split_tokens(config, split):
    dataset = text.TextDataset(config)
    return np.asarray(dataset.tokens(split)), dataset.tokenizer


# ----------------------------------------------------------------------------- datasets


def test_registry_names():
    assert TEXT_DATASETS.names() == ["text_file", "tiny_shakespeare"]
    # TFDS's catalog has its own tiny_shakespeare; ours is a different builder.
    assert TEXT_DATASETS.get("tiny_shakespeare").name == "jaxgen_tiny_shakespeare"
    check_config(_config(name="tiny_shakespeare"))


@NEED_TINY_SHAKESPEARE
def test_tiny_shakespeare_splits_as_nanogpt(shakespeare):
    content = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    num_train = int(0.9 * len(content))
    info = get_info(shakespeare)
    assert info == DatasetInfo(
        (), 0, {"train": num_train, "validation": len(content) - num_train}, 65
    )
    assert (num_train, len(content) - num_train) == (1003854, 111540)
    train, tokenizer = _split_tokens(shakespeare, "train")
    validation, _ = _split_tokens(shakespeare, "validation")
    assert train.dtype == np.uint16  # compact on disk; batches are int32
    assert tokenizer.decode(train) + tokenizer.decode(validation) == content
    assert load_tokenizer(shakespeare).fingerprint() == tokenizer.fingerprint()


@NEED_TINY_SHAKESPEARE
def test_tiny_shakespeare_found_as_input_txt(tmp_path, monkeypatch):
    monkeypatch.delenv(raw.DATA_DIR_ENV, raising=False)
    source = tmp_path / "source"
    (source / "tinyshakespeare").mkdir(parents=True)
    shutil.copy(TINY_SHAKESPEARE, source / "tinyshakespeare" / "input.txt")
    config = _config(name="tiny_shakespeare", source_dir=str(source), tfds_dir=str(tmp_path))
    assert get_info(config).num_examples == {"train": 1003854, "validation": 111540}


def test_tiny_shakespeare_checks_what_it_finds(tmp_path, monkeypatch):
    monkeypatch.delenv(raw.DATA_DIR_ENV, raising=False)
    (tmp_path / "input.txt").write_text("To be, or not to be\n")
    config = _config(name="tiny_shakespeare", source_dir=str(tmp_path), tfds_dir=str(tmp_path))
    with pytest.raises(DataError, match=f"{tmp_path}/input.txt: 20 bytes, but tiny shakespeare"):
        get_info(config)


def test_tiny_shakespeare_missing_everywhere(tmp_path, monkeypatch):
    monkeypatch.delenv(raw.DATA_DIR_ENV, raising=False)
    config = _config(name="tiny_shakespeare", tfds_dir=str(tmp_path))
    with pytest.raises(DataError) as error:
        get_info(config)
    message = str(error.value)
    assert message.startswith("tiny_shakespeare: could not obtain tinyshakespeare.txt")
    assert text.TINY_SHAKESPEARE_URL in message and "network disabled" in message
    assert "\n" not in message
    assert not text.JaxgenTinyShakespeare(data_dir=str(tmp_path)).is_prepared()


@NEED_TINY_SHAKESPEARE
def test_tiny_shakespeare_download_into_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(raw.DATA_DIR_ENV, raising=False)
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return io.BytesIO(TINY_SHAKESPEARE.read_bytes())

    monkeypatch.setattr(raw, "_urlopen", fake_urlopen)
    config = _config(name="tiny_shakespeare", tfds_dir=str(tmp_path))
    assert get_info(config).vocab_size == 65
    assert urls == [text.TINY_SHAKESPEARE_URL]
    cached = tmp_path / "downloads" / "jaxgen" / "tiny_shakespeare" / "tinyshakespeare.txt"
    assert cached.read_bytes() == TINY_SHAKESPEARE.read_bytes()


def test_text_file_splits_by_val_fraction(sample):
    config, content = sample
    num_train = int(0.9 * len(content))
    info = get_info(config)
    assert info.num_examples == {"train": num_train, "validation": len(content) - num_train}
    assert info.image_shape == () and info.num_classes == 0
    train, tokenizer = _split_tokens(config, "train")
    validation, _ = _split_tokens(config, "validation")
    assert tokenizer.decode(train) == content[:num_train]
    assert tokenizer.decode(validation) == content[num_train:]
    assert info.vocab_size == tokenizer.vocab_size == len(set(content[:num_train]))


def test_text_file_that_is_not_utf8_is_a_data_error(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("plain, then caf\xe9 au lait\n".encode("latin-1"))
    config = _config(
        name="text_file", text_file=str(tmp_path / "latin1.txt"), tfds_dir=str(tmp_path)
    )
    with pytest.raises(DataError) as error:
        get_info(config)
    assert str(error.value).startswith(
        f"{tmp_path}/latin1.txt: not UTF-8 text: invalid byte 0xe9 at byte offset 15"
    )
    assert "\n" not in str(error.value)


def test_missing_text_file_is_a_data_error(tmp_path):
    config = _config(name="text_file", text_file=str(tmp_path / "nope.txt"), tfds_dir=str(tmp_path))
    with pytest.raises(DataError, match=f"^{tmp_path}/nope.txt: no such text file"):
        get_info(config)


def test_unusable_text_files_are_data_errors(tmp_path):
    (tmp_path / "folder.txt").mkdir()
    (tmp_path / "empty.txt").write_text("")
    for name, message in [
        ("folder.txt", "cannot read text file"),
        ("empty.txt", "0 characters leave the train split empty"),
    ]:
        config = _config(name="text_file", text_file=str(tmp_path / name), tfds_dir=str(tmp_path))
        with pytest.raises(DataError, match=f"^{tmp_path}/{name}: {message}"):
            get_info(config)


def test_bad_tokenizer_file_is_a_data_error(sample, tmp_path):
    config, _ = sample
    (tmp_path / "tokenizer.json").write_text("{not json")
    config = _with(config, tokenizer=str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataError, match=f"^{tmp_path}/tokenizer.json: not JSON"):
        load_tokenizer(config)


def test_editing_a_text_file_prepares_it_afresh(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("abc\n" * 100)
    config = _config(name="text_file", text_file=str(path), tfds_dir=str(tmp_path))
    assert get_info(config).vocab_size == 4
    path.write_text("abcd\n" * 100)
    assert get_info(config).vocab_size == 5


# ----------------------------------------------------------------------------- tokenizers


def test_bpe_tokenizer_is_trained_once_on_train(sample, monkeypatch):
    config, content = sample
    config = _with(config, tokenizer="bpe", vocab_size=300)
    calls = []
    original = tokenizers.train_bpe

    def counting(train_text, vocab_size):
        parts = list(train_text)
        calls.append("".join(parts))
        return original(parts, vocab_size)

    monkeypatch.setattr(tokenizers, "train_bpe", counting)
    info = get_info(config)
    tokenizer = load_tokenizer(config)
    assert calls == [content[: int(0.9 * len(content))]]  # trained once, on train only
    assert info.vocab_size == tokenizer.vocab_size <= 300 and tokenizer.eos_id == 0
    train, _ = _split_tokens(config, "train")
    assert tokenizer.decode(train) == calls[0]
    assert info.num_examples["train"] == len(train) < len(calls[0]) / 2


def test_char_vocabulary_comes_from_train(tmp_path):
    content = _sample_text(100)
    content = content + "Ωmega\n" * (len(content) // 60)  # only in the last 10%: validation
    (tmp_path / "t.txt").write_text(content)
    config = _config(name="text_file", text_file=str(tmp_path / "t.txt"), tfds_dir=str(tmp_path))
    num_train = int(0.9 * len(content))
    assert "Ω" not in content[:num_train]
    tokenizer = load_tokenizer(config)
    assert tokenizer.unknown and tokenizer.vocab_size == len(set(content[:num_train])) + 1
    validation, _ = _split_tokens(config, "validation")
    decoded = tokenizer.decode(validation)
    assert decoded == content[num_train:].replace("Ω", "\ufffd")


def test_many_records_give_the_same_tokenizer_and_tokens(tmp_path, monkeypatch):
    content = _sample_text(400).replace("o", "o\n\n  ")  # whitespace runs at many line ends
    (tmp_path / "t.txt").write_text(content)
    config = _config(
        name="text_file", text_file=str(tmp_path / "t.txt"), tfds_dir=str(tmp_path / "tfds"),
        tokenizer="bpe", vocab_size=300,
    )  # fmt: skip
    monkeypatch.setattr(text, "_RECORD_CHARS", 300)
    dataset = text.TextDataset(config)
    assert len(list(dataset.records("train"))) > 20
    num_train = int(0.9 * len(content))
    whole = tokenizers.train_bpe(content[:num_train], 300)
    assert dataset.tokenizer.to_json() == whole.to_json()
    np.testing.assert_array_equal(dataset.tokens("train"), whole.encode(content[:num_train]))


def test_interrupted_tokenization_leaves_nothing(sample, tmp_path, monkeypatch):
    config, content = sample
    config = _with(config, tfds_dir=str(tmp_path))

    def crash(self, text):
        raise RuntimeError("killed while tokenizing")

    with monkeypatch.context() as patch:
        patch.setattr(tokenizers.CharTokenizer, "encode", crash)
        with pytest.raises(RuntimeError, match="killed while tokenizing"):
            get_info(config)
    assert not list(tmp_path.glob("jaxgen_tokens/**/*.npy"))
    assert not list(tmp_path.glob("jaxgen_tokens/**/*.part"))
    assert get_info(config).num_examples["train"] == int(0.9 * len(content))


def test_damaged_token_cache_is_a_data_error(sample, tmp_path):
    config, _ = sample
    config = _with(config, tfds_dir=str(tmp_path))
    get_info(config)
    text.clear_cache()
    (path,) = tmp_path.glob("jaxgen_tokens/**/train.npy")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=f"^{path}: cannot read cached token ids"):
        get_info(config)


def test_no_tensorflow_needed(sample, tmp_path):
    if "tensorflow" in sys.modules:
        pytest.skip("something imported tensorflow earlier in this session")
    config, _ = sample
    config = _with(config, tfds_dir=str(tmp_path))
    assert get_info(config).vocab_size > 0
    assert next(make_iterator(config, "train", 8, 0, train=True))["tokens"].shape == (8, 9)
    assert "tensorflow" not in sys.modules


def test_tokenizer_from_a_path(sample, tmp_path):
    config, content = sample
    tokenizer = tokenizers.train_char(content + "¿")
    tokenizer.save(tmp_path / "tokenizer.json")
    config = _with(config, tokenizer=str(tmp_path / "tokenizer.json"))
    assert load_tokenizer(config).fingerprint() == tokenizer.fingerprint()
    assert get_info(config).vocab_size == tokenizer.vocab_size
    batch = next(make_iterator(config, "train", 4, 0, train=True))
    assert batch["tokens"].max() < tokenizer.vocab_size


def test_concurrent_preparation_trains_once(tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_text(_sample_text(200))
    config = _config(
        name="text_file", text_file=str(tmp_path / "t.txt"), tfds_dir=str(tmp_path / "tfds")
    )
    calls = []
    original = tokenizers.train_char
    monkeypatch.setattr(tokenizers, "train_char", lambda *a: calls.append(1) or original(*a))
    results = run_concurrently(lambda: get_info(config))
    assert calls == [1] and results[0] == results[1]


# ----------------------------------------------------------------------------- train windows


def test_train_windows_are_contiguous_slices(sample):
    config, _ = sample
    train, _ = _split_tokens(config, "train")
    windows = np.lib.stride_tricks.sliding_window_view(train.astype(np.int32), 9)  # [N - 8, 9]
    batches = _take(make_iterator(config, "train", 16, 0, train=True), 4)
    starts = []
    for batch in batches:
        assert set(batch) == {"tokens"}
        assert batch["tokens"].shape == (16, 9) and batch["tokens"].dtype == np.int32
        for row in batch["tokens"]:
            (matches,) = np.nonzero((windows == row).all(axis=1))
            assert len(matches) >= 1
            starts.append(matches[0])
    assert len(set(starts)) > 60  # 64 random starts among ~17k


def test_train_windows_reach_both_ends(sample):
    config, _ = sample
    config = _with(config, seq_len=3)
    train, _ = _split_tokens(config, "train")
    config = _with(config, seq_len=len(train) - 2)  # starts 0 and 1 only
    rows = np.concatenate(
        [b["tokens"] for b in _take(make_iterator(config, "train", 8, 0, train=True), 4)]
    )
    firsts = {tuple(r) for r in rows}
    assert firsts == {tuple(train[:-1]), tuple(train[1:])}


def test_train_is_deterministic_from_the_seed(sample):
    config, _ = sample
    a = _take(make_iterator(config, "train", 8, 0, train=True), 3)
    b = _take(make_iterator(config, "train", 8, 0, train=True), 3)
    c = _take(make_iterator(config, "train", 8, 1, train=True), 3)
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
        assert not np.array_equal(x["tokens"], z["tokens"])
    assert not np.array_equal(a[0]["tokens"], a[1]["tokens"])


def test_train_resumes_from_json_state(sample):
    config, _ = sample
    iterator = make_iterator(config, "train", 8, 3, train=True)
    _take(iterator, 5)
    state = json.loads(json.dumps(iterator.get_state()))
    assert state == {"next_index": 5}
    expected = _take(iterator, 3)
    resumed = make_iterator(config, "train", 8, 3, train=True)
    resumed.set_state(state)
    for x, y in zip(expected, _take(resumed, 3), strict=True):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])


def test_hosts_draw_different_windows(sample, monkeypatch):
    config, _ = sample
    batches = []
    for host in range(2):
        _as_host(monkeypatch, host, 2)
        batch = next(make_iterator(config, "train", 16, 0, train=True))
        assert batch["tokens"].shape == (8, 9)  # this host's half of the global batch
        np.testing.assert_array_equal(
            batch["tokens"], next(make_iterator(config, "train", 16, 0, train=True))["tokens"]
        )
        batches.append(batch["tokens"])
    assert not np.array_equal(batches[0], batches[1])


# ----------------------------------------------------------------------------- eval pass


def _eval_starts(config, split, batch_size, seed=0):
    """The start of each real window of the eval pass, in order, and the batches."""
    train, _ = _split_tokens(config, split)
    batches = list(make_iterator(config, split, batch_size, seed, train=False))
    seq_len = config.seq_len
    starts = []
    for batch in batches:
        assert batch["tokens"].shape == (batch_size // jax.process_count(), seq_len + 1)
        assert batch["mask"].dtype == np.float32
        for row, real in zip(batch["tokens"], batch["mask"], strict=True):
            if real:
                (matches,) = np.nonzero(
                    (np.lib.stride_tricks.sliding_window_view(train, seq_len + 1) == row).all(1)
                )
                matches = matches[matches % seq_len == 0]  # non-overlapping windows: stride T
                assert len(matches) >= 1
                starts.append(int(matches[0]))
            else:
                assert not row.any()
    return starts, batches


def test_eval_pass_covers_every_window_once(sample):
    config, _ = sample
    validation, _ = _split_tokens(config, "validation")
    num_windows = (len(validation) - 1) // 8
    starts, batches = _eval_starts(config, "validation", 64)
    assert sorted(starts) == list(range(0, num_windows * 8, 8))
    assert len(batches) == -(-num_windows // 64)
    assert sum(b["mask"].sum() for b in batches) == num_windows
    padding = len(batches) * 64 - num_windows
    np.testing.assert_array_equal(
        batches[-1]["mask"], np.repeat([1.0, 0.0], [64 - padding, padding])
    )
    # A fixed order, spread over the split: the same for any batch size and seed.
    other, _ = _eval_starts(config, "validation", 24, seed=7)
    assert other == starts
    assert starts != sorted(starts) and max(starts[:10]) > len(validation) // 2


def test_eval_resumes_from_json_state(sample):
    config, _ = sample
    iterator = make_iterator(config, "validation", 16, 0, train=False)
    first = _take(iterator, 2)
    state = json.loads(json.dumps(iterator.get_state()))
    rest = list(iterator)
    resumed = make_iterator(config, "validation", 16, 0, train=False)
    resumed.set_state(state)
    again = list(resumed)
    assert len(first) + len(rest) == len(
        list(make_iterator(config, "validation", 16, 0, train=False))
    )
    assert len(again) == len(rest) > 0
    for x, y in zip(rest, again, strict=True):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
        np.testing.assert_array_equal(x["mask"], y["mask"])


def test_eval_pass_split_across_hosts(sample, monkeypatch):
    config, _ = sample
    single, _ = _eval_starts(config, "validation", 16)
    per_host, num_batches = [], set()
    for host in range(2):
        _as_host(monkeypatch, host, 2)
        starts, batches = _eval_starts(config, "validation", 16)
        per_host.append(starts)
        num_batches.add(len(batches))
    assert len(num_batches) == 1  # every host runs the same number of steps
    assert sorted(per_host[0] + per_host[1]) == sorted(single)
    assert per_host[0] == single[0::2] and per_host[1] == single[1::2]


# ----------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"seq_len": 0}, "config.data.seq_len"),
        ({"tokenizer": "wordpiece"}, "config.data.tokenizer"),
        ({"tokenizer": "/no/such/tokenizer.json"}, "config.data.tokenizer"),
        ({"tokenizer": "bpe", "vocab_size": 100}, "config.data.vocab_size"),
        (
            {"name": "text_file", "text_file": "x.txt", "val_fraction": 0.0},
            "config.data.val_fraction",
        ),
        (
            {"name": "text_file", "text_file": "x.txt", "val_fraction": 1.5},
            "config.data.val_fraction",
        ),
        ({"name": "text_file", "text_file": ""}, "config.data.text_file"),
        ({"eval_split": "test"}, "config.data.eval_split"),
        ({"train_split": "train[:50%]"}, "config.data.train_split"),
    ],
)
def test_check_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as error:
        check_config(_config(**{"name": "tiny_shakespeare", **overrides}))
    assert str(error.value).startswith(field + ":")


def test_missing_text_field_is_named():
    config = _config(name="tiny_shakespeare")
    del config["seq_len"]  # e.g. a config.json written before the text fields existed
    with pytest.raises(ConfigError, match="^config.data.seq_len: missing"):
        check_config(config)


def test_load_tokenizer_needs_a_text_dataset():
    with pytest.raises(ConfigError, match="^config.data.name: 'mnist' is not a text dataset"):
        load_tokenizer(_config(name="mnist", eval_split="test"))


def test_seq_len_longer_than_the_split(sample):
    config, _ = sample
    config = _with(config, seq_len=10**6)
    with pytest.raises(ConfigError, match="^config.data.seq_len: 1000000 \\+ 1 tokens are more"):
        make_iterator(config, "validation", 8, 0, train=False)
