"""One self-contained HTML page comparing runs: curves, sample grids over time, final metrics.

    python -m experiments.report W [W2 ...] [--out=DIR]

Reads each workdir's metrics.jsonl, eval_<step>.json, config.json and
samples/*.png; writes DIR/report.html (default W/report) with every image
embedded as base64, plus the curve PNGs it draws (curves_train.png,
curves_eval.png). Several workdirs are drawn on the same axes and side by side.
A score logged with a signature ("<name>_signature" beside "<name>", e.g. sacrebleu's for
bleu/bleu and bleu/chrf) shows in one cell of the final table with its signature under it.
Needs matplotlib (a dependency of jaxgen). A torn last line of metrics.jsonl, or a torn
eval_<step>.json, is left out with one warning; any other bad metrics row is one error line.
"""

import base64
import glob
import html
import json
import logging
import math
import os
import re

from absl import flags

from jaxgen import cli
from jaxgen.config import ConfigError
from jaxgen.train.writer import METRICS_FILE, read_metrics

flags.DEFINE_string("out", None, "Output folder (default: <first workdir>/report).")

log = logging.getLogger("jaxgen")
SAMPLE = re.compile(r"(?P<name>.+)_(?P<step>\d{7})(?P<tag>.*)\.png$")
MAX_GRIDS = 6  # sample grids per name and run: spread over the run
SIGNATURE = "_signature"  # "<score>_signature": the string a score was logged with


