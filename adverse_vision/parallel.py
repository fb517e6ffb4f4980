"""Device mesh, shardings, multi-host start and global batches.

One ``("data",)`` mesh over every device of every host. Parameters are replicated,
batches are split along their leading axis. Each host feeds its own share of the
global batch and :func:`global_batch` assembles the global arrays.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger("adverse_vision")

def _launch_wants_distributed(env: dict[str, str]) -> bool:
    flag = env.get("ADVERSE_VISION_DISTRIBUTED")
    if flag is not None:
        return flag.lower() not in ("0", "", "false", "no")
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return True  # a multi-host TPU slice
    return any(int(env.get(k, "1") or "1") > 1 for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))


def maybe_initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize()`` only when the launch environment asks for it.

    ``ADVERSE_VISION_DISTRIBUTED=1`` forces it and ``=0`` forbids it; otherwise it runs for
    a multi-host TPU slice (``TPU_WORKER_HOSTNAMES`` lists several hosts), an explicit
    ``JAX_COORDINATOR_ADDRESS``, or a SLURM / MPI launch of more than one task.
    """
    wanted = _launch_wants_distributed(dict(os.environ))
    if wanted:
        jax.distributed.initialize()
        log.info("distributed: process %d of %d", jax.process_index(), jax.process_count())
    return wanted


def make_mesh(devices: Any = None) -> Mesh:
    """A one-axis ``("data",)`` mesh over ``devices`` (default: all devices)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), ("data",))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the ``data`` axis."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def per_host_batch_size(global_batch: int, mesh: Mesh) -> int:
    """The share of a global batch that one host loads; checks divisibility."""
    devices = mesh.devices.size
    if global_batch % devices:
        raise ValueError(
            f"batch_size {global_batch} is not divisible by the {devices} devices of the mesh; "
            f"choose a multiple of {devices}")
    return global_batch // jax.process_count()


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy arrays -> global arrays sharded along the batch axis."""
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


def to_host(tree: Any) -> Any:
    """Global (sharded) arrays -> full numpy arrays on every host."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return multihost_utils.process_allgather(tree, tiled=True)
