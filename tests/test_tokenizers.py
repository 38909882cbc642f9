"""Tests of jaxgen.tokenizers: exact round trips, vocabulary sizes, determinism, save/load.

The character test uses the real tiny shakespeare from $JAXGEN_DATA_DIR (../shared/data) when
present (nanoGPT's vocabulary of 65), else a text written here.
"""

import json
import os
import pathlib

import numpy as np
import pytest
import tokenizers as hf

from jaxgen import tokenizers

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("JAXGEN_DATA_DIR") or REPO.parent / "shared" / "data")
TINY_SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"

UNICODE = (
    "Grüße aus Köln! Ça va? 日本語のテキスト, 中文, 한국어. Emoji: 🎉🚀👩‍👩‍👧 "
    "combining: e\u0301 a\u0308, RTL: שלום עולם, math: ∑∫√∞ ≠ ≤.\r\n"
    "\ttabs\t and   spaces   \n\n\n<|endoftext|>after eos\u00a0nbsp\u2028ls\x00nul\n"
)


def _corpus(num_lines: int = 3000) -> str:
    """A deterministic multilingual text with enough repetition for BPE merges."""
    rng = np.random.default_rng(0)
    syllables = ["ka", "ri", "no", "ß", "ü", "日", "本", "語", "🎉", "th", "e", "qu", "an", "7"]
    words = ["".join(rng.choice(syllables, int(rng.integers(1, 5)))) for _ in range(400)]
    words += [w.capitalize() for w in words[:50]] + [",", ".", "!", "'s", "  ", "\t"]
    lines = []
    for _ in range(num_lines):
        count = int(rng.integers(1, 12))
        lines.append(" ".join(words[i] for i in rng.integers(0, len(words), count)))
    return "\n".join(lines) + "\n" + UNICODE


@pytest.fixture(scope="module")
def char_text() -> tuple[str, bool]:
    if TINY_SHAKESPEARE.is_file():
        return TINY_SHAKESPEARE.read_text(encoding="utf-8"), True
    return UNICODE + _corpus(), False  # every character of the last 10% occurs before


def test_char_round_trips_the_whole_corpus(char_text):
    text, real = char_text
    train = text[: int(0.9 * len(text))]
    tokenizer = tokenizers.train_char(train, (text[len(train) :],))
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_id is None
    assert 0 <= ids.min() and ids.max() < tokenizer.vocab_size
    if real:
        assert tokenizer.vocab_size == 65  # nanoGPT's shakespeare_char
        assert not tokenizer.unknown  # every validation character occurs in train
        assert tokenizer.decode(tokenizer.encode("First Citizen:")) == "First Citizen:"
        assert tokenizer.encode("\n !")[:3].tolist() == [0, 1, 2]  # sorted, as nanoGPT


def test_char_ids_follow_sorted_characters():
    tokenizer = tokenizers.train_char("cab日a")
    assert tokenizer.chars == "abc日" and tokenizer.vocab_size == 4
    assert tokenizer.encode("日cab").tolist() == [3, 2, 0, 1]


def test_char_unknown_id_only_when_other_splits_need_it():
    assert tokenizers.train_char("abc", ("cab",)).vocab_size == 3
    tokenizer = tokenizers.train_char("abc", ("abd",))
    assert tokenizer.unknown and tokenizer.vocab_size == 4
    assert tokenizer.encode("adé").tolist() == [0, 3, 3]
    assert tokenizer.decode([0, 3]) == "a\ufffd"
    with pytest.raises(ValueError, match="'d' is not in the tokenizer's alphabet"):
        tokenizers.train_char("abc").encode("abd")
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 3\)"):
        tokenizers.train_char("abc").decode([3])


def test_char_save_load(tmp_path):
    tokenizer = tokenizers.train_char(UNICODE)
    tokenizer.save(tmp_path / "tokenizer.json")
    assert json.loads((tmp_path / "tokenizer.json").read_text())["type"] == "char"
    loaded = tokenizers.load(tmp_path / "tokenizer.json")
    assert isinstance(loaded, tokenizers.CharTokenizer)
    assert loaded.fingerprint() == tokenizer.fingerprint()
    assert loaded.decode(loaded.encode(UNICODE)) == UNICODE
    assert not list(tmp_path.glob(".*.part"))  # written atomically


