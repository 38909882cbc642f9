"""A run's workdir: one trainer at a time, and what a resume may change in its config.

`lock_workdir` holds an exclusive lock on W/.lock for the life of a trainer, so a
second trainer on the same workdir stops before it writes anything. The kernel
drops the lock when its holder dies, however it dies, so a killed run never
blocks its rerun. Readers (sample, evaluate, report) take no lock.

`config_changes` compares a run's saved config with the one a resume asks for:
fields that only steer the rest of the run (lr, num_steps, eval and sample
settings...) may change, by name; anything that changes what the checkpoint or
the data stream mean (model, data, batch size, family, seed) may not.

`writing` and `write_atomic` are how a run's files are written: a failure (disk full, quota,
read-only) is a RunWriteError naming the file, which the scripts print as one line.

`read_jsonl` is how a run's appended JSON-lines files (metrics.jsonl) are read: a torn last
line (power lost during an append) is left out with one warning saying what was lost; a bad
line anywhere else is a ConfigError naming the file and line.
"""

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax

from jaxgen.config import ConfigError

log = logging.getLogger("jaxgen")

LOCK_FILE = ".lock"
CHANGES_FILE = "config_changes.jsonl"

# Fields a resumed run may change, by dotted name; a name ending in "." allows a whole section.
ALLOWED_CHANGES = (
    "init_from",  # read only when a run starts
    "optim.lr",
    "optim.schedule",
    "optim.warmup_steps",
    "optim.min_lr_ratio",
    "optim.grad_clip_norm",
    "optim.weight_decay",
    "train.num_steps",
    "train.log_every",
    "train.eval_every",
    "train.ckpt_every",
    "train.sample_every",
    "train.microbatches",  # the same update, in smaller pieces
    "train.skip_nonfinite",
    "train.fault_nan_step",
    "data.source_dir",  # where the same files are found, not which files
    "data.tfds_dir",
    "data.num_threads",
    "data.prefetch",
    "evals.",
    "sample.",
    "ckpt.",
    "mesh.",  # checkpoints restore onto any device count
)


class WorkdirBusyError(ConfigError):
    """Another live process is training in this workdir."""


