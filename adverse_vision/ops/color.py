"""Colour conversions of infrared-visible fusion: RGB <-> YCrCb and the fused colour image.

Fusion networks that fuse luminance only (BDLF, TarDAL, SeAFusion) use the analogue
YCrCb of ITU-R BT.601 on [0, 1] images, with the chroma offset by 0.5:

    Y  = 0.299 R + 0.587 G + 0.114 B
    Cr = 0.713 (R - Y) + 0.5
    Cb = 0.564 (B - Y) + 0.5

and back R = Y + 1.403 (Cr - 0.5), G = Y - 0.714 (Cr - 0.5) - 0.344 (Cb - 0.5),
B = Y + 1.773 (Cb - 0.5). (The two sets of rounded constants are those of the
BDLF code; they are inverse to each other to about 1e-3, not exactly.)

:func:`fused_color` turns a fused luminance into the colour image a task network
sees: the fused Y with the visible image's Cr and Cb, converted to RGB, clipped to
[0, 1] and min-max normalised. BDLF normalises by the minimum and maximum of the
whole batch tensor, so one image's range depends on the others in its batch;
``minmax="image"`` (the default here) normalises each image on its own,
``minmax="batch"`` reproduces the official behaviour, ``minmax="none"`` only clips.

All functions take channels-last arrays (..., H, W, C) and work in jax (jittable)
or on numpy inputs alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["LUMA_WEIGHTS", "MINMAX_MODES", "fused_color", "luminance", "rgb_to_ycrcb",
           "ycrcb_to_rgb"]

# ITU-R BT.601 luma: Y = 0.299 R + 0.587 G + 0.114 B (also used on the host, in numpy).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
MINMAX_MODES = ("image", "batch", "none")
_EPS = 1e-8


def luminance(rgb: jax.Array) -> jax.Array:
    """Y of RGB images (..., 3) -> (..., 1)."""
    rgb = jnp.asarray(rgb)
    wr, wg, wb = LUMA_WEIGHTS
    return wr * rgb[..., 0:1] + wg * rgb[..., 1:2] + wb * rgb[..., 2:3]


def rgb_to_ycrcb(rgb: jax.Array) -> jax.Array:
    """RGB (..., 3) in [0, 1] -> YCrCb (..., 3), chroma centred on 0.5."""
    rgb = jnp.asarray(rgb)
    y = luminance(rgb)
    cr = (rgb[..., 0:1] - y) * 0.713 + 0.5
    cb = (rgb[..., 2:3] - y) * 0.564 + 0.5
    return jnp.concatenate([y, cr, cb], axis=-1)


def ycrcb_to_rgb(ycrcb: jax.Array) -> jax.Array:
    """YCrCb (..., 3) -> RGB (..., 3), unclipped."""
    ycrcb = jnp.asarray(ycrcb)
    y, cr, cb = ycrcb[..., 0:1], ycrcb[..., 1:2] - 0.5, ycrcb[..., 2:3] - 0.5
    r = y + 1.403 * cr
    g = y - 0.714 * cr - 0.344 * cb
    b = y + 1.773 * cb
    return jnp.concatenate([r, g, b], axis=-1)


def fused_color(fused_y: jax.Array, vis_rgb: jax.Array, minmax: str = "image") -> jax.Array:
    """The colour image of a fused luminance.

    Args:
      fused_y: (N, H, W, 1) fused Y.
      vis_rgb: (N, H, W, 3) visible RGB in [0, 1] (its Cr, Cb are kept).
      minmax: "image", "batch" or "none" (see the module docstring).

    Returns:
      (N, H, W, 3) RGB in [0, 1].
    """
    if minmax not in MINMAX_MODES:
        raise ValueError(f"fused_color: minmax is {minmax!r}; choose one of {MINMAX_MODES}")
    chroma = rgb_to_ycrcb(vis_rgb)[..., 1:]
    rgb = jnp.clip(ycrcb_to_rgb(jnp.concatenate([fused_y, chroma], axis=-1)), 0.0, 1.0)
    if minmax == "none":
        return rgb
    axes = tuple(range(1, rgb.ndim)) if minmax == "image" else tuple(range(rgb.ndim))
    lo = jnp.min(rgb, axis=axes, keepdims=True)
    hi = jnp.max(rgb, axis=axes, keepdims=True)
    return (rgb - lo) / jnp.maximum(hi - lo, _EPS)
