"""Seconds of the checkpoint checksums of a config's train state: first call (compiling) and
the next. One JSON line.

    python -m benchmarks.checksum_compile --config=configs/ddpm/mnist.py:smoke

Builds the family's state shapes with jax.eval_shape (ones in every array), then times
jaxgen.checksums.checksums twice. Run it without the persistent compilation cache (the
default here) for the compile figure.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp

from jaxgen import checksums, data
from jaxgen.family import get_family
from tests.helpers import load_config


def ones_like(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.key(0)
    return jnp.ones(x.shape, x.dtype)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ddpm/mnist.py:smoke")
    args = parser.parse_args()
    path, _, arg = args.config.partition(":")
    config = load_config(path, arg)
    info = data.get_info(config.data)
    steps = get_family(config.family).make_steps(config, info, None)
    iterator = data.make_iterator(
        config.data, config.data.train_split, config.train.batch_size, 0, train=True
    )
    abstract = jax.eval_shape(steps.init, jax.random.PRNGKey(0), next(iterator))
    state = jax.tree.map(ones_like, abstract)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        checksums.checksums(state, {})
        times.append(time.perf_counter() - start)
    row = {
        "benchmark": "checksum_compile",
        "config": args.config,
        "leaves": len(jax.tree.leaves(state)),
        "first_call_s": round(times[0], 2),
        "second_call_s": round(times[1], 3),
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
