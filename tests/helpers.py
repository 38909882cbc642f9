"""Shared test helpers (not fixtures)."""

import importlib.util
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def load_config(path: str, arg: str = ""):
    """get_config(arg) of a config file, as config_flags would call it."""
    spec = importlib.util.spec_from_file_location("config_under_test", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def vae_smoke_config():
    return load_config("configs/vae/mnist.py", "smoke")


def gpt_model_config(**overrides):
    """config.model of a tiny GPT (2 layers, width 32) for model and sampling tests."""
    from ml_collections import ConfigDict

    config = ConfigDict(
        dict(
            name="gpt",
            vocab_size=0,
            block_size=32,
            num_layers=2,
            num_heads=4,
            width=32,
            dropout=0.0,
            bias=True,
            position="learned",
            attention="auto",
            dtype="float32",
            param_dtype="float32",
        )
    )
    config.update(overrides)
    return config


def run_concurrently(fn, num_threads: int = 2) -> list:
    """fn() in threads released together; their results (re-raises the first error)."""
    import threading

    barrier = threading.Barrier(num_threads)
    results, errors = [], []

    def worker():
        barrier.wait()
        try:
            results.append(fn())
        except Exception as error:  # noqa: BLE001 (re-raised below)
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(num_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def tree_snapshot(root):
    """Every path under `root` with its bytes (None for folders)."""
    snapshot = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            snapshot[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                snapshot[os.path.relpath(path, root)] = f.read()
    return snapshot


def write_pngs(folder, count: int = 8, size=(40, 36), seed: int = 0):
    """`count` random RGB PNGs of `size` (width, height) in `folder` (made if needed), for the
    images kind's "folder" dataset; returns the folder."""
    import numpy as np
    from PIL import Image

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder
