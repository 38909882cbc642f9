"""Checkpoints: the only module that imports Orbax.

A checkpoint holds the train state (params, optimizer state, EMA, step, rng)
and the data iterator's state, so a resumed run sees exactly the batches and
randomness it would have seen. Orbax writes each step into a temporary
directory and renames it when complete, so a kill mid-write leaves the last
good checkpoint as the latest one. Saves are asynchronous by default.
"""

import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxgen.config import ConfigDict

PyTree = Any
CHECKPOINT_DIR = "checkpoints"


class CheckpointWriteError(OSError):
    """A save failed (e.g. no space left); earlier checkpoints are untouched."""


def _write_error(step: int | None, directory: str, error: Exception) -> CheckpointWriteError:
    text = str(error)
    reason = "no space left on device" if "No space left" in text else text.splitlines()[0][:300]
    where = f"checkpoint {step}" if step is not None else "a checkpoint"
    return CheckpointWriteError(
        f"could not write {where} to {directory}: {reason}; the earlier checkpoints are intact"
    )


class Checkpointer:
    """Saves and restores (state, data_state) pairs under `workdir/checkpoints`."""

    def __init__(self, workdir: str, ckpt_config: ConfigDict):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=ckpt_config.max_to_keep,
            enable_async_checkpointing=ckpt_config.async_save,
            cleanup_tmp_directories=True,  # remove half-written saves left by a kill
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: PyTree, data_state: dict) -> None:
        """Start writing step `step`; returns once the arrays are copied off the device."""
        try:  # also reports a failure of the previous background save
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
                ),
                force=True,
            )
        except Exception as error:
            raise _write_error(step, self.directory, error) from error

    def restore(self, abstract_state: PyTree, step: int | None = None) -> tuple[PyTree, dict, int]:
        """Restore onto `abstract_state`'s shardings, trying the newest step first.

        A step that fails to restore (truncated or corrupt files) is reported and
        skipped in favour of the next older one; nothing is deleted.
        """
        steps = [step] if step is not None else self.all_steps()[::-1]
        errors, unreadable = [], []
        for candidate in steps:
            try:
                restored = self.manager.restore(
                    candidate,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                    ),
                )
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint falls back
                message = str(error).splitlines()[0] if str(error) else type(error).__name__
                logging.warning(
                    "checkpoint %d in %s is unreadable (%s)", candidate, self.directory, message
                )
                errors.append(f"step {candidate}: {message}")
                unreadable.append(candidate)
                continue
            self._set_aside(unreadable)
            return restored.state, restored.data, candidate
        raise FileNotFoundError(
            f"no restorable checkpoint in {self.directory}: {'; '.join(errors) or 'none saved'}"
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


def restore_params(path: str, abstract_params: PyTree) -> PyTree:
    """Params of another run, for `config.init_from` (fine-tuning).

    `path` is a workdir (its latest checkpoint is used), its checkpoints/ folder,
    or one step's folder inside it. The params are placed like `abstract_params`.
    """
    path = os.path.abspath(path)
    step = None
    for directory in (os.path.join(path, CHECKPOINT_DIR), path):
        if os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory)):
            break
    else:
        directory, name = os.path.split(path)
        if not name.isdigit():
            raise FileNotFoundError(f"config.init_from: no checkpoint found at {path}")
        step = int(name)
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_names=("state", "data"),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    )
    step = manager.latest_step() if step is None else step
    # Restore onto this job's devices whatever topology wrote it: every saved leaf gets the
    # sharding of the params it will become (replicated).
    sharding = jax.tree.leaves(abstract_params)[0].sharding
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
        manager.item_metadata(step)["state"],
    )
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
    manager.close()
    return jax.tree.map(
        lambda want, value: value.astype(want.dtype), abstract_params, restored.state["params"]
    )
