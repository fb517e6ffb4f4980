"""Detection metrics: PASCAL VOC mAP and COCO AP (host side, numpy).

Two accumulators share one input interface:

* :class:`VOCEvaluator` -- PASCAL VOC average precision, the metric of the
  TogetherNet paper (mAP@0.5, all-point AP, difficult objects ignored).
* :class:`COCOEvaluator` -- COCO AP / AP50 / AP75 / APs / APm / APl computed by
  ``pycocotools`` from an in-memory ground truth.

Both accept one image at a time (:meth:`add`), padded batch arrays
(:meth:`add_batch`, the shapes of the pipeline batch and of the detection
output) or the batch/detection dicts themselves (:meth:`update`).

VOC matching rule (per class, as in the VOC devkit's ``voc_eval``):

1. all detections of the class, over all images, are sorted by descending
   score (stable: ties keep the order in which they were added);
2. each detection is compared with the ground-truth boxes of its class in its
   image and takes the one with the highest IoU (the first one on ties);
3. if that IoU reaches the threshold: a difficult box makes the detection
   ignored (neither TP nor FP); an unclaimed box makes it a TP and claims the
   box; an already claimed box makes it a FP (duplicate). Otherwise it is a FP.
   Note that a detection is never re-assigned to the second-best box;
4. recall = cumulative TP / number of non-difficult boxes, precision =
   cumulative TP / (cumulative TP + FP); AP is the area under the monotone
   precision envelope (VOC2010+ "all-point"), or the VOC2007 11-point mean.

Conventions, chosen to match the evaluation that TogetherNet's numbers were
produced with (``utils/utils_map.py::get_map`` of yz-wang/TogetherNet, the
bubbliiiing / Cartucho mAP tool, called from ``get_map.py`` with
``MINOVERLAP = 0.5``):

* ``pixel_offset=1.0``: IoU with the VOC "+1" inclusive-pixel rule,
  ``w = x2 - x1 + 1``.  The official tool writes integer pixel boxes (the
  VOC XML values for the ground truth and ``int()`` of the predicted
  coordinates) and computes widths and intersections with ``+ 1``.  Use
  ``pixel_offset=0.0`` for continuous coordinates (the COCO convention).
  Because the offset is in pixels, evaluate in original-image pixels
  (``add_batch(..., scale=, offset=)`` maps letterboxed boxes back).
* ``iou_strict=False``: a match needs ``IoU >= threshold`` (the official
  tool tests ``ovmax >= min_overlap``); ``iou_strict=True`` gives the
  ``IoU > threshold`` test of py-faster-rcnn's ``voc_eval.py``.
* ``truncate_det_boxes=False``: with ``True`` the predicted coordinates are
  truncated to integers as the official tool's text files do.
* ``gt_voc_integers=False``: with ``True`` continuous 0-based ground-truth boxes
  (as the VOC sources give them) are turned back into the XML's 1-based inclusive
  integers (``x1 + 1, y1 + 1, x2, y2``, rounded), the boxes the official tool reads.
  With ``pixel_offset=1`` and ``truncate_det_boxes=True`` the evaluator is then the
  official tool on VOC-format data (:func:`official_tool`).
* A class without any non-difficult ground truth has AP ``nan`` and is left
  out of the mean (the official tool only lists classes that have
  non-difficult ground truth).
* The 11-point thresholds are exactly ``k / 10``.  (``np.arange(0, 1.1, 0.1)``
  in py-faster-rcnn yields 0.30000000000000004 etc., which drops the point at
  a recall of exactly 0.3, 0.6 or 0.7; the VOC2007 devkit intends ``k / 10``.)
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "box_iou",
    "voc_ap",
    "VOCEvaluator",
    "COCOEvaluator",
    "voc_map",
    "coco_map",
]

_COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


# ---------------------------------------------------------------------------
# Elementary functions
# ---------------------------------------------------------------------------

def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray, pixel_offset: float = 0.0) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, ``(N, 4) x (M, 4) -> (N, M)`` float64.

    ``pixel_offset`` is added to every width and height (1.0 for the VOC
    inclusive-pixel convention, 0.0 for continuous coordinates). A pair whose
    union is not positive gets IoU 0.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    o = float(pixel_offset)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + o
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + o
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area_a = (a[:, 2] - a[:, 0] + o) * (a[:, 3] - a[:, 1] + o)
    area_b = (b[:, 2] - b[:, 0] + o) * (b[:, 3] - b[:, 1] + o)
    union = area_a[:, None] + area_b[None, :] - inter
    safe = np.where(union > 0.0, union, 1.0)
    return np.where(union > 0.0, inter / safe, 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """Average precision from a recall/precision curve (detections in score order).

    All-point (VOC2010+): area under the precision envelope
    ``p_interp(r) = max_{r' >= r} p(r')``, with the curve closed at recall 0 and 1
    by precision 0. 11-point (VOC2007): mean over ``t = 0, 0.1, ..., 1`` of the
    largest precision at recall ``>= t`` (0 where there is none).
    """
    rec = np.asarray(recall, dtype=np.float64).ravel()
    prec = np.asarray(precision, dtype=np.float64).ravel()
    if rec.shape != prec.shape:
        raise ValueError(
            f"voc_ap: recall and precision must have the same length, got {rec.shape} and {prec.shape}")
    if use_07_metric:
        ap = 0.0
        for t in np.arange(11) / 10.0:  # exactly k / 10 (linspace gives 3 * 0.1)
            sel = prec[rec >= t]
            ap += (float(sel.max()) if sel.size else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mpre[idx]))


# ---------------------------------------------------------------------------
# Input handling shared by both evaluators
# ---------------------------------------------------------------------------

def _vector(x: Any, name: str, n: int | None, dtype: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 and arr.size == 0:
        arr = arr.reshape(0)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but the boxes have {n}")
    if dtype is bool:
        if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be boolean, got dtype {arr.dtype}")
        return arr.astype(bool)
    if dtype is np.int64:
        if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                     or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise ValueError(f"{name} must hold integer class ids, got non-integer values")
        return arr.astype(np.int64)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _boxes(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) as x1, y1, x2, y2, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _clean_image(num_classes: int, det_boxes, det_scores, det_classes, gt_boxes, gt_classes,
                 gt_difficult, det_valid, gt_valid):
    """Validate one image's arrays, drop padding, return float64/int64/bool arrays."""
    db = _boxes(det_boxes, "det_boxes")
    k = db.shape[0]
    ds = _vector(det_scores, "det_scores", k, np.float64)
    dc = _vector(det_classes, "det_classes", k, np.int64) if k else np.zeros(0, np.int64)
    gb = _boxes(gt_boxes, "gt_boxes")
    n = gb.shape[0]
    gc = _vector(gt_classes, "gt_classes", n, np.int64) if n else np.zeros(0, np.int64)
    if gt_difficult is None:
        gd = np.zeros(n, bool)
    else:
        gd = _vector(gt_difficult, "gt_difficult", n, bool) if n else np.zeros(0, bool)
    if det_valid is not None:
        dv = _vector(det_valid, "det_valid", k, bool) if k else np.zeros(0, bool)
        db, ds, dc = db[dv], ds[dv], dc[dv]
    if gt_valid is not None:
        gv = _vector(gt_valid, "gt_valid", n, bool) if n else np.zeros(0, bool)
        gb, gc, gd = gb[gv], gc[gv], gd[gv]
    for name, arr in (("det_boxes", db), ("det_scores", ds), ("gt_boxes", gb)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains non-finite values (nan or inf)")
    for name, arr in (("det_boxes", db), ("gt_boxes", gb)):
        if np.any(arr[:, 2] < arr[:, 0]) or np.any(arr[:, 3] < arr[:, 1]):
            raise ValueError(f"{name} has boxes with x2 < x1 or y2 < y1 (expected x1, y1, x2, y2)")
    for name, arr in (("det_classes", dc), ("gt_classes", gc)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{name} has class ids outside [0, {num_classes}): min {arr.min()}, max {arr.max()}")
    return db, ds, dc, gb, gc, gd


def _batch_array(x: Any, name: str, ndim: int, batch: int | None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions (batch first), got shape {arr.shape}")
    if batch is not None and arr.shape[0] != batch:
        raise ValueError(f"{name} has batch size {arr.shape[0]}, expected {batch}")
    return arr


class _Accumulator:
    """Common add/add_batch/update plumbing; subclasses implement ``_add_image``."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None):
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        if class_names is None:
            class_names = [f"class_{c}" for c in range(self.num_classes)]
        class_names = [str(s) for s in class_names]
        if len(class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes is {self.num_classes}")
        self.class_names = class_names
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self._ids: dict[Hashable, int] = {}
        self.image_ids: list[Hashable] = []
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self.image_ids)

    def _register(self, image_id: Hashable | None) -> int:
        if image_id is None:
            image_id = len(self.image_ids)
            while image_id in self._ids:
                image_id = f"{image_id}_"
        try:
            hash(image_id)
        except TypeError as exc:
            raise ValueError(f"image id must be hashable, got {type(image_id).__name__}") from exc
        if image_id in self._ids:
            raise ValueError(f"image id {image_id!r} was already added to this evaluator")
        index = len(self.image_ids)
        self._ids[image_id] = index
        self.image_ids.append(image_id)
        return index

    def add(self, image_id: Hashable | None, det_boxes, det_scores, det_classes, gt_boxes,
            gt_classes, gt_difficult=None, *, det_valid=None, gt_valid=None) -> None:
        """Add one image.

        Args:
          image_id: any hashable id, unique within the evaluator (None: next index).
          det_boxes: (K, 4) xyxy; det_scores: (K,); det_classes: (K,) int in [0, C).
          gt_boxes: (N, 4) xyxy; gt_classes: (N,); gt_difficult: (N,) bool or None.
          det_valid / gt_valid: optional (K,) / (N,) masks selecting the real
            entries of padded arrays.
        """
        arrays = _clean_image(self.num_classes, det_boxes, det_scores, det_classes, gt_boxes,
                              gt_classes, gt_difficult, det_valid, gt_valid)
        index = self._register(image_id)
        self._add_image(index, *arrays)

    def add_batch(self, det_boxes, det_scores, det_classes, det_valid, gt_boxes, gt_classes,
                  gt_mask, gt_difficult=None, *, image_ids: Sequence[Hashable] | None = None,
                  image_valid=None, scale=None, offset=None) -> None:
        """Add a batch of padded arrays.

        Args:
          det_boxes (B, K, 4), det_scores (B, K), det_classes (B, K), det_valid (B, K):
            the fixed-size detection output.
          gt_boxes (B, M, 4), gt_classes (B, M), gt_mask (B, M), gt_difficult (B, M):
            the batch ground truth ("boxes", "classes", "box_mask", "difficult").
          image_ids: optional B ids (default: running indices).
          image_valid: optional (B,) bool; images marked False are skipped and
            counted in ``num_skipped``.
          scale (B,), offset (B, 2): letterbox parameters; when given, all boxes are
            mapped back to original pixels, ``(box - (ox, oy, ox, oy)) / scale``.
        """
        db = _batch_array(det_boxes, "det_boxes", 3, None)
        b = db.shape[0]
        ds = _batch_array(det_scores, "det_scores", 2, b)
        dc = _batch_array(det_classes, "det_classes", 2, b)
        dv = None if det_valid is None else _batch_array(det_valid, "det_valid", 2, b)
        gb = _batch_array(gt_boxes, "gt_boxes", 3, b)
        gc = _batch_array(gt_classes, "gt_classes", 2, b)
        gm = None if gt_mask is None else _batch_array(gt_mask, "gt_mask", 2, b)
        gd = None if gt_difficult is None else _batch_array(gt_difficult, "gt_difficult", 2, b)
        iv = None if image_valid is None else _batch_array(image_valid, "image_valid", 1, b).astype(bool)
        if image_ids is not None and len(image_ids) != b:
            raise ValueError(f"image_ids has {len(image_ids)} entries, expected the batch size {b}")
        if (scale is None) != (offset is None):
            raise ValueError("scale and offset must be given together (letterbox parameters)")
        if scale is not None:
            sc = _batch_array(scale, "scale", 1, b).astype(np.float64)
            of = _batch_array(offset, "offset", 2, b).astype(np.float64)
            if of.shape[1] != 2:
                raise ValueError(f"offset must have shape (B, 2) as (x, y), got {of.shape}")
            if not np.all(np.isfinite(sc)) or np.any(sc <= 0):
                raise ValueError("scale must be finite and positive")
            shift = np.concatenate([of, of], axis=1)[:, None, :]
            db = (db.astype(np.float64) - shift) / sc[:, None, None]
            gb = (gb.astype(np.float64) - shift) / sc[:, None, None]
        for i in range(b):
            if iv is not None and not iv[i]:
                self.num_skipped += 1
                continue
            self.add(None if image_ids is None else image_ids[i], db[i], ds[i], dc[i], gb[i], gc[i],
                     None if gd is None else gd[i],
                     det_valid=None if dv is None else dv[i],
                     gt_valid=None if gm is None else gm[i])

    def update(self, detections: Mapping[str, Any], batch: Mapping[str, Any], *,
               to_original: bool = True, image_ids: Sequence[Hashable] | None = None) -> None:
        """Add the detection dict and the pipeline batch dict of one step.

        ``detections`` has "boxes", "scores", "classes" and optionally "valid";
        ``batch`` has "boxes", "classes", "box_mask" and optionally "difficult",
        "valid", "scale", "offset". With ``to_original`` and "scale"/"offset"
        present, boxes are evaluated in original-image pixels.
        """
        for src, keys in (("detections", ("boxes", "scores", "classes")),
                          ("batch", ("boxes", "classes", "box_mask"))):
            d = detections if src == "detections" else batch
            missing = [k for k in keys if k not in d]
            if missing:
                raise ValueError(f"{src} dict is missing key(s) {missing}")
        use_lb = to_original and "scale" in batch and "offset" in batch
        self.add_batch(detections["boxes"], detections["scores"], detections["classes"],
                       detections.get("valid"), batch["boxes"], batch["classes"],
                       batch["box_mask"], batch.get("difficult"), image_ids=image_ids,
                       image_valid=batch.get("valid"),
                       scale=batch["scale"] if use_lb else None,
                       offset=batch["offset"] if use_lb else None)

    def _add_image(self, index, det_boxes, det_scores, det_classes, gt_boxes, gt_classes,
                   gt_difficult) -> None:
        raise NotImplementedError


def _concat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


# ---------------------------------------------------------------------------
# VOC
# ---------------------------------------------------------------------------

class VOCEvaluator(_Accumulator):
    """PASCAL VOC mAP accumulator (see the module docstring for the exact rules).

    Args:
      num_classes: number of classes C (ids 0 .. C-1).
      iou_threshold: IoU needed for a match (0.5 for mAP@0.5).
      use_07_metric: VOC2007 11-point AP instead of the all-point area.
      class_names: optional C names for :meth:`table`.
      pixel_offset: added to widths/heights in the IoU (1.0: VOC "+1" rule, default,
        as TogetherNet's evaluation; 0.0: continuous coordinates).
      iou_strict: require IoU > threshold instead of IoU >= threshold.
      truncate_det_boxes: truncate predicted coordinates to integers first.
      gt_voc_integers: score against the VOC XML integers of continuous ground truth.

    Matching is computed when an image is added (the best-IoU ground-truth box of
    each detection does not depend on the other images), so :meth:`compute` is a
    few vectorised passes and may be called with another threshold.
    """

    def __init__(self, num_classes: int, iou_threshold: float = 0.5, use_07_metric: bool = False,
                 class_names: Sequence[str] | None = None, *, pixel_offset: float = 1.0,
                 iou_strict: bool = False, truncate_det_boxes: bool = False,
                 gt_voc_integers: bool = False):
        _check_threshold(iou_threshold)
        if not np.isfinite(pixel_offset) or pixel_offset < 0:
            raise ValueError(f"pixel_offset must be >= 0, got {pixel_offset!r}")
        self.iou_threshold = float(iou_threshold)
        self.use_07_metric = bool(use_07_metric)
        self.pixel_offset = float(pixel_offset)
        self.iou_strict = bool(iou_strict)
        self.truncate_det_boxes = bool(truncate_det_boxes)
        self.gt_voc_integers = bool(gt_voc_integers)
        super().__init__(num_classes, class_names)

    def reset(self) -> None:
        super().reset()
        self._d_score: list[np.ndarray] = []
        self._d_class: list[np.ndarray] = []
        self._d_iou: list[np.ndarray] = []
        self._d_gt: list[np.ndarray] = []
        self._g_class: list[np.ndarray] = []
        self._g_difficult: list[np.ndarray] = []
        self._num_gt_total = 0

    def _add_image(self, index, det_boxes, det_scores, det_classes, gt_boxes, gt_classes,
                   gt_difficult) -> None:
        if self.truncate_det_boxes:
            det_boxes = np.trunc(det_boxes)
        if self.gt_voc_integers:
            gt_boxes = np.round(gt_boxes + np.array([1.0, 1.0, 0.0, 0.0]))
        k, n = det_boxes.shape[0], gt_boxes.shape[0]
        if k and n:
            iou = box_iou(det_boxes, gt_boxes, self.pixel_offset)
            iou = np.where(det_classes[:, None] == gt_classes[None, :], iou, -np.inf)
            best = np.argmax(iou, axis=1)
            best_iou = iou[np.arange(k), best]
            gidx = np.where(np.isfinite(best_iou), best + self._num_gt_total, -1)
        else:
            best_iou = np.full(k, -np.inf)
            gidx = np.full(k, -1, np.int64)
        self._d_score.append(det_scores)
        self._d_class.append(det_classes)
        self._d_iou.append(best_iou)
        self._d_gt.append(gidx.astype(np.int64))
        self._g_class.append(gt_classes)
        self._g_difficult.append(gt_difficult)
        self._num_gt_total += n

    def compute(self, iou_threshold: float | None = None) -> dict[str, Any]:
        """Return the metrics.

        Keys: "mAP" (float, mean AP over classes with non-difficult ground
        truth; nan if there is none), "AP" (C,) float64 (nan for a class without
        non-difficult ground truth), "num_gt" (C,) non-difficult boxes,
        "num_difficult" (C,), "num_det" (C,) detections, "num_tp" / "num_fp" (C,)
        at the threshold (detections on difficult boxes are neither),
        "recall" (C,) final recall, "num_images", "iou_threshold",
        "class_names".
        """
        thr = self.iou_threshold if iou_threshold is None else float(iou_threshold)
        _check_threshold(thr)
        c_n = self.num_classes
        score = _concat(self._d_score, np.float64)
        dcls = _concat(self._d_class, np.int64)
        diou = _concat(self._d_iou, np.float64)
        dgt = _concat(self._d_gt, np.int64)
        gcls = _concat(self._g_class, np.int64)
        gdiff = _concat(self._g_difficult, bool)

        num_gt = np.bincount(gcls[~gdiff], minlength=c_n).astype(np.int64)
        num_difficult = np.bincount(gcls[gdiff], minlength=c_n).astype(np.int64)
        num_det = np.bincount(dcls, minlength=c_n).astype(np.int64)

        hit = (diou > thr) if self.iou_strict else (diou >= thr)
        hit &= dgt >= 0
        on_difficult = np.zeros_like(hit)
        on_difficult[hit] = gdiff[dgt[hit]]
        keep = ~on_difficult
        # detections on difficult boxes are ignored: drop them. (Keeping them as
        # zero-increment points, as voc_eval does, changes no AP.)
        score, dcls, hit, dgt = score[keep], dcls[keep], hit[keep], dgt[keep]
        # one global stable order: class ascending, score descending, then add order
        order = np.lexsort((-score, dcls))
        dcls, hit, dgt = dcls[order], hit[order], dgt[order]
        # a hit is a TP iff it is the first (highest ranked) hit on its box
        tp = np.zeros(hit.shape, bool)
        hit_pos = np.nonzero(hit)[0]
        if hit_pos.size:
            _, first = np.unique(dgt[hit_pos], return_index=True)
            tp[hit_pos[first]] = True

        bounds = np.searchsorted(dcls, np.arange(c_n + 1))
        ap = np.full(c_n, np.nan)
        recall = np.full(c_n, np.nan)
        num_tp = np.zeros(c_n, np.int64)
        num_fp = np.zeros(c_n, np.int64)
        for c in range(c_n):
            t = tp[bounds[c]:bounds[c + 1]]
            num_tp[c] = int(t.sum())
            num_fp[c] = t.size - num_tp[c]
            if num_gt[c] == 0:
                continue
            ctp = np.cumsum(t, dtype=np.float64)
            rec = ctp / num_gt[c]
            prec = ctp / np.arange(1, t.size + 1, dtype=np.float64)
            ap[c] = voc_ap(rec, prec, self.use_07_metric)
            recall[c] = rec[-1] if t.size else 0.0
        has_gt = num_gt > 0
        m_ap = float(np.mean(ap[has_gt])) if np.any(has_gt) else float("nan")
        return {
            "mAP": m_ap,
            "AP": ap,
            "num_gt": num_gt,
            "num_difficult": num_difficult,
            "num_det": num_det,
            "num_tp": num_tp,
            "num_fp": num_fp,
            "recall": recall,
            "num_images": len(self.image_ids),
            "iou_threshold": thr,
            "class_names": list(self.class_names),
        }

    def table(self, result: Mapping[str, Any] | None = None) -> str:
        """Per-class table (name, #gt, #det, recall %, AP %) and the mean, as text."""
        r = self.compute() if result is None else result
        names = list(r.get("class_names", self.class_names))
        width = max([len("class")] + [len(s) for s in names])
        metric = "VOC07 11-point" if self.use_07_metric else "all-point"
        head = (f"{'class':<{width}}  {'#gt':>7}  {'#det':>8}  {'recall':>7}  {'AP':>7}")
        lines = [f"VOC AP@{r['iou_threshold']:g} ({metric}), {r['num_images']} images", head,
                 "-" * len(head)]
        for c, name in enumerate(names):
            lines.append(f"{name:<{width}}  {int(r['num_gt'][c]):>7d}  {int(r['num_det'][c]):>8d}  "
                         f"{_pct(r['recall'][c]):>7}  {_pct(r['AP'][c]):>7}")
        lines.append("-" * len(head))
        n_cls = int(np.sum(np.asarray(r["num_gt"]) > 0))
        label = f"mAP ({n_cls} classes)"
        lines.append(f"{label:<{len(head) - 9}}  {_pct(r['mAP']):>7}")
        return "\n".join(lines)


def official_tool(num_classes: int, class_names: Sequence[str] | None = None) -> VOCEvaluator:
    """The mAP@0.5 that TogetherNet's official tool (``get_map.py`` with
    ``utils/utils_map.py``) reports for VOC-format data, from the continuous 0-based
    boxes of this project's VOC sources: the XML's integer ground truth, predicted
    coordinates truncated to integers (as its text files hold them), the "+1" pixel
    rule, a match at IoU >= 0.5. Truncation moves mAP by up to a few points on small
    boxes; published tables were made with it."""
    return VOCEvaluator(num_classes, 0.5, class_names=class_names, pixel_offset=1.0,
                        truncate_det_boxes=True, gt_voc_integers=True)


def _check_threshold(thr: float) -> None:
    if not (0.0 < float(thr) <= 1.0):
        raise ValueError(f"iou_threshold must be in (0, 1], got {thr!r}")


def _pct(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{100.0 * float(x):.2f}"


# ---------------------------------------------------------------------------
# COCO (through pycocotools)
# ---------------------------------------------------------------------------

class COCOEvaluator(_Accumulator):
    """COCO box AP through ``pycocotools.cocoeval.COCOeval`` (quiet).

    Boxes are xyxy in continuous pixel coordinates and are converted to COCO's
    xywh; ground-truth ``area`` is ``w * h`` of the box (this drives the
    small/medium/large split, so add boxes in original-image pixels).

    Args:
      num_classes: number of classes C (category ids 1 .. C in the COCO objects).
      class_names: optional C names.
      difficult: how VOC "difficult" boxes enter: "include" (ordinary ground
        truth, iscrowd=0; default), "crowd" (iscrowd=1: COCO's ignore regions;
        detections on them are not counted), or "drop" (removed).

    After :meth:`compute`, ``summary_text`` holds pycocotools' printed summary.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, *,
                 difficult: str = "include"):
        if difficult not in ("include", "crowd", "drop"):
            raise ValueError(f"difficult must be 'include', 'crowd' or 'drop', got {difficult!r}")
        self.difficult = difficult
        self.summary_text = ""
        super().__init__(num_classes, class_names)

    def reset(self) -> None:
        super().reset()
        self._images: list[tuple[np.ndarray, ...]] = []

    def _add_image(self, index, det_boxes, det_scores, det_classes, gt_boxes, gt_classes,
                   gt_difficult) -> None:
        if self.difficult == "drop":
            keep = ~gt_difficult
            gt_boxes, gt_classes, gt_difficult = gt_boxes[keep], gt_classes[keep], gt_difficult[keep]
        self._images.append((det_boxes, det_scores, det_classes, gt_boxes, gt_classes, gt_difficult))

    def compute(self) -> dict[str, float]:
        """Return {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10",
        "AR100", "ARs", "ARm", "ARl"}; nan where pycocotools reports -1 (no
        ground truth in that range). With ground truth but no detection the APs are 0."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        images, anns, dets = [], [], []
        for i, (db, ds, dc, gb, gc, gd) in enumerate(self._images):
            img_id = i + 1
            images.append({"id": img_id, "file_name": str(self.image_ids[i])})
            gw, gh = gb[:, 2] - gb[:, 0], gb[:, 3] - gb[:, 1]
            for j in range(gb.shape[0]):
                crowd = int(self.difficult == "crowd" and bool(gd[j]))
                anns.append({"id": len(anns) + 1, "image_id": img_id,
                             "category_id": int(gc[j]) + 1,
                             "bbox": [float(gb[j, 0]), float(gb[j, 1]), float(gw[j]), float(gh[j])],
                             "area": float(gw[j] * gh[j]), "iscrowd": crowd})
            dw, dh = db[:, 2] - db[:, 0], db[:, 3] - db[:, 1]
            for j in range(db.shape[0]):
                dets.append({"image_id": img_id, "category_id": int(dc[j]) + 1,
                             "bbox": [float(db[j, 0]), float(db[j, 1]), float(dw[j]), float(dh[j])],
                             "score": float(ds[j])})
        cats = [{"id": c + 1, "name": n} for c, n in enumerate(self.class_names)]
        if not images:
            return {k: float("nan") for k in _COCO_KEYS}

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            gt = COCO()
            gt.dataset = {"images": images, "annotations": anns, "categories": cats}
            gt.createIndex()
            if dets:
                dt = gt.loadRes(dets)
            else:
                dt = COCO()
                dt.dataset = {"images": list(images), "annotations": [], "categories": cats}
                dt.createIndex()
            ev = COCOeval(gt, dt, iouType="bbox")
            ev.params.imgIds = [im["id"] for im in images]
            ev.params.catIds = [c["id"] for c in cats]
            ev.evaluate()
            ev.accumulate()
            summary = io.StringIO()
            with contextlib.redirect_stdout(summary):
                ev.summarize()
        self.summary_text = summary.getvalue()
        stats = np.asarray(ev.stats, dtype=np.float64)
        return {k: (float(v) if v > -1 else float("nan")) for k, v in zip(_COCO_KEYS, stats)}


# ---------------------------------------------------------------------------
# One-shot helpers on padded batch arrays
# ---------------------------------------------------------------------------

def _num_classes_from(det_classes, det_valid, gt_classes, gt_mask) -> int:
    ids = [np.asarray(det_classes)[np.asarray(det_valid, bool)] if det_valid is not None
           else np.asarray(det_classes),
           np.asarray(gt_classes)[np.asarray(gt_mask, bool)] if gt_mask is not None
           else np.asarray(gt_classes)]
    top = max((int(a.max()) for a in ids if a.size), default=0)
    return top + 1


def voc_map(det_boxes, det_scores, det_classes, det_valid, gt_boxes, gt_classes, gt_mask,
            gt_difficult=None, *, num_classes: int | None = None, **kwargs) -> dict[str, Any]:
    """VOC metrics of one set of padded arrays (B, K, ...) / (B, M, ...).

    ``kwargs`` go to :class:`VOCEvaluator`. ``num_classes`` defaults to the
    largest class id seen plus one.
    """
    if num_classes is None:
        num_classes = _num_classes_from(det_classes, det_valid, gt_classes, gt_mask)
    ev = VOCEvaluator(num_classes, **kwargs)
    ev.add_batch(det_boxes, det_scores, det_classes, det_valid, gt_boxes, gt_classes, gt_mask,
                 gt_difficult)
    return ev.compute()


def coco_map(det_boxes, det_scores, det_classes, det_valid, gt_boxes, gt_classes, gt_mask,
             gt_difficult=None, *, num_classes: int | None = None, **kwargs) -> dict[str, float]:
    """COCO AP/AP50/AP75/APs/APm/APl of one set of padded arrays (see :class:`COCOEvaluator`)."""
    if num_classes is None:
        num_classes = _num_classes_from(det_classes, det_valid, gt_classes, gt_mask)
    ev = COCOEvaluator(num_classes, **kwargs)
    ev.add_batch(det_boxes, det_scores, det_classes, det_valid, gt_boxes, gt_classes, gt_mask,
                 gt_difficult)
    return ev.compute()
