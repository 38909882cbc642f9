"""Compile seconds of each config's init, threefry rolled (jax's CPU rule) vs unrolled. JSON lines.

    JAXGEN_DATA_DIR=../shared/data python -m benchmarks.init_compile
    python -m benchmarks.init_compile --configs=configs/autoencoder/mnist.py:smoke --rounds=3

For each config: its family's init (what `Placement.compile_init` compiles), lowered and
compiled in this process with no compilation cache, alternately with jax's own CPU lowering
of threefry (a loop per call) and inside `lowering.unrolled_threefry()`, `--rounds` times.
Prints the median seconds of each, the loops and fusions of the compiled programs, and
whether the two give the same params (they must). Latent diffusion needs the autoencoder
and CLIP runs: `--stages=AE_WORKDIR,CLIP_WORKDIR`.
"""

import argparse
import contextlib
import json
import re
import statistics
import time

import jax
import numpy as np

from jaxgen import lowering, rundir
from jaxgen.family import get_family
from jaxgen.train import loop
from tests.helpers import load_config

CONFIGS = (
    "configs/gan/mnist_dcgan.py:smoke",
    "configs/vae/mnist.py:smoke",
    "configs/ddpm/mnist.py:smoke",
    "configs/gpt/shakespeare_char.py:smoke",
    "configs/seq2seq/bible_es_en.py:smoke",
    "configs/autoencoder/mnist.py:smoke",
    "configs/clip/mnist.py:smoke",
)


def compile_init(init, args, unrolled: bool):
    """(seconds, compiled) of a new jit of `init`, lowered rolled or unrolled."""
    fn = jax.jit(lambda *a: init(*a))  # a new function: nothing cached from the other rule
    with lowering.unrolled_threefry() if unrolled else contextlib.nullcontext():
        start = time.perf_counter()
        compiled = fn.lower(*args).compile()
    return time.perf_counter() - start, compiled


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated path:arg")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stages", default="", help="AE,CLIP workdirs for latent diffusion")
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    for spec in args.configs.split(","):
        path, _, arg = spec.partition(":")
        config = load_config(path, arg)
        if args.stages and "text_encoder" in config.model:  # a stage of text-to-image
            config.model.autoencoder, config.model.text_encoder = args.stages.split(",")
        info = loop.check(config, None)
        steps = get_family(config.family).make_steps(config, info, None)
        init_args = (jax.random.PRNGKey(config.seed), rundir.example_batch(steps))
        times, programs = {False: [], True: []}, {}
        for _ in range(args.rounds):
            for unrolled in (False, True):
                seconds, programs[unrolled] = compile_init(steps.init, init_args, unrolled)
                times[unrolled].append(seconds)
        row = {"benchmark": "init_compile", "config": spec}
        for unrolled, name in ((False, "rolled"), (True, "unrolled")):
            hlo = programs[unrolled].as_text()
            row[f"{name}_s"] = round(statistics.median(times[unrolled]), 2)
            row[f"{name}_loops"] = hlo.count(" while(")
            row[f"{name}_fusions"] = len(re.findall(r"^%?fused_computation[\w.]* ", hlo, re.M))
        leaves = [jax.tree.leaves(programs[u](*init_args)) for u in (False, True)]
        row["same_params"] = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(*leaves, strict=True)
            if not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
