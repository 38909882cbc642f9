"""Tokenizers for the GPT family: character level, and byte-level BPE through HF `tokenizers`.

    tokenizer = tokenizers.train_char(train_text)          # nanoGPT's shakespeare_char: vocab 65
    tokenizer = tokenizers.train_bpe(train_text, 4096)     # GPT-2 style byte-level BPE
    ids = tokenizer.encode(text)                           # int32 [n]
    assert tokenizer.decode(ids) == text                   # exact for both kinds
    tokenizer.save("tokenizer.json"); tokenizer = tokenizers.load("tokenizer.json")

Every tokenizer has encode, decode, vocab_size, eos_id (None for char), save and fingerprint (a
hash of what save writes, used to key token caches). `load` reads our character files
({"type": "char", ...}) and any HF `tokenizers` JSON file, e.g. GPT-2's tokenizer.json.

The character vocabulary is the sorted unique characters of the text it is trained on (the
training split), as in nanoGPT. A character outside it cannot round-trip; if the texts it must
also encode (the other splits, known when a dataset is prepared) contain such characters, one
extra id, "unknown", is appended and decodes to U+FFFD; otherwise encoding an unseen character is
an error (tiny shakespeare needs no unknown id: its validation characters all occur in train).

Deliberately left out: normalisation, padding, special-token handling beyond one end-of-text id,
and anything model-specific (padding the vocabulary for fast embeddings is the model's choice).
"""

import abc
import hashlib
import json
import os
import pathlib
import tempfile
from collections.abc import Iterable

import numpy as np
import tokenizers as hf

EOS_TOKEN = "<|endoftext|>"
UNKNOWN_TEXT = "\ufffd"  # what the char tokenizer's unknown id decodes to
MIN_BPE_VOCAB = 257  # the 256 byte symbols and <|endoftext|>
_CHAR_FORMAT = 1
_CHUNK_CHARS = 1 << 16  # characters per piece of a long text, encoded in parallel threads


def chunks(text: str, size: int):
    """Consecutive pieces of about `size` characters whose concatenation is `text`.

    Each cut comes right after a newline that has a non-space character on either side (a text
    with no such newline after `size` characters stays whole). GPT-2's pre-tokenizer regex, which
    byte-level BPE uses, ends a piece there both in the whole text and at the end of a chunk (a
    whitespace run ending a chunk would otherwise become one piece, e.g. "\\n\\n" instead of
    "\\n", "\\n"), so encoding the pieces gives exactly the ids of the whole text, and training on
    them the same merges.
    """
    start = 0
    while start < len(text):
        cut = text.find("\n", start + size)
        # Python's isspace() covers every Unicode White_Space character (the regex's \s).
        while cut != -1 and (text[cut - 1].isspace() or text[cut + 1 : cut + 2].isspace()):
            cut = text.find("\n", cut + 1)
        end = len(text) if cut == -1 else cut + 1
        yield text[start:end]
        start = end


class Tokenizer(abc.ABC):
    """Text <-> int32 token ids."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids: every id of encode() is in [0, vocab_size)."""

    @property
    @abc.abstractmethod
    def eos_id(self) -> int | None:
        """The end-of-text id, or None when the tokenizer has none."""

    @abc.abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """int32 ids [n] of `text`."""

    @abc.abstractmethod
    def decode(self, ids) -> str:
        """The text of a 1-D sequence of ids."""

    @abc.abstractmethod
    def to_json(self) -> str:
        """What save() writes."""

    def save(self, path: str | os.PathLike) -> None:
        """Writes the tokenizer as JSON, atomically (a reader never sees half a file)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def fingerprint(self) -> str:
        """A short hash of the saved form: equal fingerprints encode every text identically."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()[:16]


