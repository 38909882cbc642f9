"""End to end: the GPT family through experiments/train and experiments/sample on tiny Shakespeare.

Real text from ../shared/data when present (conftest sets JAXGEN_DATA_DIR); otherwise the
tests write a small corpus of their own and point data.text_file at it.
"""

import json
import os

import numpy as np
import pytest

from tests.e2e import comparable_metrics, final_params, run_script, stderr_lines
from tests.helpers import SHARED_DATA

pytestmark = pytest.mark.slow
SMOKE = "configs/gpt/shakespeare_char.py:smoke"
LR = 1e-4  # the fine-tune's rate in test_finetune_config_starts_from_the_source_run


@pytest.fixture(scope="module")
def corpus_args(tmp_path_factory):
    """Data flags: tiny Shakespeare when it is here, else a generated text file."""
    if (SHARED_DATA / "tinyshakespeare.txt").exists():
        return []
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    rng = np.random.default_rng(0)
    words = ["ROMEO", "JULIET", "thou", "art", "the", "sun", "and", "moon", "love", "night"]
    lines = (" ".join(rng.choice(words, 8)) + ".\n" for _ in range(4000))
    path.write_text("ROMEO:\n" + "".join(lines), encoding="utf-8")
    return ["--config.data.name=text_file", f"--config.data.text_file={path}"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, corpus_args):
    workdir = tmp_path_factory.mktemp("gpt_smoke")
    result = run_script(
        "train", f"--config={SMOKE}", f"--workdir={workdir}", *corpus_args, devices=4
    )
    return workdir, result


def test_smoke_run_writes_tokenizer_metrics_checkpoints_and_text(smoke_run):
    workdir, result = smoke_run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    assert [r["step"] for r in eval_rows] == [10, 20]
    vocab = json.loads((workdir / "tokenizer.json").read_text())
    assert vocab  # the run's own tokenizer, enough to decode its samples
    # Starts near log(vocab) (uniform) and improves; perplexity is exp(loss).
    first, last = eval_rows[0], eval_rows[-1]
    assert last["val/loss"] < first["val/loss"] < np.log(100)
    np.testing.assert_allclose(last["val/perplexity"], np.exp(last["val/loss"]), rtol=1e-6)
    np.testing.assert_allclose(last["val/bits_per_token"], last["val/loss"] / np.log(2), rtol=1e-6)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
    text = (workdir / "samples" / "text_0000020.txt").read_text(encoding="utf-8")
    assert len(text.split("\n---------------\n")) == 4  # num_samples continuations of the prompt
    assert "text_0000020.txt" in result.stdout


def test_sample_script_decodes_prompts_with_the_runs_tokenizer(smoke_run):
    workdir, _ = smoke_run
    result = run_script(
        "sample",
        f"--workdir={workdir}",
        "--config.sample.prompt=ROMEO:|JULIET:",
        "--config.sample.num_samples=1",
        "--config.sample.temperature=0",
        "--config.sample.max_new_tokens=8",
        "--config.sample.seed=3",
    )
    path = workdir / "samples" / "text_0000020_seed3.txt"
    assert str(path) in result.stdout
    texts = path.read_text(encoding="utf-8").rstrip("\n").split("\n---------------\n")
    assert [t[:6] for t in texts] == ["ROMEO:", "JULIET"]
    assert all(len(t) == len(p) + 8 for t, p in zip(texts, ["ROMEO:", "JULIET:"], strict=True))
    # Greedy decoding is deterministic: a second call prints the same text.
    again = run_script(
        "sample",
        f"--workdir={workdir}",
        "--config.sample.prompt=ROMEO:|JULIET:",
        "--config.sample.num_samples=1",
        "--config.sample.temperature=0",
        "--config.sample.max_new_tokens=8",
        "--config.sample.seed=4",
    )
    assert texts[0] in again.stdout and texts[1] in again.stdout


