"""Train a model.

    python -m experiments.train --config=configs/vae/mnist.py:smoke --workdir=/tmp/vae \
        --config.optim.lr=3e-4

Re-running the same command on the same workdir resumes from its latest
checkpoint. Prints where the checkpoints, metrics and samples are.
"""

import os

from absl import flags

from jaxgen import cli
from jaxgen.train import loop
from jaxgen.workdir import lock_workdir

cli.define_config_file()
flags.DEFINE_string("workdir", None, "Run directory: checkpoints/, metrics.jsonl, samples/.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    info = loop.check(config, workdir)  # every bad value is reported before compiling
    with lock_workdir(workdir):  # one trainer per workdir; a second one stops here
        loop.train(config, workdir, info)
    samples = os.path.join(workdir, "samples")
    names = sorted(os.listdir(samples)) if os.path.isdir(samples) else []
    last_step = max((name.rsplit("_", 1)[-1] for name in names), default=None)
    latest = [name for name in names if name.endswith(last_step or "-")]
    print(f"checkpoints: {os.path.join(workdir, 'checkpoints')}")
    print(
        f"metrics:     {os.path.join(workdir, 'metrics.jsonl')} (TensorBoard: {workdir}/tensorboard)"
    )
    for name in latest:
        print(f"samples:     {os.path.join(samples, name)}")


if __name__ == "__main__":
    cli.run(main, stopped="while starting up or compiling; nothing was trained or saved")
