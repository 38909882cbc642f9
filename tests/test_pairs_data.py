"""The "pairs" kind: TSV parsing and errors, hash splits, shared BPE, batches, catalog route."""

import hashlib
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxgen import data
from jaxgen.config import ConfigError, base_config
from jaxgen.data import DataError, pairs, pairs_kind
from tests.conftest import need_shared_data
from tests.helpers import load_config

_ROWS = [
    (f"r{i}", f"hola mundo numero {i} casa", f"hello world number {i} house") for i in range(300)
]


def _write_tsv(path, rows=_ROWS, header="id\tes\ten"):
    path.write_text(header + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _config(tmp_path, **overrides):
    config = base_config().data
    config.update(data.kind_fields("pairs"))
    config.update(
        name="tsv",
        train_split="train",
        eval_split="validation",
        tfds_dir=str(tmp_path / "tfds"),
        vocab_size=300,
        source_len=12,
        target_len=10,
        val_fraction=0.1,
        test_fraction=0.1,
    )
    config.update(overrides)
    return config


@pytest.fixture(autouse=True)
def _fresh():
    pairs_kind.clear_cache()
    yield
    pairs_kind.clear_cache()


def test_split_of_is_a_hash_of_the_id_only():
    splits = [pairs.split_of(f"r{i}", 0.1, 0.2) for i in range(3000)]
    counts = {s: splits.count(s) for s in pairs.SPLITS}
    assert abs(counts["validation"] / 3000 - 0.1) < 0.03 and abs(counts["test"] / 3000 - 0.2) < 0.03
    # Independent re-computation: the first 8 bytes of sha256, big-endian, over 2**64.
    position = int.from_bytes(hashlib.sha256(b"r7").digest()[:8], "big") / 2.0**64
    expected = "validation" if position < 0.1 else "test" if position < 0.3 else "train"
    assert pairs.split_of("r7", 0.1, 0.2) == expected


def test_rows_never_move_when_the_file_grows(tmp_path):
    small = pairs.read_pairs(_config(tmp_path), _write_tsv(tmp_path / "a.tsv", _ROWS[:200]))
    big = pairs.read_pairs(_config(tmp_path), _write_tsv(tmp_path / "b.tsv"))
    for split in pairs.SPLITS:
        assert big[split][: len(small[split])] == small[split]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "a.tsv:1: no header row"),
        (b"id\tes\tfr\nx\thola\tsalut\n", "a.tsv:1: no column 'en' (config.data.target)"),
        (b"id\tes\ten\nx\thola\thello\ny\t\thi\n", "a.tsv:3: empty cell in column 'es'"),
        (b"id\tes\ten\nx\thola\n", "a.tsv:2: 2 cells, the header has 3"),
        (b"id\tes\tes\ten\nx\thola\tsalut\thello\n", "a.tsv:1: column 'es' named more than once"),
        (b"en\tid\tes\ten\tid\nhi\tx\thola\thello\ty\n", "a.tsv:1: column 'en', 'id' named"),
        (
            b"id\tes\ten\nx\thola\thello\ny\thol\xe1\thi\n",
            "a.tsv:3: not UTF-8 text: invalid byte 0xe1",
        ),
    ],
)
def test_bad_files_are_one_line_errors_naming_file_and_line(tmp_path, content, message):
    (tmp_path / "a.tsv").write_bytes(content)
    config = _config(tmp_path, text_file=str(tmp_path / "a.tsv"))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        data.get_info(config)
    assert "\n" not in str(error.value)


def test_a_byte_order_mark_changes_no_row_split(tmp_path):
    """Excel writes a UTF-8 BOM first: the `id` column must still key every row's split."""
    plain = _write_tsv(tmp_path / "plain.tsv")
    marked = tmp_path / "marked.tsv"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    with_bom = pairs.read_pairs(_config(tmp_path), marked)
    assert with_bom == pairs.read_pairs(_config(tmp_path), plain)
    by_id = {split: [] for split in pairs.SPLITS}
    for row_id, source, target in _ROWS:  # keyed by the id (the texts would give other splits)
        by_id[pairs.split_of(row_id, 0.1, 0.1)].append((source, target))
    assert with_bom == by_id


def test_missing_file_and_bad_fields(tmp_path):
    with pytest.raises(DataError, match="no such TSV file"):
        data.get_info(_config(tmp_path, text_file=str(tmp_path / "none.tsv")))
    with pytest.raises(ConfigError, match="config.data.text_file"):
        data.check_config(_config(tmp_path))
    with pytest.raises(ConfigError, match="config.data.source_len"):
        data.check_config(_config(tmp_path, text_file="x", source_len=1))
    with pytest.raises(ConfigError, match="config.data.eval_split"):
        data.check_config(_config(tmp_path, text_file="x", eval_split="dev"))


