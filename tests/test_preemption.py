"""SIGTERM or Ctrl-C at any point of a loop iteration: the run still stops at a saved step,
and once resumed its metrics.jsonl is the one an uninterrupted run writes."""

import os
import signal

import numpy as np
import pytest

from jaxgen.train import loop
from jaxgen.train.writer import MetricWriter
from tests.e2e import comparable_metrics
from tests.helpers import vae_smoke_config


def config_20_steps():
    config = vae_smoke_config()
    config.train.update(num_steps=20, log_every=5, ckpt_every=10, eval_every=1000)
    config.train.sample_every = 1000
    return config


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    loop.train(config_20_steps(), str(workdir))
    return workdir


def signal_after_row(monkeypatch, signum, at_step=5):
    original = MetricWriter.write

    def write_then_signal(self, step, split, values):
        original(self, step, split, values)
        if step == at_step and split == "train":
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(MetricWriter, "write", write_then_signal)


def saved_steps(workdir):
    return sorted(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())


def test_sigterm_while_a_log_row_is_written_still_saves_where_it_stops(
    uninterrupted, tmp_path, monkeypatch
):
    """The signal lands after the iteration decided not to checkpoint (step 5 is a log step,
    not a checkpoint step): the loop must go on to a step it saves, not stop unsaved. It
    writes no row for that step; the resumed run averages steps 6-10 into the row at 10."""
    signal_after_row(monkeypatch, signal.SIGTERM)
    state = loop.train(config_20_steps(), str(tmp_path))
    assert int(state.step) == saved_steps(tmp_path)[-1] == 6
    assert [row["step"] for row in comparable_metrics(tmp_path)] == [5]
    monkeypatch.undo()
    loop.train(config_20_steps(), str(tmp_path))
    assert comparable_metrics(tmp_path) == comparable_metrics(uninterrupted)


def test_ctrl_c_saves_the_step_and_raises_interrupted(uninterrupted, tmp_path, monkeypatch):
    signal_after_row(monkeypatch, signal.SIGINT, at_step=10)
    with pytest.raises(loop.Interrupted, match="saved step 11"):
        loop.train(config_20_steps(), str(tmp_path))
    assert saved_steps(tmp_path) == [10, 11]
    monkeypatch.undo()
    loop.train(config_20_steps(), str(tmp_path))
    assert comparable_metrics(tmp_path) == comparable_metrics(uninterrupted)


def config_with_evals():
    """Rows every step, and an eval, samples and a checkpoint every 10 steps."""
    config = config_20_steps()
    config.train.update(log_every=1, eval_every=10, sample_every=10)
    return config


def sample_files(workdir):
    folder = workdir / "samples"
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_a_stop_at_an_eval_step_leaves_the_eval_and_samples_to_the_resumed_run(
    tmp_path_factory, tmp_path, monkeypatch
):
    """SIGTERM seen at step 10, where an eval and samples are due: the run saves step 10 and
    exits without them, and the resumed run writes them first. metrics.jsonl and the sample
    files end up those of an uninterrupted run."""
    reference = tmp_path_factory.mktemp("reference")
    loop.train(config_with_evals(), str(reference))
    signal_after_row(monkeypatch, signal.SIGTERM, at_step=9)  # read at the next step, 10
    loop.train(config_with_evals(), str(tmp_path))
    assert saved_steps(tmp_path) == [10]
    assert [(r["step"], r["split"]) for r in comparable_metrics(tmp_path)][-2:] == [
        (9, "train"),
        (10, "train"),
    ]
    monkeypatch.undo()
    loop.train(config_with_evals(), str(tmp_path))
    assert comparable_metrics(tmp_path) == comparable_metrics(reference)
    assert sample_files(tmp_path) == sample_files(reference)


def test_a_resume_redoes_a_pending_eval_row_written_before_a_crash(tmp_path):
    """Rows after the restored step go; at that step only the splits it redoes."""
    rows = [(9, "train"), (10, "train"), (10, "eval"), (11, "train")]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(f'{{"step": {step}, "split": "{split}"}}\n' for step, split in rows)
    )
    MetricWriter(str(tmp_path), 10, redo=("eval",)).close()
    assert [(r["step"], r["split"]) for r in comparable_metrics(tmp_path)] == rows[:2]
    MetricWriter(str(tmp_path), 9).close()
    assert [(r["step"], r["split"]) for r in comparable_metrics(tmp_path)] == rows[:1]


def test_a_partial_window_round_trips_through_json_in_its_dtype():
    window = [{"loss": np.float32(1.1), "n": np.int32(3)}, {"loss": np.float32(np.nan), "n": 0}]
    back = loop.window_from_json(loop.window_to_json(window))
    assert back[0]["loss"].dtype == np.float32 and back[0]["loss"] == np.float32(1.1)
    assert back[0]["n"].dtype == np.int32 and np.isnan(back[1]["loss"])
