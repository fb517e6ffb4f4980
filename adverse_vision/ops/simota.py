"""SimOTA label assignment (YOLOX) with static shapes.

The algorithm, for one image with M (padded) ground-truth boxes and A anchors:

1. Geometry. An anchor centre is ``((gx + 0.5) * s, (gy + 0.5) * s)``. It is *in
   box* g when strictly inside GT box g, *in centre* g when strictly within
   ``center_radius * s`` of g's centre along both axes. Candidate anchors are the
   union over all valid GTs of (in box OR in centre).
2. Cost of pairing GT g with candidate anchor a::

       sum_c BCE(sqrt(sigmoid(cls_ac) * sigmoid(obj_a)), onehot(class_g)_c)
       + 3 * -log(IoU(gt_g, pred_a) + 1e-8)
       + 1e5 * not(in box g AND in centre g)

   (BCE logs clamped at -100 as in PyTorch). Non-candidates and padded GTs
   cost +inf.
3. Dynamic k. ``k_g = max(1, floor(sum of the top-min(topk, #candidates) IoUs of g
   over the candidates))``; since IoU <= 1, ``k_g <= topk``, so one
   ``lax.top_k(-cost, topk)`` per GT gives each GT's k cheapest anchors.
4. Conflicts. An anchor chosen by several GTs goes to the GT of minimum cost for
   that anchor (the minimum over all GTs, as YOLOX computes it).

The whole computation uses (M, A) arrays, works for any number of valid GTs
(including none) and runs under ``jit`` and ``vmap``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from adverse_vision.ops.boxes import iou as pairwise_iou

__all__ = ["Assignment", "geometry_relation", "simota_assign"]


class Assignment(NamedTuple):
    """Per-anchor SimOTA result for one image (a pytree: vmaps over images)."""

    fg_mask: jnp.ndarray  # (A,) bool: anchor is a positive
    matched_gt: jnp.ndarray  # (A,) int32: index into the (padded) GT list, 0 where not fg
    matched_iou: jnp.ndarray  # (A,) float32: IoU(pred, matched GT), 0 where not fg
    num_fg: jnp.ndarray  # () int32: number of positives


def geometry_relation(grid, strides, gt_boxes, center_radius: float = 2.5):
    """In-box and in-centre relations between GT boxes and anchor centres.

    Args:
      grid: (A, 2) cell coordinates (x, y); strides: (A,).
      gt_boxes: (M, 4) xyxy pixels.

    Returns:
      in_box (M, A) bool, in_center (M, A) bool.
    """
    grid = jnp.asarray(grid, jnp.float32)
    strides = jnp.asarray(strides, jnp.float32)
    gt = jnp.asarray(gt_boxes, jnp.float32)
    xc = ((grid[:, 0] + 0.5) * strides)[None, :]
    yc = ((grid[:, 1] + 0.5) * strides)[None, :]
    x1, y1, x2, y2 = (gt[:, i : i + 1] for i in range(4))
    in_box = (xc - x1 > 0) & (x2 - xc > 0) & (yc - y1 > 0) & (y2 - yc > 0)
    gcx = 0.5 * (x1 + x2)
    gcy = 0.5 * (y1 + y2)
    r = center_radius * strides[None, :]
    in_center = (
        (xc - (gcx - r) > 0) & ((gcx + r) - xc > 0) & (yc - (gcy - r) > 0) & ((gcy + r) - yc > 0)
    )
    return in_box, in_center


def _check(name, x, shape):
    if tuple(x.shape) != tuple(shape):
        raise ValueError(
            f"adverse_vision.ops.simota.simota_assign: {name} must have shape "
            f"{tuple(shape)}, got {tuple(x.shape)}"
        )


def simota_assign(
    pred_boxes,
    pred_obj_logits,
    pred_cls_logits,
    grid,
    strides,
    gt_boxes,
    gt_classes,
    gt_mask,
    center_radius: float = 2.5,
    topk: int = 10,
) -> Assignment:
    """SimOTA assignment for ONE image (``jax.vmap`` it over a batch).

    Args:
      pred_boxes: (A, 4) decoded predictions, xyxy pixels.
      pred_obj_logits: (A,) objectness logits.
      pred_cls_logits: (A, C) class logits.
      grid: (A, 2) anchor cell coordinates; strides: (A,) anchor strides.
      gt_boxes: (M, 4) xyxy pixels (padded); gt_classes: (M,) int;
      gt_mask: (M,) bool, False for padding (padding never matches).
      center_radius: centre-prior radius in strides.
      topk: number of best IoUs summed for the dynamic k (and the largest k).

    Returns:
      :class:`Assignment`. No gradient flows through it.
    """
    pred_boxes = jax.lax.stop_gradient(jnp.asarray(pred_boxes, jnp.float32))
    obj = jax.lax.stop_gradient(jnp.asarray(pred_obj_logits, jnp.float32))
    cls = jax.lax.stop_gradient(jnp.asarray(pred_cls_logits, jnp.float32))
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    gt_classes = jnp.asarray(gt_classes)
    gt_mask = jnp.asarray(gt_mask).astype(bool)

    if pred_boxes.ndim != 2:
        raise ValueError(
            "adverse_vision.ops.simota.simota_assign: pred_boxes must be (A, 4) for a "
            f"single image (vmap over the batch), got {tuple(pred_boxes.shape)}"
        )
    a = pred_boxes.shape[0]
    if cls.ndim != 2 or cls.shape[0] != a:
        raise ValueError(
            "adverse_vision.ops.simota.simota_assign: pred_cls_logits must be (A, C) "
            f"with A={a}, got {tuple(cls.shape)}"
        )
    num_classes = cls.shape[1]
    m = gt_boxes.shape[0] if gt_boxes.ndim == 2 else -1
    _check("pred_boxes", pred_boxes, (a, 4))
    _check("pred_obj_logits", obj, (a,))
    _check("grid", jnp.asarray(grid), (a, 2))
    _check("strides", jnp.asarray(strides), (a,))
    _check("gt_boxes", gt_boxes, (m, 4))
    _check("gt_classes", gt_classes, (m,))
    _check("gt_mask", gt_mask, (m,))
    if topk < 1:
        raise ValueError(f"adverse_vision.ops.simota.simota_assign: topk must be >= 1, got {topk}")

    if m == 0:
        return Assignment(
            fg_mask=jnp.zeros((a,), bool),
            matched_gt=jnp.zeros((a,), jnp.int32),
            matched_iou=jnp.zeros((a,), jnp.float32),
            num_fg=jnp.zeros((), jnp.int32),
        )

    # 1. geometry and candidates
    in_box, in_center = geometry_relation(grid, strides, gt_boxes, center_radius)
    valid_gt = gt_mask[:, None]
    candidate = jnp.any((in_box | in_center) & valid_gt, axis=0)  # (A,)
    pair_ok = valid_gt & candidate[None, :]  # (M, A)

    # 2. cost
    ious = pairwise_iou(gt_boxes, pred_boxes)  # (M, A)
    iou_cost = -jnp.log(ious + 1e-8)

    log_p = 0.5 * (jax.nn.log_sigmoid(cls) + jax.nn.log_sigmoid(obj)[:, None])  # (A, C)
    p = jnp.exp(log_p)
    pos = -jnp.maximum(log_p, -100.0)  # -log p, clamped as torch BCE
    neg = -jnp.maximum(jnp.log1p(-p), -100.0)  # -log(1 - p)
    neg_sum = jnp.sum(neg, axis=-1)  # (A,)
    cls_idx = jnp.clip(gt_classes.astype(jnp.int32), 0, num_classes - 1)
    pos_g = jnp.take(pos, cls_idx, axis=1).T  # (M, A)
    neg_g = jnp.take(neg, cls_idx, axis=1).T
    cls_cost = neg_sum[None, :] - neg_g + pos_g

    cost = cls_cost + 3.0 * iou_cost + 1e5 * (~(in_box & in_center)).astype(jnp.float32)
    cost = jnp.where(pair_ok, cost, jnp.inf)

    # 3. dynamic k and each GT's k cheapest anchors
    k_max = min(int(topk), a)
    cand_ious = jnp.where(pair_ok, ious, 0.0)
    top_ious, _ = jax.lax.top_k(cand_ious, k_max)
    dynamic_k = jnp.maximum(jnp.floor(jnp.sum(top_ious, axis=-1)).astype(jnp.int32), 1)
    dynamic_k = jnp.where(gt_mask, jnp.minimum(dynamic_k, k_max), 0)

    neg_cost, cheapest = jax.lax.top_k(-cost, k_max)  # ascending cost, stable on ties
    chosen = (jnp.arange(k_max)[None, :] < dynamic_k[:, None]) & jnp.isfinite(neg_cost)
    rows = jnp.broadcast_to(jnp.arange(m)[:, None], cheapest.shape)
    matching = jnp.zeros((m, a), jnp.int32).at[rows, cheapest].max(chosen.astype(jnp.int32))

    # 4. resolve anchors claimed by several GTs
    claims = jnp.sum(matching, axis=0)
    fg_mask = claims > 0
    cheapest_gt = jnp.argmin(cost, axis=0)
    first_gt = jnp.argmax(matching, axis=0)
    matched_gt = jnp.where(claims > 1, cheapest_gt, first_gt)
    matched_gt = jnp.where(fg_mask, matched_gt, 0).astype(jnp.int32)
    matched_iou = jnp.take_along_axis(ious, matched_gt[None, :], axis=0)[0]
    matched_iou = jnp.where(fg_mask, matched_iou, 0.0)
    return Assignment(
        fg_mask=fg_mask,
        matched_gt=matched_gt,
        matched_iou=matched_iou,
        num_fg=jnp.sum(fg_mask).astype(jnp.int32),
    )
