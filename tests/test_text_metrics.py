"""BLEU, chrF and ROUGE-L on hand-made strings against values computed here independently."""

import collections
import math

import pytest

from jaxgen.metrics import text
from jaxgen.train.writer import MetricWriter, read_metrics


def _ngrams(words, n):
    return collections.Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _bleu(hypotheses, references):
    """Papineni et al. 2002: corpus BLEU with one reference (no n-gram precision may be 0)."""
    matches, totals, hyp_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            hyp_counts, ref_counts = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, ref_counts[g]) for g, c in hyp_counts.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
    brevity = min(0.0, 1 - ref_len / hyp_len)
    return 100 * math.exp(log_precision + brevity)


def test_bleu_matches_the_papineni_formula():
    hypotheses = ["the quick brown fox jumps over the dog", "a b c d e f g"]
    references = ["the quick brown fox jumped over the lazy dog", "a b c d e f g h"]
    scores = text.corpus_bleu_chrf(hypotheses, references)
    assert scores["bleu"] == pytest.approx(_bleu(hypotheses, references), abs=1e-6)
    assert scores["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert scores["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")


def test_identical_and_disjoint_text():
    same = text.corpus_bleu_chrf(
        ["In the beginning God created the heaven."] * 2,
        ["In the beginning God created the heaven."] * 2,
    )
    assert same["bleu"] == pytest.approx(100.0) and same["chrf"] == pytest.approx(100.0)
    copy = text.corpus_bleu_chrf(["EN el principio crió Dios"], ["In the beginning God created"])
    assert copy["bleu"] == pytest.approx(0.0, abs=1e-6)


def test_chrf_of_one_pair_by_hand():
    # chrF (Popovic 2015), beta 2, char n-grams 1..6 without spaces; "ab" vs "abc":
    # n=1: P 2/2, R 2/3; n=2: P 1/1, R 1/2; n>=3: the hypothesis has none (0 and skipped
    # in sacrebleu's averaging only if the reference has none too: R = 0 for n=3).
    precisions = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    recalls = [2 / 3, 1 / 2, 0.0, 0.0, 0.0, 0.0]
    # sacrebleu averages P and R over the orders where the hypothesis and reference have
    # n-grams (its effective order: 2 here, since "ab" has no 3-gram), then F-beta.
    p, r = sum(precisions[:2]) / 2, sum(recalls[:2]) / 2
    expected = 100 * (1 + 4) * p * r / (4 * p + r)
    assert text.corpus_bleu_chrf(["ab"], ["abc"])["chrf"] == pytest.approx(expected, abs=1e-4)


def test_rouge_l_by_longest_common_subsequence():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat": 5 of 6.
    score = text.rouge_l(["the cat sat on the mat"], ["the cat is on the mat"])
    assert score == pytest.approx(100 * 5 / 6)
    assert text.rouge_l(["x y", "a b c"], ["x y", "d e f"]) == pytest.approx(50.0)


def test_signatures_are_logged_beside_the_scores(tmp_path):
    """metrics.jsonl keeps a string metric as it is (TensorBoard gets it as text)."""
    scores = text.corpus_bleu_chrf(["the cat sat"], ["the cat sat down"])
    writer = MetricWriter(str(tmp_path), 0)
    writer.write(10, "eval", {f"bleu/{k}": v for k, v in scores.items()})
    writer.close()
    (row,) = read_metrics(str(tmp_path))
    assert row["bleu/bleu_signature"] == scores["bleu_signature"]
    assert row["bleu/chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6")
    assert row["bleu/bleu"] == pytest.approx(scores["bleu"])
