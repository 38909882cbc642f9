"""Run a trained run's `config.evals` on its latest checkpoint.

    python -m experiments.evaluate --workdir=/tmp/vae --config.evals.nll.num_samples=5000

Uses EMA params when the run keeps them. Writes W/eval_<step>.json and prints it.
"""

import json
import os
import sys
import time

import jax
from absl import flags

from jaxgen import cli, metrics
from jaxgen.train import loop

flags.DEFINE_string("workdir", None, "Run directory written by experiments.train.")


def main(argv):
    del argv
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    run = loop.load_run(config, workdir)
    evaluators = metrics.build(config, run.steps, run.placement)
    start = time.perf_counter()
    results = metrics.run(evaluators, run.state)
    results["perf/seconds"] = time.perf_counter() - start
    path = os.path.join(workdir, f"eval_{run.step}.json")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump({"step": run.step, **results}, f, indent=2)
        print(json.dumps({"step": run.step, **results}, indent=2))
        print(f"written: {path}")


if __name__ == "__main__":
    cli.define_workdir_config(sys.argv)
    cli.run(main)
