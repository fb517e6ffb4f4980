"""Per-device work on a batch-sharded program.

XLA's partitioner keeps most batched operations on each device's share of the batch,
but not all: ``lax.top_k`` (SimOTA's candidate selection) and a gather whose table
merges the batch (a deformable convolution's sampling) are replicated, i.e. their
batch-sized operands are all-gathered to every device (and their gradients
all-reduced). :func:`batch_local` runs such a function with ``shard_map`` over the
mesh's ``data`` axis instead, each device on its own rows, with identical results.

The trainer traces its programs under the mesh's abstract mesh
(``jax.sharding.use_abstract_mesh``); outside such a context (a test, a notebook, a
one-device program) the function runs as it is.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.sharding import PartitionSpec as P

#: The mesh axis that splits the batch (see :mod:`adverse_vision.parallel`).
DATA_AXIS = "data"


def devices_on_batch() -> int:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or DATA_AXIS not in mesh.axis_names:
        return 1
    return int(mesh.shape[DATA_AXIS])


def batch_local(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(*batched, **static)`` run on each device's rows of the batch.

    Every positional argument and every output leaf must be batched on axis 0 (rows
    independent of each other: per-sample work); keyword arguments are passed through
    unchanged and must not be arrays of the traced program (close over constants only).
    Where the batch does not divide over the devices, ``fn`` runs as it is."""

    def wrapped(*batched: Any, **static: Any) -> Any:
        devices = devices_on_batch()
        rows = {x.shape[0] for x in jax.tree.leaves(batched)}
        if devices == 1 or len(rows) != 1 or next(iter(rows)) % devices:
            return fn(*batched, **static)
        local = jax.shard_map(lambda *xs: fn(*xs, **static),
                              mesh=jax.sharding.get_abstract_mesh(),
                              in_specs=P(DATA_AXIS), out_specs=P(DATA_AXIS))
        return local(*batched)

    return wrapped
