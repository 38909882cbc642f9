"""Devices: the mesh, where state and batches live, and how steps are compiled.

The only module that builds meshes or calls jax.jit / jax.pmap on a step.
Families write their steps as if one device held the whole batch; this file
makes them data-parallel:

- backend "jit" (default): a Mesh with axes ("data", "fsdp"). Batches are
  sharded over both, and XLA inserts the gradient all-reduce (on a CPU split into
  devices, the family's per-device step under shard_map instead: Placement). With fsdp = 1
  (the default) state is replicated; with fsdp = k every large param and its
  optimizer moments are split k ways along one dimension (ZeRO-3 / FSDP), and
  XLA gathers each param where it is used and reduce-scatters its gradient.
- backend "pmap": the same family step under jax.pmap. The family is built with
  axis_name="data" and averages its gradients with lax.pmean; state carries a
  leading device axis while training and is un-replicated for saving and eval.

Per-example randomness (`example_rngs`) makes a step's result independent of
how the batch is split over devices and microbatches, so 1 device, 4 devices
under jit and 4 under pmap give the same update.

On CPU the host is split into one XLA device per physical core before the backend starts
(`set_cpu_devices`): a data-parallel step over 2 single-core devices uses a 2-core host
better than one device with XLA's intra-op threads (benchmarks/README.md), and gives the
same update.
"""

import logging
import math
import os
import re
from collections.abc import Callable
from importlib.metadata import distributions
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgen import lowering
from jaxgen.config import ConfigDict, ConfigError

PyTree = Any
DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BACKENDS = ("jit", "pmap")
_FSDP_MIN_SIZE = 1 << 14  # smaller arrays (biases, norms) stay replicated: not worth a gather
_FORCE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_ACCELERATOR_PLUGINS = re.compile(r"^(jax[-_](cuda|rocm|tpu)|libtpu)", re.IGNORECASE)
log = logging.getLogger("jaxgen")


