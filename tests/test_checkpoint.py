"""Checkpoints: exact round trip, fallback past a corrupt latest step, other device counts,
checksums, read-only readers."""

import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.serialization import replica_slices

from jaxgen import checkpoint, checksums, parallel
from jaxgen.config import base_config
from tests.e2e import script_env
from tests.helpers import ROOT, tree_snapshot


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


def test_a_cpu_save_writes_replicated_arrays_whole_without_slice_programs(tmp_path, monkeypatch):
    """Orbax's replica-parallel save slices each replicated array over its 4 devices, one
    compiled slice program per shape and device; on CPU jaxgen saves from one replica."""
    sliced = []
    real = replica_slices.jax.lax.slice_in_dim
    monkeypatch.setattr(
        replica_slices.jax.lax, "slice_in_dim", lambda *a, **k: sliced.append(a) or real(*a, **k)
    )

    def make():  # an array whose rows split evenly over 4 replicas
        return make_state() | {"table": jnp.arange(256, dtype=jnp.float32).reshape(16, 16)}

    state = jax.device_put(make(), placement(4).replicated)
    saver = checkpoint.Checkpointer(str(tmp_path), ckpt_config())
    saver.save(1, state, {})
    saver.close()
    assert sliced == []
    restored, _, _ = checkpoint.Checkpointer(str(tmp_path), ckpt_config()).restore(
        placement(4).abstract_state(jax.eval_shape(make))
    )
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


# --- Checksums -----------------------------------------------------------------------------------


def numpy_checksum(x: np.ndarray) -> tuple[int, int]:
    """The checksum of checksums.leaf_checksum, written out in NumPy (uint32 wraps)."""
    x = np.asarray(x)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    width = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
    words = x.reshape(-1).view(width).astype(np.uint32)
    index = np.arange(words.size, dtype=np.uint32)

    def fmix(h):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))

    with np.errstate(over="ignore"):
        s0 = np.sum(words * (np.uint32(2) * index + np.uint32(1)), dtype=np.uint32)
        s1 = np.sum(fmix(words ^ fmix(index)), dtype=np.uint32)
    return int(s0), int(s1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "bool", "uint32", "int32"])
def test_leaf_checksum_matches_numpy_and_ignores_sharding(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 12)) * 50).astype(dtype)
    expected = numpy_checksum(np.asarray(x))
    assert tuple(int(v) for v in checksums.leaf_checksum(x)) == expected
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded = jax.device_put(
        x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    )
    assert tuple(int(v) for v in checksums.leaf_checksum(sharded)) == expected


def test_any_one_changed_value_fails_verification():
    state = make_state()
    saved = checksums.checksums(state, {"train": 1})
    checksums.verify(state, {"train": 1}, saved)
    kernel = np.asarray(state["params"]["dense"]["kernel"])
    for index in [(0, 0), (4, 2), (2, 1)]:
        changed = kernel.copy()
        changed[index] = np.nextafter(changed[index], np.float32(np.inf))  # the last bit
        bad = {**state, "params": {"dense": {"kernel": jnp.asarray(changed)}}}
        with pytest.raises(checksums.ChecksumError, match="params/dense/kernel"):
            checksums.verify(bad, {"train": 1}, saved)
    with pytest.raises(checksums.ChecksumError, match="data state"):
        checksums.verify(state, {"train": 2}, saved)


def save_two_steps(workdir, shape=(256, 256)):
    """Steps 1 and 2 of a state with one big array (zstd-compressed on disk)."""

    def state(seed):
        rng = np.random.default_rng(seed)
        return {
            "step": jnp.asarray(seed, jnp.int32),
            "params": {"w": jnp.asarray(rng.normal(size=shape), jnp.float32)},
            "rng": jax.random.PRNGKey(seed),
        }

    where = placement(1)
    saver = checkpoint.Checkpointer(str(workdir), ckpt_config())
    for step in (1, 2):
        saver.save(step, jax.device_put(state(step), where.replicated), {"train": step})
    saver.close()
    return state, where.abstract_state(jax.eval_shape(lambda: state(0)))


def largest_array_file(step_dir):
    files = [os.path.join(d, n) for d, _, names in os.walk(step_dir) for n in names if "/d" in d]
    return max(files, key=os.path.getsize)


