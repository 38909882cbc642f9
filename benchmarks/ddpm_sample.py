"""Sampling throughput of the DDPM U-Net (images/s): 1000-step ancestral and 50-step DDIM.

    python -m benchmarks.ddpm_sample                     # CIFAR-10 U-Net, batch 256, bf16
    python -m benchmarks.ddpm_sample --batch_size=2 --channels=32 --num_timesteps=20 \
        --num_inference_steps=5                          # a CPU check

Prints one JSON line per sampler. Each sampler is the family's sample step (one
lax.scan inside one jit), timed on a second call after compiling on the first.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp

from jaxgen.data import DatasetInfo
from jaxgen.train import ddpm
from tests.helpers import load_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--num_timesteps", type=int, default=1000)
    parser.add_argument("--num_inference_steps", type=int, default=50)
    args = parser.parse_args()

    info = DatasetInfo((32, 32, 3), 10, {"train": 50_000, "test": 10_000})
    for sampler in ("ddpm", "ddim"):
        config = load_config("configs/ddpm/cifar10.py")
        config.model.update(dtype=args.dtype, channels=args.channels)
        config.model.groups = min(config.model.groups, args.channels)
        config.diffusion.num_timesteps = args.num_timesteps
        config.sample.update(
            sampler=sampler,
            num_samples=args.batch_size,
            num_inference_steps=args.num_inference_steps,
        )
        ddpm.validate(config, info)
        steps = ddpm.make_steps(config, info)
        batch = {"image": jnp.zeros((1, 32, 32, 3)), "label": jnp.zeros((1,), jnp.int32)}
        state = jax.jit(steps.init)(jax.random.PRNGKey(0), batch)
        sample = jax.jit(steps.sample)
        start = time.perf_counter()
        jax.block_until_ready(sample(state, batch, jax.random.PRNGKey(1)))
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        jax.block_until_ready(sample(state, batch, jax.random.PRNGKey(2)))
        seconds = time.perf_counter() - start
        model_steps = args.num_timesteps if sampler == "ddpm" else args.num_inference_steps
        result = {
            "benchmark": "ddpm_sample",
            "sampler": sampler,
            "steps": model_steps,
            "device": jax.devices()[0].device_kind,
            "batch_size": args.batch_size,
            "dtype": args.dtype,
            "images_per_sec": round(args.batch_size / seconds, 3),
            "seconds": round(seconds, 2),
            "compile_plus_first_s": round(compile_s, 1),
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