def is_locked(path: str) -> bool:
    """Whether a live process holds the lock file `path` (lock_workdir); reads nothing and
    changes nothing (a missing file is not locked)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the shared lock, if taken
    return False


def _holder(fd: int) -> str:
    """'process P (host H)' from the lock file, as its holder wrote it."""
    for _ in range(20):  # the holder writes its name right after taking the lock
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode(errors="replace").split()
        if len(text) >= 2:
            return f"process {text[0]} (host {text[1]})"
        time.sleep(0.05)
    return "another process"


@contextlib.contextmanager
def lock_workdir(workdir: str) -> Iterator[None]:
    """Hold W/.lock (flock, exclusive) while the body trains; WorkdirBusyError if it is held.

    Only process 0 of a multi-process job locks: the others write under its direction.
    """
    if jax.process_index() != 0:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusyError(
                f"{workdir} is being trained by {_holder(fd)}; wait for it to finish or stop "
                "it, or train in another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"model.hidden": [256, 256], ...}; tuples become lists, as in config.json."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = json.loads(json.dumps(value, default=str))
    return flat


def _allowed(name: str) -> bool:
    return any(
        name.startswith(rule) if rule.endswith(".") else name == rule for rule in ALLOWED_CHANGES
    )


def config_changes(saved: Mapping, new: Mapping) -> tuple[dict, dict]:
    """Split the differences between two configs into (allowed, refused).

    Args:
      saved: the run's config as stored in W/config.json (a dict).
      new: the config the resume was started with (a dict or ConfigDict).
    Returns:
      Two dicts {dotted field name: (saved value, new value)}; a field missing on one
      side has the value None there.
    """
    old, now = (_flatten(c.to_dict() if hasattr(c, "to_dict") else c) for c in (saved, new))
    allowed, refused = {}, {}
    for name in sorted(old.keys() | now.keys()):
        before, after = old.get(name), now.get(name)
        if before != after:
            (allowed if _allowed(name) else refused)[name] = (before, after)
    return allowed, refused


def describe(changes: Mapping, limit: int = 8) -> str:
    """'model.hidden: [256, 256] -> [128], train.batch_size: 128 -> 64'; past `limit` fields,
    '... and N more'. A change of family is named first (it explains all the others)."""
    names = sorted(changes, key=lambda name: name != "family")
    text = ", ".join(
        f"{name}: {changes[name][0]!r} -> {changes[name][1]!r}" for name in names[:limit]
    )
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_resume(saved: Mapping, new: Mapping, workdir: str) -> dict:
    """The allowed changes; ConfigError (one line, every refused field) if there are others."""
    allowed, refused = config_changes(saved, new)
    if refused:
        raise ConfigError(
            f"{describe(refused)}: {workdir} was trained with other values of these fields, "
            "which its checkpoints depend on; start a new --workdir (or use config.init_from)"
        )
    return allowed


def record_changes(workdir: str, step: int, allowed: Mapping) -> None:
    """Append {"step": N, "changes": {name: [old, new]}} to W/config_changes.jsonl."""
    if not allowed:
        return
    row = {"step": step, "time": time.time(), "changes": {k: list(v) for k, v in allowed.items()}}
    path = os.path.join(workdir, CHANGES_FILE)
    with writing(path), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


class RunWriteError(OSError):
    """A file of a run could not be written (disk full, read-only, quota...); one line."""


def reason(error: OSError) -> str:
    """'no space left on device': an OSError's reason, as the rest of an error line."""
    text = error.strerror or str(error) or type(error).__name__
    return text[:1].lower() + text[1:]


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turns an OSError raised while the body writes `path` into RunWriteError:
    'could not write PATH: no space left on device'. Other errors pass through.

    A `path` ending in ".*" (a stem whose extension the body chooses) is replaced by the
    file name the error carries, if any.
    """
    try:
        yield
    except RunWriteError:
        raise
    except OSError as error:
        name = error.filename if path.endswith(".*") and error.filename else path
        raise RunWriteError(f"could not write {name}: {reason(error)}") from error


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through path.tmp + os.replace: a reader sees the old file or
    the new one, never half of one, and a failed write leaves no .tmp behind."""
    tmp = path + ".tmp"
    with writing(path):
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def has_checkpoint(workdir: str) -> bool:
    """Whether W/checkpoints holds a committed step (a folder named by a number)."""
    folder = os.path.join(workdir, "checkpoints")
    return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def read_jsonl(
    path: str, required: tuple[str, ...] = (), torn_action: str = "left out"
) -> tuple[list[dict], str]:
    """(rows, torn) of a JSON-lines file that is only ever appended to.

    A last line that is not a JSON object (an append cut short by a crash or power loss) is
    left out with one warning naming the file and what was lost ("PATH: <torn_action> a torn
    last line ..."), and returned as `torn` ("" when the file is whole). Any other line that is not a JSON object holding the `required`
    keys is a ConfigError naming the file and line.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
    except OSError as error:
        raise ConfigError(f"{path}: unreadable ({reason(error)})") from None
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    rows, torn = [], ""
    for number, line in numbered:
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            if number == numbered[-1][0]:
                torn = line
                log.warning(
                    "%s: %s a torn last line %d (%d bytes lost: %s)",
                    path,
                    torn_action,
                    number,
                    len(line.encode()),
                    line[:60] + ("..." if len(line) > 60 else ""),
                )
                break
            raise ConfigError(f"{path}, line {number}: not a JSON object: {line[:60]!r}")
        missing = [key for key in required if key not in row]
        if missing:
            raise ConfigError(f"{path}, line {number}: no {', '.join(missing)!s} field")
        rows.append(row)
    return rows, torn
