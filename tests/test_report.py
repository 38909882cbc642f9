"""experiments/report renders one self-contained page for one or several runs."""

import json
import re

import numpy as np
import pytest

from jaxgen import images
from tests.e2e import run_script, stderr_lines

pytestmark = pytest.mark.slow


def fake_run(path, scale):
    """A workdir as the trainer leaves it: config, metrics, eval json, sample grids."""
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps(
            {
                "family": "vae",
                "data": {"name": "mnist", "pixels": "binary"},
                "model": {"name": "mlp"},
                "train": {"num_steps": 20, "batch_size": 32},
            }
        )
    )
    rows = [{"step": s, "split": "train", "loss": scale * 100 / s} for s in (5, 10, 15, 20)]
    rows += [{"step": s, "split": "eval", "fid/fid": scale * 50 / s} for s in (10, 20)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "eval_20.json").write_text(json.dumps({"step": 20, "fid/fid": 1.25 * scale}))
    grid = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1))
    for step in (10, 20):
        images.save_grid(grid, str(path / "samples" / f"prior_{step:07d}.png"))
    images.save_grid(grid, str(path / "samples" / "prior_0000020_seed7.png"))  # not a timeline


def test_report_of_two_runs_embeds_curves_grids_and_the_final_table(tmp_path):
    fake_run(tmp_path / "run_a", 1.0)
    fake_run(tmp_path / "run_b", 2.0)
    out = tmp_path / "out"
    result = run_script("report", str(tmp_path / "run_a"), str(tmp_path / "run_b"), f"--out={out}")
    assert str(out / "report.html") in result.stdout
    page = (out / "report.html").read_text()
    assert (out / "curves_train.png").exists() and (out / "curves_eval.png").exists()
    # 2 curve figures + 2 runs x 2 prior grids, all inline (the page needs no other file).
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 6
    assert 'src="http' not in page and "step 20" in page
    table = page.split("id='final-metrics'")[1].split("</table>")[0]
    assert "<td>fid/fid</td><td>1.25</td><td>2.5</td>" in table
    assert "<th>run_a</th><th>run_b</th>" in table


def test_report_of_a_folder_without_metrics_is_one_line_error(tmp_path):
    result = run_script("report", str(tmp_path), check=False)
    assert result.returncode == 2 and "metrics.jsonl" in result.stderr


def test_report_shows_bleu_and_chrf_with_their_sacrebleu_signatures(tmp_path):
    """A seq2seq run logs bleu/bleu_signature beside bleu/bleu: one cell holds both."""
    path = tmp_path / "bible"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"family": "seq2seq"}))
    signature = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.5.1"
    chrf_signature = "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.5.1"
    rows = [{"step": 10, "split": "train", "loss": 3.0}]
    rows += [
        {
            "step": s,
            "split": "eval",
            "bleu/bleu": 10.0 + s,
            "bleu/chrf": 30.0 + s,
            "bleu/bleu_signature": signature,
            "bleu/chrf_signature": chrf_signature,
            "bleu/count": 16.0,
        }
        for s in (10, 20)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_script("report", str(path), f"--out={tmp_path / 'out'}")
    table = (tmp_path / "out" / "report.html").read_text().split("id='final-metrics'")[1]
    table = table.split("</table>")[0]
    small = "<br><small class='signature'>"
    assert f"<td>bleu/bleu</td><td>30{small}{signature}</small></td>" in table
    assert f"<td>bleu/chrf</td><td>50{small}{chrf_signature}</small></td>" in table
    assert "<td>bleu/bleu_signature</td>" not in table  # shown with its score only


def test_a_torn_last_metrics_row_and_a_torn_eval_json_are_left_out_with_warnings(tmp_path):
    """Power lost during an append (`truncate -s -40 W/metrics.jsonl`) or a write."""
    run = tmp_path / "run"
    fake_run(run, 1.0)
    with open(run / "metrics.jsonl", "r+") as f:
        f.truncate(len(f.read()) - 12)
    (run / "eval_30.json").write_text('{"step": 30, "fid/fi')
    out = tmp_path / "out"
    result = run_script("report", str(run), f"--out={out}")
    assert "torn last line 6" in result.stderr and "eval_30.json: left out" in result.stderr
    table = (out / "report.html").read_text().split("id='final-metrics'")[1]
    assert "<td>fid/fid</td><td>1.25</td>" in table  # from eval_20.json, the last whole one


@pytest.mark.parametrize(
    "row, message",
    [('{"step": 7, "loss": 1}', "line 2: no split field"), ("[7]", "line 2: not a JSON object")],
)
def test_a_bad_metrics_row_before_the_last_is_one_line_naming_it(tmp_path, row, message):
    run = tmp_path / "run"
    fake_run(run, 1.0)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join([lines[0], row + "\n", *lines[1:]]))
    result = run_script("report", str(run), f"--out={tmp_path / 'out'}", check=False)
    assert result.returncode == 2 and len(stderr_lines(result)) == 1
    assert message in result.stderr and "metrics.jsonl" in result.stderr
