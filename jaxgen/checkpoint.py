"""Checkpoints: the only module that imports Orbax.

A checkpoint holds the train state (params, optimizer state, EMA, step, rng)
and the data iterator's state, so a resumed run sees exactly the batches and
randomness it would have seen. Orbax writes each step into a temporary
directory and renames it when complete, so a kill mid-write leaves the last
good checkpoint as the latest one. Saves are asynchronous by default.

Every step also holds checksums of its arrays and of the data state (the
`checksums` item, committed by the same rename): a restore recomputes them, so
a changed byte anywhere is caught and handled like a truncated file, by falling
back to the previous step. What TensorStore prints while reading a damaged step
goes to W/logs/checkpoint.log; the console gets one line per bad step.

Readers (`read_only=True`, and `restore_params`) never create, move or delete
anything under checkpoints/, so sampling a run that is still training is safe.
"""

import contextlib
import gc
import logging
import os
import sys
import tempfile
import time
import traceback
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from jaxgen.checksums import checksums, verify
from jaxgen.config import ConfigDict

PyTree = Any
CHECKPOINT_DIR = "checkpoints"
ITEMS = ("state", "data", "checksums")
LOG_FILE = os.path.join("logs", "checkpoint.log")
_FAILED_READ_DRAIN_SECONDS = 1.0


class CheckpointWriteError(OSError):
    """A save failed (e.g. no space left); earlier checkpoints are untouched."""


class CheckpointReadError(OSError):
    """No checkpoint of a run could be restored (none saved, or every one unreadable)."""


def _write_error(step: int | None, directory: str, error: Exception) -> CheckpointWriteError:
    text = str(error)
    reason = "no space left on device" if "No space left" in text else text.splitlines()[0][:300]
    where = f"checkpoint {step}" if step is not None else "a checkpoint"
    return CheckpointWriteError(
        f"could not write {where} to {directory}: {reason}; the earlier checkpoints are intact"
    )


@contextlib.contextmanager
def _captured_stderr():
    """Send file descriptor 2 to a list of lines for the duration (TensorStore logs from C++,
    tracebacks printed by its threads); yields the list, filled on exit."""
    lines: list[str] = []
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines.extend(capture.read().decode(errors="replace").splitlines())


def _write_log(log_file: str, header: str, lines: list[str]) -> str:
    """Append the details to `log_file` (or a temporary file if it cannot be written)."""
    text = "".join(f"{line}\n" for line in [f"--- {time.ctime()} {header}", *lines])
    try:
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(text)
        return log_file
    except OSError:
        with tempfile.NamedTemporaryFile(
            "w", prefix="jaxgen-checkpoint-", suffix=".log", delete=False
        ) as f:
            f.write(text)
        return f.name


# The log file of the latest unreadable step, for Orbax's reads that report after the restore.
_late_log: list[str] = []
_console_unraisablehook = sys.unraisablehook


def _late_read_errors(unraisable) -> None:
    """sys.unraisablehook while a failed restore's reads may still be finalised: Orbax's
    array-read coroutines print "Exception ignored in <coroutine>" with TensorStore's whole spec
    when garbage-collected; those go to the restore's log file, everything else to the console."""
    code = getattr(unraisable.object, "cr_code", None)
    if code is None or "orbax" not in code.co_filename or not _late_log:
        _console_unraisablehook(unraisable)
        return
    lines = traceback.format_exception(
        unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback
    )
    _write_log(_late_log[-1], f"late error of {code.co_name}", [line.rstrip() for line in lines])


def _use_late_read_errors() -> None:
    """Install _late_read_errors, passing on to the hook it replaces (e.g. jaxgen.cli's)."""
    global _console_unraisablehook
    if sys.unraisablehook is not _late_read_errors:
        _console_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _late_read_errors


def _save_whole_replicas() -> None:
    """On CPU, save each replicated array from one device, not in slices over its replicas.

    Orbax's replica-parallel saving (its default off GPU) compiles a slice program per array
    shape and device at the first save: ~50 small compiles in a DDPM smoke run, 1.3 s, for
    nothing, as a CPU's devices share one host memory.
    """
    current = ocp.type_handlers.get_type_handler(jax.Array)
    if jax.default_backend() != "cpu" or getattr(current, "whole_replicas", False):
        return
    # Orbax's default jax.Array handler, with its array metadata store, minus replica slices.
    handler = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False,
        array_metadata_store=getattr(current, "_array_metadata_store", None),
    )
    handler.whole_replicas = True
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # its "overriding jax.Array" is meant
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logging.set_verbosity(level)


