"""Shared test helpers (not fixtures)."""

import importlib.util
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