@pytest.fixture(scope="module")
def bpe():
    return tokenizers.train_bpe(_corpus(), 400)


def test_bpe_round_trips_unicode(bpe):
    for text in [UNICODE, _corpus(50), "", " ", "\n", "never seen: ξψζ 🦜 ∂x", "a" * 1000]:
        ids = bpe.encode(text)
        assert ids.dtype == np.int32
        assert bpe.decode(ids) == text
    assert bpe.eos_id == 0
    assert bpe.encode("<|endoftext|>").tolist() == [0]


def test_bpe_vocab_size_is_respected(bpe):
    assert bpe.vocab_size == 400
    ids = bpe.encode(_corpus())
    assert 0 <= ids.min() and ids.max() < 400
    assert len(ids) < len(_corpus().encode("utf-8")) / 2  # the merges compress
    small = tokenizers.train_bpe("tiny text", 1000)  # too few merges to fill the vocabulary
    assert tokenizers.MIN_BPE_VOCAB <= small.vocab_size < 1000
    with pytest.raises(ValueError, match="vocab_size 256 < 257"):
        tokenizers.train_bpe("tiny text", 256)


def test_bpe_training_is_deterministic(bpe):
    again = tokenizers.train_bpe(_corpus(), 400)
    assert again.to_json() == bpe.to_json()
    np.testing.assert_array_equal(again.encode(UNICODE), bpe.encode(UNICODE))
    other = tokenizers.train_bpe(_corpus(), 300)
    assert other.fingerprint() != bpe.fingerprint()


def test_bpe_save_load(bpe, tmp_path):
    bpe.save(tmp_path / "tokenizer.json")
    loaded = tokenizers.load(tmp_path / "tokenizer.json")
    assert isinstance(loaded, tokenizers.HFTokenizer)
    assert loaded.fingerprint() == bpe.fingerprint()
    assert loaded.vocab_size == 400 and loaded.eos_id == 0
    np.testing.assert_array_equal(loaded.encode(UNICODE), bpe.encode(UNICODE))


def test_load_reads_any_hf_tokenizer_file(tmp_path):
    # A file written by HF itself, with no <|endoftext|>: a WordLevel model, as GPT-2's file is
    # read the same way (tokenizers.Tokenizer.from_str).
    model = hf.models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]")
    tokenizer = hf.Tokenizer(model)
    tokenizer.pre_tokenizer = hf.pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = tokenizers.load(tmp_path / "tokenizer.json")
    assert loaded.vocab_size == 3 and loaded.eos_id is None
    assert loaded.encode("hello there world").tolist() == [1, 0, 2]


def test_load_rejects_what_is_not_a_tokenizer(tmp_path):
    (tmp_path / "bad.json").write_text('{"type": "wordpiece-of-my-own"}')
    with pytest.raises(ValueError, match="bad.json: not a tokenizer file"):
        tokenizers.load(tmp_path / "bad.json")
    (tmp_path / "text.json").write_text("no json here")
    with pytest.raises(ValueError, match="text.json: not JSON"):
        tokenizers.load(tmp_path / "text.json")
    with pytest.raises(ValueError, match="missing.json: cannot read tokenizer"):
        tokenizers.load(tmp_path / "missing.json")


def test_chunked_encoding_equals_whole_text(monkeypatch):
    # Blank lines, indented lines and runs of whitespace: where a careless cut changes the ids.
    rng = np.random.default_rng(2)
    kinds = ["", " ", "  indented", "\tTab", "word here", "日本", "\r", "🎉 x", "  \n", "42"]
    content = "\n".join(rng.choice(kinds, 3000)) + "\n"
    monkeypatch.setattr(tokenizers, "_CHUNK_CHARS", 1 << 30)  # whole, whatever the default
    bpe = tokenizers.train_bpe(content, 300)
    whole = np.asarray(bpe.hf.encode(content).ids)
    assert len(list(tokenizers.chunks(content, 97))) > 20
    assert "".join(tokenizers.chunks(content, 97)) == content
    monkeypatch.setattr(tokenizers, "_CHUNK_CHARS", 97)
    np.testing.assert_array_equal(bpe.encode(content), whole)
    # Training on the chunks learns the merges of the whole text.
    assert tokenizers.train_bpe(content, 300).to_json() == bpe.to_json()