def physical_cores() -> int:
    """Physical cores this process may run on (hyperthreads count once); os.cpu_count() if
    /proc/cpuinfo does not say."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores, physical, threads = set(), "0", 0
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                threads += key == "processor"
                if key == "physical id":
                    physical = value
                elif key == "core id":
                    cores.add((physical, value))
    except OSError:
        pass
    count = len(cores) if cores and threads else os.cpu_count() or 1
    if allowed and threads:  # affinity counts threads: keep the cores' share of it
        count = min(count, max(1, allowed * count // threads))
    return max(1, count)


def split_sizes(config: ConfigDict, defaults: dict[str, dict] | None = None) -> list[int]:
    """Sizes the data axis must divide: the train batch (per microbatch, and per critic
    slice for GANs), sample.num_samples and the evals' batch_size / num_samples, taken from
    `defaults[entry.type]` where an entry leaves them out."""
    train = config.train
    slices = max(1, train.get("microbatches", 1) * train.get("n_critic", 1))
    sizes = [train.batch_size // slices if train.batch_size % slices == 0 else 0]
    sizes.append(config.sample.get("num_samples", 1))
    for entry in config.get("evals", {}).values():
        entry_defaults = (defaults or {}).get(entry.get("type"), {})
        for key in ("batch_size", "num_samples"):
            sizes.append(entry.get(key, entry_defaults.get(key, 1)))
    return [size for size in sizes if isinstance(size, int) and size > 1]


def choose_cpu_devices(cores: int, sizes: list[int]) -> int:
    """The largest device count <= cores that divides every size (at least 1)."""
    return next(n for n in range(max(cores, 1), 0, -1) if all(size % n == 0 for size in sizes))


def set_cpu_devices(
    requested: int, config: ConfigDict | None = None, defaults: dict[str, dict] | None = None
) -> int | None:
    """Split the CPU into devices before the backend starts; returns the count set, or None.

    requested: 0 = automatic: one device per physical core, reduced to the largest count
    that divides the batch sizes of `config` (with the evaluators' `defaults`, see
    split_sizes); n >= 1 = exactly n (1 is one device with XLA's intra-op threads, the
    behaviour before). Changes nothing when the backend has started, when the user chose
    the count (XLA_FLAGS's --xla_force_host_platform_device_count, JAX_NUM_CPU_DEVICES), in
    a multi-process job, or when jax will run on a GPU/TPU (JAX_PLATFORMS, or an
    accelerator plugin installed).
    """
    if _cpu_count_is_chosen_elsewhere():
        return None
    count, cores, sizes = requested, None, []
    if requested < 1:
        cores, sizes = physical_cores(), split_sizes(config, defaults) if config is not None else []
        count = choose_cpu_devices(cores, sizes)
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backend has started: its device count stays
        return None
    if cores is not None and cores > 1:
        devices = f"CPU: {count} data-parallel device{'s' if count > 1 else ''}"
        if count == cores:
            log.info(f"{devices}, one per core (--cpu_devices=1 for one device)")
        else:
            log.info(
                f"{devices} of {cores} cores: the largest count dividing the batch sizes "
                f"{sizes} (--cpu_devices=N to choose)"
            )
    return count


def _cpu_count_is_chosen_elsewhere() -> bool:
    if jax.config.jax_num_cpu_devices >= 0 or _FORCE_COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return True
    if os.environ.get("JAXGEN_COORDINATOR") or os.environ.get("JAXGEN_DISTRIBUTED"):
        return True
    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip().lower() != "cpu"
    return any(_ACCELERATOR_PLUGINS.match(d.metadata["Name"] or "") for d in distributions())


def check_config(config: ConfigDict) -> None:
    """Mesh and batch-size checks that need only the device count."""
    if config.mesh.backend not in BACKENDS:
        raise ConfigError(
            f"config.mesh.backend: unknown backend {config.mesh.backend!r}; choose from jit, pmap"
        )
    fsdp = _fsdp(config.mesh)  # absent from runs saved before the fsdp axis existed
    if fsdp < 1 or jax.device_count() % fsdp:
        raise ConfigError(
            f"config.mesh.fsdp: {fsdp} does not divide the {jax.device_count()} devices"
        )
    if fsdp > 1 and config.mesh.backend != "jit":
        raise ConfigError("config.mesh.fsdp: sharding params needs config.mesh.backend='jit'")
    num = num_data_devices(config.mesh)
    size = config.train.batch_size
    if size % num:
        raise ConfigError(
            f"config.train.batch_size: global batch {size} is not divisible by the {num} devices"
        )
    if (size // num) % config.train.microbatches:
        raise ConfigError(
            f"config.train.microbatches: {config.train.microbatches} does not divide the "
            f"per-device batch {size // num}"
        )


def _fsdp(mesh_config: ConfigDict) -> int:
    return mesh_config.get("fsdp", 1)


def num_data_devices(mesh_config: ConfigDict) -> int:
    """The devices a global batch is split over: data x fsdp."""
    fsdp = _fsdp(mesh_config)
    count = jax.device_count() // fsdp
    if mesh_config.data == -1:
        return count * fsdp
    if mesh_config.data < 1 or mesh_config.data > count or count % mesh_config.data:
        raise ConfigError(
            f"config.mesh.data: {mesh_config.data} devices requested, {count} available "
            "(use -1 for all, or a divisor of the count)"
        )
    return mesh_config.data * fsdp


def make_mesh(mesh_config: ConfigDict) -> Mesh:
    """A (data, fsdp) mesh over the first data x fsdp devices (all by default)."""
    fsdp = _fsdp(mesh_config)
    devices = jax.devices()[: num_data_devices(mesh_config)]
    return Mesh(np.asarray(devices).reshape(-1, fsdp), (DATA_AXIS, FSDP_AXIS))


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Split the largest dimension that `fsdp` divides; small arrays stay replicated."""
    if fsdp == 1 or math.prod(shape) < _FSDP_MIN_SIZE:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            return P(*([None] * dim + [FSDP_AXIS]))
    return P()


def example_rngs(rng: jax.Array, batch_size: int, axis_name: str | None = None) -> jax.Array:
    """One key per example, from the example's position in the global batch.

    Under pmap each device holds batch_size examples starting at
    axis_index * batch_size, so example i gets the same key whatever the split.
    """
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch_size
    index = offset + jnp.arange(batch_size)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, index)