def test_resume_across_devices_and_fsdp_equals_an_uninterrupted_run(tmp_path, corpus_args):
    """10 steps on 4 devices with params split 2 ways, then 10 on 1 device == 20 on 1 device."""
    args = [
        f"--config={SMOKE}",
        *corpus_args,
        "--config.optim.schedule=constant",  # stopping at 10 must not change the lr
        "--config.train.sample_every=1000",
        "--config.train.eval_every=1000",
    ]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_script("train", *args, f"--workdir={reference}")
    run_script(
        "train",
        *args,
        "--config.train.num_steps=10",
        "--config.mesh.fsdp=2",
        f"--workdir={resumed}",
        devices=4,
    )
    run_script("train", *args, f"--workdir={resumed}")
    # Train rows only: the first half also evaluates at its last step (10).
    expected, actual = (
        [r for r in comparable_metrics(w) if r["split"] == "train"] for w in (reference, resumed)
    )
    assert [r["step"] for r in actual] == [r["step"] for r in expected]
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-4)
    want_params, got_params = final_params(reference, 20), final_params(resumed, 20)
    for key in want_params:
        np.testing.assert_allclose(got_params[key], want_params[key], rtol=1e-4, atol=1e-5)


def test_finetune_config_starts_from_the_source_run(smoke_run, tmp_path, corpus_args):
    source, _ = smoke_run
    text = tmp_path / "new.txt"
    sample = (source / "samples" / "text_0000020.txt").read_text(encoding="utf-8")
    vocab_chars = sorted(set(sample.replace("\n---------------\n", "")))
    text.write_text("".join(vocab_chars) * 200, encoding="utf-8")  # only characters it knows
    run_script(
        "train",
        "--config=configs/gpt/finetune.py:smoke",
        f"--workdir={tmp_path / 'tuned'}",
        f"--config.init_from={source}",
        f"--config.data.text_file={text}",
        f"--config.data.tokenizer={source / 'tokenizer.json'}",
        # One Adam step of a known size: m̂ / √v̂ = g / |g| elementwise at step 1.
        "--config.train.num_steps=1",
        "--config.train.ckpt_every=1",
        "--config.train.eval_every=1",
        f"--config.optim.lr={LR}",
        "--config.optim.warmup_steps=0",
        "--config.optim.weight_decay=0.0",
    )
    rows = [
        json.loads(line) for line in (tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(r["split"] == "eval" for r in rows)
    # The params after one step are the source run's last params moved by at most lr each
    # (a fresh init would be ~0.02 away), and most of them by about lr: a step was taken.
    tuned, trained = final_params(tmp_path / "tuned", 1), final_params(source, 20)
    names = [k for k in tuned if k.startswith("['params']")]
    assert names and all(k in trained for k in names), sorted(tuned)
    moves = np.concatenate([np.abs(tuned[k] - trained[k]).ravel() for k in names])
    assert moves.max() <= 1.01 * LR, moves.max()  # 1%: float32 rounding of params near 1
    assert np.median(moves) > 0.5 * LR, np.median(moves)
    assert (tmp_path / "tuned" / "tokenizer.json").read_text() == (
        source / "tokenizer.json"
    ).read_text()


BAD_INPUTS = [
    ("--config.data.seq_len=64", "config.data.seq_len"),
    ("--config.model.position=alibi", "config.model.position"),
    ("--config.model.width=33", "config.model.width"),
    ("--config.data.tokenizer=nonsense", "config.data.tokenizer"),
    ("--config.sample.top_p=0", "config.sample.top_p"),
    ("--config.data.eval_split=test", "config.data"),
]


@pytest.mark.parametrize("override,field", BAD_INPUTS)
def test_bad_config_is_one_line_naming_the_field(tmp_path, override, field):
    result = run_script(
        "train", f"--config={SMOKE}", f"--workdir={tmp_path}", override, check=False
    )
    lines = stderr_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and field in lines[0]


def test_text_that_is_not_utf8_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 50)
    result = run_script(
        "train",
        f"--config={SMOKE}",
        f"--workdir={tmp_path / 'run'}",
        "--config.data.name=text_file",
        f"--config.data.text_file={bad}",
        check=False,
    )
    lines = stderr_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert str(bad) in lines[0] and "UTF-8" in lines[0]
