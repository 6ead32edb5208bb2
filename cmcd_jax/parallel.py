"""Device mesh, shardings, and host batches -> global jax.Arrays (data parallelism)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


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
