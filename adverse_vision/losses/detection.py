"""YOLOX detection loss (stock YOLOX and the TogetherNet variant).

Both variants assign targets with SimOTA (:mod:`adverse_vision.ops.simota`) on
predictions without gradient, then sum per-anchor terms over the whole batch and
divide by ``max(total number of positives in the batch, 1)``:

* ``variant="yolox"``: ``5 * IoU loss`` on positives (``1 - IoU^2`` or
  ``1 - clip(GIoU, -1, 1)``), BCE-with-logits objectness on every anchor (target:
  positive or not), BCE-with-logits classification on positives (target:
  ``one_hot(class) * IoU`` at assignment time), and optionally an L1 term on the
  raw regression outputs (YOLOX turns it on for the last epochs).
* ``variant="togethernet"``: the same IoU and classification terms, but a focal
  objectness loss on ``sigmoid(obj)``: ``-0.75 (1 - p)^2 log(p + 1e-5)`` for
  positives and ``-0.25 p^2 log(1 - p + 1e-5)`` for negatives. No L1 term unless
  asked for.

Everything is computed in float32.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import optax

from adverse_vision.ops.boxes import decode, giou_aligned, iou_aligned, xyxy_to_cxcywh
from adverse_vision.ops.per_device import batch_local
from adverse_vision.ops.simota import simota_assign

__all__ = ["yolox_loss", "focal_objectness"]

_VARIANTS = ("yolox", "togethernet")
_IOU_TYPES = ("iou", "giou")
REG_WEIGHT = 5.0
# Cap of the raw log-width/height inside the loss: e^10 strides is far beyond any image,
# and below it exp() cannot overflow float32, however wild a prediction is.
MAX_LOG_WH = 10.0


def focal_objectness(obj_logits, targets) -> jnp.ndarray:
    """TogetherNet's focal objectness, elementwise (targets are 0 or 1)."""
    p = jax.nn.sigmoid(jnp.asarray(obj_logits, jnp.float32))
    t = jnp.asarray(targets, jnp.float32)
    pos = jnp.log(p + 1e-5) * jnp.square(1.0 - p) * 0.75 * (t == 1.0)
    neg = jnp.log(1.0 - p + 1e-5) * jnp.square(p) * 0.25 * (t == 0.0)
    return -(pos + neg)


