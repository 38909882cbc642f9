"""1 device, 4 devices under jit and 4 under pmap give the same training; so do microbatches."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxgen import parallel
from jaxgen.data import DatasetInfo
from jaxgen.train import vae
from jaxgen.train.gradients import pmean_flat
from tests.helpers import ROOT, vae_smoke_config

INFO = DatasetInfo(image_shape=(28, 28, 1), num_classes=10, num_examples={"train": 64, "test": 64})


def binary_batches(num, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "image": (rng.random((batch_size, 28, 28, 1)) < 0.3).astype(np.float32),
            "label": rng.integers(0, 10, batch_size).astype(np.int32),
        }
        for _ in range(num)
    ]


def train_params(
    backend: str,
    devices: int,
    microbatches: int = 1,
    num_steps: int = 4,
    fsdp: int = 1,
    per_device_step: bool = False,
):
    config = vae_smoke_config()
    config.mesh.backend, config.mesh.data, config.mesh.fsdp = backend, devices // fsdp, fsdp
    config.train.microbatches = microbatches
    config.train.batch_size = 32
    parallel.check_config(config)
    placement = parallel.Placement(config.mesh, per_device_step)
    assert placement.num_devices == devices
    assert placement.shard_map_step == (per_device_step and backend == "jit" and devices > 1)
    steps = vae.make_steps(config, INFO, placement.axis_name)
    init_steps = vae.make_steps(config, INFO, None)
    batches = binary_batches(num_steps, config.train.batch_size)
    state = placement.compile_init(init_steps.init)(jax.random.PRNGKey(0), batches[0])
    step = placement.compile_train_step(steps.train_step, state)
    state = placement.put_state(state)
    if fsdp > 1:  # the biggest param is really split: each device holds 1/fsdp of it
        kernel = max(jax.tree.leaves(state.params), key=lambda x: x.size)
        assert {shard.data.size for shard in kernel.addressable_shards} == {kernel.size // fsdp}
    losses = []
    for batch in batches:
        state, metrics = step(state, placement.put_batch(batch))
        losses.append(float(placement.first_metrics(metrics)["loss"]))
    state = placement.get_state(state)
    assert int(state.step) == num_steps
    return jax.device_get(state.params), losses


def assert_trees_close(a, b, atol):
    flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=1e-4)


def test_four_devices_are_available():
    assert jax.device_count() == 4, "tests/conftest.py should give 4 fake CPU devices"


@pytest.mark.parametrize(
    "backend,devices,per_device_step",
    [("jit", 4, False), ("jit", 4, True), ("pmap", 4, False), ("pmap", 1, False)],
)
def test_device_count_and_backend_do_not_change_training(backend, devices, per_device_step):
    reference, reference_losses = train_params("jit", 1)
    params, losses = train_params(backend, devices, per_device_step=per_device_step)
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
    assert_trees_close(params, reference, atol=2e-6)


def all_reduces(placement, steps, batch):
    """The result shapes of the all-reduces in the compiled train step."""
    state = placement.compile_init(vae.make_steps(vae_smoke_config(), INFO, None).init)(
        jax.random.PRNGKey(0), batch
    )
    step = placement.compile_train_step(steps.train_step, state)
    text = step.lower(placement.put_state(state), placement.put_batch(batch)).compile().as_text()
    lines = [line for line in text.splitlines() if " all-reduce(" in line]
    return [line.split(" = ", 1)[1].split(" all-reduce(")[0] for line in lines]


@pytest.mark.parametrize("per_device_step", [False, True])
def test_the_per_device_step_averages_gradients_in_one_flat_all_reduce(per_device_step):
    """On a CPU split the per-device step all-reduces one float32 vector holding every
    gradient and metric (pmean_flat); XLA's partitioner all-reduces a tuple of the leaves."""
    config = vae_smoke_config()
    config.train.batch_size = 32
    placement = parallel.Placement(config.mesh, per_device_step)
    steps = vae.make_steps(config, INFO, placement.axis_name)
    batch = binary_batches(1, 32)[0]
    shapes = all_reduces(placement, steps, placement.put_batch(batch, "jit"))
    params = jax.eval_shape(steps.init, jax.random.PRNGKey(0), batch).params
    size = sum(leaf.size for leaf in jax.tree.leaves(params))
    if per_device_step:
        assert len(shapes) == 1 and re.fullmatch(r"f32\[(\d+)\]\{0\}", shapes[0]), shapes
        assert int(shapes[0][4:].split("]")[0]) > size  # the gradients and the metrics
    else:
        assert len(shapes) >= 1 and shapes[0].startswith("("), shapes  # a tuple of leaves


