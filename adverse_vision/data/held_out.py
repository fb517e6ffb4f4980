"""A training split divided into a lower-level part and a held-out upper-level part.

Bi-level training steps its lower-level networks on batches of the training
data and its upper-level network on batches the lower levels never train on.
:func:`split_indices` divides a source's indices once, deterministically by seed;
:class:`Subset` is one part as a source of its own; :class:`PairedIterator` yields
each lower-level batch with the current upper-level batch under ``"upper/<key>"``
and draws a new upper batch every ``every`` batches only (the upper level steps
that often), so the held-out pipeline does ``1 / every`` of the lower one's work.
Its position (both pipelines and its own counter) is saved in checkpoints like a
grain iterator's.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterator
from typing import Any

import numpy as np

from adverse_vision.data import pipeline

__all__ = ["UPPER_PREFIX", "PairedIterator", "Subset", "split_indices"]

UPPER_PREFIX = "upper/"


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` sorted index arrays: ``round(fraction * n)`` indices (at least
    one, and at least one left for the lower part) drawn by ``seed`` for the upper part."""
    if n < 2:
        raise ValueError(f"split_indices: a held-out split needs at least 2 samples, got {n}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split_indices: fraction must be in (0, 1), got {fraction!r}")
    k = min(max(round(fraction * n), 1), n - 1)
    order = np.random.default_rng([int(seed), 0xB1E7E1]).permutation(n)
    return np.sort(order[k:]), np.sort(order[:k])


class Subset:
    """The records ``indices`` of ``source`` as a random-access source."""

    def __init__(self, source: Any, indices: np.ndarray, name: str = "subset"):
        self.source = source
        self.indices = np.asarray(indices, np.int64)
        self.name = name
        self.problems = getattr(source, "problems", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index) -> dict:
        i = operator.index(index)
        return self.source[int(self.indices[i])]

    def __repr__(self) -> str:
        return f"Subset({self.name}: {len(self)} of {self.source!r})"


class PairedIterator(Iterator):
    """Lower-level batches, each with the upper-level batch under ``upper/<key>``."""

    def __init__(self, lower: Any, upper: Any, every: int):
        if every < 1:
            raise ValueError(f"PairedIterator: every must be >= 1, got {every!r}")
        self.lower, self.upper, self.every = lower, upper, int(every)
        self.count = 0
        self._current: dict[str, Any] | None = None
        self._upper_before: bytes | None = None  # the upper position before ``_current``

    def __next__(self) -> dict[str, Any]:
        batch = next(self.lower)
        if self._current is None or self.count % self.every == 0:
            self._upper_before = pipeline.get_state(self.upper)
            self._current = next(self.upper)
        self.count += 1
        out = dict(batch)
        out.update({UPPER_PREFIX + k: v for k, v in self._current.items()})
        return out

    # grain's checkpoint handler calls these on iterators that are not its own.
    def get_state(self) -> bytes:
        upper = self._upper_before if self._current is not None else pipeline.get_state(self.upper)
        return json.dumps({
            "lower": json.loads(pipeline.get_state(self.lower)),
            "upper": json.loads(upper),
            "count": self.count,
            "drawn": self._current is not None,
        }, sort_keys=True).encode("utf-8")

    def set_state(self, state: bytes | str) -> None:
        """Restores a :meth:`get_state` position; the upper batch in use then is drawn
        again, so a resumed run sees the batches an uninterrupted one would."""
        if isinstance(state, (bytes, bytearray)):
            state = state.decode("utf-8")
        try:
            data = json.loads(state)
            lower, upper = data["lower"], data["upper"]
            count, drawn = int(data["count"]), bool(data["drawn"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"PairedIterator: unreadable iterator state ({e})") from None
        pipeline.set_state(self.lower, lower)
        pipeline.set_state(self.upper, upper)
        self.count = count
        self._current = None
        self._upper_before = None
        if drawn:
            self._upper_before = pipeline.get_state(self.upper)
            self._current = next(self.upper)

    def start_prefetch(self) -> None:
        for it in (self.lower, self.upper):
            start = getattr(it, "start_prefetch", None)
            if start is not None:
                start()

    def close(self) -> None:
        for it in (self.lower, self.upper):
            close = getattr(it, "close", None)
            if close is not None:
                close()