def yolox_loss(
    heads_flat,
    grid,
    strides,
    gt_boxes,
    gt_classes,
    gt_mask,
    num_classes: int,
    variant: str = "yolox",
    use_l1: Union[bool, jnp.ndarray] = False,
    iou_type: str = "iou",
    image_mask: Optional[jnp.ndarray] = None,
    center_radius: float = 2.5,
    topk: int = 10,
) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
    """YOLOX / TogetherNet detection loss for a batch.

    Args:
      heads_flat: (B, A, 5 + C) raw head outputs ``[dx, dy, log w, log h, obj, cls]``
        (see :func:`adverse_vision.ops.boxes.flatten_heads`).
      grid: (A, 2) anchor cell coordinates; strides: (A,) anchor strides.
      gt_boxes: (B, M, 4) xyxy pixels; gt_classes: (B, M) int; gt_mask: (B, M) bool.
      num_classes: C.
      variant: "yolox" (BCE objectness) or "togethernet" (focal objectness).
      use_l1: add the L1 term on raw regression outputs. A Python bool is static;
        an array (0/1 or any weight) multiplies the term, so it can be switched on
        during training without recompiling.
      iou_type: "iou" (1 - IoU^2, the YOLOX default) or "giou".
      image_mask: optional (B,) bool; images with False (e.g. undecodable
        samples) contribute nothing, not even objectness negatives.
      center_radius, topk: SimOTA parameters.

    Returns:
      (total, components) with total a float32 scalar and components
      ``{"iou", "obj", "cls", "l1", "num_fg"}``; ``iou`` already includes the
      weight 5, so ``total = iou + obj + cls + l1``; ``num_fg`` is the total number
      of positives in the batch (float32, before the max with 1).
    """
    if variant not in _VARIANTS:
        raise ValueError(
            f"adverse_vision.losses.detection.yolox_loss: variant must be one of {_VARIANTS}, "
            f"got {variant!r}"
        )
    if iou_type not in _IOU_TYPES:
        raise ValueError(
            f"adverse_vision.losses.detection.yolox_loss: iou_type must be one of {_IOU_TYPES}, "
            f"got {iou_type!r}"
        )
    preds = jnp.asarray(heads_flat, jnp.float32)
    if preds.ndim != 3 or preds.shape[-1] != 5 + int(num_classes):
        raise ValueError(
            "adverse_vision.losses.detection.yolox_loss: heads_flat must be "
            f"(B, A, 5 + num_classes) = (B, A, {5 + int(num_classes)}), got {tuple(preds.shape)}"
        )
    b, a, _ = preds.shape
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    gt_classes = jnp.asarray(gt_classes).astype(jnp.int32)
    gt_mask = jnp.asarray(gt_mask).astype(bool)
    if gt_boxes.ndim != 3 or gt_boxes.shape[0] != b or gt_boxes.shape[-1] != 4:
        raise ValueError(
            "adverse_vision.losses.detection.yolox_loss: gt_boxes must be (B, M, 4) with "
            f"B={b}, got {tuple(gt_boxes.shape)}"
        )
    m = gt_boxes.shape[1]
    if gt_classes.shape != (b, m) or gt_mask.shape != (b, m):
        raise ValueError(
            "adverse_vision.losses.detection.yolox_loss: gt_classes and gt_mask must be "
            f"(B, M) = {(b, m)}, got {tuple(gt_classes.shape)} and {tuple(gt_mask.shape)}"
        )
    if image_mask is None:
        img_w = jnp.ones((b,), jnp.float32)
    else:
        image_mask = jnp.asarray(image_mask).astype(bool)
        if image_mask.shape != (b,):
            raise ValueError(
                "adverse_vision.losses.detection.yolox_loss: image_mask must be (B,) = "
                f"({b},), got {tuple(image_mask.shape)}"
            )
        gt_mask = gt_mask & image_mask[:, None]
        img_w = image_mask.astype(jnp.float32)

    grid = jnp.asarray(grid, jnp.float32)
    strides = jnp.asarray(strides, jnp.float32)
    capped = preds.at[..., 2:4].set(jnp.minimum(preds[..., 2:4], MAX_LOG_WH))
    boxes, obj, cls = decode(capped, grid, strides)  # (B,A,4), (B,A), (B,A,C)

    # Each device assigns its own images (SimOTA's top_k on the batch-sharded cost
    # would otherwise gather every image's cost matrix to every device).
    assign = batch_local(jax.vmap(
        lambda pb, po, pc, gb, gc, gm: simota_assign(
            pb, po, pc, grid, strides, gb, gc, gm, center_radius=center_radius, topk=topk
        )
    ))(
        jax.lax.stop_gradient(boxes),
        jax.lax.stop_gradient(obj),
        jax.lax.stop_gradient(cls),
        gt_boxes,
        gt_classes,
        gt_mask,
    )
    fg = assign.fg_mask  # (B, A)
    fg_f = fg.astype(jnp.float32)
    num_fg = jnp.sum(assign.num_fg).astype(jnp.float32)
    norm = jnp.maximum(num_fg, 1.0)

    # matched targets; non-positive anchors get a harmless unit box so that no
    # inf/nan can leak into the gradient through the masked branch
    tgt_boxes = jnp.take_along_axis(gt_boxes, assign.matched_gt[..., None], axis=1)
    unit = jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32)
    tgt_boxes = jnp.where(fg[..., None], tgt_boxes, unit)
    tgt_cls = jnp.take_along_axis(gt_classes, assign.matched_gt, axis=1)

    # regression, on the positives' boxes only: a negative anchor's raw output is
    # replaced before decoding (masking its IoU afterwards would still pass 0 * inf =
    # NaN back through exp() when its width overflows)
    fg_boxes = decode(jnp.where(fg[..., None], capped, 0.0), grid, strides)[0]
    if iou_type == "iou":
        per_iou = 1.0 - jnp.square(iou_aligned(fg_boxes, tgt_boxes))
    else:
        per_iou = 1.0 - jnp.clip(giou_aligned(fg_boxes, tgt_boxes), -1.0, 1.0)
    loss_iou = jnp.sum(per_iou * fg_f)

    # objectness over all anchors of the (valid) images
    if variant == "yolox":
        per_obj = optax.sigmoid_binary_cross_entropy(obj, fg_f)
    else:
        per_obj = focal_objectness(obj, fg_f)
    loss_obj = jnp.sum(per_obj * img_w[:, None])

    # classification on positives, soft target one_hot * IoU
    cls_target = jax.nn.one_hot(tgt_cls, num_classes, dtype=jnp.float32) * assign.matched_iou[..., None]
    per_cls = jnp.sum(optax.sigmoid_binary_cross_entropy(cls, jax.lax.stop_gradient(cls_target)), -1)
    loss_cls = jnp.sum(per_cls * fg_f)

    # L1 on raw regression outputs
    if isinstance(use_l1, bool) and not use_l1:
        loss_l1 = jnp.zeros((), jnp.float32)
    else:
        t = xyxy_to_cxcywh(tgt_boxes)
        s = strides[None, :]
        l1_target = jnp.stack(
            [
                t[..., 0] / s - grid[None, :, 0],
                t[..., 1] / s - grid[None, :, 1],
                jnp.log(t[..., 2] / s + 1e-8),
                jnp.log(t[..., 3] / s + 1e-8),
            ],
            axis=-1,
        )
        per_l1 = jnp.sum(jnp.abs(preds[..., :4] - jax.lax.stop_gradient(l1_target)), -1)
        loss_l1 = jnp.sum(per_l1 * fg_f)
        if not isinstance(use_l1, bool):
            loss_l1 = loss_l1 * jnp.asarray(use_l1, jnp.float32)

    comps = {
        "iou": REG_WEIGHT * loss_iou / norm,
        "obj": loss_obj / norm,
        "cls": loss_cls / norm,
        "l1": loss_l1 / norm,
        "num_fg": num_fg,
    }
    total = comps["iou"] + comps["obj"] + comps["cls"] + comps["l1"]
    return total, comps