class CharTokenizer(Tokenizer):
    """One id per character of a fixed alphabet (ids follow the alphabet's sorted order)."""

    def __init__(self, chars: str, unknown: bool = False):
        if list(chars) != sorted(set(chars)):
            raise ValueError("CharTokenizer: chars must be sorted and distinct")
        if not chars:
            raise ValueError("CharTokenizer: empty alphabet")
        self.chars, self.unknown = chars, unknown
        self._unknown_id = len(chars) if unknown else -1
        codes = np.frombuffer(chars.encode("utf-32-le"), np.uint32)
        # A dense code point -> id table makes encoding one numpy gather (~1 ns per character).
        self._table = np.full(int(codes.max()) + 1, self._unknown_id, np.int32)
        self._table[codes] = np.arange(len(chars), dtype=np.int32)
        self._symbols = np.array(list(chars) + ([UNKNOWN_TEXT] if unknown else []), dtype=object)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + int(self.unknown)

    @property
    def eos_id(self) -> None:
        return None

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
        inside = codes < len(self._table)
        ids = np.full(len(codes), self._unknown_id, np.int32)
        ids[inside] = self._table[codes[inside]]
        if not self.unknown and len(ids) and ids.min() < 0:
            first = text[int(np.argmax(ids < 0))]
            raise ValueError(f"character {first!r} is not in the tokenizer's alphabet")
        return ids

    def decode(self, ids) -> str:
        ids = np.asarray(ids, np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        return "".join(self._symbols[ids])

    def to_json(self) -> str:
        return json.dumps(
            {"type": "char", "format": _CHAR_FORMAT, "chars": self.chars, "unknown": self.unknown},
            ensure_ascii=True,
        )


class HFTokenizer(Tokenizer):
    """A HF `tokenizers.Tokenizer` (our byte-level BPE, or any tokenizer.json such as GPT-2's)."""

    def __init__(self, tokenizer: hf.Tokenizer):
        self.hf = tokenizer
        self._eos_id = tokenizer.token_to_id(EOS_TOKEN)
        pre, post = tokenizer.pre_tokenizer, tokenizer.post_processor
        # Where chunks() cuts is a piece boundary only for GPT-2's pre-tokenizer, with nothing
        # that normalises the text or adds tokens around each encoded piece.
        self._chunkable = (
            tokenizer.normalizer is None
            and isinstance(pre, hf.pre_tokenizers.ByteLevel)
            and pre.use_regex
            and not pre.add_prefix_space
            and (post is None or isinstance(post, hf.processors.ByteLevel))
        )

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    def encode(self, text: str) -> np.ndarray:
        # A long text is encoded in chunks by parallel threads (HF releases the GIL), without
        # the character offsets that plain encode computes (half the time).
        pieces = (list(chunks(text, _CHUNK_CHARS)) if self._chunkable else []) or [text]
        encode_batch = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)
        return np.concatenate([np.asarray(e.ids, np.int32) for e in encode_batch(pieces)])

    def decode(self, ids) -> str:
        # Special tokens are text too: "<|endoftext|>" in a corpus must come back unchanged.
        ids = np.asarray(ids).reshape(-1).tolist()
        return self.hf.decode(ids, skip_special_tokens=False)

    def to_json(self) -> str:
        return self.hf.to_str()


def fixed_length(tokenizer: Tokenizer) -> int | None:
    """The length every encode() has, for a HF tokenizer that truncates and pads to one length
    (CLIP's: jaxgen.models.clip_pretrained.clip_bpe); else None."""
    if not isinstance(tokenizer, HFTokenizer):
        return None
    padding, truncation = tokenizer.hf.padding, tokenizer.hf.truncation
    if not padding or not truncation or padding.get("length") != truncation.get("max_length"):
        return None
    return padding["length"]


def train_char(train_text: str | Iterable[str], other_texts: Iterable[str] = ()) -> CharTokenizer:
    """The sorted unique characters of the training text (a str, or its consecutive parts), plus
    an unknown id if `other_texts` have characters outside them."""
    seen: set[str] = set()
    for part in (train_text,) if isinstance(train_text, str) else train_text:
        seen.update(part)
    unknown = any(not set(text) <= seen for text in other_texts)
    return CharTokenizer("".join(sorted(seen)), unknown=unknown)


def new_byte_level_bpe() -> hf.Tokenizer:
    """An untrained GPT-2 style byte-level BPE tokenizer (ByteLevel pre-tokenizer and decoder)."""
    tokenizer = hf.Tokenizer(hf.models.BPE())
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf.decoders.ByteLevel()
    return tokenizer


def train_bpe(train_text: str | Iterable[str], vocab_size: int) -> HFTokenizer:
    """A byte-level BPE of at most `vocab_size` ids (fewer if the text has too few merges).

    The training text is a str, or its consecutive parts cut as chunks() cuts (the records of
    our text datasets are), so that the merges are those of the whole text. Id 0 is
    <|endoftext|> (the eos id), 1..256 the bytes, then one id per merge. Training is
    deterministic: the same text and size give the same tokenizer, byte for byte.
    """
    if vocab_size < MIN_BPE_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} < {MIN_BPE_VOCAB} (256 bytes + {EOS_TOKEN})")
    tokenizer = new_byte_level_bpe()
    trainer = hf.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,  # a merge seen once only memorises the corpus
        special_tokens=[EOS_TOKEN],
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    parts = (train_text,) if isinstance(train_text, str) else train_text
    pieces = (piece for part in parts for piece in chunks(part, _CHUNK_CHARS))
    tokenizer.train_from_iterator(pieces, trainer=trainer)
    return HFTokenizer(tokenizer)


def from_json(text: str, origin: str = "tokenizer JSON") -> Tokenizer:
    """The tokenizer that to_json() wrote (ours or any HF `tokenizers` JSON)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{origin}: not JSON ({e})") from e
    if isinstance(data, dict) and data.get("type") == "char":
        if data.get("format") != _CHAR_FORMAT or not isinstance(data.get("chars"), str):
            raise ValueError(f"{origin}: unsupported char tokenizer format")
        return CharTokenizer(data["chars"], unknown=bool(data.get("unknown", False)))
    try:
        return HFTokenizer(hf.Tokenizer.from_str(text))
    except Exception as e:  # the Rust side raises plain Exception subclasses
        raise ValueError(f"{origin}: not a tokenizer file ({' '.join(str(e).split())})") from e


def load(path: str | os.PathLike) -> Tokenizer:
    """Reads a tokenizer.json: ours (char or BPE) or any HF `tokenizers` file, e.g. GPT-2's."""
    path = pathlib.Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read tokenizer ({e})") from e
    return from_json(text, str(path))
