"""Device mesh, shardings, and host batches -> global jax.Arrays (data parallelism)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several" (TPU pod slices, SLURM,
# Open MPI, or an explicit coordinator as set by launch/gpu.sh).
_MULTI_PROCESS_HINTS = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS",
                        "OMPI_COMM_WORLD_SIZE")


def wants_distributed(environ: dict) -> bool:
    """Whether the environment describes a launch of several processes."""
    hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
    return ("JAX_COORDINATOR_ADDRESS" in environ or "," in hosts
            or int(environ.get("SLURM_NTASKS", "1")) > 1
            or int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


def initialize_distributed(mode: str = "auto") -> None:
    """`jax.distributed.initialize()` on multi-process launches; a no-op on one host.

    mode: 'auto' (initialize when the environment describes several processes), 'on', 'off'.
    JAX_NUM_PROCESSES / JAX_PROCESS_ID complete JAX_COORDINATOR_ADDRESS where no cluster
    manager (TPU, SLURM, MPI) is there to detect them.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"parallel.distributed={mode!r}; valid: auto, on, off")
    if mode == "off" or (mode == "auto" and not wants_distributed(os.environ)):
        return
    kwargs = {}
    if "JAX_NUM_PROCESSES" in os.environ:
        kwargs = {"num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
                  "process_id": int(os.environ["JAX_PROCESS_ID"])}
    # CPU devices of several processes talk through gloo (no effect on TPU/GPU backends).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def barrier(name: str) -> None:
    """Waits until every process reaches `name` (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def process_zero_first(build: Callable, name: str):
    """`build()` on process 0, then on the others once it is done: for work that makes
    shared files on first use (a dataset prepared in the data dir), so one process makes
    them and the others read them."""
    if jax.process_index() == 0:
        result = build()
    barrier(name)
    return result if jax.process_index() == 0 else build()


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D ('data',) mesh over the first `num_devices` devices (0 = all of them)."""
    devices = jax.devices()
    n = num_devices or len(devices)
    if n > len(devices):
        raise ValueError(f"parallel.num_devices={n} but only {len(devices)} devices are "
                         f"available ({devices[0].platform})")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, key: str) -> None:
    """Raises a ValueError naming the config key when the batch does not split evenly."""
    if batch_size % mesh.size:
        raise ValueError(f"{key}={batch_size} is not divisible by the {mesh.size} devices "
                         f"of the mesh")


def to_global(batch: dict, mesh: Mesh) -> dict:
    """This process's slice of a batch -> global arrays sharded along the batch axis."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree, mesh: Mesh):
    """Places a pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def sharded_loss(loss_fn: Callable, mesh: Mesh, num_args: int = 2, **kwargs) -> Callable:
    """Wraps `loss_fn(*embeddings, axis_name=...)` to run per device over the global batch.

    Each device sees its slice of every argument and gathers the rest inside the loss, so
    negatives come from the global batch; the result is the global loss, replicated.
    """
    per_device = functools.partial(loss_fn, axis_name=DATA_AXIS, **kwargs)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(DATA_AXIS),) * num_args,
                         out_specs=P())
