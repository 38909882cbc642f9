"""Where a compiled train step's time goes on CPU: a jax.profiler trace, summed per XLA op.

    python -m benchmarks.profile_step                              # the GPT :cpu config
    python -m benchmarks.profile_step --steps=20 --top=25 --cpu_devices=1

Builds the step as benchmarks.cpu_vs_reference does (the CPU split by --cpu_devices, default
one device per core), runs a few steps to warm up, traces `--steps` steps with XLA's
per-op TraceMe events on (--xla_cpu_enable_xprof_traceme), reads the trace back with
jaxlib's ProfileData and prints one JSON line: the traced ms per step, and the `--top`
groups of ops with their ms per step summed over every thread (so with 2 devices the sum is
about twice the wall time) and their share of that sum. An op is grouped by the model code
it comes from (its HLO `op_name`, with the layer index h_N and the jit prefix removed:
`transpose(jvp(GPT))/h/mlp/fc/dot_general` is the backward of every layer's MLP input
matmul); `--by=op` lists single ops instead.
"""

import argparse
import collections
import glob
import json
import os
import re
import tempfile
import time

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
).strip()

import jax  # noqa: E402
from jax._src.lib import _profile_data  # noqa: E402

from benchmarks.cpu_vs_reference import build, run_steps  # noqa: E402
from jaxgen import parallel  # noqa: E402
from tests.helpers import load_config  # noqa: E402


def op_times(trace_dir: str) -> collections.Counter:
    """Seconds per event name over the XLA CPU threads of the trace in `trace_dir`."""
    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    totals = collections.Counter()
    for plane in _profile_data.ProfileData.from_file(path).planes:
        for line in plane.lines:
            for event in line.events:
                totals[event.name] += event.duration_ns / 1e9
    return totals


def op_sources(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its op_name metadata, layer indices and jit prefix removed."""
    sources = {}
    for match in re.finditer(r"%([\w.-]+) = .*?op_name=\"([^\"]*)\"", hlo_text):
        source = re.sub(r"/h_\d+/", "/h/", match.group(2)).removeprefix("jit(train_step)/")
        sources[match.group(1)] = source
    return sources


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/gpt/shakespeare_char.py:cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--cpu_devices", type=int, default=0, help="0: one per core; 1: one")
    parser.add_argument("--by", choices=("source", "op"), default="source")
    args = parser.parse_args()
    path, _, arg = args.config.partition(":")
    config = load_config(path, arg)
    parallel.set_cpu_devices(args.cpu_devices, config)
    step, state, batches = build(config)
    variant = dict(step=step, state=state, batches=batches, i=0, times=[], losses=[])
    run_steps(variant, 10)
    sources = op_sources(step.lower(state, batches[0]).compile().as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            run_steps(variant, args.steps)
        wall = time.perf_counter() - start
        totals = op_times(trace_dir)
    ops = collections.Counter()
    for name, seconds in totals.items():
        if name in sources or name.startswith(("all-reduce", "Rendezvous", "Wait")):
            key = name if args.by == "op" else sources.get(name, name.split(".")[0])
            key = "all-reduce of the gradients" if name.startswith("all-reduce") else key
            ops["sync: " + key if key.startswith(("Rendezvous", "Wait")) else key] += seconds
    busy = sum(ops.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1])[: args.top]
    row = {
        "benchmark": "profile_step",
        "devices": jax.device_count(),
        "traced_ms_per_step": round(1e3 * wall / args.steps, 2),
        "op_ms_per_step_all_threads": round(1e3 * busy / args.steps, 2),
        "top": [[name, round(1e3 * t / args.steps, 3), round(t / busy, 3)] for name, t in top],
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
