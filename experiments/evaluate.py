"""Run a trained run's `config.evals` on its latest checkpoint, plus standard evaluators.

    python -m experiments.evaluate --workdir=/tmp/vae --config.evals.nll.num_samples=5000
    python -m experiments.evaluate --workdir=/tmp/gan --evals=fid,kid,is \
        --config.evals.fid.network=inception --config.evals.inception_score.network=inception

`--evals` adds registered evaluators (fid, kid, is, class_accuracy) as entries of the same
name (is: inception_score) with their documented defaults (jaxgen/metrics/generative.py
DEFAULTS), which `--config.evals.<name>.<field>` overrides refine; an entry the run already has
keeps its settings. W/config.json is never changed. Uses EMA params when the run keeps them. Writes
W/eval_<step>.json and prints it.
"""

import json
import os
import sys
import time

import jax
from absl import flags

from jaxgen import cli, metrics, runs
from jaxgen.config import ConfigDict
from jaxgen.workdir import write_atomic

flags.DEFINE_string("workdir", None, "Run directory written by experiments.train.")
flags.DEFINE_list("evals", [], "Standard evaluators to add, e.g. fid,kid,is.")


def requested_evals(argv: list[str]) -> list[str]:
    """The names given to --evals in argv, as --evals=a,b or --evals a,b (read before flags
    are parsed)."""
    values = cli.flag_values(argv, "evals")
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def entry_name(evaluator: str) -> str:
    """The config.evals entry --evals adds for an evaluator: its name, but a Python keyword
    ("is") cannot be overridden by --config.evals.<name>.*, so it takes a spelled-out one."""
    return "inception_score" if evaluator == "is" else evaluator


def add_evals(names: list[str]):
    """extend(config) for cli.define_workdir_config: adds an entry per name."""

    def extend(config: ConfigDict) -> None:
        known = metrics.EVALUATORS.names()
        for name in names:
            if name not in metrics.EVALUATORS:
                cli.fail(f"--evals: unknown evaluator {name!r}; choose from {', '.join(known)}")
            entry = entry_name(name)
            if entry not in config.evals:
                defaults = getattr(metrics.EVALUATORS.get(name), "defaults", {})
                config.evals[entry] = ConfigDict({"type": name, **defaults})

    return extend


def main(argv):
    del argv
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    if sorted(flags.FLAGS.evals) != sorted(requested_evals(sys.argv)):  # a form not read above
        cli.fail(f"--evals: write it --evals=a,b (got {','.join(flags.FLAGS.evals)!r})")
    run = runs.load_run(config, workdir)
    evaluators = metrics.build(run.config, run.steps, run.placement)
    start = time.perf_counter()
    results = metrics.run(evaluators, run.state)
    results["perf/seconds"] = time.perf_counter() - start
    path = os.path.join(workdir, f"eval_{run.step}.json")
    if jax.process_index() == 0:
        write_atomic(path, json.dumps({"step": run.step, **results}, indent=2))
        print(json.dumps({"step": run.step, **results}, indent=2))
        print(f"written: {path}")


if __name__ == "__main__":
    cli.define_workdir_config(sys.argv, extend=add_evals(requested_evals(sys.argv)))
    cli.run(main)