def _reason(error: Exception) -> str:
    text = str(error).split("See full TensorStore details")[0].strip().rstrip(".")
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


def _reader(directory: str) -> ocp.CheckpointManager:
    """A manager that never creates, cleans up or deletes anything in `directory`.

    Orbax warns about each option that read_only turns off, at every reader: not news.
    """
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        options = ocp.CheckpointManagerOptions(
            read_only=True, create=False, cleanup_tmp_directories=False
        )
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
            "checksums": ocp.JsonCheckpointHandler(),
        }
        return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
    finally:
        absl_logging.set_verbosity(level)


def _try_restore(
    manager, step: int, abstract_state: PyTree, log_file: str, *, with_data: bool = True
) -> tuple[Any, str | None]:
    """(restored items, None), or (None, the one-line reason) with the details in `log_file`."""
    checked = os.path.isdir(os.path.join(str(manager.directory), str(step), "checksums"))
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if with_data:
        args["data"] = ocp.args.JsonRestore()
    if checked:
        args["checksums"] = ocp.args.JsonRestore()
    with _captured_stderr() as lines:
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**args))
            if checked:
                verify(restored.state, restored.get("data"), restored.checksums)
            reason = None
        except Exception as caught:  # noqa: BLE001 - any unreadable checkpoint falls back
            restored, reason = None, _reason(caught)
            lines.extend(traceback.format_exception(caught))
            # The reads still in flight finish on TensorStore's threads after Orbax closed its
            # event loop, and print "Event loop is closed" tracebacks: let them land here,
            # in the log (a failed restore is rare; a second is cheap).
            time.sleep(_FAILED_READ_DRAIN_SECONDS)
        # A failed read leaves Orbax's un-awaited array reads in reference cycles; collected
        # later they print "Exception ignored in <coroutine>" with TensorStore's whole spec.
        # Collect them now, into the log.
        gc.collect()
    if reason is None and not checked:
        logging.warning(
            "checkpoint %d in %s has no checksums: not verified", step, manager.directory
        )
    if reason is None:
        return restored, None
    where = _write_log(log_file, f"checkpoint {step} in {manager.directory}", lines)
    _late_log.append(where)
    _use_late_read_errors()
    logging.warning(
        "checkpoint %d in %s is unreadable (%s); details in %s",
        step,
        manager.directory,
        reason,
        where,
    )
    return None, f"step {step}: {reason}"


class Checkpointer:
    """Saves and restores (state, data_state) pairs under `workdir/checkpoints`.

    With `read_only=True` it only restores, and touches nothing under checkpoints/: an
    in-flight save of a live trainer survives, and unreadable steps are skipped in place.
    """

    def __init__(self, workdir: str, ckpt_config: ConfigDict | None = None, *, read_only=False):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
        self.read_only = read_only
        if not read_only and ckpt_config is None:
            raise ValueError("Checkpointer: a writer needs ckpt_config (max_to_keep, async_save)")
        if read_only:
            self.manager = _reader(self.directory)
            return
        _save_whole_replicas()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=ckpt_config.max_to_keep,
            enable_async_checkpointing=ckpt_config.async_save,
            cleanup_tmp_directories=True,  # remove half-written saves left by a kill
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: PyTree, data_state: dict) -> None:
        """Start writing step `step`; returns once the arrays are copied off the device."""
        if self.read_only:
            raise RuntimeError(f"{self.directory} was opened read-only")
        sums = checksums(state, data_state)
        try:  # also reports a failure of the previous background save
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state),
                    checksums=ocp.args.JsonSave(sums),
                ),
                force=True,
            )
        except Exception as error:
            raise _write_error(step, self.directory, error) from error

    def restore(self, abstract_state: PyTree, step: int | None = None) -> tuple[PyTree, dict, int]:
        """Restore onto `abstract_state`'s shardings, trying the newest step first.

        A step that fails to restore (truncated or corrupt files, a checksum mismatch) is
        reported in one line and skipped in favour of the next older one. A trainer moves
        it to checkpoints_unreadable/ (so that it can save that step again); a reader
        leaves it where it is. Raises CheckpointReadError when no step can be restored.
        """
        steps = [step] if step is not None else self.all_steps()[::-1]
        errors, unreadable = [], []
        log_file = os.path.join(self.workdir, LOG_FILE)
        for candidate in steps:
            restored, error = _try_restore(self.manager, candidate, abstract_state, log_file)
            if error is not None:
                errors.append(error)
                unreadable.append(candidate)
                continue
            if not self.read_only:
                self._set_aside(unreadable)
            return restored.state, restored.data, candidate
        raise CheckpointReadError(
            f"no readable checkpoint in {self.directory}: {'; '.join(errors) or 'none saved'}"
        )

    def _set_aside(self, steps: list[int]) -> None:
        """Move unreadable steps to checkpoints_unreadable/ so the run can save those steps again.

        They are kept, not deleted, for inspection.
        """
        if not steps or jax.process_index() != 0:
            return
        aside = self.directory + "_unreadable"
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            target = os.path.join(aside, f"{step}_{int(time.time())}")
            os.replace(os.path.join(self.directory, str(step)), target)
            logging.warning("moved unreadable checkpoint %d to %s", step, target)
        self.manager.reload()

    def close(self) -> None:
        """Block until background saves are committed, then release the manager."""
        try:
            self.manager.wait_until_finished()
            self.manager.close()
        except Exception as error:
            raise _write_error(None, self.directory, error) from error


