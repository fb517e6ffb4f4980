"""Global-contrast visual saliency and the saliency-weighted fusion target.

The saliency of a pixel is its total luminance contrast with the rest of the
image (the "visual saliency map" Ma et al., Infrared Physics & Technology 2017,
use to weight infrared against visible content)::

    V(p) = sum over every pixel q of |I_p - I_q|

Pixels with the same grey level get the same value, so ``V`` is a 256-entry
table indexed by the level: with ``h_j`` the number of pixels at level ``j``,
``V(l) = sum_j h_j |l - j|``. Building the table costs O(256^2) and looking it
up O(HW), instead of O((HW)^2) for the direct sum.

Conventions:

* Input: one grayscale image (H, W), uint8 or float on the 0-255 scale. Floats
  are rounded to the nearest grey level (``np.rint``); values outside [0, 255]
  after rounding raise ValueError. A [0, 1] image looks like a very dark 0-255
  one and is not detected: scale it first.
* Normalisation (``normalize``): ``"minmax"`` (default) maps the smallest value
  of ``V`` in the image to 0 and the largest to 1, as Ma et al.'s reference
  implementation does (MATLAB ``mat2gray``); ``"max"`` divides by the largest
  value only, as several learning-based fusion codes do. When every pixel has the
  same ``V`` (a constant image, or two levels with equal counts under
  ``"minmax"``) the map is all zeros; nothing is divided by zero.
* Output: float32 (H, W) in [0, 1].

:func:`fusion_weight` turns the two maps into the per-pixel infrared weight
``s = S_ir / (S_ir + S_vis)`` (0.5 where both are 0), and :func:`fusion_target`
blends ``s * ir + (1 - s) * vis_y``, the target a fusion network's output is
compared with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adverse_vision.ops.color import LUMA_WEIGHTS

__all__ = ["LUMA_WEIGHTS", "fusion_target", "fusion_weight", "luma", "saliency_map"]


_NORMALIZE = ("minmax", "max")
_LEVELS = np.arange(256, dtype=np.float64)
# |l - j| for every pair of grey levels.
_ABS_DIFF = np.abs(_LEVELS[:, None] - _LEVELS[None, :])


def _grey_levels(image: Any, name: str) -> np.ndarray:
    """The image as int64 grey levels 0..255, checked."""
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(
            f"{name}: expected a non-empty grayscale image (H, W), got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return arr.astype(np.int64)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name}: expected uint8 or a real 0-255 array, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: the image has non-finite values")
    levels = np.rint(arr.astype(np.float64))
    lo, hi = float(levels.min()), float(levels.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"{name}: values must lie in [0, 255], got [{arr.min()}, {arr.max()}]")
    return levels.astype(np.int64)


def saliency_map(image: Any, normalize: str = "minmax") -> np.ndarray:
    """Global-contrast saliency of a grayscale image.

    Parameters
    ----------
    image : array (H, W)
        uint8, or a real array on the 0-255 scale (rounded to grey levels).
    normalize : {"minmax", "max"}
        How the contrast sums are brought to [0, 1] (see the module docstring).

    Returns
    -------
    np.ndarray
        float32 (H, W) in [0, 1]; all zeros when every pixel is equally salient.
    """
    if normalize not in _NORMALIZE:
        raise ValueError(f"saliency_map: normalize must be one of {_NORMALIZE}, got {normalize!r}")
    levels = _grey_levels(image, "saliency_map")
    hist = np.bincount(levels.ravel(), minlength=256).astype(np.float64)
    table = _ABS_DIFF @ hist  # table[l] = sum_j hist[j] * |l - j|
    present = table[hist > 0]
    hi = float(present.max())
    lo = float(present.min()) if normalize == "minmax" else 0.0
    if hi - lo <= 0.0:
        return np.zeros(levels.shape, np.float32)
    table = np.clip((table - lo) / (hi - lo), 0.0, 1.0)
    return table[levels].astype(np.float32)


def fusion_weight(ir: Any, vis_y: Any, normalize: str = "minmax") -> np.ndarray:
    """Per-pixel infrared weight ``s = S_ir / (S_ir + S_vis)``.

    Parameters
    ----------
    ir, vis_y : array (H, W)
        The infrared image and the visible luminance, uint8 or 0-255 reals.
    normalize : {"minmax", "max"}
        Passed to :func:`saliency_map` for both images.

    Returns
    -------
    np.ndarray
        float32 (H, W) in [0, 1]; 0.5 where both saliencies are 0.
    """
    ir_shape, vis_shape = np.shape(ir), np.shape(vis_y)
    if ir_shape != vis_shape:
        raise ValueError(
            f"fusion_weight: ir {ir_shape} and vis_y {vis_shape} must have the same shape"
        )
    s_ir = saliency_map(ir, normalize).astype(np.float64)
    s_vis = saliency_map(vis_y, normalize).astype(np.float64)
    total = s_ir + s_vis
    out = np.full(total.shape, 0.5)
    np.divide(s_ir, total, out=out, where=total > 0)
    return out.astype(np.float32)


def fusion_target(ir: Any, vis_y: Any, s: Any) -> Any:
    """The saliency-weighted blend ``s * ir + (1 - s) * vis_y``.

    Works on any float arrays that support arithmetic and broadcast together
    (numpy or JAX, single images or batches): nothing is converted, so the
    result has the arrays' type and is differentiable under JAX. Use the same
    scale for ``ir`` and ``vis_y`` (both 0-255 or both [0, 1]); ``s`` is the
    weight of :func:`fusion_weight`.
    """
    return s * ir + (1 - s) * vis_y


def luma(rgb: Any) -> np.ndarray:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` of an RGB image (..., 3), as float32.

    The scale is the input's (0-255 for uint8 images).
    """
    arr = np.asarray(rgb)
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"luma: expected an RGB array (..., 3), got shape {arr.shape}")
    return (arr.astype(np.float64) @ np.asarray(LUMA_WEIGHTS, np.float64)).astype(np.float32)
