"""Scene depth from a rectified stereo pair's disparity, for fogging real photographs.

Depth is inversely proportional to disparity: ``Z = f * B / (d + doffs)`` with the
focal length ``f`` and the disparity ``d`` in pixels, the baseline ``B`` and
``doffs`` the horizontal offset of the two principal points (the Middlebury 2014
convention; 0 for a pair rectified to one principal point).

Pixels without a usable disparity (non-finite, or ``d + doffs <= 0``) are mostly
occlusions, the background beside a foreground edge, so each gets the FARTHER of the
depths of the nearest valid pixels to its left and right on its row (the one valid
neighbour when it has one side only; the farthest depth of the image on a row with
none). :func:`normalized_depth` divides by the largest depth, giving values in
(0, 1] with 1 the farthest pixel, ready for the scattering model
(:func:`adverse_vision.degrade.haze` takes any positive depth).

:func:`motorcycle_depth` applies this to scikit-image's ``stereo_motorcycle`` pair
(Middlebury 2014 "Motorcycle", downsampled by 4; scikit-image is needed for it only),
whose disparity map marks unknown pixels with ``inf``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MOTORCYCLE_CALIBRATION", "disparity_to_depth", "motorcycle_depth",
           "normalized_depth"]

#: Calibration of ``skimage.data.stereo_motorcycle`` (its docstring): focal length
#: and principal-point offset in pixels, baseline in millimetres.
MOTORCYCLE_CALIBRATION = {"focal": 994.978, "baseline": 193.001, "doffs": 31.086}


def _fill_rows(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each invalid pixel gets the farther of its nearest valid row neighbours."""
    h, w = depth.shape
    cols = np.broadcast_to(np.arange(w), (h, w))
    left = np.maximum.accumulate(np.where(valid, cols, -1), axis=1)
    right = np.minimum.accumulate(np.where(valid, cols, w)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(h)[:, None]
    from_left = np.where(left >= 0, depth[rows, np.clip(left, 0, w - 1)], -np.inf)
    from_right = np.where(right < w, depth[rows, np.clip(right, 0, w - 1)], -np.inf)
    fill = np.maximum(from_left, from_right)
    fill = np.where(np.isfinite(fill), fill, depth[valid].max())
    return np.where(valid, depth, fill)


def disparity_to_depth(disparity: Any, focal: float, baseline: float,
                       doffs: float = 0.0) -> np.ndarray:
    """Depth (float64 (H, W), the unit of ``baseline``) of a disparity map, the
    pixels without a usable disparity filled (see the module docstring).

    Raises:
      ValueError: the map is not 2-D, the calibration is not positive, or no pixel
        has a usable disparity.
    """
    d = np.asarray(disparity, np.float64)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"disparity_to_depth: expected a disparity map (H, W), got shape "
                         f"{np.shape(disparity)}")
    if not (float(focal) > 0 and float(baseline) > 0 and np.isfinite(float(doffs))):
        raise ValueError(f"disparity_to_depth: focal and baseline must be positive and doffs "
                         f"finite, got focal={focal!r}, baseline={baseline!r}, doffs={doffs!r}")
    shifted = d + float(doffs)
    valid = np.isfinite(shifted) & (shifted > 0)
    if not valid.any():
        raise ValueError("disparity_to_depth: no pixel has a usable (finite, positive) disparity")
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(valid, float(focal) * float(baseline) / np.where(valid, shifted, 1.0),
                         0.0)
    return _fill_rows(depth, valid)


def normalized_depth(disparity: Any, focal: float = 1.0, baseline: float = 1.0,
                     doffs: float = 0.0) -> np.ndarray:
    """:func:`disparity_to_depth` divided by its maximum: float32 (H, W) in (0, 1],
    1 at the farthest pixel (the calibration's scale cancels; ``doffs`` does not)."""
    depth = disparity_to_depth(disparity, focal, baseline, doffs)
    return (depth / depth.max()).astype(np.float32)


def motorcycle_depth(normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's real stereo photograph and its depth: (left image uint8
    (500, 741, 3), depth (500, 741)): normalised, float32 in (0, 1], or with
    ``normalize=False`` in millimetres (float64)."""
    try:
        from skimage import data as skdata  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError("motorcycle_depth needs scikit-image (pip install scikit-image)") \
            from e
    left, _, disparity = skdata.stereo_motorcycle()
    depth = (normalized_depth if normalize else disparity_to_depth)(disparity,
                                                                   **MOTORCYCLE_CALIBRATION)
    return np.asarray(left, np.uint8), depth
