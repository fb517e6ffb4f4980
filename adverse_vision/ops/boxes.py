"""Box utilities for dense (anchor-free, YOLOX-style) detection heads.

Conventions
-----------
* Boxes are ``xyxy`` in pixels unless a name says otherwise (``cxcywh``).
* All box math runs in float32: inputs of any float dtype are cast first.
* Head maps are NHWC, channels ``[reg(4), obj(1), cls(C)]`` with ``reg`` the raw
  ``(dx, dy, log w, log h)`` regression. Anchors are one per feature-map cell,
  ordered level by level (stride 8 first), each level flattened row-major
  (``y`` outer, ``x`` inner), which is the order of :func:`flatten_heads`.

Every function is a pure ``jnp`` function with static shapes and can be jitted.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np

__all__ = [
    "cxcywh_to_xyxy",
    "xyxy_to_cxcywh",
    "box_area",
    "iou",
    "iou_aligned",
    "giou_aligned",
    "anchor_grid",
    "flatten_heads",
    "decode",
]

_EPS = 1e-9


def _f32(x) -> jnp.ndarray:
    return jnp.asarray(x, dtype=jnp.float32)


def _check_last_dim(x, name: str, size: int = 4) -> None:
    if x.ndim < 1 or x.shape[-1] != size:
        raise ValueError(
            f"adverse_vision.ops.boxes: {name} must have a last axis of size {size}, "
            f"got shape {tuple(x.shape)}"
        )


def cxcywh_to_xyxy(boxes) -> jnp.ndarray:
    """(..., 4) centre/size boxes -> (..., 4) corner boxes, float32."""
    boxes = _f32(boxes)
    _check_last_dim(boxes, "boxes")
    cx, cy, w, h = jnp.split(boxes, 4, axis=-1)
    return jnp.concatenate([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def xyxy_to_cxcywh(boxes) -> jnp.ndarray:
    """(..., 4) corner boxes -> (..., 4) centre/size boxes, float32."""
    boxes = _f32(boxes)
    _check_last_dim(boxes, "boxes")
    x1, y1, x2, y2 = jnp.split(boxes, 4, axis=-1)
    return jnp.concatenate([0.5 * (x1 + x2), 0.5 * (y1 + y2), x2 - x1, y2 - y1], axis=-1)


def box_area(boxes) -> jnp.ndarray:
    """(..., 4) xyxy -> (...) area; degenerate (inverted) boxes have area 0."""
    boxes = _f32(boxes)
    _check_last_dim(boxes, "boxes")
    w = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    h = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def _inter_union(a, b):
    """Intersection and union of broadcast-compatible (..., 4) xyxy boxes."""
    lt = jnp.maximum(a[..., :2], b[..., :2])
    rb = jnp.minimum(a[..., 2:], b[..., 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    return inter, union


def iou(a, b) -> jnp.ndarray:
    """Pairwise IoU: (..., N, 4) x (..., M, 4) -> (..., N, M).

    Leading axes broadcast. A pair whose union is empty gets IoU 0.
    """
    a = _f32(a)
    b = _f32(b)
    _check_last_dim(a, "a")
    _check_last_dim(b, "b")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(
            "adverse_vision.ops.boxes.iou: inputs must be (..., N, 4) and (..., M, 4), "
            f"got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    inter, union = _inter_union(a[..., :, None, :], b[..., None, :, :])
    return inter / jnp.maximum(union, _EPS)


def iou_aligned(a, b) -> jnp.ndarray:
    """Elementwise IoU of matching boxes: (..., 4) x (..., 4) -> (...)."""
    a = _f32(a)
    b = _f32(b)
    _check_last_dim(a, "a")
    _check_last_dim(b, "b")
    inter, union = _inter_union(a, b)
    return inter / jnp.maximum(union, _EPS)


def giou_aligned(a, b) -> jnp.ndarray:
    """Elementwise generalised IoU: IoU - (|C| - |A u B|) / |C|, C the enclosing box."""
    a = _f32(a)
    b = _f32(b)
    _check_last_dim(a, "a")
    _check_last_dim(b, "b")
    inter, union = _inter_union(a, b)
    iou_ = inter / jnp.maximum(union, _EPS)
    lt = jnp.minimum(a[..., :2], b[..., :2])
    rb = jnp.maximum(a[..., 2:], b[..., 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    enclose = wh[..., 0] * wh[..., 1]
    return iou_ - (enclose - union) / jnp.maximum(enclose, _EPS)


def _image_hw(image_size) -> Tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(
            "adverse_vision.ops.boxes.anchor_grid: image_size must be an int or an "
            f"(H, W) pair of ints, got {image_size!r}"
        ) from None
    return h, w


def anchor_grid(
    image_size: Union[int, Sequence[int]], strides: Sequence[int] = (8, 16, 32)
) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Cell coordinates and strides of every anchor of a multi-level head.

    Args:
      image_size: S or (H, W) of the network input; each must be divisible by
        every stride.
      strides: the level strides, in head order.

    Returns:
      grid: float32 (A, 2) integer cell coordinates (x, y) of each anchor.
      anchor_strides: float32 (A,) stride of each anchor.
      A = sum over levels of (H / s) * (W / s); levels in the given order, each
      level flattened row-major, matching :func:`flatten_heads`.
    """
    h, w = _image_hw(image_size)
    grids, strs = [], []
    for s in strides:
        s = int(s)
        if s <= 0 or h % s or w % s:
            raise ValueError(
                f"adverse_vision.ops.boxes.anchor_grid: image size {(h, w)} is not "
                f"divisible by stride {s}"
            )
        hs, ws = h // s, w // s
        yv, xv = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
        grids.append(np.stack([xv.reshape(-1), yv.reshape(-1)], axis=-1))
        strs.append(np.full((hs * ws,), s))
    grid = np.concatenate(grids, axis=0).astype(np.float32)
    anchor_strides = np.concatenate(strs, axis=0).astype(np.float32)
    return jnp.asarray(grid), jnp.asarray(anchor_strides)


