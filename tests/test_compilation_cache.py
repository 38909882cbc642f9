"""The persistent compilation cache: a second process compiling the same function reads it."""

import os
import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = """
import sys
import jax, jax.numpy as jnp
from jax._src import monitoring
from jaxgen import cli

hits = []
monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None
)
print("dir", cli.use_compilation_cache(sys.argv[1] == "on"))
print(float(jax.jit(lambda x: jnp.tanh(x) @ x.T + 1)(jnp.ones((3, 3))).sum()))
print("hits", len(hits))
"""


def run(tmp_path, switch, **env):
    environ = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    environ |= {"JAXGEN_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)} | env
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, switch],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split("\n")


def test_second_process_hits_the_cache_in_the_cache_folder(tmp_path):
    first = run(tmp_path, "on")
    assert first[0] == f"dir {tmp_path / 'xla'}" and first[2] == "hits 0"
    assert any((tmp_path / "xla").iterdir())
    second = run(tmp_path, "on")
    assert second[1] == first[1] and int(second[2].split()[1]) >= 1  # jit, ones, sum


def test_flag_and_environment_turn_it_off(tmp_path):
    assert run(tmp_path, "off")[0] == "dir None"
    assert run(tmp_path, "on", JAXGEN_COMPILATION_CACHE="0")[0] == "dir None"
    assert not (tmp_path / "xla").exists()
