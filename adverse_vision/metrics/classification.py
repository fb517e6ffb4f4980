"""Classification accuracy: top-k correctness and a running top-1 / top-5 meter (numpy).

* :func:`topk_correct` tells, for every sample, whether its label is among the
  ``k`` highest logits.
* :class:`AccuracyMeter` accumulates batches (with an optional ``valid`` mask for
  the padding of the last evaluation batch) and reports percentages.

Ranking rule: the rank of the true class is the number of classes with a strictly
larger logit plus the number of classes with an equal logit and a smaller index,
i.e. ties are broken towards the lower class index, the order of ``np.argmax``
and of a stable descending sort. A sample is top-k correct when that rank is
below ``k``; so top-1 correct means ``argmax(logits) == label``. A ``k`` larger
than the number of classes C is clipped to C (every sample is then correct).

Inputs may be numpy or jax arrays; logits are (N, C) real values (any dtype,
compared in float64) and labels (N,) integer class ids in [0, C).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["AccuracyMeter", "topk_correct"]


def _check_ks(ks: Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"{name}: every k must be a positive integer, got {k!r}")
        out.append(int(k))
    if not out:
        raise ValueError(f"{name}: ks must not be empty")
    return tuple(out)


def _arrays(logits: Any, labels: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Shape- and dtype-checked float64 (N, C) logits and int64 (N,) labels."""
    lg = np.asarray(logits)
    lb = np.asarray(labels)
    if lg.ndim != 2 or lg.shape[1] < 1:
        raise ValueError(f"{name}: logits must have shape (N, C) with C >= 1, got {lg.shape}")
    if not np.issubdtype(lg.dtype, np.number) or np.issubdtype(lg.dtype, np.complexfloating):
        raise ValueError(f"{name}: logits must be real numbers, got dtype {lg.dtype}")
    if lb.ndim != 1 or lb.shape[0] != lg.shape[0]:
        raise ValueError(f"{name}: labels must have shape ({lg.shape[0]},) to match logits "
                         f"{lg.shape}, got {lb.shape}")
    if lb.dtype == np.bool_ or not np.issubdtype(lb.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integer class ids, got dtype {lb.dtype}")
    return lg.astype(np.float64), lb.astype(np.int64)


def _check_values(lg: np.ndarray, lb: np.ndarray, name: str) -> None:
    num_classes = lg.shape[1]
    bad = (lb < 0) | (lb >= num_classes)
    if np.any(bad):
        raise ValueError(f"{name}: label {int(lb[bad][0])} is outside [0, {num_classes}) "
                         f"(logits have {num_classes} classes)")
    if np.any(np.isnan(lg)):
        raise ValueError(f"{name}: logits contain NaN")


def _ranks(lg: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """0-based rank of each sample's true class (ties go to the lower index)."""
    n, c = lg.shape
    true = lg[np.arange(n), lb][:, None]
    lower_index = np.arange(c)[None, :] < lb[:, None]
    ahead = (lg > true) | ((lg == true) & lower_index)
    return ahead.sum(axis=1)


def topk_correct(logits: Any, labels: Any, ks: Sequence[int] = (1, 5)) -> dict[int, np.ndarray]:
    """Whether each label is among the k highest logits, for every k in ``ks``.

    Args:
      logits: (N, C) scores (logits or probabilities: only their order matters).
      labels: (N,) integer class ids in [0, C).
      ks: the k values; a k above C counts as C.

    Returns ``{k: bool array (N,)}`` keyed by the requested k values.
    """
    ks = _check_ks(ks, "topk_correct")
    lg, lb = _arrays(logits, labels, "topk_correct")
    _check_values(lg, lb, "topk_correct")
    rank = _ranks(lg, lb)
    c = lg.shape[1]
    return {k: rank < min(k, c) for k in ks}


class AccuracyMeter:
    """Running top-k accuracy over batches.

    Args:
      ks: the k values reported by :meth:`compute` as ``"top{k}"`` (default top-1
        and top-5). A k above the number of classes is clipped to it.

    :meth:`add` takes a batch of logits and labels and an optional ``valid`` mask;
    samples whose ``valid`` is False (padding) are not counted and their labels are
    not checked. Every batch must have the same number of classes.
    """

    def __init__(self, ks: Sequence[int] = (1, 5)):
        self.ks = _check_ks(ks, "AccuracyMeter")
        self.reset()

    def reset(self) -> None:
        """Forget every sample added so far."""
        self.count = 0
        self.num_classes: int | None = None
        self._correct = {k: 0 for k in self.ks}

    def add(self, logits: Any, labels: Any, valid: Any = None) -> None:
        """Add a batch: logits (N, C), labels (N,), valid (N,) bool or None (all valid)."""
        name = "AccuracyMeter.add"
        lg, lb = _arrays(logits, labels, name)
        if valid is not None:
            v = np.asarray(valid)
            if v.shape != lb.shape:
                raise ValueError(f"{name}: valid must have shape {lb.shape} to match the labels, "
                                 f"got {v.shape}")
            if v.dtype != np.bool_ and not np.issubdtype(v.dtype, np.integer):
                raise ValueError(f"{name}: valid must be boolean, got dtype {v.dtype}")
            v = v.astype(bool)
            lg, lb = lg[v], lb[v]
        _check_values(lg, lb, name)
        c = lg.shape[1]
        if self.num_classes is None:
            self.num_classes = c
        elif c != self.num_classes:
            raise ValueError(f"{name}: logits have {c} classes but earlier batches had "
                             f"{self.num_classes}")
        rank = _ranks(lg, lb)
        for k in self.ks:
            self._correct[k] += int(np.count_nonzero(rank < min(k, c)))
        self.count += int(lb.shape[0])

    def compute(self) -> dict[str, float | int]:
        """Return ``{"top1": %, "top5": %, ..., "count": n}``: the percentage (0-100)
        of counted samples that are top-k correct, for every k of the meter, and the
        number of counted samples. Percentages are nan when nothing was counted."""
        out: dict[str, float | int] = {}
        for k in self.ks:
            out[f"top{k}"] = (100.0 * self._correct[k] / self.count) if self.count else float("nan")
        out["count"] = self.count
        return out
