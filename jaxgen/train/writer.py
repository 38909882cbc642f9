"""Metrics to `workdir/metrics.jsonl` and TensorBoard event files; sample grids to TensorBoard.

On resume from step s, lines logged after s by the interrupted run are dropped
(from the JSON file, and from TensorBoard through purge_step), so the record
matches an uninterrupted run.
"""

import json
import math
import os

import jax
import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter

from jaxgen.workdir import write_atomic, writing

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    def __init__(self, workdir: str, start_step: int):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, METRICS_FILE)
        if not self.enabled:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                kept = [
                    line for line in f if line.strip() and json.loads(line)["step"] <= start_step
                ]
            write_atomic(self.path, "".join(kept))
        tensorboard = os.path.join(workdir, "tensorboard")
        with writing(tensorboard):
            self.tensorboard = SummaryWriter(tensorboard, purge_step=start_step + 1)

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split}
        for name, value in metrics.items():
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
            self.tensorboard.add_image(f"samples/{tag}", pixels, step, dataformats="HWC")
        self.tensorboard.flush()

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()


def read_metrics(workdir: str) -> list[dict]:
    """Every row of workdir/metrics.jsonl."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]
