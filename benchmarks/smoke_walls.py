"""Wall seconds of every family's `:smoke` run as a user launches it, cold and warm. JSON lines.

    JAXGEN_DATA_DIR=../shared/data python -m benchmarks.smoke_walls            # all families
    python -m benchmarks.smoke_walls --configs=configs/gan/mnist_mlp.py,configs/vae/mnist.py

For each config: `python -m experiments.train --config=<config>:smoke --workdir=<new dir>` in
a subprocess, timed from process start to exit, first with an empty compilation cache
(`JAXGEN_CACHE_DIR` in a new temporary folder: "cold") and then again in a new workdir with
the cache the first run filled ("warm"). Datasets are prepared once before any timing (the
first run of a dataset builds its TFDS files), so the figures are the runs' own. The latent
diffusion smoke names the autoencoder and CLIP smoke runs trained just before it. Run it on
an idle machine: the runs share the CPU with nothing else.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = (
    "configs/gan/mnist_mlp.py",
    "configs/gan/mnist_dcgan.py",
    "configs/vae/mnist.py",
    "configs/classifier/mnist.py",
    "configs/ddpm/mnist.py",
    "configs/gpt/shakespeare_char.py",
    "configs/seq2seq/bible_es_en.py",
    "configs/autoencoder/mnist.py",
    "configs/clip/mnist.py",
    "configs/latent_diffusion/mnist.py",
)


def train(config: str, workdir: str, cache_dir: str, stages: dict) -> float:
    """Seconds from process start to exit of one smoke run (raises if it fails)."""
    command = [sys.executable, "-m", "experiments.train", f"--config={config}:smoke"]
    command.append(f"--workdir={workdir}")
    if config.startswith("configs/latent_diffusion/"):
        command += [f"--config.model.{field}={path}" for field, path in stages.items()]
    env = os.environ | {"JAXGEN_CACHE_DIR": cache_dir, "PYTHONPATH": ROOT}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{config}:smoke exited {result.returncode}:\n{result.stderr[-3000:]}")
    return wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated paths")
    args = parser.parse_args()
    configs = args.configs.split(",")
    with tempfile.TemporaryDirectory() as root:
        stages = {}
        for config in configs:  # prepare every dataset (and the stages) before timing
            folder = config.split("/")[1]
            workdir = os.path.join(root, "prepare", folder + os.path.basename(config))
            train(config, workdir, os.path.join(root, "prepare_cache"), stages)
            if folder in ("autoencoder", "clip"):
                stages["autoencoder" if folder == "autoencoder" else "text_encoder"] = workdir
        for config in configs:
            cache = os.path.join(root, "cache_" + config.replace("/", "_"))
            row = {"benchmark": "smoke_walls", "config": f"{config}:smoke"}
            for name in ("cold", "warm"):
                workdir = os.path.join(root, name, config.replace("/", "_"))
                row[f"{name}_s"] = round(train(config, workdir, cache, stages), 1)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
