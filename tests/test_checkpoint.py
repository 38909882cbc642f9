"""Checkpoints: exact round trip, fallback past a corrupt latest step, other device counts."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import checkpoint, parallel
from jaxgen.config import base_config


def make_state(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "step": jnp.asarray(7, jnp.int32),
        "params": {"dense": {"kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}},
        "rng": jax.random.PRNGKey(seed),
    }


def placement(devices: int):
    mesh = base_config().mesh
    mesh.data = devices
    return parallel.Placement(mesh)


def ckpt_config(async_save=False):
    config = base_config().ckpt
    config.async_save = async_save
    return config


def assert_equal_trees(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("async_save", [False, True])
def test_round_trip_is_exact(tmp_path, async_save):
    where = placement(4)
    state = jax.device_put(make_state(), where.replicated)
    saver = checkpoint.Checkpointer(str(tmp_path), ckpt_config(async_save))
    saver.save(7, state, {"train": {"next_index": 3}})
    saver.close()
    loader = checkpoint.Checkpointer(str(tmp_path), ckpt_config())
    restored, data_state, step = loader.restore(where.abstract_state(jax.eval_shape(make_state)))
    assert step == 7 and data_state == {"train": {"next_index": 3}}
    assert_equal_trees(restored, state)


@pytest.mark.parametrize("devices", [1, 2])
def test_restore_onto_another_device_count(tmp_path, devices):
    state = jax.device_put(make_state(), placement(4).replicated)
    saver = checkpoint.Checkpointer(str(tmp_path), ckpt_config())
    saver.save(1, state, {})
    saver.close()
    target = placement(devices)
    restored, _, _ = checkpoint.Checkpointer(str(tmp_path), ckpt_config()).restore(
        target.abstract_state(jax.eval_shape(make_state))
    )
    assert len(restored["params"]["dense"]["kernel"].sharding.device_set) == devices
    assert_equal_trees(restored, state)


def test_corrupt_latest_falls_back_to_the_previous_step(tmp_path):
    where = placement(1)
    saver = checkpoint.Checkpointer(str(tmp_path), ckpt_config())
    saver.save(1, jax.device_put(make_state(1), where.replicated), {"train": 1})
    saver.save(2, jax.device_put(make_state(2), where.replicated), {"train": 2})
    saver.close()
    for folder, _, files in os.walk(tmp_path / "checkpoints" / "2" / "state"):
        for name in files:
            with open(os.path.join(folder, name), "r+b") as f:
                f.truncate(3)
    restored, data_state, step = checkpoint.Checkpointer(str(tmp_path), ckpt_config()).restore(
        where.abstract_state(jax.eval_shape(make_state))
    )
    assert step == 1 and data_state == {"train": 1}
    assert_equal_trees(restored, make_state(1))
    # The bad step is moved aside, not deleted, so that the run can save step 2 again.
    assert not (tmp_path / "checkpoints" / "2").exists()
    aside = os.listdir(tmp_path / "checkpoints_unreadable")
    assert len(aside) == 1 and aside[0].startswith("2_")
    assert (tmp_path / "checkpoints" / "1").exists()


def test_restore_params_for_init_from(tmp_path):
    where = placement(1)
    saver = checkpoint.Checkpointer(str(tmp_path), ckpt_config())
    saver.save(3, jax.device_put(make_state(5), where.replicated), {})
    saver.close()
    abstract = where.abstract_state(jax.eval_shape(make_state))["params"]
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "3"):
        params = checkpoint.restore_params(str(path), abstract)
        assert_equal_trees(params, make_state(5)["params"])
