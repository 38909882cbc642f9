"""A trained run loaded back from its workdir, for sampling, evaluation and export.

    run = runs.load_run(load_workdir_config(workdir), workdir)
    run.state, run.step, run.steps.sample, run.steps.predict_fns["translate"], ...

`load_run` reads W/config.json's family (found by name: jaxgen.family.get_family), the saved
dataset info and tokenizers, and restores the latest checkpoint read-only onto a jit mesh. It
opens no training data and no earlier run: a workdir copied to another machine loads there.
What a run's folder holds is jaxgen.rundir; this module only puts it together.
"""

from typing import Any, NamedTuple

import jax

from jaxgen import data, parallel, rundir
from jaxgen.config import ConfigDict
from jaxgen.family import Family, Steps, get_family
from jaxgen.tokenizers import Tokenizer

PyTree = Any


class Run(NamedTuple):
    """A trained run loaded for sampling or evaluation (always under jit)."""

    state: PyTree  # global, replicated
    step: int
    steps: Steps  # the family's
    placement: parallel.Placement
    info: data.DatasetInfo
    tokenizer: Tokenizer | None  # the run's config.data.tokenizer (workdir/tokenizer.json), if any
    family: Family
    config: ConfigDict  # the config it was loaded with (tokenizer fields point into the workdir)


def load_run(config: ConfigDict, workdir: str) -> Run:
    """Restore the latest checkpoint of `workdir` with `config` (the run's, plus overrides)."""
    config = config.copy_and_resolve_references()
    config.mesh.backend = "jit"
    config.data = rundir.with_saved_tokenizers(config.data, workdir)
    info = rundir.check_config(config, rundir.load_info(workdir))
    family = get_family(config.family)
    placement = parallel.Placement(config.mesh)
    steps = family.make_steps(config, info, None)
    abstract = jax.eval_shape(
        steps.init, jax.random.PRNGKey(config.seed), rundir.example_batch(steps)
    )
    state, step = rundir.restore_latest(workdir, placement.abstract_state(abstract))
    tokenizer = data.get_tokenizers(config.data).get("tokenizer")
    return Run(state, step, steps, placement, info, tokenizer, family, config)
