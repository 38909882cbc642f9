"""Training throughput of GPT-2 124M: tokens/s and MFU of the jaxgen train step. One JSON line.

    python -m benchmarks.gpt_train --batch_size=32            # the comparison with nanoGPT
    python -m benchmarks.gpt_train --config=configs/gpt/gpt2_124m.py:smoke --batch_size=8 \
        --steps=3                                              # checks the script on CPU

Runs configs/gpt/gpt2_124m.py (bf16 compute, f32 params, AdamW, clipping) on random tokens of
the full context (1024) with no gradient accumulation, on every device present (the batch is
global). Times `--steps` steps after `--warmup` compiled ones, blocking on the last state.
MFU counts nanoGPT's FLOPs per token, 6 N + 12 L H Q T (N = params without position
embeddings), against the device's dense bf16 peak; XLA's own count of the compiled step is
printed as `xla_flops_per_token` for comparison.
"""

import argparse
import json
import math
import time

import jax
import numpy as np

from jaxgen import parallel
from jaxgen.data import DatasetInfo
from jaxgen.train import gpt
from tests.helpers import load_config

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def peak_flops(device) -> float | None:
    kind = device.device_kind
    return next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in kind), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/gpt/gpt2_124m.py")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", default="", help="override config.model.dtype")
    parser.add_argument(
        "--compile_only",
        action="store_true",
        help="print XLA's cost and memory analysis of the compiled step without running it",
    )
    args = parser.parse_args()

    path, _, arg = args.config.partition(":")
    config = load_config(path, arg)
    config.train.batch_size, config.train.microbatches = args.batch_size, 1
    if args.dtype:
        config.model.dtype = args.dtype
    parallel.check_config(config)
    vocab = config.model.vocab_size or config.data.vocab_size
    seq_len = config.data.seq_len
    info = DatasetInfo(image_shape=(), num_classes=0, num_examples={}, vocab_size=vocab)
    placement = parallel.Placement(config.mesh)
    steps = gpt.make_steps(config, info, placement.axis_name)

    rng = np.random.default_rng(0)
    batches = [
        {"tokens": rng.integers(0, vocab, (args.batch_size, seq_len + 1), dtype=np.int32)}
        for _ in range(2)
    ]
    state = placement.compile_init(steps.init)(jax.random.PRNGKey(0), batches[0])
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    step = placement.compile_train_step(steps.train_step, state)
    state = placement.put_state(state)
    device_batches = [placement.put_batch(b) for b in batches]

    compiled = step.lower(state, device_batches[0]).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    tokens_per_step = args.batch_size * seq_len
    model = config.model
    wpe = model.block_size * model.width if model.position == "learned" else 0
    flops_per_token = 6 * (num_params - wpe) + 12 * model.num_layers * model.width * seq_len
    if args.compile_only:
        memory = compiled.memory_analysis()
        print(
            json.dumps(
                {
                    "benchmark": "gpt_train_compile",
                    "config": args.config,
                    "device": jax.devices()[0].device_kind,
                    "batch_size": args.batch_size,
                    "dtype": model.dtype,
                    "params": num_params,
                    "flops_per_token": flops_per_token,
                    "xla_flops_per_token": round(cost.get("flops", math.nan) / tokens_per_step),
                    "xla_bytes_accessed_per_token": round(
                        cost.get("bytes accessed", math.nan) / tokens_per_step
                    ),
                    "argument_mb": round(memory.argument_size_in_bytes / 2**20, 1),
                    "output_mb": round(memory.output_size_in_bytes / 2**20, 1),
                    "alias_mb": round(memory.alias_size_in_bytes / 2**20, 1),
                    "temp_mb": round(memory.temp_size_in_bytes / 2**20, 1),
                }
            )
        )
        return

    start = time.perf_counter()
    for i in range(args.warmup):
        state, metrics = step(state, device_batches[i % 2])
    jax.block_until_ready(state)
    compile_and_warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(args.steps):
        state, metrics = step(state, device_batches[i % 2])
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start

    tokens_per_s = tokens_per_step * args.steps / elapsed
    peak = peak_flops(jax.devices()[0])
    peak_total = peak * jax.device_count() if peak else None
    print(
        json.dumps(
            {
                "benchmark": "gpt_train",
                "config": args.config,
                "device": jax.devices()[0].device_kind,
                "devices": jax.device_count(),
                "jax": jax.__version__,
                "dtype": model.dtype,
                "batch_size": args.batch_size,
                "seq_len": seq_len,
                "params": num_params,
                "steps": args.steps,
                "step_ms": round(1e3 * elapsed / args.steps, 3),
                "tokens_per_s": round(tokens_per_s),
                "mfu": round(tokens_per_s * flops_per_token / peak_total, 4) if peak else None,
                "flops_per_token": flops_per_token,
                "xla_flops_per_token": round(cost.get("flops", math.nan) / tokens_per_step),
                "compile_and_warmup_s": round(compile_and_warmup_s, 2),
                "final_loss": float(metrics["loss"]),
            }
        )
    )


if __name__ == "__main__":
    main()
