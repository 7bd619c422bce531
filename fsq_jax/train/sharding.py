"""Device mesh and shardings: data parallel over every device, params replicated or FSDP-sharded.

One code path serves 1 CPU, 8 fake CPU devices, a multi-GPU host and a TPU pod: batches are split
along the mesh's `data` axis, and with FSDP the large parameter and optimiser arrays are split
along the same axis (XLA inserts the all-gathers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
# Arrays smaller than this many elements stay replicated under FSDP: sharding them saves nothing.
FSDP_MIN_SIZE = 2**12


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis `data` over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("create_mesh: no devices")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) dimension over the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def fsdp_spec(
    shape: Sequence[int], num_shards: int, min_size: int = FSDP_MIN_SIZE
) -> PartitionSpec:
    """Partition spec sharding the largest dimension divisible by `num_shards` over `data`.

    Small arrays, and arrays with no divisible dimension, stay replicated.
    """
    if num_shards <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    order = sorted(range(len(shape)), key=lambda axis: -shape[axis])
    for axis in order:
        if shape[axis] % num_shards == 0:
            spec: list[Any] = [None] * len(shape)
            spec[axis] = DATA_AXIS
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp: bool = False) -> Any:
    """Shardings for every leaf of `abstract_state` (a pytree of arrays or ShapeDtypeStructs).

    Replicated by default; with `fsdp`, leaves of at least `FSDP_MIN_SIZE` elements are split
    along their largest dimension divisible by the number of devices.
    """
    num_shards = mesh.shape[DATA_AXIS]

    def leaf_sharding(leaf: Any) -> NamedSharding:
        shape = getattr(leaf, "shape", ())
        spec = fsdp_spec(shape, num_shards) if fsdp else PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree.map(leaf_sharding, abstract_state)


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Per-process share of a global batch; checks it splits evenly over devices and processes."""
    num_devices = mesh.devices.size
    if global_batch_size % num_devices:
        raise ValueError(
            f"batch size {global_batch_size} must be divisible by the number of devices "
            f"({num_devices})"
        )
    return global_batch_size // jax.process_count()


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Places a host-local numpy batch on the mesh, split along the batch axis.

    With several processes each passes its own slice of the global batch (in process order);
    the result is one global array of `process_count` times the local batch size.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(
                f"shard_batch: batch[{key!r}] is a scalar; every entry needs a "
                "leading batch dimension"
            )
        if jax.process_count() == 1:
            if value.shape[0] % mesh.devices.size:
                raise ValueError(
                    f"shard_batch: batch[{key!r}] has {value.shape[0]} examples, not divisible "
                    f"by the {mesh.devices.size} devices of the mesh"
                )
            out[key] = jax.device_put(value, sharding)
        else:
            out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


def to_host(tree: Any) -> Any:
    """Copies a pytree of (possibly multi-process) arrays to host numpy, on every process.

    Fully replicated arrays are read from a local copy; arrays sharded over several processes
    are all-gathered (every process must call this together).
    """

    def fetch(leaf: Any) -> Any:
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return np.asarray(jax.device_get(leaf))
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(fetch, tree)