def _find_checkpoints(path: str) -> tuple[str, int | None]:
    """(the checkpoints folder, the step named by `path` or None for the latest)."""
    for directory in (os.path.join(path, CHECKPOINT_DIR), path):
        if os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory)):
            return directory, None
    directory, name = os.path.split(path)
    if not name.isdigit() or not os.path.isdir(path):
        raise CheckpointReadError(f"config.init_from: no checkpoint found at {path}")
    return directory, int(name)


def _check_params_fit(expected: PyTree, params: PyTree, path: str) -> None:
    """CheckpointReadError naming config.init_from when `params` do not fit the model."""
    leaves = jax.tree_util.tree_leaves_with_path
    want = {jax.tree_util.keystr(k): v.shape for k, v in leaves(expected)}
    got = {jax.tree_util.keystr(k): v.shape for k, v in leaves(params)}
    if want == got:
        return
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    shapes = [
        f"{k} {got[k]} not {want[k]}" for k in sorted(want.keys() & got.keys()) if got[k] != want[k]
    ]
    parts = [
        f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
        for label, names in (("missing", missing), ("unexpected", extra), ("shapes:", shapes))
        if names
    ]
    raise CheckpointReadError(
        f"config.init_from: the params of {path} do not fit this model ({'; '.join(parts)}); "
        "init_from needs a run of the same family and model shape"
    )


def restore_params(path: str, abstract_params: PyTree, log_file: str | None = None) -> PyTree:
    """Params of another run, for `config.init_from` (fine-tuning); read-only.

    `path` is a workdir (its newest readable checkpoint is used), its checkpoints/ folder,
    or one step's folder inside it. The params are placed like `abstract_params`. Details
    of unreadable steps go to `log_file` (default: a temporary file, never the other run).
    """
    directory, step = _find_checkpoints(os.path.abspath(path))
    log_file = log_file or os.path.join(tempfile.gettempdir(), "jaxgen-init-from.log")
    manager = _reader(directory)
    # Restore onto this job's devices whatever topology wrote it: every saved leaf gets the
    # sharding of the params it will become (replicated), in the dtype it was saved in.
    sharding = jax.tree.leaves(abstract_params)[0].sharding
    errors = []
    for candidate in [step] if step is not None else sorted(manager.all_steps())[::-1]:
        try:
            with _captured_stderr():
                metadata = manager.item_metadata(candidate)["state"]
        except Exception as error:  # noqa: BLE001 - unreadable metadata: an older step
            errors.append(f"step {candidate}: {_reason(error)}")
            continue
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata
        )
        restored, error = _try_restore(manager, candidate, target, log_file, with_data=False)
        if error is None:
            manager.close()
            _check_params_fit(abstract_params, restored.state["params"], path)
            return jax.tree.map(
                lambda want, value: value.astype(want.dtype),
                abstract_params,
                restored.state["params"],
            )
        errors.append(error)
    manager.close()
    raise CheckpointReadError(
        f"config.init_from: no readable checkpoint in {directory}: "
        f"{'; '.join(errors) or 'none saved'}"
    )
