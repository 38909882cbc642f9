"""Wall and compile seconds of one `:smoke` training run. One JSON line.

    python -m benchmarks.smoke_compile --config=configs/ddpm/mnist.py:smoke            # cache on
    JAXGEN_COMPILATION_CACHE=0 python -m benchmarks.smoke_compile --config=...          # cold

Trains the config in a temporary workdir in this process (as experiments.train does, with
the persistent compilation cache of jaxgen.cli unless JAXGEN_COMPILATION_CACHE=0; run it
twice for the warm figure) and sums jax's monitoring durations: tracing, lowering to MLIR
and XLA backend compiles (their count), and the compile time the cache saved.
"""

import argparse
import collections
import json
import tempfile
import time

import jax
from jax import monitoring

from jaxgen import cli, parallel
from jaxgen.train import loop
from tests.helpers import load_config

EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "backend_compile_s",
    "/jax/compilation_cache/compile_time_saved_sec": "cache_saved_s",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ddpm/mnist.py:smoke")
    parser.add_argument("--cpu_devices", type=int, default=0, help="0: one per core; 1: one")
    args = parser.parse_args()
    totals, counts = collections.defaultdict(float), collections.Counter()

    def listen(event, duration, **kwargs):
        if event in EVENTS:
            totals[EVENTS[event]] += duration
            counts[EVENTS[event]] += 1

    monitoring.register_event_duration_secs_listener(listen)
    cache = cli.use_compilation_cache()
    path, _, arg = args.config.partition(":")
    config = load_config(path, arg)
    parallel.set_cpu_devices(args.cpu_devices, config)  # as experiments.train splits the CPU
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        loop.train(config, workdir)
    row = {"benchmark": "smoke_compile", "config": args.config, "cache": cache is not None}
    row["wall_s"] = round(time.perf_counter() - start, 1)
    row |= {key: round(value, 1) for key, value in sorted(totals.items())}
    row["backend_compiles"] = counts["backend_compile_s"]
    row["devices"] = jax.device_count()
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
