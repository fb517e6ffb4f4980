"""What travels with a batch from the loader's workers to the process that consumes it.

Samples are read and processed in grain worker processes (``data.num_workers > 0``)
or in reading threads of the consuming process. Two things must come back to the
consuming process besides the arrays:

* the bad-input problems met while a sample was read. :class:`Reader` reads every
  sample inside :func:`~adverse_vision.data.problems.found_while_reading` and puts
  the list in the record under :data:`FOUND_KEY`; the per-sample processing keeps it
  (:func:`pop_found` / :func:`found_entry`, a JSON string, so it batches like any
  other entry); :class:`ConsumerStep`, the pipeline's last step, which runs in the
  consuming process, records the batch's problems into the source's
  :class:`~adverse_vision.data.problems.DataProblems` and removes the entry, so it
  never reaches the devices;
* the shared memory grain moves batches in. grain unlinks a block when the array
  on it is garbage collected, by a background thread that the interpreter stops
  at exit before it has run, so a batch still alive (or just dropped, or held by a
  reference cycle) when a program ends left its blocks behind ("resource_tracker:
  There appear to be N leaked shared_memory objects"). :class:`ConsumerStep`
  unlinks each block as its batch arrives (the mapping stays valid until the array
  is collected) and hands out plain ndarrays; closing its iterator collects the
  batches buffered inside grain, dropped by the close, and waits until their blocks
  are unlinked; an error raised by the pipeline lets go of the batches that the
  frames of its traceback hold. (This relies on two private attributes of grain's
  ``SharedMemoryArray``, ``_unlink_on_del`` and ``_del_thread_pool``, and does
  nothing where they are missing.)

Neither step changes the batches or the iterator's state: a checkpointed position
is that of the pipeline before it.
"""

from __future__ import annotations

import gc
import json
import traceback
from collections.abc import Mapping
from typing import Any

import grain
import grain.multiprocessing
import numpy as np

from adverse_vision.data.problems import DataProblems, found_while_reading

__all__ = ["FOUND_KEY", "ConsumerStep", "Reader", "found_entry", "pop_found"]

# Record and batch key of the problems met while reading a sample (host only).
FOUND_KEY = "_found"


class Reader:
    """``source`` as a random-access source whose records carry, under
    :data:`FOUND_KEY`, the problems met while reading them."""

    def __init__(self, source: Any):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        with found_while_reading() as found:
            record = self.source[index]
        if not isinstance(record, Mapping):
            return record  # the pipeline names the bad record
        out = dict(record)
        out[FOUND_KEY] = found
        return out


def pop_found(record: dict[str, Any]) -> list[tuple]:
    """Removes and returns the problems a record carries (a list of tuples)."""
    return list(record.pop(FOUND_KEY, ()))


def found_entry(found: list[tuple]) -> np.ndarray:
    """The batch entry of one sample's problems: a 0-d string array (JSON)."""
    return np.asarray(json.dumps(found) if found else "")


def _record_found(entries: Any, problems: DataProblems) -> None:
    for text in np.asarray(entries).reshape(-1):
        if text:
            problems.add_found(json.loads(str(text)))


def _unlink_shared_memory(value: Any) -> Any:
    """A plain ndarray on ``value``'s memory; a grain shared-memory block under it is
    unlinked now instead of when the array is collected."""
    if not isinstance(value, grain.multiprocessing.SharedMemoryArray):
        return value
    shm = getattr(value, "shm", None)
    if shm is not None and getattr(value, "_unlink_on_del", False):
        value._unlink_on_del = False  # pylint: disable=protected-access
        try:
            shm.unlink()
        except FileNotFoundError:  # already unlinked
            pass
    return value.view(np.ndarray)


def _wait_for_unlinks() -> None:
    """Blocks until grain's background thread has unlinked the blocks of the arrays
    dropped so far, reference cycles included (its single thread runs the requests in
    order). Nothing to do in a process that never received shared memory."""
    pool = getattr(grain.multiprocessing.SharedMemoryArray, "_del_thread_pool", None)
    if pool is None:
        return
    gc.collect()
    try:
        pool.apply(int)
    except ValueError:  # the pool is not running (interpreter exit)
        pass


class ConsumerStep(grain.IterDataset):
    """The last step of a pipeline, in the consuming process: records the problems
    of each batch into ``problems`` and releases grain's shared memory (see the
    module docstring)."""

    def __init__(self, parent: grain.IterDataset, problems: DataProblems):
        super().__init__(parent)
        self.problems = problems

    def __iter__(self) -> grain.DatasetIterator:
        return _ConsumerIterator(self._parent.__iter__(), self.problems)

    def __str__(self) -> str:
        return f"ConsumerStep(problems={self.problems.name!r})"


class _ConsumerIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, problems: DataProblems):
        super().__init__(parent)
        self._problems = problems

    def __next__(self) -> dict[str, Any]:
        try:
            batch = next(self._parent)
        except StopIteration:
            raise
        except BaseException as e:
            # The frames of the traceback hold batches buffered inside grain, through
            # a reference cycle (the error, its traceback, a frame holding the error)
            # that is collected only at interpreter exit, too late to unlink them.
            traceback.clear_frames(e.__traceback__)
            raise
        # Every block is unlinked, the dropped entry's too: grain's reading threads may
        # still hold the batch after it is handed out.
        out = {k: _unlink_shared_memory(v) for k, v in batch.items()}
        found = out.pop(FOUND_KEY, None)
        if found is not None:
            _record_found(found, self._problems)
        return out

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)

    def close(self) -> None:
        if self._closed:
            return
        super().close()  # stops the workers; drops the batches buffered in grain
        _wait_for_unlinks()

    def __str__(self) -> str:
        return "ConsumerIterator"