class Placement:
    """Puts state and batches on the devices of a mesh and compiles steps for it.

    per_device_step: the family's step may run per device (Family.per_device_step). Then on a
    CPU split into several devices the jit backend runs it per device inside jax.shard_map,
    averaging gradients with one all-reduce of a flat vector (train/gradients.py pmean_flat),
    instead of the all-reduce of every gradient leaf that XLA's partitioner inserts: XLA's CPU
    collectives meet once per buffer, which cost the GPT :cpu step 12% (benchmarks/README.md).
    Arrays stay global and the update is the same. On GPU/TPU XLA overlaps its all-reduces
    with the backward pass, so they stay.
    """

    def __init__(self, mesh_config: ConfigDict, per_device_step: bool = False):
        self.backend = mesh_config.backend
        self.mesh = make_mesh(mesh_config)
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P((DATA_AXIS, FSDP_AXIS)))
        self.num_devices = self.mesh.size
        self.fsdp = _fsdp(mesh_config)
        self.shard_map_step = (
            per_device_step
            and self.backend == "jit"
            and self.fsdp == 1
            and self.num_devices > 1
            and jax.default_backend() == "cpu"
        )

    @property
    def axis_name(self) -> str | None:
        """The axis a train step must average gradients over (pmap, or the CPU's per-device
        jit step), else None."""
        return DATA_AXIS if self.backend == "pmap" or self.shard_map_step else None

    # -- state ---------------------------------------------------------------
    def state_shardings(self, state: PyTree) -> PyTree:
        """Replicated, or under fsdp each large array split along one dimension."""
        return jax.tree.map(
            lambda x: NamedSharding(self.mesh, fsdp_spec(x.shape, self.fsdp)), state
        )

    def abstract_state(self, abstract: PyTree) -> PyTree:
        """Shape/dtype structs with the state's shardings (a restore target)."""
        return jax.tree.map(
            lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
            abstract,
            self.state_shardings(abstract),
        )

    def put_state(self, state: PyTree) -> PyTree:
        """Global state -> the form the compiled train step takes."""
        state = jax.device_put(state, self.state_shardings(state))
        if self.backend == "jit":
            return state
        # A leading device axis, one slice per device (what pmap takes).
        n = self.num_devices
        return jax.device_put(
            jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), state), self.batch_sharding
        )

    def get_state(self, state: PyTree) -> PyTree:
        """The train step's form -> global state (for saving and eval)."""
        if self.backend == "jit":
            return state
        # A pmap output holds this process's devices only, one equal slice each. Each slice
        # becomes that device's copy of the replicated array; device_put of x[0] would need a
        # cross-host transfer, which CPU backends do not support.
        devices = set(self.mesh.devices.flat)

        def unreplicate(x):
            slices = [
                shard.data.reshape(x.shape[1:])
                for shard in x.addressable_shards
                if shard.device in devices
            ]
            return jax.make_array_from_single_device_arrays(x.shape[1:], self.replicated, slices)

        return jax.tree.map(unreplicate, state)

    # -- batches -------------------------------------------------------------
    def put_batch(self, host_batch: dict[str, np.ndarray], backend: str | None = None) -> PyTree:
        """This host's share of a global batch -> arrays laid out for the step."""
        if (backend or self.backend) == "pmap":
            count = self.num_devices // jax.process_count()
            return jax.tree.map(lambda x: x.reshape((count, -1) + x.shape[1:]), host_batch)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), host_batch
        )

    # -- compilation ---------------------------------------------------------
    def compile_train_step(self, train_step: Callable, state: PyTree) -> Callable:
        """Compile `train_step(state, batch) -> (state, metrics)` once, donating state."""
        if self.backend == "pmap":
            return jax.pmap(train_step, axis_name=DATA_AXIS, donate_argnums=0)
        state_sharding = self.state_shardings(state)
        if getattr(state, "frozen", None) is not None:
            return _keeping_frozen(train_step, state_sharding, self)
        return jax.jit(
            self.per_device(train_step, 1),
            in_shardings=(state_sharding, self.batch_sharding),
            out_shardings=(state_sharding, self.replicated),
            donate_argnums=0,
        )

    def per_device(self, step: Callable, num_replicated: int) -> Callable:
        """`step(*replicated, batch)`, under shard_map where the step runs per device: every
        device gets the replicated arguments whole and its slice of the batch, and returns
        the same state and (averaged) metrics, taken as replicated."""
        if not self.shard_map_step:
            return step
        return jax.shard_map(
            step,
            mesh=self.mesh,
            in_specs=(P(),) * num_replicated + (P((DATA_AXIS, FSDP_AXIS)),),
            out_specs=P(),
            check_vma=False,
        )

    def compile_eval(self, fn: Callable) -> Callable:
        """Compile `fn(state, batch, *replicated_args)`; evals always run under jit."""
        return jax.jit(fn, out_shardings=self.replicated)

    def compile_init(self, init: Callable) -> Callable:
        """init jitted, lowered with threefry unrolled on CPU (jaxgen/lowering.py)."""
        return lowering.UnrolledThreefry(jax.jit(init, out_shardings=self.replicated))

    def first_metrics(self, metrics: PyTree) -> PyTree:
        """Metrics of a pmap step carry a device axis (equal after pmean): drop it."""
        return jax.tree.map(lambda x: x[0], metrics) if self.backend == "pmap" else metrics


def _keeping_frozen(train_step: Callable, state_sharding, placement: Placement) -> Callable:
    """The compiled step of a state with a `frozen` field (params of earlier runs that the step
    reads and never changes: train/latent_diffusion.py): the rest of the state is donated, the
    frozen arrays are passed beside it and handed back as they were. Donating arrays that the
    step returns unchanged made XLA's CPU step ~5x slower (measured on the latent diffusion
    smoke model)."""
    frozen_sharding = state_sharding.frozen
    rest_sharding = state_sharding.replace(frozen=None)

    def step(rest, frozen, batch):
        state, metrics = train_step(rest.replace(frozen=frozen), batch)
        return state.replace(frozen=None), metrics

    compiled = jax.jit(
        placement.per_device(step, 2),
        in_shardings=(rest_sharding, frozen_sharding, placement.batch_sharding),
        out_shardings=(rest_sharding, placement.replicated),
        donate_argnums=0,
    )

    def keeping_frozen(state, batch):
        rest, metrics = compiled(state.replace(frozen=None), state.frozen, batch)
        return rest.replace(frozen=state.frozen), metrics

    def lower(state, batch):  # as jit's, for compiling ahead (train/ahead.py)
        return compiled.lower(state.replace(frozen=None), state.frozen, batch)

    keeping_frozen.lower = lower
    return keeping_frozen
