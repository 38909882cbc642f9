"""Metrics to `workdir/metrics.jsonl` and TensorBoard event files; sample grids to TensorBoard.

A metric is a number (a scalar in TensorBoard) or a string that labels one, e.g. sacrebleu's
signature beside a BLEU score (TensorBoard's text tab); both go into the JSON row as they are.

On resume from step s, lines logged after s by the interrupted run are dropped
(from the JSON file, and from TensorBoard through purge_step), so the record
matches an uninterrupted run; a torn last line (power lost mid-append) is cut
back with one warning saying what was lost. A write that fails (disk full...) raises
jaxgen.workdir.RunWriteError naming the file, also when TensorBoard's background
thread is the one that failed.
"""

import json
import math
import os
import threading

import jax
import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter

from jaxgen.workdir import RunWriteError, read_jsonl, reason, write_atomic, writing

METRICS_FILE = "metrics.jsonl"


class _ThreadWriteErrors:
    """Collects the OSErrors that kill background writer threads (tensorboardX writes its
    event file from one), which would otherwise print a traceback and leave the writer's
    queue to fill up and block."""

    def __init__(self):
        self.errors: list[OSError] = []
        self._previous = threading.excepthook
        threading.excepthook = self._hook

    def _hook(self, args) -> None:
        if isinstance(args.exc_value, OSError):
            self.errors.append(args.exc_value)
        else:
            self._previous(args)

    def close(self) -> None:
        threading.excepthook = self._previous


class MetricWriter:
    def __init__(self, workdir: str, start_step: int, redo: tuple[str, ...] = ()):
        """Appends to the run's metrics.jsonl, whose rows after `start_step` (the restored
        checkpoint's) are dropped, and those of the splits in `redo` at `start_step` too."""
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, METRICS_FILE)
        if not self.enabled:
            return
        if os.path.exists(self.path):
            rows, _ = read_jsonl(self.path, required=("step",), torn_action="cut back")
            kept = [
                json.dumps(row) + "\n"
                for row in rows
                if row["step"] < start_step
                or (row["step"] == start_step and row.get("split") not in redo)
            ]
            write_atomic(self.path, "".join(kept))
        self.events = os.path.join(workdir, "tensorboard")
        self.thread_errors = _ThreadWriteErrors()
        with writing(self.events):
            self.tensorboard = SummaryWriter(self.events, purge_step=start_step + 1)

    def _check_events(self) -> None:
        if self.thread_errors.errors:
            error = self.thread_errors.errors[0]
            raise RunWriteError(f"could not write {error.filename or self.events}: {reason(error)}")

    def write(self, step: int, split: str, metrics: dict[str, float | str]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split}
        for name, value in metrics.items():
            self._check_events()
            if isinstance(value, str):
                row[name] = value
                self.tensorboard.add_text(f"{split}/{name}", value, step)
                continue
            value = float(value)
            row[name] = value if math.isfinite(value) else str(value)
            self.tensorboard.add_scalar(f"{split}/{name}", value, step)
        with writing(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def write_images(self, step: int, paths: list[str]) -> None:
        """Shows the PNG files among `paths` (the sample grids) under TensorBoard's images tab,
        tagged samples/<file name without the step>, as clu and the Flax examples do."""
        if not self.enabled:
            return
        for path in paths:
            if not path.endswith(".png"):
                continue
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))  # [H, W, 3] uint8
            tag = os.path.basename(path)[: -len(".png")].rsplit("_", 1)[0]
            self._check_events()
            self.tensorboard.add_image(f"samples/{tag}", pixels, step, dataformats="HWC")
        self._check_events()
        self.tensorboard.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if not self.thread_errors.errors:  # closing waits on the thread, which is gone
            self.tensorboard.close()
        self.thread_errors.close()
        self._check_events()


def read_metrics(workdir: str) -> list[dict]:
    """Every row of workdir/metrics.jsonl, each with its step and split; a torn last row is
    left out with a warning, any other bad row is a ConfigError naming the line."""
    return read_jsonl(os.path.join(workdir, METRICS_FILE), required=("step", "split"))[0]
