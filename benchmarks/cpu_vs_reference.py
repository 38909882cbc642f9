"""GPT training on CPU against nanoGPT's laptop run: ms/step and the loss after N steps.

    python -m benchmarks.cpu_vs_reference                       # 200 steps of the :cpu config
    python -m benchmarks.cpu_vs_reference --steps=2000          # the whole laptop run
    python -m benchmarks.cpu_vs_reference --compare=model.attention=xla,einsum --steps=60
    python -m benchmarks.cpu_vs_reference --compare=per_device_step=1,0 --steps=300 --rounds=15

Runs configs/gpt/shakespeare_char.py:cpu (4 layers, 4 heads, width 128, block 64, batch 12,
fp32, AdamW with clipping, cosine schedule) on tiny Shakespeare batches from the data
pipeline, on the CPU split the way experiments/*.py split it (`--cpu_devices`, default 0:
one device per physical core dividing the batch; 1: one device), and prints one JSON line per variant: the median ms of a step
(steady state, after compiling) and the training loss after `--steps` steps (mean of the last
10). `--compare=section.field=A,B` builds one step per value and times them interleaved
(A B A B ..., `--rounds` rounds of steps/rounds each), the only fair A/B on a shared machine;
`--compare=per_device_step=1,0` compares the per-device step with XLA's all-reduce.
nanoGPT's figure comes from its own script run beside it (benchmarks/README.md).
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np

from jaxgen import data, parallel
from jaxgen.train import gpt
from tests.helpers import load_config


def build(config, per_device_step=True):
    """(step, state, batches): the compiled train step, its first state, host batches.

    per_device_step=False keeps XLA's gradient all-reduce on a CPU split (parallel.Placement).
    """
    info = data.get_info(config.data)
    placement = parallel.Placement(config.mesh, per_device_step)
    steps = gpt.make_steps(config, info, placement.axis_name)
    # init runs under jit whatever the backend (as train/loop.py does)
    init = gpt.make_steps(config, info, None).init
    iterator = data.make_iterator(
        config.data, config.data.train_split, config.train.batch_size, config.seed, train=True
    )
    host_batches = [next(iterator) for _ in range(50)]
    first = placement.put_batch(host_batches[0], "jit")
    state = placement.compile_init(init)(jax.random.PRNGKey(config.seed), first)
    batches = [placement.put_batch(batch) for batch in host_batches]
    step = placement.compile_train_step(steps.train_step, state)
    return step, placement.put_state(state), batches


def run_steps(variant, count):
    """Runs `count` steps; appends each step's seconds and loss."""
    for _ in range(count):
        start = time.perf_counter()
        variant["state"], metrics = variant["step"](
            variant["state"], variant["batches"][variant["i"] % len(variant["batches"])]
        )
        loss = float(np.ravel(metrics["loss"])[0])  # blocks: a step's whole time
        variant["times"].append(time.perf_counter() - start)
        variant["losses"].append(loss)
        variant["i"] += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/gpt/shakespeare_char.py:cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--compare", default="", help="section.field=A,B[,C]: interleaved A/B")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cpu_devices", type=int, default=0, help="0: one per core; 1: one")
    parser.add_argument(
        "--per_device_step", type=int, default=1, help="0: XLA's all-reduce of every leaf"
    )
    args = parser.parse_args()

    path, _, arg = args.config.partition(":")
    values = [None]
    if args.compare:
        field, _, choices = args.compare.partition("=")
        values = choices.split(",")
    parallel.set_cpu_devices(args.cpu_devices, load_config(path, arg))
    variants = []
    for value in values:
        config = load_config(path, arg)
        config.train.num_steps = max(config.train.num_steps, args.steps)
        per_device_step = bool(args.per_device_step)
        if value is not None and field == "per_device_step":
            per_device_step = value == "1"
        elif value is not None:
            section, key = field.split(".")
            old = config[section][key]
            config[section][key] = type(old)(value) if not isinstance(old, bool) else value == "1"
        start = time.perf_counter()
        step, state, batches = build(config, per_device_step)
        variant = dict(step=step, state=state, batches=batches, i=0, times=[], losses=[])
        run_steps(variant, 1)
        variant.update(compile_s=time.perf_counter() - start, times=[], value=value)
        variants.append(variant)
    per_round = max(1, (args.steps - 1) // args.rounds)
    while variants[0]["i"] < args.steps:
        for variant in variants:
            run_steps(variant, min(per_round, args.steps - variant["i"]))
    for variant in variants:
        row = {
            "benchmark": "cpu_vs_reference",
            "config": args.config,
            "variant": f"{args.compare.partition('=')[0]}={variant['value']}"
            if args.compare
            else "",
            "devices": jax.device_count(),
            "steps": variant["i"],
            "step_ms_median": round(1e3 * statistics.median(variant["times"]), 2),
            "wall_s_of_steps": round(sum(variant["times"]) + variant["compile_s"], 2),
            "first_step_s": round(variant["compile_s"], 2),
            "loss_last10": round(float(np.mean(variant["losses"][-10:])), 4),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