def overwrite_middle(path, seed=0, size=4096):
    """Random bytes into the middle of a file, keeping its size (as a bad disk or bit rot)."""
    length = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(length // 2)
        f.write(np.random.default_rng(seed).bytes(min(size, length - length // 2)))


def test_random_bytes_in_an_array_file_fall_back_to_the_previous_step(tmp_path):
    state, abstract = save_two_steps(tmp_path)
    # Seed 3 keeps the zstd stream decodable: without checksums this restored garbage.
    overwrite_middle(largest_array_file(tmp_path / "checkpoints" / "2"), seed=3)
    restored, data_state, step = checkpoint.Checkpointer(str(tmp_path), ckpt_config()).restore(
        abstract
    )
    assert step == 1 and data_state == {"train": 1}
    assert_equal_trees(restored, state(1))
    log = (tmp_path / "logs" / "checkpoint.log").read_text()
    assert "checkpoint 2" in log and "ChecksumError" in log


def test_every_checkpoint_corrupt_is_one_clear_error(tmp_path):
    _, abstract = save_two_steps(tmp_path)
    for step in ("1", "2"):
        overwrite_middle(largest_array_file(tmp_path / "checkpoints" / step), seed=3)
    with pytest.raises(checkpoint.CheckpointReadError, match="no readable checkpoint") as error:
        checkpoint.Checkpointer(str(tmp_path), read_only=True).restore(abstract)
    assert "step 2:" in str(error.value) and "step 1:" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_step_without_checksums_still_restores(tmp_path):
    """Checkpoints written before checksums existed restore, with a warning."""
    state, abstract = save_two_steps(tmp_path)
    for step in ("1", "2"):
        for folder, _, names in os.walk(tmp_path / "checkpoints" / step / "checksums"):
            for name in names:
                os.remove(os.path.join(folder, name))
        os.rmdir(tmp_path / "checkpoints" / step / "checksums")
    restored, _, step = checkpoint.Checkpointer(str(tmp_path), read_only=True).restore(abstract)
    assert step == 2
    assert_equal_trees(restored, state(2))


# --- Read-only readers ----------------------------------------------------------------------------


def add_in_flight_save(checkpoints):
    """What a live trainer's async save looks like: an uncommitted temporary folder."""
    tmp = checkpoints / "3.orbax-checkpoint-tmp-1796150000000000"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "_METADATA").write_text("{}")


def test_read_only_restore_leaves_checkpoints_untouched(tmp_path):
    state, abstract = save_two_steps(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    add_in_flight_save(checkpoints)
    overwrite_middle(largest_array_file(checkpoints / "2"), seed=3)
    before = tree_snapshot(checkpoints)
    reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
    restored, _, step = reader.restore(abstract)
    reader.close()
    assert step == 1
    assert_equal_trees(restored, state(1))
    assert tree_snapshot(checkpoints) == before
    assert not (tmp_path / "checkpoints_unreadable").exists()
    with pytest.raises(RuntimeError, match="read-only"):
        reader.save(5, state(5), {})


def test_restore_params_is_read_only(tmp_path):
    state, abstract = save_two_steps(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    add_in_flight_save(checkpoints)
    overwrite_middle(largest_array_file(checkpoints / "2"), seed=3)
    before = set(os.listdir(tmp_path)), tree_snapshot(checkpoints)
    log_file = tmp_path.parent / f"{tmp_path.name}_init.log"
    params = checkpoint.restore_params(str(tmp_path), abstract["params"], log_file=str(log_file))
    assert_equal_trees(params, state(1)["params"])
    assert (set(os.listdir(tmp_path)), tree_snapshot(checkpoints)) == before
    assert "checkpoint 2" in log_file.read_text()


def test_read_only_reader_of_a_workdir_without_checkpoints(tmp_path):
    _, abstract = save_two_steps(tmp_path / "other")
    with pytest.raises(checkpoint.CheckpointReadError, match="none saved"):
        checkpoint.Checkpointer(str(tmp_path / "run"), read_only=True).restore(abstract)
    assert not (tmp_path / "run").exists()


RESTORE_IN_A_SUBPROCESS = """
import sys, jax, jax.numpy as jnp
from jaxgen import checkpoint
abstract = {
    "step": jax.ShapeDtypeStruct((), jnp.int32),
    "params": {"w": jax.ShapeDtypeStruct((256, 256), jnp.float32)},
    "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
}
_, _, step = checkpoint.Checkpointer(sys.argv[1], read_only=True).restore(abstract)
print(step)
"""


@pytest.mark.parametrize("damaged", ["array_metadatas", "manifest.ocdbt", "array"])
def test_a_corrupt_checkpoint_is_one_line_on_stderr(tmp_path, damaged):
    """TensorStore's C++ logs and its threads' tracebacks go to W/logs/checkpoint.log."""
    save_two_steps(tmp_path)
    step_dir = tmp_path / "checkpoints" / "2"
    if damaged == "array":
        path = largest_array_file(step_dir)
    else:
        path = next(
            os.path.join(d, n)
            for d, _, names in os.walk(step_dir / "state")
            for n in names
            if damaged in os.path.join(d, n) and "ocdbt.process" not in d
        )
    overwrite_middle(path, seed=3)
    result = subprocess.run(
        [sys.executable, "-c", RESTORE_IN_A_SUBPROCESS, str(tmp_path)],
        cwd=ROOT,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "1", result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "checkpoint 2" in lines[0] and "unreadable" in lines[0]
    assert "logs/checkpoint.log" in lines[0]
    assert "Traceback" in (tmp_path / "logs" / "checkpoint.log").read_text()


def test_late_errors_of_orbax_reads_go_to_the_log_not_the_console(tmp_path, monkeypatch, capsys):
    """Orbax's array-read coroutines of a failed restore can be finalised long after it and
    print 'Exception ignored in <coroutine>' with TensorStore's whole spec: the unraisable hook
    sends those to the restore's log file; anything else still reaches the console."""

    async def read():
        return None

    read.__code__ = read.__code__.replace(
        co_filename="/site-packages/orbax/checkpoint/_src/serialization/serialization.py"
    )
    log_file = str(tmp_path / "logs" / "checkpoint.log")
    monkeypatch.setattr(checkpoint, "_late_log", [log_file])
    seen = []
    monkeypatch.setattr(checkpoint, "_console_unraisablehook", seen.append)

    def unraisable(obj):
        error = Exception("Encountered error while reading array index")
        return types.SimpleNamespace(
            exc_type=Exception, exc_value=error, exc_traceback=None, err_msg=None, object=obj
        )

    coroutine = read()
    try:
        checkpoint._late_read_errors(unraisable(coroutine))
    finally:
        coroutine.close()
    assert "while reading array index" in open(log_file).read()
    assert seen == [] and capsys.readouterr().err == ""
    other = unraisable(object())
    checkpoint._late_read_errors(other)
    assert seen == [other]


@pytest.mark.parametrize(
    "where, group_words, chunk_words",
    [
        ("device", 1 << 26, 1 << 22),
        ("device", 40, 1 << 22),
        ("host", 1 << 26, 1 << 22),
        ("host", 1 << 26, 7),
    ],
)
def test_state_checksums_are_the_leaf_checksums(monkeypatch, where, group_words, chunk_words):
    """checksums() sums leaves in host memory with NumPy in chunks, and the others in groups of
    leaves in one device program: the numbers stay leaf_checksum's for every dtype, empty and
    scalar leaves, keys, sharded leaves, groups split by size and chunks of a leaf."""
    monkeypatch.setattr(checksums, "_GROUP_WORDS", group_words)
    monkeypatch.setattr(checksums, "_HOST_CHUNK_WORDS", chunk_words)
    if where == "device":  # what a GPU's arrays take; CPU arrays are summed on the host
        monkeypatch.setattr(checksums, "_host_words", lambda x: None)
    device_leaves, groups = [], checksums._device_checksums
    monkeypatch.setattr(
        checksums, "_device_checksums", lambda xs: device_leaves.extend(xs) or groups(xs)
    )
    rng = np.random.default_rng(1)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    state = {
        "a": jnp.asarray(rng.normal(size=(8, 12)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(5, 3)) * 50).astype(jnp.bfloat16),
        "c": jnp.asarray(rng.integers(-100, 100, (7,)), jnp.int8),
        "d": jnp.asarray(rng.random(9) < 0.5),
        "empty": jnp.zeros((0, 4), jnp.float32),
        "step": jnp.asarray(7, jnp.int32),
        "key": jax.random.key(3),
        "sharded": jax.device_put(jnp.asarray(rng.normal(size=(16, 6)), jnp.float32), sharded),
        "big": jnp.asarray(rng.integers(0, 2**31, (61,)), jnp.uint32),
    }
    table = checksums.checksums(state, None)["state"]
    assert len(device_leaves) == (len(state) if where == "device" else 0)
    for name, x in state.items():
        expected = [int(v) for v in checksums.leaf_checksum(x)]
        assert table[name][2:] == expected, name
        if name not in ("key", "empty"):
            assert tuple(expected) == numpy_checksum(np.asarray(x))
