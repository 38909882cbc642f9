"""Compiling ahead (train/ahead.py): the loop's programs compile side by side, each once."""

import collections
import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import pytest
from jax import monitoring

from jaxgen.train import loop
from jaxgen.train.ahead import Ahead
from tests.helpers import ROOT, vae_smoke_config

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@pytest.fixture
def compiles():
    """(function name, thread name) of every XLA compile (or compilation cache load)."""
    events = []

    def listen(event, duration, fun_name="", **kwargs):
        if event == COMPILE_EVENT:
            events.append((fun_name, threading.current_thread().name))

    monitoring.register_event_duration_secs_listener(listen)
    yield events
    monitoring.unregister_event_duration_listener(listen)


def test_compiled_ahead_means_the_first_call_compiles_nothing(compiles):
    first = jax.jit(lambda x: jnp.tanh(x) @ x.T)
    second = jax.jit(lambda x, y: jnp.sin(x) * y)
    x = jnp.ones((8, 8))
    ahead = Ahead()
    ahead.compile(first, x)
    ahead.compile(second, jax.ShapeDtypeStruct((8, 8), jnp.float32), x)
    ahead.wait()
    lambdas = [thread for name, thread in compiles if name == "jit(<lambda>)"]
    assert len(lambdas) == 2 and "compile ahead" in lambdas, compiles  # the first: a worker
    before = len(compiles)
    first(x).block_until_ready()
    second(x, x).block_until_ready()
    assert len(compiles) == before, compiles[before:]


def test_a_failed_ahead_compile_leaves_the_error_to_the_real_call():
    @jax.jit
    def bad(x):
        return x @ jnp.ones((3, 2))  # [4, 4] @ [3, 2]: shapes do not match

    ahead = Ahead()
    ahead.compile(bad, jnp.ones((4, 4)))
    ahead.wait()  # swallowed here
    with pytest.raises(TypeError, match="dot_general"):
        bad(jnp.ones((4, 4)))


def test_the_loop_compiles_the_train_step_on_a_worker_and_every_program_once(tmp_path, compiles):
    config = vae_smoke_config()
    config.train.update(num_steps=4, log_every=2, eval_every=4, ckpt_every=4, sample_every=4)
    loop.train(config, str(tmp_path))
    count = collections.Counter(name for name, _ in compiles)
    threads = {name: thread for name, thread in compiles}
    assert count["jit(train_step)"] == 1 and threads["jit(train_step)"] == "compile ahead"
    # One eval step per eval entry (elbo and nll) and one sampler: none compiled again when
    # the loop first called it.
    assert count["jit(eval_step)"] == len(config.evals) == 2, count
    assert count["jit(<lambda>)"] == 1, count  # the VAE's sampler
    assert count["jit(init)"] == 1 and threads["jit(init)"] == "MainThread"


EXIT_WHILE_COMPILING = """
import sys, time
import jax, jax.numpy as jnp
from jaxgen.train.ahead import Ahead

def big(x):  # a few seconds of XLA compiling
    for i in range(300):
        x = jnp.tanh(x * (i + 1.0)) + jnp.roll(x, i, axis=0)
    return x

with Ahead() as ahead:
    ahead.compile(jax.jit(big), jnp.ones((64, 64)))
    ahead.compile(jax.jit(lambda x: x + 1), jnp.ones(3))  # not started: dropped
    time.sleep(0.5)  # the worker is inside XLA now
    print("error: config.x: a one-line error while compiling", file=sys.stderr)
    sys.exit(2)
"""


def test_an_error_while_compiling_ahead_exits_with_its_own_status():
    """The process waits for the running compile: a thread stopped inside XLA aborts it."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", EXIT_WHILE_COMPILING], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().endswith("a one-line error while compiling"), result.stderr
