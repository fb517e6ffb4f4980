"""Feeding the devices: only the batch entries a step reads, put on the devices ahead.

* :func:`read_keys` finds, by tracing a function once on shapes, which entries of its
  batch it reads; the trainer sends only those (per step variant: BDLF's lower steps
  do not send the upper-level batch). An entry is "read" when the function takes its
  value (indexing, ``get``, ``items()``, ``dict(batch)``, a membership test of a
  present entry): the only ways to reach a value, so the answer is never too small.
* :class:`DevicePrefetcher` takes host batches from the data iterator in a
  background thread, keeps those entries, assembles the global arrays
  (:func:`adverse_vision.parallel.global_batch`) and holds them ``ahead`` steps in
  advance, so the copy to the devices overlaps the step before. The checkpoint
  saves the data iterator's position after the last batch the loop took
  (:meth:`DevicePrefetcher.checkpoint_view`), not after those prefetched.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np

from adverse_vision import parallel


class _KeyRecorder(Mapping):
    """A read-only batch that remembers which of its entries were read."""

    def __init__(self, arrays: Mapping[str, Any]):
        self._arrays = arrays
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        value = self._arrays[key]
        self.read.add(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)  # names only: a value is read through __getitem__

    def __len__(self) -> int:
        return len(self._arrays)


def read_keys(fn: Callable[[Any, Mapping[str, Any]], Any], first: Any,
              batch: Mapping[str, Any]) -> tuple[str, ...]:
    """The entries of ``batch`` (arrays or shape structs) that ``fn(first, batch)``
    reads, found by tracing it on shapes (nothing is computed)."""
    recorders = []

    def traced(first, arrays):
        recorders.append(_KeyRecorder(arrays))
        return fn(first, recorders[-1])

    jax.eval_shape(traced, first, dict(batch))
    return tuple(sorted(recorders[-1].read))


def global_shapes(local: Mapping[str, np.ndarray]) -> dict[str, jax.ShapeDtypeStruct]:
    """The global arrays' shapes of this host's batch (every host loads as much)."""
    hosts = jax.process_count()
    return {k: jax.ShapeDtypeStruct((v.shape[0] * hosts,) + tuple(v.shape[1:]), v.dtype)
            for k, v in local.items()}


class _Fed:
    """One prefetched step: the global batch, the host's count of invalid samples, and
    the data iterator's state after it."""

    def __init__(self, batch: dict[str, jax.Array], invalid: int, state: Any):
        self.batch, self.invalid, self.state = batch, invalid, state


class DevicePrefetcher:
    """``next(prefetcher) -> (global batch of the next step, invalid samples of this
    host)``, prepared by a background thread ``ahead`` steps in advance.

    Args:
      iterator: the host's data iterator (a grain ``DatasetIterator``, already
        restored when resuming); the prefetcher owns it until :meth:`close`.
      mesh: the devices.
      keys: ``keys(step, local batch) -> entries to send`` for the step ``step``.
      first_step: the step the first batch is for.
      ahead: how many steps' batches wait on the devices (0: none, no thread).
    """

    def __init__(self, iterator: Any, mesh, keys: Callable[[int, Mapping[str, Any]], tuple],
                 first_step: int, ahead: int = 2):
        self.iterator = iterator
        self.mesh = mesh
        self.keys = keys
        self.ahead = int(ahead)
        self._step = first_step
        self._state = iterator.get_state()
        self._queue: queue.Queue = queue.Queue(maxsize=max(self.ahead, 1))
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if self.ahead > 0:
            self._thread = threading.Thread(target=self._fill, name="device-prefetch",
                                            daemon=True)
            self._thread.start()

    def _prepare(self, step: int) -> _Fed:
        local = next(self.iterator)
        invalid = int(np.sum(~np.asarray(local["valid"])))
        wanted = self.keys(step, local)
        batch = parallel.global_batch({k: local[k] for k in wanted}, self.mesh)
        return _Fed(batch, invalid, self.iterator.get_state())

    def _fill(self) -> None:
        step = self._step
        while not self._stop.is_set():
            try:
                item: Any = self._prepare(step)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            step += 1

    def __iter__(self):
        return self

    def __next__(self) -> tuple[dict[str, jax.Array], int]:
        item = self._prepare(self._step) if self._thread is None else self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self._step += 1
        self._state = item.state
        return item.batch, item.invalid

    def checkpoint_view(self) -> "_TakenPosition":
        """What the checkpoint saves as the data iterator: its position after the last
        batch :meth:`__next__` returned."""
        return _TakenPosition(self._state)

    def close(self) -> None:
        """Stops the thread (the batches it holds are dropped) and closes the iterator."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()


class _TakenPosition:
    """The data-iterator item of a checkpoint (grain's handler stores
    ``get_state()``, bytes of JSON for an object that is not a grain iterator)."""

    def __init__(self, state: Any):
        self._state = state  # taken now: the loop goes on while the save completes

    def get_state(self) -> bytes:
        if isinstance(self._state, bytes):  # an iterator that is not grain's states in bytes
            return self._state
        return json.dumps(self._state, indent=4).encode()  # grain's: a JSON-able dict
