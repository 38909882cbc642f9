"""End to end: the seq2seq family through experiments/train, evaluate and sample.

The Bible TSV from ../shared/data when present (conftest sets JAXGEN_DATA_DIR); otherwise the
tests write a small TSV of their own and point data.text_file at it (data.name="tsv").
"""

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.e2e import HANG_GUARD, run_script, script_env, stderr_lines
from tests.helpers import ROOT, SHARED_DATA

pytestmark = pytest.mark.slow
SMOKE = "configs/seq2seq/bible_es_en.py:smoke"


@pytest.fixture(scope="module")
def data_args(tmp_path_factory):
    if (SHARED_DATA / "bible_es_en.tsv").exists():
        return []
    path = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
    rows = (f"v{i}\tEn el principio {i}\tIn the beginning {i}\n" for i in range(2000))
    path.write_text("id\tes\ten\n" + "".join(rows), encoding="utf-8")
    return ["--config.data.name=tsv", f"--config.data.text_file={path}"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_args):
    workdir = tmp_path_factory.mktemp("seq2seq_smoke")
    result = run_script("train", f"--config={SMOKE}", f"--workdir={workdir}", *data_args, devices=4)
    return workdir, result


def test_smoke_run_writes_metrics_bleu_checkpoints_and_translations(smoke_run):
    workdir, result = smoke_run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in eval_rows] == [10, 20]
    last = eval_rows[-1]
    assert {"val/loss", "val/accuracy", "val/perplexity", "bleu/bleu", "bleu/chrf"} <= set(last)
    np.testing.assert_allclose(last["val/perplexity"], np.exp(last["val/loss"]), rtol=1e-6)
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in result.stdout
    assert last["bleu/bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert last["bleu/chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")
    assert (workdir / "tokenizer.json").is_file()
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
    for name in ("source", "translation", "reference"):
        lines = (workdir / "samples" / f"{name}_0000020.txt").read_text(encoding="utf-8")
        assert len(lines.splitlines()) == 4  # config.sample.num_samples verses


def test_evaluate_scores_the_test_split(smoke_run):
    workdir, _ = smoke_run
    result = run_script("evaluate", f"--workdir={workdir}", "--config.evals.bleu.split=test")
    scores = json.loads((workdir / "eval_20.json").read_text())
    assert scores["bleu/count"] == 16 and 0 <= scores["bleu/bleu"] <= 100
    assert scores["bleu/bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert "BLEU" in result.stdout


def test_sample_translates_sources_and_a_source_file(smoke_run, tmp_path):
    workdir, _ = smoke_run
    sources = "En el principio crió Dios los cielos y la tierra.|Y dijo Dios: Sea la luz"
    result = run_script("sample", f"--workdir={workdir}", f"--config.sample.source={sources}")
    path = translation_file(result)
    assert path.startswith(str(workdir / "samples" / "translation_0000020_seed0_"))
    assert len(open(path, encoding="utf-8").read().splitlines()) == 2
    source_file = tmp_path / "sources.txt"
    source_file.write_text("Y vió Dios la luz\n\nque era buena\nY fué la tarde\n", encoding="utf-8")
    result = run_script(
        "sample", f"--workdir={workdir}", f"--config.sample.source_file={source_file}"
    )
    lines = open(translation_file(result), encoding="utf-8").read().splitlines()
    assert len(lines) == 3  # blank lines skipped


def translation_file(result) -> str:
    """The translation file experiments.sample printed the path of."""
    (path,) = [line for line in result.stdout.splitlines() if "/translation_" in line]
    return path


def test_bad_tsv_is_one_line_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"id\tes\ten\nv1\thola\thello\nv2\t\thi\n")
    result = run_script(
        "train",
        f"--config={SMOKE}",
        f"--workdir={tmp_path / 'w'}",
        "--config.data.name=tsv",
        f"--config.data.text_file={bad}",
        check=False,
    )
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1 and f"{bad}:3: empty cell in column 'es'" in lines[0]


def _post(url, payload):
    request = urllib.request.Request(url, data=payload, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=HANG_GUARD) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_export_then_serve_over_http(smoke_run, tmp_path):
    workdir, _ = smoke_run
    out = tmp_path / "export"
    run_script("export", f"--workdir={workdir}", f"--out={out}", "--num_beams=1,2")
    assert sorted(os.listdir(out)) == [
        "export.json",
        "params.msgpack",
        "tokenizer.json",
        "translate_beams1.bin",
        "translate_beams2.bin",
    ]
    server = subprocess.Popen(
        [sys.executable, "-m", "experiments.serve", f"--export={out}", "--port=0"],
        cwd=ROOT,
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = server.stdout.readline()  # "serving E on http://127.0.0.1:PORT/translate"
        url = line.split()[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/translate")
        sources = ["En el principio crió Dios los cielos", "Y dijo Dios", "Sea la luz"]
        status, reply = _post(url, json.dumps({"source": sources, "num_beams": 2}).encode())
        assert status == 200 and len(reply["translation"]) == 3 and reply["num_beams"] == 2
        for bad, reason in [
            (b"not json", "not UTF-8 JSON"),
            (b'{"source": []}', "non-empty list"),
            (b'{"source": ["a"], "num_beams": 3}', "exported: [1, 2]"),
        ]:
            status, reply = _post(url, bad)
            assert status == 400 and reason in reply["error"] and "\n" not in reply["error"]
        # Still serving; greedy is deterministic, and a row's translation does not depend on
        # the other rows of its request.
        status, one = _post(url, json.dumps({"source": sources[:1]}).encode())
        status, three = _post(url, json.dumps({"source": sources, "num_beams": 1}).encode())
        assert status == 200 and one["translation"][0] == three["translation"][0]
    finally:
        server.terminate()
        server.wait(timeout=HANG_GUARD)


def test_a_workdir_alone_samples_exports_and_serves_without_the_data(smoke_run, tmp_path):
    """The run's folder copied to a machine with no data: sample, export and serve work (the
    run's data_info.json and tokenizer.json are all they read), and serve translates as
    experiments.sample does."""
    workdir, _ = smoke_run
    moved = tmp_path / "moved"
    shutil.copytree(workdir, moved)
    saved = json.loads((moved / "config.json").read_text())
    saved["data"]["text_file"] = str(tmp_path / "gone.tsv")  # the TSV route's file is gone too
    (moved / "config.json").write_text(json.dumps(saved))
    no_data = {"JAXGEN_DATA_DIR": "", "JAXGEN_TFDS_DIR": str(tmp_path / "empty_tfds")}
    sources = ["Y vió Dios la luz", "que era buena", "Y fué la tarde"]
    (tmp_path / "sources.txt").write_text("\n".join(sources) + "\n", encoding="utf-8")
    greedy = ["--config.sample.num_beams=1", "--config.sample.temperature=0.0"]
    result = run_script(
        "sample",
        f"--workdir={moved}",
        f"--config.sample.source_file={tmp_path / 'sources.txt'}",
        *greedy,
        env=no_data,
    )
    sampled = open(translation_file(result), encoding="utf-8").read()
    out = tmp_path / "export"
    run_script("export", f"--workdir={moved}", f"--out={out}", "--num_beams=1", env=no_data)
    assert not (tmp_path / "empty_tfds").exists() or not any((tmp_path / "empty_tfds").iterdir())
    server = subprocess.Popen(
        [sys.executable, "-m", "experiments.serve", f"--export={out}", "--port=0"],
        cwd=ROOT,
        env=script_env(**no_data),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = server.stdout.readline().split()[-1]
        status, reply = _post(url, json.dumps({"source": sources}).encode())
        assert status == 200 and reply["translation"] == sampled.splitlines()
    finally:
        server.terminate()
        server.wait(timeout=HANG_GUARD)
