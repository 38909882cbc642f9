"""experiments/train held before a chosen step, so that a test's signal lands mid-run on a
machine of any speed, instead of hoping that the run is slow enough for it.

    JAXGEN_TEST_HOLD=/tmp/t/hold JAXGEN_TEST_HOLD_STEP=12 python -m tests.hold <train flags>

Before its 12th train step call (counted from 0 in this process: the steps it runs, resumed or
not) the trainer writes <hold>.reached and waits while the file <hold> exists. A test creates
<hold>, starts the trainer, waits for <hold>.reached, signals it, then deletes <hold> to let it
go on (a SIGKILL needs no release). Without the variables the trainer runs as it is.
"""

import os
import pathlib
import runpy
import time

from jaxgen import parallel

HOLD = "JAXGEN_TEST_HOLD"
HOLD_STEP = "JAXGEN_TEST_HOLD_STEP"


def hold_env(hold: pathlib.Path, step: int) -> dict[str, str]:
    """The environment variables that hold a trainer before its `step`-th step; creates `hold`."""
    hold.touch()
    return {HOLD: str(hold), HOLD_STEP: str(step)}


def reached(hold: pathlib.Path) -> bool:
    return pathlib.Path(f"{hold}.reached").exists()


def install() -> None:
    """Wrap the loop's compiled train step to wait at the step the environment names."""
    if not os.environ.get(HOLD):
        return
    hold, at = pathlib.Path(os.environ[HOLD]), int(os.environ[HOLD_STEP])
    compile_train_step = parallel.Placement.compile_train_step

    def held_compile(self, train_step, state):
        step = compile_train_step(self, train_step, state)
        calls = 0

        def run(state, batch):
            nonlocal calls
            if calls == at:
                pathlib.Path(f"{hold}.reached").touch()
                while hold.exists():
                    time.sleep(0.01)
            calls += 1
            return step(state, batch)

        run.lower = step.lower  # compiled ahead as the loop does
        return run

    parallel.Placement.compile_train_step = held_compile


if __name__ == "__main__":
    install()
    runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
