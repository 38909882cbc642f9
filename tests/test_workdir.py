"""One trainer per workdir (the lock) and what a resume may change (config_changes)."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from jaxgen import workdir as workdir_lib
from jaxgen.config import ConfigError, base_config
from tests.e2e import script_env
from tests.helpers import ROOT, vae_smoke_config

HOLD_THE_LOCK = """
import sys, time
from jaxgen.workdir import lock_workdir
with lock_workdir(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def hold_lock(path):
    """A process that holds the workdir's lock until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(path)],
        cwd=ROOT,
        env=script_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_held_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(workdir_lib.WorkdirBusyError) as error:
            with workdir_lib.lock_workdir(str(tmp_path)):
                pass
        message = str(error.value)
        assert message.startswith(f"{tmp_path} is being trained by process {holder.pid} ")
        assert f"(host {socket.gethostname()})" in message
        assert isinstance(error.value, ConfigError)  # the scripts print it as one line, exit 2
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the killed holder's lock: the next trainer goes ahead.
    with workdir_lib.lock_workdir(str(tmp_path)):
        pid, host = (tmp_path / ".lock").read_text().split()
    assert int(pid) == os.getpid() and host == socket.gethostname()


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with workdir_lib.lock_workdir(str(tmp_path)):
        with pytest.raises(workdir_lib.WorkdirBusyError, match=f"process {os.getpid()}"):
            with workdir_lib.lock_workdir(str(tmp_path)):
                pass
    with workdir_lib.lock_workdir(str(tmp_path)):  # released on exit
        pass


def saved_config(config):
    """The dict experiments.train writes to W/config.json."""
    return json.loads(config.to_json_best_effort())


def test_config_changes_splits_allowed_from_refused():
    saved = vae_smoke_config()
    new = vae_smoke_config()
    new.optim.lr = 1e-4
    new.train.num_steps = 500
    new.train.eval_every = 7
    new.sample.num_samples = 9
    new.ckpt.max_to_keep = 1
    new.model.hidden = (128,)
    new.train.batch_size = 64
    new.seed = 3
    allowed, refused = workdir_lib.config_changes(saved_config(saved), new)
    assert allowed == {
        "ckpt.max_to_keep": (saved.ckpt.max_to_keep, 1),
        "optim.lr": (saved.optim.lr, 1e-4),
        "sample.num_samples": (saved.sample.num_samples, 9),
        "train.eval_every": (saved.train.eval_every, 7),
        "train.num_steps": (saved.train.num_steps, 500),
    }
    assert refused == {
        "model.hidden": (list(saved.model.hidden), [128]),
        "seed": (0, 3),
        "train.batch_size": (saved.train.batch_size, 64),
    }


def test_the_same_config_has_no_changes_and_tuples_equal_json_lists():
    config = vae_smoke_config()
    assert workdir_lib.config_changes(saved_config(config), config) == ({}, {})


def test_new_and_removed_fields_are_changes():
    saved = saved_config(base_config())
    new = base_config()
    new.evals.fid = dict(type="fid", num_samples=10)
    new.model.width = 3
    del saved["data"]["prefetch"]
    allowed, refused = workdir_lib.config_changes(saved, new)
    assert allowed == {
        "evals.fid.type": (None, "fid"),
        "evals.fid.num_samples": (None, 10),
        "data.prefetch": (None, 2),
    }
    assert refused == {"model.width": (None, 3)}


def test_check_resume_is_one_line_naming_every_refused_field(tmp_path):
    saved = saved_config(vae_smoke_config())
    new = vae_smoke_config()
    new.model.hidden = (128,)
    new.train.batch_size = 64
    new.optim.lr = 0.5
    with pytest.raises(ConfigError) as error:
        workdir_lib.check_resume(saved, new, str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert "model.hidden" in message and "train.batch_size" in message
    assert "optim.lr" not in message
    new = vae_smoke_config()
    new.optim.lr = 0.5
    allowed = workdir_lib.check_resume(saved, new, str(tmp_path))
    before = time.time()
    workdir_lib.record_changes(str(tmp_path), 40, allowed)
    after = time.time()
    workdir_lib.record_changes(str(tmp_path), 50, {})  # nothing changed: nothing written
    rows = [
        json.loads(line)
        for line in (tmp_path / "config_changes.jsonl").read_text().split("\n")[:-1]
    ]
    assert len(rows) == 1 and rows[0]["step"] == 40
    assert rows[0]["changes"] == {"optim.lr": [saved["optim"]["lr"], 0.5]}
    assert before <= rows[0]["time"] <= after  # the wall time of the call, not a speed limit


def test_a_failed_atomic_write_is_one_line_keeps_the_old_file_and_no_tmp(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text("old")
    real_replace = os.replace

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(workdir_lib.RunWriteError) as error:
        workdir_lib.write_atomic(str(path), "new")
    assert str(error.value) == f"could not write {path}: no space left on device"
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]
    monkeypatch.setattr(os, "replace", real_replace)
    workdir_lib.write_atomic(str(path), "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["config.json"]


def test_describe_names_a_family_change_first_and_caps_the_list():
    changes = {f"model.f{i}": (i, i + 1) for i in range(10)} | {"family": ("vae", "gpt")}
    text = workdir_lib.describe(changes, limit=3)
    assert text == "family: 'vae' -> 'gpt', model.f0: 0 -> 1, model.f1: 1 -> 2 and 8 more"


ROWS = [{"step": 5, "split": "train", "loss": 1.5}, {"step": 10, "split": "eval", "x/scale": 2.0}]


def jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def test_read_jsonl_leaves_out_a_torn_last_line_with_one_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    whole = jsonl(ROWS)
    path.write_text(whole[:-25])  # power lost during the second append
    rows, torn = workdir_lib.read_jsonl(str(path))
    assert rows == ROWS[:1] and torn == whole[:-25].splitlines()[-1]
    (record,) = caplog.records
    assert "torn last line 2" in record.getMessage() and str(path) in record.getMessage()
    caplog.clear()
    path.write_text(whole)
    assert workdir_lib.read_jsonl(str(path)) == (ROWS, "") and not caplog.records


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '{"step": 1, "split": "train"}\n{"step": 2, "spl\n{"step": 3, "split": "train"}\n',
            "line 2",
        ),
        ('[1, 2]\n{"step": 3, "split": "train"}\n', "line 1: not a JSON object"),
        ('{"step": 1, "split": "train"}\n{"step": 2}\n', "line 2: no split field"),
    ],
)
def test_read_jsonl_refuses_a_bad_line_before_the_last_naming_it(tmp_path, text, message):
    path = tmp_path / "metrics.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        workdir_lib.read_jsonl(str(path), required=("step", "split"))


def test_the_scale_factor_of_an_autoencoder_with_a_torn_last_row_is_the_last_whole_one(tmp_path):
    """Latent diffusion reads its autoencoder's scale factor from metrics.jsonl."""
    from jaxgen.train.autoencoder import read_scale_factor

    rows = [{"step": 10, "split": "eval", "latent_scale/scale_factor": 0.5}]
    rows.append({"step": 20, "split": "eval", "latent_scale/scale_factor": 0.25})
    (tmp_path / "metrics.jsonl").write_text(jsonl(rows)[:-10])
    assert read_scale_factor(str(tmp_path)) == 0.5