def test_batches_tokenizer_and_padding(tmp_path):
    config = _config(tmp_path, text_file=str(_write_tsv(tmp_path / "a.tsv")))
    info = data.get_info(config)
    assert data.kind_of("tsv").name == "pairs"
    tokenizer = data.load_tokenizer(config)
    pad, eos = pairs.pad_id(tokenizer), tokenizer.eos_id
    assert info.vocab_size == tokenizer.vocab_size == pad + 1 and eos == 0
    split = pairs.read_pairs(config, tmp_path / "a.tsv")
    assert sum(info.num_examples.values()) == len(split["train"]) + len(split["validation"])
    batches = list(data.make_iterator(config, "validation", 8, 0, train=False))
    n = len(split["validation"])
    assert sum(b["mask"].sum() for b in batches) == n
    source = np.concatenate([b["source"] for b in batches])[:n]
    target = np.concatenate([b["target"] for b in batches])[:n]
    assert source.shape[1] == 12 and target.shape[1] == 11 and source.dtype == np.int32
    for row, (es, en) in zip(range(n), split["validation"], strict=True):
        ids = tokenizer.encode(es).tolist() + [eos]
        np.testing.assert_array_equal(source[row], (ids + [pad] * 12)[:12])
        ids = [eos] + tokenizer.encode(en).tolist() + [eos]
        np.testing.assert_array_equal(target[row], (ids + [pad] * 11)[:11])
        assert tokenizer.decode(target[row][1 : target[row].tolist().index(eos, 1)]) == en
    train = data.make_iterator(config, "train", 16, 0, train=True)
    again = data.make_iterator(config, "train", 16, 0, train=True)
    for _ in range(3):
        a, b = next(train), next(again)
        np.testing.assert_array_equal(a["target"], b["target"])
        assert a["source"].shape == (16, 12) and "mask" not in a


def test_bible_is_found_and_split(tmp_path):
    need_shared_data(pairs.BIBLE_FILE)
    config = _config(tmp_path, name="bible_es_en", vocab_size=2000)
    path = pairs.find_file(config)
    rows = pairs.read_pairs(config, path)
    assert sum(map(len, rows.values())) == 30120
    assert (
        rows["train"][0]
        == (
            "EN el principio crió Dios los cielos y la tierra.",
            "In the beginning God created the heaven and the earth.",
        )
        or len(rows["train"]) > 20000
    )


def test_catalog_route_with_tfds_mock_data(tmp_path):
    config = _config(tmp_path, name="wmt14_translate/de-en", source="de", target="en")
    config.update(vocab_size=400, eval_split="test")
    assert data.kind_of(config.name).name == "pairs"
    with tfds.testing.mock_data(num_examples=40):
        info = data.get_info(config)
        batch = next(data.make_iterator(config, "train", 8, 0, train=True))
    assert info.num_examples == {"train": 40, "test": 40}
    assert batch["source"].shape == (8, 12) and batch["target"].shape == (8, 11)
    bad = _config(tmp_path, name="wmt14_translate/de-en", source="fr", target="en")
    with tfds.testing.mock_data(num_examples=8), pytest.raises(ConfigError, match="data.source"):
        data.get_info(bad)


def test_without_an_id_column_the_row_texts_key_the_split(tmp_path):
    path = _write_tsv(tmp_path / "a.tsv", [r[1:] for r in _ROWS], header="es\ten")
    split = pairs.read_pairs(_config(tmp_path), path)
    for source, target in split["validation"]:
        assert pairs.split_of(f"{source}\t{target}", 0.1, 0.1) == "validation"
    assert sum(map(len, split.values())) == len(_ROWS)


def _pair_ids(tokenizer, es, en):
    """An independent encoding of one pair: (source ids + eos, eos + target ids + eos)."""
    eos = tokenizer.eos_id
    return tokenizer.encode(es).tolist() + [eos], [eos] + tokenizer.encode(en).tolist() + [eos]


def test_pack_pairs_places_each_pair_once_within_the_lengths():
    rng = np.random.default_rng(1)
    source_lengths, target_lengths = rng.integers(1, 11, 500), rng.integers(1, 9, 500)
    order = rng.permutation(500)
    rows = pairs.pack_pairs(source_lengths, target_lengths, order, 12, 10, window=4)
    placed = [pair for row in rows for pair in row]
    assert sorted(placed) == list(range(500))  # every pair exactly once
    for row in rows:
        assert source_lengths[row].sum() <= 12 and target_lengths[row].sum() <= 10
    # A plain-Python first fit over the last 4 rows opened gives the same rows.
    reference, fill = [], []
    for pair in order:
        for index in range(max(0, len(reference) - 4), len(reference)):
            if (
                fill[index][0] + source_lengths[pair] <= 12
                and fill[index][1] + target_lengths[pair] <= 10
            ):
                break
        else:
            index = len(reference)
            reference.append([])
            fill.append([0, 0])
        reference[index].append(pair)
        fill[index][0] += source_lengths[pair]
        fill[index][1] += target_lengths[pair]
    assert rows == reference


