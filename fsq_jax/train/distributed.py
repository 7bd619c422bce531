"""Multi-host start-up on JAX's own runtime (`jax.distributed`).

`initialize()` connects the processes of a SLURM job, a TPU pod slice or an explicitly described
cluster (coordinator address, process count and id), and does nothing for a single process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax


def _cluster_detected() -> bool:
    """True when the environment describes a multi-process launch jax.distributed can read."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if env.get("SLURM_JOB_ID"):
        return int(env.get("SLURM_NTASKS", "1")) > 1
    if env.get("OMPI_COMM_WORLD_SIZE"):
        return int(env["OMPI_COMM_WORLD_SIZE"]) > 1
    if env.get("TPU_WORKER_HOSTNAMES"):
        return "," in env["TPU_WORKER_HOSTNAMES"]
    return False


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    cpu_collectives: str | None = None,
) -> tuple[int, int]:
    """Joins the process group, once, before any other JAX call; returns (index, count).

    Args:
      coordinator_address: `host:port` of process 0; with `num_processes` and `process_id`
        describes the cluster explicitly. Without them the cluster is detected from the
        environment (SLURM, Open MPI, TPU pods, `JAX_COORDINATOR_ADDRESS`); if none is found
        this is a single-process run and nothing is initialised.
      num_processes: total processes.
      process_id: this process's index in [0, num_processes).
      local_device_ids: devices this process uses (default: all visible).
      cpu_collectives: CPU collectives implementation for multi-process CPU runs
        (`"gloo"` or `"mpi"`); None keeps JAX's default.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise ValueError(
            "distributed.initialize: coordinator_address, num_processes and process_id must be "
            f"given together, got {explicit}"
        )
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(
            f"distributed.initialize: process_id must be in [0, {num_processes}), got {process_id}"
        )
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if coordinator_address is not None:
        if num_processes == 1:
            return 0, 1
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
        )
    elif _cluster_detected():
        jax.distributed.initialize(local_device_ids=local_device_ids)
    return jax.process_index(), jax.process_count()