def flatten_heads(heads: Sequence[jnp.ndarray]) -> jnp.ndarray:
    """List of NHWC head maps (B, H_l, W_l, 5 + C) -> (B, A, 5 + C) (dtype kept)."""
    if len(heads) == 0:
        raise ValueError("adverse_vision.ops.boxes.flatten_heads: heads is empty")
    b, ch = heads[0].shape[0], heads[0].shape[-1]
    flat = []
    for i, h in enumerate(heads):
        if h.ndim != 4 or h.shape[0] != b or h.shape[-1] != ch:
            raise ValueError(
                "adverse_vision.ops.boxes.flatten_heads: every head map must be "
                f"(B, H, W, {ch}) with B={b}; head {i} has shape {tuple(h.shape)}"
            )
        flat.append(jnp.reshape(h, (b, h.shape[1] * h.shape[2], ch)))
    return jnp.concatenate(flat, axis=1)


def decode(flat, grid, strides):
    """Raw flattened head output -> (boxes xyxy pixels, obj logits, cls logits).

    Args:
      flat: (..., A, 5 + C) raw outputs ``[dx, dy, log w, log h, obj, cls...]``.
      grid: (A, 2) cell coordinates from :func:`anchor_grid`.
      strides: (A,) anchor strides.

    Returns:
      boxes (..., A, 4) float32 xyxy with cx = (dx + gx) * s, cy = (dy + gy) * s,
      w = exp(log w) * s, h = exp(log h) * s; obj logits (..., A) float32;
      cls logits (..., A, C) float32.
    """
    flat = _f32(flat)
    grid = _f32(grid)
    strides = _f32(strides)
    if flat.ndim < 2 or flat.shape[-1] < 5:
        raise ValueError(
            "adverse_vision.ops.boxes.decode: flat must be (..., A, 5 + C), got "
            f"shape {tuple(flat.shape)}"
        )
    a = flat.shape[-2]
    if grid.shape != (a, 2) or strides.shape != (a,):
        raise ValueError(
            "adverse_vision.ops.boxes.decode: grid must be (A, 2) and strides (A,) "
            f"with A={a}; got {tuple(grid.shape)} and {tuple(strides.shape)}"
        )
    s = strides[:, None]
    cxy = (flat[..., 0:2] + grid) * s
    wh = jnp.exp(flat[..., 2:4]) * s
    boxes = jnp.concatenate([cxy - 0.5 * wh, cxy + 0.5 * wh], axis=-1)
    return boxes, flat[..., 4], flat[..., 5:]