def test_pmean_flat_is_the_pmean_of_every_leaf():
    tree = {
        "a": np.arange(24, dtype=np.float32).reshape(4, 2, 3),
        "b": np.arange(8, dtype=np.int32).reshape(4, 2),
        "c": np.linspace(0, 1, 4, dtype=np.float32),
        "d": np.ones((4, 5), np.float16),
    }
    flat = jax.pmap(lambda t: pmean_flat(t, "i"), axis_name="i")(tree)
    plain = jax.pmap(lambda t: jax.lax.pmean(t, "i"), axis_name="i")(tree)
    for key in tree:
        assert flat[key].dtype == plain[key].dtype and flat[key].shape == plain[key].shape
        np.testing.assert_array_equal(flat[key], plain[key], err_msg=key)
    np.testing.assert_allclose(flat["a"][0], tree["a"].mean(0))  # NumPy: the mean over devices


def test_pmean_flat_leaves_are_not_sliced_inside_the_fusions_that_read_them():
    """The leaves' slices of the all-reduced vector stay out of their readers' fusions, so
    leaves of one shape share compiled kernels (with the slices fused in, each reader was a
    kernel of its own and the DDPM smoke step compiled 1.6x longer)."""
    mesh = jax.make_mesh((4,), ("i",))
    tree = [np.full((3, 5), float(i), np.float32) for i in range(6)]

    def update(tree):
        return [2.0 * leaf + 1.0 for leaf in pmean_flat(tree, "i")]

    fn = jax.jit(jax.shard_map(update, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False))
    text = fn.lower(tree).compile().as_text()
    entry = text[text.index("\nENTRY ") :]
    entry = entry[: entry.index("\n}")]
    called = re.findall(r" fusion\(.*calls=(%[\w.-]+)", entry)
    assert len(called) >= len(tree), entry  # each leaf's update is a fusion of the entry
    for name in called:
        body = text[text.index(f"\n{name} ") :]
        body = body[: body.index("\n}")]
        assert " slice(" not in body, body
    for got, leaf in zip(fn(tree), tree, strict=True):
        np.testing.assert_array_equal(got, 2.0 * leaf + 1.0)


def test_params_move():
    # Guards the test above against comparing untrained params.
    one, _ = train_params("jit", 1, num_steps=1)
    four, _ = train_params("jit", 1, num_steps=4)
    difference = max(
        float(np.max(np.abs(x - y)))
        for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(four), strict=True)
    )
    assert difference > 1e-4


@pytest.mark.parametrize("backend,devices", [("jit", 1), ("jit", 4), ("pmap", 4)])
def test_microbatches_give_the_big_batch_update(backend, devices):
    reference, reference_losses = train_params(backend, devices, microbatches=1)
    params, losses = train_params(backend, devices, microbatches=2 if devices == 4 else 4)
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
    assert_trees_close(params, reference, atol=2e-6)


def test_batch_not_divisible_by_devices_names_the_field():
    config = vae_smoke_config()
    config.train.batch_size = 30
    with pytest.raises(parallel.ConfigError, match=r"^config\.train\.batch_size"):
        parallel.check_config(config)


@pytest.mark.parametrize("fsdp", [2, 4])
def test_fsdp_sharding_does_not_change_training(fsdp):
    reference, reference_losses = train_params("jit", 1)
    params, losses = train_params("jit", 4, fsdp=fsdp)
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
    assert_trees_close(params, reference, atol=2e-6)


