"""Full-reference image quality: PSNR and SSIM, in numpy.

Both follow scikit-image (``skimage.metrics.peak_signal_noise_ratio`` and
``structural_similarity`` with its defaults) and are tested against it:

* :func:`psnr`: ``10 log10(data_range^2 / MSE)``, the MSE over every pixel and
  channel; identical images give ``inf``. ``border`` first crops that many pixels
  from each side of H and W (the usual "3-px border excluded" of denoising papers).
* :func:`ssim`: Wang et al.'s SSIM with a 7x7 uniform window, ``K1 = 0.01``,
  ``K2 = 0.03``, the sample covariance (``N / (N - 1)``), the window sums taken over
  the image mirrored at its edges (``scipy.ndimage`` "reflect", i.e. the edge pixel
  repeated), the SSIM map cropped by the window radius (3 px) before it is
  averaged, and colour images scored per channel then averaged over the channels
  (``channel_axis=-1``).

Shapes: one image ``(H, W)`` (grey) or ``(H, W, C)`` gives a float; a batch
``(N, H, W, C)`` gives an ``(N,)`` float64 array, one value per image. Every
computation is in float64, whatever the input dtype (scikit-image keeps float32
inputs in float32; the two agree to about 1e-6 on such inputs). ``data_range`` is
always explicit: 1 for images in [0, 1], 255 for uint8 values.
"""

from __future__ import annotations

from typing import Union

import numpy as np

__all__ = ["psnr", "ssim", "SSIM_WINDOW", "SSIM_K1", "SSIM_K2"]

SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03

Score = Union[float, np.ndarray]


def _batched(a, b, name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Both images as float64 (N, H, W, C) and whether the input was a batch."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{name}: the two images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim == 2:
        a, b, batch = a[None, ..., None], b[None, ..., None], False
    elif a.ndim == 3:
        a, b, batch = a[None], b[None], False
    elif a.ndim == 4:
        batch = True
    else:
        raise ValueError(f"{name}: expected an image (H, W) or (H, W, C) or a batch (N, H, W, C), "
                         f"got shape {a.shape}")
    for x in (a, b):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) \
                or np.issubdtype(x.dtype, np.complexfloating):
            raise ValueError(f"{name}: expected real-valued images, got dtype {x.dtype}")
    return a.astype(np.float64), b.astype(np.float64), batch


def _check_range(data_range, name: str) -> float:
    value = float(data_range)
    if not value > 0 or not np.isfinite(value):
        raise ValueError(f"{name}: data_range must be a positive number, got {data_range!r}")
    return value


def _result(values: np.ndarray, batch: bool) -> Score:
    return values if batch else float(values[0])


def psnr(a, b, data_range: float, border: int = 0) -> Score:
    """Peak signal-to-noise ratio in dB of ``b`` against the reference ``a``.

    Args:
      a, b: images of the same shape, (H, W), (H, W, C) or a batch (N, H, W, C).
      data_range: the value range of the images (1 for [0, 1], 255 for uint8 values).
      border: pixels cropped from each side of H and W before scoring.

    Returns a float (one image) or an (N,) array (a batch); ``inf`` where the
    images are equal.
    """
    a, b, batch = _batched(a, b, "psnr")
    peak = _check_range(data_range, "psnr")
    border = int(border)
    if border < 0:
        raise ValueError(f"psnr: border must be >= 0, got {border}")
    if border:
        h, w = a.shape[1:3]
        if 2 * border >= min(h, w):
            raise ValueError(f"psnr: border {border} leaves nothing of a {h}x{w} image")
        a = a[:, border:h - border, border:w - border]
        b = b[:, border:h - border, border:w - border]
    mse = np.mean(np.square(a - b), axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(peak * peak / mse)
    return _result(values, batch)


def _box_mean(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Mean over a centred window of ``size`` along ``axis`` (odd size), the input
    extended by mirroring with the edge sample repeated (``ndimage`` "reflect")."""
    r = size // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    padded = np.pad(x, pad, mode="symmetric")
    csum = np.cumsum(padded, axis=axis)
    zero_shape = list(csum.shape)
    zero_shape[axis] = 1
    csum = np.concatenate([np.zeros(zero_shape), csum], axis=axis)
    n = x.shape[axis]
    hi = np.take(csum, np.arange(size, size + n), axis=axis)
    lo = np.take(csum, np.arange(0, n), axis=axis)
    return (hi - lo) / size


def _uniform_filter(x: np.ndarray, size: int) -> np.ndarray:
    """Separable size x size mean over the H and W axes of (N, H, W, C)."""
    return _box_mean(_box_mean(x, size, 1), size, 2)


def ssim(a, b, data_range: float) -> Score:
    """Mean structural similarity of ``a`` and ``b`` (scikit-image's defaults).

    Args:
      a, b: images of the same shape, (H, W), (H, W, C) or a batch (N, H, W, C),
        at least 7 x 7 pixels.
      data_range: the value range of the images (1 for [0, 1], 255 for uint8 values).

    Returns a float (one image) or an (N,) array (a batch), each the mean over the
    channels of the per-channel mean SSIM.
    """
    a, b, batch = _batched(a, b, "ssim")
    peak = _check_range(data_range, "ssim")
    win = SSIM_WINDOW
    h, w = a.shape[1:3]
    if min(h, w) < win:
        raise ValueError(f"ssim: images must be at least {win}x{win} pixels, got {h}x{w}")
    n = win * win
    cov_norm = n / (n - 1.0)
    ux, uy = _uniform_filter(a, win), _uniform_filter(b, win)
    uxx, uyy = _uniform_filter(a * a, win), _uniform_filter(b * b, win)
    uxy = _uniform_filter(a * b, win)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (SSIM_K1 * peak) ** 2
    c2 = (SSIM_K2 * peak) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    r = (win - 1) // 2
    s = s[:, r:h - r, r:w - r]
    per_channel = s.mean(axis=(1, 2))  # (N, C)
    return _result(per_channel.mean(axis=1), batch)
