"""Checkpoints: orbax CheckpointManager over the train state and the data iterator.

A checkpoint holds two items: ``state`` (the train state pytree) and ``data`` (the
grain iterator's position, one JSON file per process). Saves are asynchronous. The
last ``keep`` checkpoints are kept, plus the best one by a validation metric.

A replicated array is written by its replicas in parts only when each part is at
least :data:`MIN_REPLICA_SLICE_BYTES`; smaller ones are written whole by one replica.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

from adverse_vision import storage

#: orbax splits the writing of a replicated array among its replicas, slicing it on each
#: device, which compiles one small program per array shape and device at the first
#: save: about 300 for a smoke-sized BDLF state on 8 devices (37 shapes), 23 s of a
#: 150 s test. Parts smaller than this are not worth a program: the array is written
#: whole by one replica.
MIN_REPLICA_SLICE_BYTES = 1 << 20


@functools.cache
def _write_small_arrays_whole() -> None:
    """Registers orbax's array handler with :data:`MIN_REPLICA_SLICE_BYTES` (its other
    settings as orbax's default), once per process and without orbax's warning about
    the replaced handler. An orbax without these settings keeps its own."""
    try:
        # pylint: disable=import-outside-toplevel
        from orbax.checkpoint._src.metadata import array_metadata_store
        from orbax.checkpoint._src.serialization import type_handler_registry
        handler = ocp.type_handlers.ArrayHandler(
            array_metadata_store=array_metadata_store.Store(),
            min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
        type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
            jax.Array, handler, override=True, ignore_warnings=True)
    except (ImportError, AttributeError, TypeError):
        return


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or does not fit the run restoring it."""


class Checkpointer:
    """Saves and restores ``(state, data iterator)`` under ``directory``.

    Args:
      directory: where the numbered step folders live (a local folder or a bucket URL,
        ``gs://...``, which orbax writes through tensorstore).
      keep: how many of the latest checkpoints to keep.
      best_metric: metric name that ranks checkpoints (higher is better); the best
        one is kept in addition to the latest ``keep``.
      use_async: save in a background thread.
    """

    def __init__(self, directory: str, keep: int = 3, best_metric: str = "val/mAP",
                 use_async: bool = True):
        self.directory = storage.absolute(directory)
        self.best_metric = best_metric
        _write_small_arrays_whole()
        policy = ocp_managers.AnyPreservationPolicy([
            ocp_managers.LatestN(n=keep),
            ocp_managers.BestN(get_metric_fn=self._metric, reverse=False, n=1,
                               keep_checkpoints_without_metrics=False),
        ])
        # best_fn makes the manager store each step's metrics (read back by best_step).
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, best_fn=self._metric, best_mode="max",
            enable_async_checkpointing=use_async, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data"))

    def _metric(self, metrics: Any) -> float:
        return float(metrics.get(self.best_metric, float("-inf")))

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def best_step(self) -> Optional[int]:
        """The saved step with the highest ``best_metric``; None when none has one."""
        best, best_value = None, float("-inf")
        for step in self._manager.all_steps():
            metrics = self._manager.metrics(step)
            if metrics and self.best_metric in metrics and self._metric(metrics) > best_value:
                best, best_value = step, self._metric(metrics)
        return best

    def save(self, step: int, state: Any, iterator: Any = None,
             metrics: Optional[dict[str, float]] = None, force: bool = True) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(iterator)
        # Steps without an evaluation store empty metrics: they rank last for "best".
        clean = {k: float(v) for k, v in (metrics or {}).items()}
        return self._manager.save(step, args=ocp.args.Composite(**items), metrics=clean,
                                  force=force)

    def restore(self, state_template: Any, iterator: Any = None,
                step: Optional[int] = None) -> tuple[Any, int]:
        """Restores into the structure, shapes and shardings of ``state_template``.

        ``step`` defaults to the latest. The iterator, when given, is restored in place.
        """
        if step is None:
            step = self.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(_abstract, state_template)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} does not fit this run "
                f"(different model or config?): {str(e).splitlines()[0][:400]}") from e
        return restored["state"], step

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
