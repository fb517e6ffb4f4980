"""Semantic segmentation scores: confusion matrix, mIoU, pixel and mean accuracy (numpy).

* :func:`confusion_matrix` counts pixels by (ground-truth class, predicted class),
  skipping pixels whose label is the ignore label (255, VOC's "void").
* :func:`segmentation_scores` turns a confusion matrix into the PASCAL VOC
  benchmark numbers: per class ``IoU = TP / (TP + FP + FN)``, and the mean IoU over
  the classes whose union ``TP + FP + FN`` is positive (a class that is neither in
  the ground truth nor predicted is left out; a class that is only predicted
  counts with IoU 0).
* :class:`SegmentationMeter` accumulates the confusion matrix over batches of
  predictions or logits.

Every percentage is in 0-100 and is nan when there is nothing to average.
Inputs may be numpy or jax arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SegmentationMeter", "confusion_matrix", "segmentation_scores"]


def _check_num_classes(num_classes: Any, name: str) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _check_ignore(ignore_label: Any, num_classes: int, name: str) -> int | None:
    if ignore_label is None:
        return None
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, (int, np.integer)):
        raise ValueError(f"{name}: ignore_label must be an integer or None, got {ignore_label!r}")
    if 0 <= ignore_label < num_classes:
        raise ValueError(f"{name}: ignore_label {ignore_label} is a class id "
                         f"(num_classes is {num_classes})")
    return int(ignore_label)


def _int_map(x: Any, what: str, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: {what} must hold integer class ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def confusion_matrix(pred: Any, label: Any, num_classes: int,
                     ignore_label: int | None = 255) -> np.ndarray:
    """Pixel counts by ground truth (rows) and prediction (columns).

    Args:
      pred: integer predicted class ids, any shape (e.g. (H, W) or (N, H, W)).
      label: integer ground-truth ids of the same shape; pixels equal to
        ``ignore_label`` are skipped (whatever their prediction).
      num_classes: C; every other label and every prediction at a counted pixel
        must be in [0, C).
      ignore_label: the label of pixels to skip, or None to count every pixel.

    Returns an int64 (C, C) array: entry (i, j) is the number of pixels of class i
    predicted as class j.
    """
    name = "confusion_matrix"
    c = _check_num_classes(num_classes, name)
    ignore = _check_ignore(ignore_label, c, name)
    p = _int_map(pred, "pred", name)
    g = _int_map(label, "label", name)
    if p.shape != g.shape:
        raise ValueError(f"{name}: pred and label must have the same shape, got {p.shape} and {g.shape}")
    p, g = p.ravel(), g.ravel()
    if ignore is not None:
        keep = g != ignore
        p, g = p[keep], g[keep]
    bad = (g < 0) | (g >= c)
    if np.any(bad):
        extra = f" other than the ignore label {ignore}" if ignore is not None else ""
        raise ValueError(f"{name}: label value {int(g[bad][0])} is outside [0, {c}){extra}")
    bad = (p < 0) | (p >= c)
    if np.any(bad):
        raise ValueError(f"{name}: predicted value {int(p[bad][0])} is outside [0, {c})")
    counts = np.bincount(g * c + p, minlength=c * c)
    return counts.reshape(c, c).astype(np.int64)


def segmentation_scores(conf: Any) -> dict[str, Any]:
    """VOC-style scores of a (C, C) confusion matrix (rows: ground truth).

    Returns a dict:
      "miou": mean IoU (%) over the classes whose union is positive;
      "pixel_acc": correctly classified pixels / counted pixels (%);
      "mean_acc": mean over the classes present in the ground truth of their
        recall ``TP / (TP + FN)`` (%);
      "iou": (C,) float64 per-class IoU (%), nan for a class with an empty union;
      "acc": (C,) float64 per-class recall (%), nan for a class absent from the
        ground truth.
    """
    m = np.asarray(conf)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"segmentation_scores: conf must be a square (C, C) matrix, got shape {m.shape}")
    if m.dtype == np.bool_ or not np.issubdtype(m.dtype, np.number) \
            or np.issubdtype(m.dtype, np.complexfloating):
        raise ValueError(f"segmentation_scores: conf must hold counts, got dtype {m.dtype}")
    m = m.astype(np.float64)
    if np.any(m < 0) or not np.all(np.isfinite(m)):
        raise ValueError("segmentation_scores: conf must hold finite non-negative counts")
    tp = np.diag(m)
    gt = m.sum(axis=1)
    predicted = m.sum(axis=0)
    union = gt + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, 100.0 * tp / union, np.nan)
        acc = np.where(gt > 0, 100.0 * tp / gt, np.nan)
    total = m.sum()
    has_union = union > 0
    has_gt = gt > 0
    return {
        "miou": float(np.mean(iou[has_union])) if np.any(has_union) else float("nan"),
        "pixel_acc": float(100.0 * tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": float(np.mean(acc[has_gt])) if np.any(has_gt) else float("nan"),
        "iou": iou,
        "acc": acc,
    }


class SegmentationMeter:
    """Confusion matrix accumulated over batches, scored by :func:`segmentation_scores`.

    Args:
      num_classes: C.
      ignore_label: ground-truth value of pixels to skip (None: count every pixel).

    The accumulated int64 (C, C) matrix is ``self.confusion``.
    """

    def __init__(self, num_classes: int, ignore_label: int | None = 255):
        self.num_classes = _check_num_classes(num_classes, "SegmentationMeter")
        self.ignore_label = _check_ignore(ignore_label, self.num_classes, "SegmentationMeter")
        self.reset()

    def reset(self) -> None:
        """Forget every pixel added so far."""
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

    def add(self, pred_or_logits: Any, label: Any, valid: Any = None) -> None:
        """Add a batch.

        Args:
          pred_or_logits: either integer predictions with the shape of ``label``
            (e.g. (N, H, W)), or logits / probabilities with one more, last axis of
            size C (e.g. (N, H, W, C), at the label's resolution), which are
            argmaxed (ties go to the lower class id).
          label: integer ground truth, e.g. (N, H, W); the ignore label is skipped.
          valid: optional (N,) bool; images whose entry is False (padding) are
            skipped.
        """
        name = "SegmentationMeter.add"
        x = np.asarray(pred_or_logits)
        g = np.asarray(label)
        if x.ndim == g.ndim + 1:
            if x.shape[:-1] != g.shape or x.shape[-1] != self.num_classes:
                raise ValueError(f"{name}: logits of shape {x.shape} do not match label {g.shape} "
                                 f"with {self.num_classes} classes (expected {g.shape + (self.num_classes,)}; "
                                 f"upsample low-resolution logits first)")
            if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
                raise ValueError(f"{name}: logits must be real numbers, got dtype {x.dtype}")
            pred = np.argmax(x, axis=-1)
        elif x.shape == g.shape:
            pred = x
        else:
            raise ValueError(f"{name}: predictions {x.shape} must have the shape of label {g.shape} "
                             f"(or logits with one more axis of size {self.num_classes})")
        if valid is not None:
            v = np.asarray(valid)
            if g.ndim < 1 or v.shape != g.shape[:1]:
                raise ValueError(f"{name}: valid must have shape ({g.shape[0] if g.ndim else '?'},), "
                                 f"one entry per image, got {v.shape}")
            if v.dtype != np.bool_ and not np.issubdtype(v.dtype, np.integer):
                raise ValueError(f"{name}: valid must be boolean, got dtype {v.dtype}")
            v = v.astype(bool)
            pred, g = pred[v], g[v]
        try:
            self.confusion += confusion_matrix(pred, g, self.num_classes, self.ignore_label)
        except ValueError as err:
            raise ValueError(str(err).replace("confusion_matrix:", f"{name}:", 1)) from None

    def compute(self) -> dict[str, Any]:
        """Scores of the accumulated matrix (see :func:`segmentation_scores`)."""
        return segmentation_scores(self.confusion)
