"""Static-shape greedy NMS and YOLOX-style post-processing.

``postprocess`` turns decoded dense predictions into a fixed number K of
detections per image:

1. score = sigmoid(obj) * max_c sigmoid(cls_c), class = argmax_c (YOLOX);
2. keep candidates with score >= ``conf_threshold``, limited to the
   ``pre_nms_topk`` best scores (a fixed cost per image; YOLOX itself has no
   such limit);
3. class-wise greedy NMS: a box suppresses a lower-scored box of the SAME class
   whose IoU with it is strictly greater than ``iou_threshold`` (torchvision's rule);
4. the K best survivors, padded with ``valid=False`` entries whose box, score and
   class are 0.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from adverse_vision.ops.boxes import iou as pairwise_iou

__all__ = ["Detections", "batched_nms", "postprocess"]


class Detections(NamedTuple):
    boxes: jnp.ndarray  # (B, K, 4) float32 xyxy
    scores: jnp.ndarray  # (B, K) float32
    classes: jnp.ndarray  # (B, K) int32
    valid: jnp.ndarray  # (B, K) bool


def _greedy_nms_sorted(boxes, classes, valid, iou_threshold, class_agnostic):
    """Greedy NMS of (N, 4) boxes already sorted by decreasing score -> keep (N,)."""
    n = boxes.shape[0]
    overlaps = pairwise_iou(boxes, boxes) > iou_threshold
    if not class_agnostic:
        overlaps = overlaps & (classes[:, None] == classes[None, :])
    later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]
    suppresses = overlaps & later  # row i may only suppress later (lower-scored) boxes

    def body(i, keep):
        return keep & ~(suppresses[i] & keep[i])

    return jax.lax.fori_loop(0, n, body, valid)


def batched_nms(
    boxes,
    scores,
    classes,
    iou_threshold: float = 0.65,
    valid: Optional[jnp.ndarray] = None,
    class_agnostic: bool = False,
) -> jnp.ndarray:
    """Class-wise greedy NMS with static shapes.

    Args:
      boxes: (..., N, 4) xyxy; scores: (..., N); classes: (..., N) int.
      iou_threshold: a box is suppressed by a higher-scored kept box of the same
        class when their IoU is > this.
      valid: optional (..., N) bool; invalid boxes are never kept and never
        suppress anything.
      class_agnostic: when True, boxes of different classes suppress each other.

    Returns:
      keep: (..., N) bool in the input order.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    classes = jnp.asarray(classes)
    if boxes.ndim < 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:-1]:
        raise ValueError(
            "adverse_vision.ops.nms.batched_nms: boxes must be (..., N, 4) and scores "
            f"(..., N); got {tuple(boxes.shape)} and {tuple(scores.shape)}"
        )
    if classes.shape != scores.shape:
        raise ValueError(
            "adverse_vision.ops.nms.batched_nms: classes must match scores' shape "
            f"{tuple(scores.shape)}, got {tuple(classes.shape)}"
        )
    valid = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid).astype(bool)
    if valid.shape != scores.shape:
        raise ValueError(
            "adverse_vision.ops.nms.batched_nms: valid must match scores' shape "
            f"{tuple(scores.shape)}, got {tuple(valid.shape)}"
        )

    lead = scores.shape[:-1]
    n = scores.shape[-1]

    def one(b, s, c, v):
        order = jnp.argsort(-s, stable=True)
        keep_sorted = _greedy_nms_sorted(b[order], c[order], v[order], iou_threshold, class_agnostic)
        return jnp.zeros((n,), bool).at[order].set(keep_sorted)

    fn = one
    for _ in lead:
        fn = jax.vmap(fn)
    return fn(boxes, scores, classes, valid)


def postprocess(
    boxes,
    obj_logits,
    cls_logits,
    conf_threshold: float = 0.001,
    iou_threshold: float = 0.65,
    max_detections: int = 100,
    pre_nms_topk: int = 1000,
    class_agnostic: bool = False,
) -> Detections:
    """Decoded dense predictions -> K = ``max_detections`` detections per image.

    Args:
      boxes: (B, A, 4) xyxy pixels (see :func:`adverse_vision.ops.boxes.decode`).
      obj_logits: (B, A); cls_logits: (B, A, C) raw logits.

    Returns:
      :class:`Detections` with boxes (B, K, 4), scores (B, K), classes (B, K)
      int32, valid (B, K) bool, sorted by decreasing score; invalid entries are 0.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    obj_logits = jnp.asarray(obj_logits, jnp.float32)
    cls_logits = jnp.asarray(cls_logits, jnp.float32)
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(
            f"adverse_vision.ops.nms.postprocess: boxes must be (B, A, 4), got {tuple(boxes.shape)}"
        )
    b, a = boxes.shape[:2]
    if obj_logits.shape != (b, a) or cls_logits.ndim != 3 or cls_logits.shape[:2] != (b, a):
        raise ValueError(
            "adverse_vision.ops.nms.postprocess: obj_logits must be (B, A) and cls_logits "
            f"(B, A, C) with (B, A)={(b, a)}; got {tuple(obj_logits.shape)} and "
            f"{tuple(cls_logits.shape)}"
        )
    if max_detections < 1 or pre_nms_topk < 1:
        raise ValueError(
            "adverse_vision.ops.nms.postprocess: max_detections and pre_nms_topk must be "
            f">= 1, got {max_detections} and {pre_nms_topk}"
        )
    k = int(max_detections)
    p = min(int(pre_nms_topk), a)

    cls_prob = jax.nn.sigmoid(cls_logits)
    cls_conf = jnp.max(cls_prob, axis=-1)
    cls_id = jnp.argmax(cls_prob, axis=-1).astype(jnp.int32)
    scores = jax.nn.sigmoid(obj_logits) * cls_conf  # (B, A)

    def one(bx, sc, ci):
        top_sc, top_idx = jax.lax.top_k(sc, p)  # sorted, decreasing
        cand_boxes = bx[top_idx]
        cand_cls = ci[top_idx]
        cand_valid = top_sc >= conf_threshold
        keep = _greedy_nms_sorted(cand_boxes, cand_cls, cand_valid, iou_threshold, class_agnostic)
        # survivors keep their (already decreasing) order; take the first K
        rank = jnp.where(keep, jnp.arange(p), p + jnp.arange(p))
        pick = jnp.argsort(rank)[: min(k, p)]
        ok = keep[pick]
        out_boxes = jnp.where(ok[:, None], cand_boxes[pick], 0.0)
        out_scores = jnp.where(ok, top_sc[pick], 0.0)
        out_cls = jnp.where(ok, cand_cls[pick], 0)
        if k > p:
            pad = k - p
            out_boxes = jnp.pad(out_boxes, ((0, pad), (0, 0)))
            out_scores = jnp.pad(out_scores, (0, pad))
            out_cls = jnp.pad(out_cls, (0, pad))
            ok = jnp.pad(ok, (0, pad))
        return Detections(out_boxes, out_scores, out_cls.astype(jnp.int32), ok)

    return jax.vmap(one)(boxes, scores, cls_id)