def read_object(path: str) -> dict | None:
    """The JSON object in `path`, or None (and one warning) if it is torn or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as error:
        log.warning("%s: left out, unreadable (%s)", path, " ".join(str(error).split()))
        return None
    if not isinstance(value, dict):
        log.warning("%s: left out, not a JSON object", path)
        return None
    return value


def load_run(workdir: str) -> dict:
    if not os.path.exists(os.path.join(workdir, METRICS_FILE)):
        raise ConfigError(f"{workdir}: no {METRICS_FILE} (not a jaxgen run directory?)")
    rows = read_metrics(workdir)  # a torn last row is left out with a warning
    config = {}
    if os.path.exists(os.path.join(workdir, "config.json")):
        config = read_object(os.path.join(workdir, "config.json")) or {}
    evaluations = {}
    for path in glob.glob(os.path.join(workdir, "eval_*.json")):
        result = read_object(path)
        if result is not None and isinstance(result.get("step"), int):
            evaluations[result["step"]] = result
        elif result is not None:
            log.warning("%s: left out, no integer step", path)
    samples = {}
    for path in sorted(glob.glob(os.path.join(workdir, "samples", "*.png"))):
        match = SAMPLE.match(os.path.basename(path))
        if match and not match["tag"]:  # tagged grids come from experiments/sample
            samples.setdefault(match["name"], []).append((int(match["step"]), path))
    name = os.path.basename(os.path.normpath(workdir))
    return dict(
        name=name, workdir=workdir, rows=rows, config=config, evals=evaluations, samples=samples
    )


def final_metrics(run: dict) -> dict[str, float]:
    """The last eval row of metrics.jsonl, updated by the latest eval_<step>.json."""
    result, step = {}, None
    for row in run["rows"]:
        if row["split"] == "eval":
            result.update({k: v for k, v in row.items() if k not in ("split",)})
            step = row["step"]
    if run["evals"]:
        latest = max(run["evals"])
        if step is None or latest >= step:
            result.update(run["evals"][latest])
            step = latest
    result.pop("step", None)
    if step is not None:
        result["eval/step"] = step
    train = [row for row in run["rows"] if row["split"] == "train"]
    if train:
        result["train/loss"] = train[-1].get("loss")
        result["train/step"] = train[-1]["step"]
    return result


def plot_curves(runs: list[dict], split: str, path: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(
        {
            key
            for run in runs
            for row in run["rows"]
            if row["split"] == split
            for key in row
            if key not in ("step", "split")
            and not key.endswith("/count")
            and not key.endswith(SIGNATURE)  # labels, not curves
        }
    )
    if not names:
        return False
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=False):
        for run in runs:
            points = [
                (row["step"], row[name])
                for row in run["rows"]
                if row["split"] == split and isinstance(row.get(name), int | float)
            ]
            if points:
                steps, values = zip(*points, strict=True)
                axis.plot(
                    steps, values, marker="o" if len(points) < 20 else None, label=run["name"]
                )
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def embed(path: str, title: str = "") -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" title="{html.escape(title)}" alt="{html.escape(title)}">'


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return html.escape(str(value))


def signed(key: str, keys) -> bool:
    """Whether `key` is the signature of a score in `keys` ("bleu/bleu_signature")."""
    return key.endswith(SIGNATURE) and key[: -len(SIGNATURE)] in keys


def format_cell(final: dict, key: str) -> str:
    """The value of `key`, with the signature it was logged with (if any) under it."""
    cell = format_value(final.get(key, ""))
    signature = final.get(key + SIGNATURE)
    if signature is not None and key in final:
        cell += f"<br><small class='signature'>{html.escape(str(signature))}</small>"
    return cell


def render(runs: list[dict], out: str) -> str:
    os.makedirs(out, exist_ok=True)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>jaxgen report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:right}th{background:#eee}td:first-child{text-align:left}"
        ".runs{display:flex;gap:2em;flex-wrap:wrap}.grid figure{display:inline-block;margin:4px}"
        "figcaption{font-size:11px;text-align:center}img{image-rendering:pixelated}"
        ".signature{color:#666;font-family:monospace}</style>",
        "</head><body>",
        f"<h1>jaxgen report: {html.escape(', '.join(run['name'] for run in runs))}</h1>",
        "<h2>Runs</h2><table><tr><th>run</th><th>workdir</th><th>family</th><th>data</th>"
        "<th>model</th><th>steps</th><th>batch</th></tr>",
    ]
    for run in runs:
        config = run["config"]
        parts.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    run["name"],
                    os.path.abspath(run["workdir"]),
                    config.get("family", "?"),
                    f"{config.get('data', {}).get('name', '?')} ({config.get('data', {}).get('pixels', '?')})",
                    config.get("model", {}).get("name", "?"),
                    config.get("train", {}).get("num_steps", "?"),
                    config.get("train", {}).get("batch_size", "?"),
                )
            )
            + "</tr>"
        )
    parts.append("</table>")

    finals = [final_metrics(run) for run in runs]
    keys = {key for final in finals for key in final if key != "split"}
    keys = sorted(key for key in keys if not signed(key, keys))
    header = "".join(f"<th>{html.escape(run['name'])}</th>" for run in runs)
    parts.append(
        f"<h2>Final metrics</h2><table id='final-metrics'><tr><th>metric</th>{header}</tr>"
    )
    for key in keys:
        cells = "".join(f"<td>{format_cell(final, key)}</td>" for final in finals)
        parts.append(f"<tr><td>{html.escape(key)}</td>{cells}</tr>")
    parts.append("</table>")

    for split in ("train", "eval"):
        path = os.path.join(out, f"curves_{split}.png")
        if plot_curves(runs, split, path):
            parts.append(f"<h2>{split.capitalize()} curves</h2>{embed(path, f'{split} curves')}")

    parts.append("<h2>Samples over training</h2><div class='runs'>")
    for run in runs:
        parts.append(f"<div><h3>{html.escape(run['name'])}</h3>")
        if not run["samples"]:
            parts.append("<p>no sample grids</p>")
        for name, grids in sorted(run["samples"].items()):
            if len(grids) > MAX_GRIDS:  # the first, the last and evenly spaced ones between
                picks = sorted(
                    {round(i * (len(grids) - 1) / (MAX_GRIDS - 1)) for i in range(MAX_GRIDS)}
                )
                grids = [grids[i] for i in picks]
            figures = "".join(
                f"<figure>{embed(path, f'{name} step {step}')}<figcaption>step {step}</figcaption></figure>"
                for step, path in grids
            )
            parts.append(f"<h4>{html.escape(name)}</h4><div class='grid'>{figures}</div>")
        parts.append("</div>")
    parts.append("</div></body></html>")
    path = os.path.join(out, "report.html")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path


def main(argv):
    workdirs = argv[1:]
    if not workdirs:
        raise ConfigError(
            "workdirs: give at least one run directory: python -m experiments.report W [W2 ...]"
        )
    runs = [load_run(workdir) for workdir in workdirs]
    out = flags.FLAGS.out or os.path.join(workdirs[0], "report")
    print(f"written: {render(runs, out)}")


if __name__ == "__main__":
    cli.run(main, takes_arguments=True)