def test_packed_train_batches_hold_whole_pairs_and_resume_exactly(tmp_path):
    config = _config(tmp_path, text_file=str(_write_tsv(tmp_path / "a.tsv")), pack=True)
    config.source_len, config.target_len = 24, 20
    tokenizer = data.load_tokenizer(config)
    pad = pairs.pad_id(tokenizer)
    split = pairs.read_pairs(config, tmp_path / "a.tsv")
    expected = {_pair_ids(tokenizer, es, en)[0].__repr__(): _pair_ids(tokenizer, es, en)
                for es, en in split["train"]}  # fmt: skip
    iterator = data.make_iterator(config, "train", 8, 0, train=True)
    batches = [next(iterator) for _ in range(40)]  # several epochs
    seen, real = [], 0
    for batch in batches:
        assert batch["source"].shape == (8, 24) and batch["target"].shape == (8, 21)
        assert batch["target_segment"].shape == batch["target_position"].shape == (8, 20)
        for row in range(8):
            source, target = batch["source"][row], batch["target"][row]
            segments = batch["source_segment"][row]
            assert target[0] == tokenizer.eos_id
            for segment in range(1, segments.max() + 1):
                at = np.flatnonzero(segments == segment)
                src_ids = source[at].tolist()
                src, tgt = expected[src_ids.__repr__()]
                np.testing.assert_array_equal(batch["source_position"][row][at], np.arange(len(at)))
                t_at = np.flatnonzero(batch["target_segment"][row] == segment)
                # Decoder inputs: eos then the ids; labels: the ids then eos.
                assert target[t_at].tolist() == tgt[:-1] and target[t_at + 1].tolist() == tgt[1:]
                np.testing.assert_array_equal(
                    batch["target_position"][row][t_at], np.arange(len(t_at))
                )
                seen.append(src_ids.__repr__())
            assert (source[segments == 0] == pad).all()
            assert (target[1:][batch["target_segment"][row] == 0] == pad).all()
            real += (segments > 0).sum()
    assert real / (40 * 8 * 24) > 0.6  # vs ~0.45 unpacked for these short pairs
    # The first epoch covers each train pair once (its last < 8 rows dropped).
    rows = data.kind_of("tsv").open(config).rows("train")
    seed = pairs_kind.kinds.derived_seed(0, 0, pairs_kind._ORDER)  # the iterator's, host 0
    load = pairs_kind._PackedTrainBatch(rows, 8, seed, pad)
    assert sorted(p for row in load.groups(0) for p in row) == list(range(len(split["train"])))
    steps = len(load.groups(0)) // 8
    first_epoch = [pair for row in load.groups(0)[: steps * 8] for pair in row]
    first_sources = [repr([t for t in rows["source"][p].tolist() if t != pad]) for p in first_epoch]
    assert seen[: len(first_epoch)] == first_sources  # the batches hold the epoch's rows in order
    assert len(set(first_sources)) == len(first_epoch) > len(split["train"]) - 8 * 3
    # Resume: a fresh iterator from a JSON state gives the same batches, across epochs.
    iterator = data.make_iterator(config, "train", 8, 0, train=True)
    for _ in range(7):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    resumed = data.make_iterator(config, "train", 8, 0, train=True)
    resumed.set_state(state)
    for index in range(7, 40):
        batch = next(resumed)
        for key, value in batches[index].items():
            np.testing.assert_array_equal(batch[key], value)
    # Evaluation rows stay one pair each.
    assert "source_segment" not in next(
        iter(data.make_iterator(config, "validation", 8, 0, train=False))
    )


def test_packed_bible_rows_are_mostly_real_tokens(tmp_path):
    """bible_es_en at the :quick lengths (64/64, BPE 4000): ~57% of unpacked positions are
    real tokens, > 85% of packed ones."""
    need_shared_data(pairs.BIBLE_FILE)
    quick = load_config("configs/seq2seq/bible_es_en.py", "quick").data
    config = _config(
        tmp_path, name="bible_es_en", pack=True, tfds_dir=os.environ["JAXGEN_TFDS_DIR"]
    )
    config.update(
        vocab_size=quick.vocab_size, source_len=quick.source_len, target_len=quick.target_len
    )
    source = data.kind_of("bible_es_en").open(config)
    rows = source.rows("train")
    load = pairs_kind._PackedTrainBatch(rows, 64, 0, source.pad_id)
    groups = load.groups(0)
    source_lengths, target_lengths = pairs.pair_lengths(rows, source.pad_id)
    count, source_len, target_len = len(rows["source"]), quick.source_len, quick.target_len
    unpacked = [
        source_lengths.sum() / (count * source_len),
        target_lengths.sum() / (count * target_len),
    ]
    packed = [
        source_lengths.sum() / (len(groups) * source_len),
        target_lengths.sum() / (len(groups) * target_len),
    ]
    print(f"bible_es_en :quick real positions: unpacked {unpacked}, packed {packed}")
    assert min(packed) > 0.85 and max(unpacked) < 0.65
