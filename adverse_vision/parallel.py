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


#: The environment of a hand-made multi-process launch (``launch/gpu.sh``):
#: ``jax.distributed.initialize`` argument -> variable.
_EXPLICIT_LAUNCH = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
                    "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


def _initialize_arguments(env: dict[str, str]) -> dict[str, Any]:
    """The arguments of ``jax.distributed.initialize`` that the environment gives.

    With ``JAX_COORDINATOR_ADDRESS`` set, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
    must be set too (no cluster detector supplies them on a plain machine);
    ``JAX_LOCAL_DEVICE_IDS`` (comma-separated) optionally picks this process's devices.
    Without it, nothing: a TPU slice, SLURM or MPI launch is detected by JAX itself.

    Raises:
      ValueError: a variable is missing or not a number, naming it.
    """
    if not env.get("JAX_COORDINATOR_ADDRESS"):
        return {}
    missing = [v for v in _EXPLICIT_LAUNCH.values() if not env.get(v)]
    if missing:
        raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not: a multi-process launch "
                         "gives all three (and each process its own JAX_PROCESS_ID)")
    args: dict[str, Any] = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"]}
    for key in ("num_processes", "process_id"):
        name = _EXPLICIT_LAUNCH[key]
        try:
            args[key] = int(env[name])
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {env[name]!r}") from None
    if not 0 <= args["process_id"] < args["num_processes"]:
        raise ValueError(f"JAX_PROCESS_ID is {args['process_id']}, outside 0.."
                         f"{args['num_processes'] - 1} (JAX_NUM_PROCESSES is "
                         f"{args['num_processes']})")
    if env.get("JAX_LOCAL_DEVICE_IDS"):
        try:
            args["local_device_ids"] = [int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
        except ValueError:
            raise ValueError("JAX_LOCAL_DEVICE_IDS must be comma-separated whole numbers, got "
                             f"{env['JAX_LOCAL_DEVICE_IDS']!r}") from None
    return args


_JOINED = False  # this process called jax.distributed.initialize


def joined_distributed() -> bool:
    """Whether this process joined a multi-process run (:func:`maybe_initialize_distributed`)."""
    return _JOINED


def maybe_initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize`` only when the launch environment asks for it.

    ``ADVERSE_VISION_DISTRIBUTED=1`` forces it and ``=0`` forbids it; otherwise it runs for
    a multi-host TPU slice (``TPU_WORKER_HOSTNAMES`` lists several hosts), an explicit
    ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, passed
    on: see :func:`_initialize_arguments`), or a SLURM / MPI launch of more than one task.
    """
    env = dict(os.environ)
    wanted = _launch_wants_distributed(env)
    if wanted:
        global _JOINED  # pylint: disable=global-statement
        jax.distributed.initialize(**_initialize_arguments(env))
        _JOINED = True
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
