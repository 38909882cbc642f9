"""SIGTERM at any point of a loop iteration: the run still stops at a saved step."""

import os
import signal

from jaxgen.train import loop
from jaxgen.train.writer import MetricWriter, read_metrics
from tests.helpers import vae_smoke_config


def test_sigterm_while_a_log_row_is_written_still_saves_where_it_stops(tmp_path, monkeypatch):
    """The signal lands after the iteration decided not to checkpoint (step 5 is a log step,
    not a checkpoint step): the loop must go on to a step it saves, not stop unsaved."""
    config = vae_smoke_config()
    config.train.update(num_steps=20, log_every=5, ckpt_every=10, eval_every=1000)
    config.train.sample_every = 1000
    original = MetricWriter.write

    def write_then_signal(self, step, split, values):
        original(self, step, split, values)
        if step == 5 and split == "train":
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(MetricWriter, "write", write_then_signal)
    state = loop.train(config, str(tmp_path))
    saved = sorted(int(name) for name in os.listdir(tmp_path / "checkpoints") if name.isdigit())
    last_row = max(row["step"] for row in read_metrics(str(tmp_path)))
    assert int(state.step) == last_row == saved[-1] == 6