def test_fsdp_needs_jit_and_a_divisor():
    config = vae_smoke_config()
    config.mesh.fsdp = 3
    with pytest.raises(parallel.ConfigError, match=r"^config\.mesh\.fsdp"):
        parallel.check_config(config)
    config.mesh.fsdp, config.mesh.backend = 2, "pmap"
    with pytest.raises(parallel.ConfigError, match=r"^config\.mesh\.fsdp"):
        parallel.check_config(config)


def test_runs_saved_before_the_fsdp_axis_still_load():
    config = vae_smoke_config()
    mesh = config.mesh.to_dict()
    del mesh["fsdp"]  # a config.json written before mesh.fsdp existed
    config.mesh = parallel.ConfigDict(mesh)
    parallel.check_config(config)
    assert parallel.Placement(config.mesh).fsdp == 1


# ----------------------------------------------------------------------------- CPU split


@pytest.mark.parametrize(
    "cores,sizes,expected",
    [
        (2, [12], 2),
        (4, [12], 4),
        (8, [12], 6),
        (3, [12, 500], 2),
        (5, [12], 4),
        (2, [7], 1),
        (1, [12], 1),
        (16, [], 16),
    ],
)
def test_choose_cpu_devices_is_the_largest_count_dividing_every_batch(cores, sizes, expected):
    assert parallel.choose_cpu_devices(cores, sizes) == expected


def test_split_sizes_count_microbatches_critic_slices_and_eval_defaults():
    config = vae_smoke_config()
    config.train.batch_size, config.train.microbatches, config.sample.num_samples = 24, 2, 10
    config.evals = {"fid": {"type": "fid", "num_samples": 30}, "elbo": {"type": "elbo"}}
    sizes = parallel.split_sizes(config, {"fid": {"batch_size": 500, "num_samples": 10_000}})
    assert sorted(sizes) == [10, 12, 30, 500]
    config.train.n_critic = 3  # a GAN's critic slices: 24 / (2 x 3) = 4 per device
    assert parallel.split_sizes(config)[0] == 4


SPLIT_SCRIPT = """
import json, sys
import jax
from jaxgen import parallel
from tests.helpers import ROOT, vae_smoke_config
parallel.physical_cores = lambda: int(sys.argv[1])
config = vae_smoke_config()
config.train.batch_size = int(sys.argv[3])
config.sample.num_samples = 12
config.evals = {}
chosen = parallel.set_cpu_devices(int(sys.argv[2]), config)
print(json.dumps([chosen, jax.device_count()]))
"""


def _split(cores, requested, batch, xla_flags=""):
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(ROOT)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    result = subprocess.run(
        [sys.executable, "-c", SPLIT_SCRIPT, str(cores), str(requested), str(batch)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cpu_split_before_the_backend_starts():
    assert _split(cores=8, requested=0, batch=12) == [6, 6]  # 12 and 12 samples: 6 divides
    assert _split(cores=2, requested=0, batch=7) == [1, 1]  # odd batch: one device
    assert _split(cores=2, requested=3, batch=12) == [3, 3]  # an explicit count is kept


def test_cpu_split_leaves_an_explicit_xla_flag_alone():
    flag = "--xla_force_host_platform_device_count=4"
    assert _split(cores=2, requested=0, batch=12, xla_flags=flag) == [None, 4]


@pytest.mark.skipif(parallel.physical_cores() < 2, reason="needs 2 cores to split")
def test_experiments_split_the_cpu_before_checking_the_config(tmp_path):
    args = ["--config=configs/gpt/shakespeare_char.py:cpu", f"--workdir={tmp_path}"]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", *args, "--config.train.num_steps=0"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    count = parallel.choose_cpu_devices(parallel.physical_cores(), [12])
    assert f"CPU: {count} data-parallel device" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: config.train.num_steps")
