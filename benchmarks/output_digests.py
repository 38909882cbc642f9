"""Digests of what every family's `:smoke` run writes, for checking that a refactor changes no bit.

    JAXGEN_DATA_DIR=../shared/data python -m benchmarks.output_digests > /tmp/before.json
    ... change the code ...
    JAXGEN_DATA_DIR=../shared/data python -m benchmarks.output_digests > /tmp/after.json
    python -m benchmarks.output_digests --compare /tmp/before.json /tmp/after.json

For each config it trains `<config>:smoke` in a new workdir (the latent diffusion smoke names
the autoencoder and CLIP smoke runs trained just before it), then runs `experiments.sample` on
the workdir, and records a SHA-256 of: every file under samples/ (PNG grids, text), the metric
values of metrics.jsonl without the timing ones (perf/*), and the final checkpoint's arrays
(SHA-256 of the restored state's leaves). Every process runs on 2 CPU devices, so the numbers
do not depend on the machine's core count. `--compare` prints the outputs that differ and exits 1
if any does. It is not a speed benchmark; it lives here beside the other scripts that run every
family's smoke.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = (
    "configs/gan/mnist_mlp.py",
    "configs/gan/mnist_dcgan.py",
    "configs/gan/cifar10_wgan_gp.py",
    "configs/vae/mnist.py",
    "configs/classifier/mnist.py",
    "configs/ddpm/mnist.py",
    "configs/ddpm/mnist_cond.py",
    "configs/gpt/shakespeare_char.py",
    "configs/seq2seq/bible_es_en.py",
    "configs/autoencoder/mnist.py",
    "configs/clip/mnist.py",
    "configs/latent_diffusion/mnist.py",
)
# experiments.sample overrides per family, so that a sample differs from the training grids.
SAMPLE_FLAGS = {
    "latent_diffusion": ["--config.sample.prompt=the digit three|a 7", "--config.sample.seed=5"],
    "seq2seq": ["--config.sample.source=En el principio|y la tierra", "--config.sample.seed=5"],
    "gpt": ["--config.sample.prompt=ROMEO:", "--config.sample.seed=5"],
}
STATE_DIGEST = """
import hashlib, sys, jax, numpy as np
from jaxgen import runs
from jaxgen.config import load_workdir_config
run = runs.load_run(load_workdir_config(sys.argv[1]), sys.argv[1])
digest = hashlib.sha256()
for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(run.state)):
    leaf = np.asarray(jax.random.key_data(leaf) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf)
    digest.update(jax.tree_util.keystr(path).encode() + leaf.tobytes())
print(run.step, digest.hexdigest())
"""


def _run(command: list[str], env: dict) -> str:
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}"
        )
    return result.stdout


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def digests(workdir: str, env: dict) -> dict[str, str]:
    out = {}
    samples = os.path.join(workdir, "samples")
    for folder, _, files in sorted(os.walk(samples)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = _sha(f.read())
    rows = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            rows.append({k: v for k, v in row.items() if not k.startswith("perf/") and k != "time"})
    out["metrics.jsonl"] = _sha(json.dumps(rows, sort_keys=True).encode())
    state = _run([sys.executable, "-c", STATE_DIGEST, workdir], env).strip().splitlines()[-1]
    out["checkpoint"] = _sha(state.encode())
    return out


def collect(configs: list[str]) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as root:
        env = os.environ | {
            "JAXGEN_CACHE_DIR": os.path.join(root, "cache"),
            "PYTHONPATH": ROOT,
            "JAXGEN_CPU_DEVICES": "2",
        }
        stages = {}
        for config in configs:
            folder = config.split("/")[1]
            workdir = os.path.join(root, config.replace("/", "_"))
            command = [sys.executable, "-m", "experiments.train", f"--config={config}:smoke"]
            command += [f"--workdir={workdir}"]
            if folder == "latent_diffusion":
                command += [f"--config.model.{field}={path}" for field, path in stages.items()]
            _run(command, env)
            if folder in ("autoencoder", "clip"):
                stages["autoencoder" if folder == "autoencoder" else "text_encoder"] = workdir
            sample = [sys.executable, "-m", "experiments.sample", f"--workdir={workdir}"]
            _run(sample + SAMPLE_FLAGS.get(folder, ["--config.sample.seed=5"]), env)
            results[config] = digests(workdir, env)
            print(f"{config}: {len(results[config])} outputs", file=sys.stderr, flush=True)
    return results


def compare(before_path: str, after_path: str) -> int:
    with open(before_path) as f:
        before = json.load(f)
    with open(after_path) as f:
        after = json.load(f)
    differ, total = [], 0
    for config in sorted(set(before) | set(after)):
        outputs_a, outputs_b = before.get(config, {}), after.get(config, {})
        for name in sorted(set(outputs_a) | set(outputs_b)):
            total += 1
            if outputs_a.get(name) != outputs_b.get(name):
                differ.append(f"{config} {name}: {outputs_a.get(name)} -> {outputs_b.get(name)}")
    print("\n".join(differ) or f"all {total} outputs equal")
    return 1 if differ else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated paths")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    print(json.dumps(collect(args.configs.split(",")), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
