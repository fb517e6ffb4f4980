"""Infrared-visible image fusion metrics on grayscale images (0-255 scale), in numpy.

:func:`fusion_metrics` scores a fused image against its infrared (``ir``) and
visible (``vis``) sources and returns the nine figures of :data:`FUSION_METRICS`,
in that order; :class:`FusionMeter` averages them over the images of an
evaluation. Each figure is also available on its own.

Default convention: the widely reused Python evaluator ``utils/Evaluator.py`` of
the MMIF-CDDFuse repository, reproduced number for number, quirks included (every
computation here is in float64; the evaluator computes in the dtype it is given,
and on the float32 images its test script reads the two differ by about 1e-6
relative):

* ``EN``: Shannon entropy in bits of the histogram of the rounded grey levels
  (``np.rint``, halves to even) of the fused image.
* ``SD``: population standard deviation (``ddof=0``) of the fused image.
* ``SF``: ``sqrt(mean(dx^2) + mean(dy^2))`` of the horizontal and vertical
  first differences of the fused image.
* ``AG``: ``gx``, ``gy`` central differences inside the image and one-sided ones
  on its border (``np.gradient``), then the sum of ``sqrt((gx^2 + gy^2) / 2)``
  divided by ``H * W`` (``ag_norm="cddfuse"``, the mean) or by
  ``(H - 1) * (W - 1)`` (``ag_norm="vifb"``, the MATLAB ``metricsAvg_gradient.m``
  of the VIFB toolbox; the gradients are the same, so ``vifb = cddfuse * H W /
  ((H - 1)(W - 1))``, about 1.8 % larger on a 96 x 128 image).
* ``MI``: ``MI(fused, ir) + MI(fused, vis)``, each the mutual information of the
  two images read as label arrays (every distinct value is its own label, no
  binning; scikit-learn's ``mutual_info_score``), in nats; ``mi_base=2`` gives
  bits (nats / ln 2).
* ``SCD``: sum of the correlations of differences,
  ``corr(ir, fused - vis) + corr(vis, fused - ir)`` (Pearson correlations).
* ``VIF``: pixel-domain visual information fidelity (Sheikh and Bovik) of the
  fused image against each source, summed over the two sources. Four scales with
  Gaussian windows of 17, 9, 5, 3 pixels (sigma = size / 5) and "valid"
  filtering; each coarser scale is the previous one filtered with its own window
  and decimated by 2; noise variance 2. A flat source (no variance at any scale)
  scores 1.
* ``Qabf``: Xydeas-Petrovic edge preservation from 3x3 Sobel gradients (zero
  padding), with the sigmoid constants of :data:`QABF_CONSTANTS` and the source
  gradient strengths as weights. Two quirks of the evaluator are kept: the edge
  angle is ``arctan(gy / gx)`` (``pi / 2`` where ``gx == 0``), folded to
  (-pi/2, pi/2], and where a source and the fused image have *equal* gradient
  strength ``g`` the strength ratio is taken as ``g`` itself rather than 1.
* ``SSIM``: ``SSIM(fused, ir) + SSIM(fused, vis)`` with the project's
  scikit-image-compatible :func:`adverse_vision.metrics.image.ssim` (7x7 uniform
  window) and ``data_range=2.0``, the float default of the scikit-image releases
  that evaluator was written for (so the constants C1, C2 are tiny on 0-255
  data). ``ssim_data_range=255.0`` gives the textbook setting; ``ssim_reduce="mean"``
  averages over the two sources instead of summing.

Inputs: 2-D arrays of the same shape, or ``(H, W, 1)``; any real dtype (uint8 or
float), finite, converted to float64. Grey values are meant to be on the 0-255
scale but are not clipped: values outside [0, 255] (an unclipped network output)
are scored as they are. EN then gives every rounded value its own histogram bin,
also below 0 or above 255 (the evaluator's uint8 cast would wrap them around).
Images must be at least :data:`MIN_SIZE` pixels on each side (the four VIF scales
need it). Undefined figures come out as nan rather than raising: SCD when a source
or a difference image is constant, Qabf when both sources are flat.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from scipy import ndimage

from adverse_vision.metrics.image import ssim as _ssim

__all__ = [
    "AG_NORMS",
    "FUSION_METRICS",
    "MIN_SIZE",
    "QABF_CONSTANTS",
    "SSIM_REDUCES",
    "FusionMeter",
    "average_gradient",
    "entropy",
    "fusion_metrics",
    "fusion_mi",
    "fusion_ssim",
    "fusion_vif",
    "mutual_information",
    "qabf",
    "scd",
    "spatial_frequency",
    "standard_deviation",
    "vif",
]

FUSION_METRICS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")
AG_NORMS = ("cddfuse", "vifb")
SSIM_REDUCES = ("sum", "mean")
MIN_SIZE = 41  # smallest side for which all four VIF scales keep a valid window

# (T, k, D) of the strength and orientation sigmoids T / (1 + exp(k (x - D))).
QABF_CONSTANTS = {"strength": (0.9994, -15.0, 0.5), "orientation": (0.9879, -22.0, 0.8)}

_VIF_SIZES = (17, 9, 5, 3)
_VIF_NOISE_VAR = 2.0
_VIF_EPS = 1e-10

# Sobel kernels as the evaluator applies them: true 2-D convolution, zero padding.
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


# ----------------------------------------------------------------------------- inputs

def _image(x: Any, arg: str, name: str, min_size: int = 2) -> np.ndarray:
    """One grayscale image as a finite float64 (H, W) array."""
    a = np.asarray(x)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"{name}: {arg} must be a grayscale image (H, W) or (H, W, 1), "
                         f"got shape {np.shape(x)}")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number) \
            or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name}: {arg} must hold real numbers, got dtype {a.dtype}")
    if min(a.shape) < min_size:
        raise ValueError(f"{name}: {arg} must be at least {min_size}x{min_size} pixels, "
                         f"got shape {np.shape(x)}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: {arg} contains NaN or infinite values")
    return a


def _images(name: str, min_size: int, **named: Any) -> list[np.ndarray]:
    """Several named images, checked one by one and then for a common shape."""
    arrays = [_image(x, arg, name, min_size) for arg, x in named.items()]
    if any(a.shape != arrays[0].shape for a in arrays[1:]):
        shapes = ", ".join(f"{arg} {np.shape(x)}" for arg, x in named.items())
        raise ValueError(f"{name}: {', '.join(named)} must have the same shape, got {shapes}")
    return arrays


def _mi_divisor(base: Any, name: str, arg: str) -> float:
    """ln of the MI log base: 1 for ``"e"`` (nats), ln 2 for 2 (bits)."""
    if isinstance(base, str) and base == "e":
        return 1.0
    if isinstance(base, numbers.Real) and not isinstance(base, (bool, np.bool_)) and base == 2:
        return math.log(2.0)
    raise ValueError(f"{name}: unknown {arg} {base!r}, expected 'e' (nats) or 2 (bits)")


def _choice(value: Any, choices: tuple[str, ...], name: str, arg: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: unknown {arg} {value!r}, expected one of {choices}")
    return value


def _data_range(value: Any, name: str, arg: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, (bool, np.bool_)) or not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{name}: {arg} must be a positive number, got {value!r}")
    return number


def _check_options(name: str, mi_base: Any, ssim_reduce: Any, ssim_data_range: Any,
                   ag_norm: Any) -> tuple[float, str, float, str]:
    """Validated conventions: (MI log divisor, SSIM reduction, SSIM range, AG norm)."""
    return (_mi_divisor(mi_base, name, "mi_base"),
            _choice(ssim_reduce, SSIM_REDUCES, name, "ssim_reduce"),
            _data_range(ssim_data_range, name, "ssim_data_range"),
            _choice(ag_norm, AG_NORMS, name, "ag_norm"))


# ------------------------------------------------------------------ single-image figures

def _entropy(a: np.ndarray) -> float:
    levels = np.rint(a).ravel()
    if levels.min() >= 0 and levels.max() <= 255:
        counts = np.bincount(levels.astype(np.intp), minlength=256)
        counts = counts[counts > 0]
    else:
        counts = np.unique(levels, return_counts=True)[1]
    p = counts / levels.size
    return float(-np.sum(p * np.log2(p)))


def entropy(image: Any) -> float:
    """EN: entropy in bits of the histogram of the rounded grey levels.

    Args:
      image: grayscale image (H, W) or (H, W, 1).

    Returns 0 for a constant image, 8 at most for levels in [0, 255].
    """
    return _entropy(_image(image, "image", "entropy", 1))


def standard_deviation(image: Any) -> float:
    """SD: population standard deviation of the grey levels (``ddof=0``)."""
    return float(np.std(_image(image, "image", "standard_deviation", 1)))


def _spatial_frequency(a: np.ndarray) -> float:
    row = np.mean(np.square(np.diff(a, axis=1)))
    col = np.mean(np.square(np.diff(a, axis=0)))
    return float(np.sqrt(row + col))


def spatial_frequency(image: Any) -> float:
    """SF: ``sqrt(mean(dx^2) + mean(dy^2))`` of the first differences along W and H.

    Args:
      image: grayscale image, at least 2x2.
    """
    return _spatial_frequency(_image(image, "image", "spatial_frequency"))


def _average_gradient(a: np.ndarray, norm: str) -> float:
    gy, gx = np.gradient(a)
    total = np.sum(np.sqrt((gx * gx + gy * gy) / 2.0))
    h, w = a.shape
    return float(total / (h * w if norm == "cddfuse" else (h - 1) * (w - 1)))


def average_gradient(image: Any, norm: str = "cddfuse") -> float:
    """AG: sum of ``sqrt((gx^2 + gy^2) / 2)`` over the pixels, over a normaliser.

    Args:
      image: grayscale image, at least 2x2.
      norm: ``"cddfuse"`` divides by ``H * W`` (the mean); ``"vifb"`` divides by
        ``(H - 1) * (W - 1)`` as VIFB's MATLAB code does.

    ``gx``, ``gy`` are central differences, one-sided on the border (``np.gradient``).
    """
    norm = _choice(norm, AG_NORMS, "average_gradient", "norm")
    return _average_gradient(_image(image, "image", "average_gradient"), norm)


# ---------------------------------------------------------------------- pair figures

def _labels(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Label of every pixel (index of its value among the distinct values) and count."""
    flat = a.ravel()
    if np.all(flat == np.rint(flat)) and flat.min() >= 0 and flat.max() <= 65535:
        counts = np.bincount(flat.astype(np.intp))
        lookup = np.cumsum(counts > 0) - 1  # value -> rank among the values present
        return lookup[flat.astype(np.intp)], int(lookup[-1]) + 1
    values, inverse = np.unique(flat, return_inverse=True)
    return inverse.ravel(), int(values.size)


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information in nats of the two images read as label arrays."""
    la, na = _labels(a)
    lb, nb = _labels(b)
    if na == 1 or nb == 1:
        return 0.0
    n = la.size
    keys = la.astype(np.int64) * nb + lb
    if na * nb <= 4 * n:
        joint = np.bincount(keys, minlength=na * nb)
        keys = np.flatnonzero(joint)
        joint = joint[keys]
    else:
        keys, joint = np.unique(keys, return_counts=True)
    row = np.bincount(la, minlength=na)[keys // nb]
    col = np.bincount(lb, minlength=nb)[keys % nb]
    joint = joint.astype(np.float64)
    mi = np.sum(joint * (np.log(joint) + math.log(n) - np.log(row) - np.log(col))) / n
    return max(float(mi), 0.0)


def mutual_information(a: Any, b: Any, base: Any = "e") -> float:
    """Mutual information of two images, every distinct value a label (no binning).

    Args:
      a, b: grayscale images of the same shape.
      base: ``"e"`` for nats (scikit-learn's ``mutual_info_score``) or 2 for bits.

    Returns a value >= 0 (negative rounding noise is clipped to 0); an image with
    itself gives its entropy (of the distinct values) in that base.
    """
    log_divisor = _mi_divisor(base, "mutual_information", "base")
    a, b = _images("mutual_information", 1, a=a, b=b)
    return _mutual_information(a, b) / log_divisor


def _gaussian(size: int) -> np.ndarray:
    """Normalised 1-D factor of the MATLAB-style Gaussian window (sigma = size / 5).

    The evaluator builds the 2-D window and zeroes entries below ``eps * max``; at
    these sizes the smallest entry is about 1e-5, so nothing is zeroed and the
    window is exactly the outer product of this factor with itself.
    """
    sigma = size / 5.0
    x = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-x * x / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """2-D filtering with the separable window ``outer(g, g)``, "valid" part only."""
    r = g.size // 2
    y = ndimage.correlate1d(x, g, axis=0, mode="constant")[r:x.shape[0] - r]
    return ndimage.correlate1d(y, g, axis=1, mode="constant")[:, r:x.shape[1] - r]


def _vif(ref: np.ndarray, dist: np.ndarray) -> float:
    num = den = 0.0
    eps = _VIF_EPS
    for scale, size in enumerate(_VIF_SIZES):
        g = _gaussian(size)
        if scale:
            ref = _filter_valid(ref, g)[::2, ::2]
            dist = _filter_valid(dist, g)[::2, ::2]
        mu1, mu2 = _filter_valid(ref, g), _filter_valid(dist, g)
        s11 = np.maximum(_filter_valid(ref * ref, g) - mu1 * mu1, 0.0)
        s22 = np.maximum(_filter_valid(dist * dist, g) - mu2 * mu2, 0.0)
        s12 = _filter_valid(ref * dist, g) - mu1 * mu2
        gain = s12 / (s11 + eps)
        sv = s22 - gain * s12
        # The evaluator's special cases, in its order.
        flat_ref = s11 < eps
        gain = np.where(flat_ref, 0.0, gain)
        sv = np.where(flat_ref, s22, sv)
        s11 = np.where(flat_ref, 0.0, s11)
        flat_dist = s22 < eps
        gain = np.where(flat_dist, 0.0, gain)
        sv = np.where(flat_dist, 0.0, sv)
        negative = gain < 0
        sv = np.where(negative, s22, sv)
        gain = np.where(negative, 0.0, gain)
        sv = np.maximum(sv, eps)
        num += float(np.sum(np.log1p(gain * gain * s11 / (sv + _VIF_NOISE_VAR))))
        den += float(np.sum(np.log1p(s11 / _VIF_NOISE_VAR)))
    # Same log base for both sums, so it cancels. 0 / 0 (a flat reference) is 1.
    return 1.0 if den == 0.0 else num / den


def vif(reference: Any, distorted: Any) -> float:
    """Pixel-domain VIF of ``distorted`` against ``reference`` (Sheikh and Bovik).

    Args:
      reference, distorted: grayscale images of the same shape, at least
        :data:`MIN_SIZE` pixels on each side.

    Returns the ratio of the information kept in ``distorted`` to the information
    in ``reference``, summed over four scales (1 for a copy, 1 for a flat reference).
    """
    ref, dist = _images("vif", MIN_SIZE, reference=reference, distorted=distorted)
    return _vif(ref, dist)


# -------------------------------------------------------------------- triple figures

def _scd(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    def corr(x: np.ndarray, y: np.ndarray) -> float:
        x = x - x.mean()
        y = y - y.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.sum(x * y) / np.sqrt(np.sum(x * x) * np.sum(y * y)))
    return corr(a, f - b) + corr(b, f - a)


def scd(fused: Any, ir: Any, vis: Any) -> float:
    """SCD: ``corr(ir, fused - vis) + corr(vis, fused - ir)``, Pearson correlations.

    Args:
      fused, ir, vis: grayscale images of the same shape.

    Returns a value in [-2, 2]; nan when a source or a difference image is constant.
    """
    f, a, b = _images("scd", 1, fused=fused, ir=ir, vis=vis)
    return _scd(f, a, b)


def _convolve_same(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """3x3 true convolution, zero padding, output the size of ``a``.

    The terms are added in the row-major order of the kernel, the order of
    ``scipy.signal.convolve2d``, so that a gradient that cancels there is exactly 0
    here too (the edge angle jumps from -pi/2 to pi/2 at ``gx == 0``).
    """
    h, w = a.shape
    padded = np.pad(a, 1)
    out = np.zeros_like(a)
    for k in range(3):
        for m in range(3):
            if kernel[k, m]:
                out += kernel[k, m] * padded[2 - k:2 - k + h, 2 - m:2 - m + w]
    return out


def _sobel(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient strength and the evaluator's edge angle of an image."""
    gx = _convolve_same(a, _SOBEL_X)
    gy = _convolve_same(a, _SOBEL_Y)
    strength = np.sqrt(gx * gx + gy * gy)
    zero = gx == 0
    angle = np.where(zero, math.pi / 2, np.arctan(gy / np.where(zero, 1.0, gx)))
    return strength, angle


def _edge_preservation(g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray,
                       a_f: np.ndarray) -> np.ndarray:
    """Per-pixel Q^{SF}: strength and orientation preservation from source to fused."""
    ratio = np.ones_like(g_src)
    np.divide(g_f, g_src, out=ratio, where=g_src > g_f)
    np.divide(g_src, g_f, out=ratio, where=g_src < g_f)
    ratio = np.where(g_src == g_f, g_f, ratio)  # the evaluator's equal-strength case
    alignment = 1.0 - np.abs(a_src - a_f) / (math.pi / 2)
    tg, kg, dg = QABF_CONSTANTS["strength"]
    ta, ka, da = QABF_CONSTANTS["orientation"]
    strength = tg / (1.0 + np.exp(kg * (ratio - dg)))
    orientation = ta / (1.0 + np.exp(ka * (alignment - da)))
    return strength * orientation


def _qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    g_a, ang_a = _sobel(a)
    g_b, ang_b = _sobel(b)
    g_f, ang_f = _sobel(f)
    q_a = _edge_preservation(g_a, ang_a, g_f, ang_f)
    q_b = _edge_preservation(g_b, ang_b, g_f, ang_f)
    weight = np.sum(g_a) + np.sum(g_b)
    kept = np.sum(q_a * g_a) + np.sum(q_b * g_b)
    return float(kept / weight) if weight > 0 else float("nan")


def qabf(fused: Any, ir: Any, vis: Any) -> float:
    """Qabf (Xydeas-Petrovic): gradient-strength-weighted edge preservation.

    Args:
      fused, ir, vis: grayscale images of the same shape, at least 2x2.

    Returns a value in [0, 1) (about 0.975 at most); nan when both sources are flat.
    """
    f, a, b = _images("qabf", 2, fused=fused, ir=ir, vis=vis)
    return _qabf(f, a, b)


def fusion_mi(fused: Any, ir: Any, vis: Any, base: Any = "e") -> float:
    """MI: ``MI(fused, ir) + MI(fused, vis)`` (see :func:`mutual_information`)."""
    log_divisor = _mi_divisor(base, "fusion_mi", "base")
    f, a, b = _images("fusion_mi", 1, fused=fused, ir=ir, vis=vis)
    return (_mutual_information(f, a) + _mutual_information(f, b)) / log_divisor


def fusion_vif(fused: Any, ir: Any, vis: Any) -> float:
    """VIF: ``vif(ir, fused) + vif(vis, fused)`` (see :func:`vif`)."""
    f, a, b = _images("fusion_vif", MIN_SIZE, fused=fused, ir=ir, vis=vis)
    return _vif(a, f) + _vif(b, f)


def _fusion_ssim(f: np.ndarray, a: np.ndarray, b: np.ndarray, data_range: float,
                 reduce: str) -> float:
    total = float(_ssim(f, a, data_range)) + float(_ssim(f, b, data_range))
    return total if reduce == "sum" else total / 2.0


def fusion_ssim(fused: Any, ir: Any, vis: Any, data_range: float = 2.0,
                reduce: str = "sum") -> float:
    """SSIM: ``SSIM(fused, ir) + SSIM(fused, vis)``, or their mean with ``reduce="mean"``.

    Args:
      fused, ir, vis: grayscale images of the same shape, at least 7x7.
      data_range: the SSIM data range; 2.0 reproduces the CDDFuse evaluator, 255.0
        is the usual setting for 0-255 images.
      reduce: ``"sum"`` or ``"mean"`` over the two sources.
    """
    reduce = _choice(reduce, SSIM_REDUCES, "fusion_ssim", "reduce")
    data_range = _data_range(data_range, "fusion_ssim", "data_range")
    f, a, b = _images("fusion_ssim", 7, fused=fused, ir=ir, vis=vis)
    return _fusion_ssim(f, a, b, data_range, reduce)


# ------------------------------------------------------------------------ all figures

def _all_metrics(f: np.ndarray, a: np.ndarray, b: np.ndarray,
                 options: tuple[float, str, float, str]) -> dict[str, float]:
    log_divisor, ssim_reduce, ssim_range, ag_norm = options
    return {
        "EN": _entropy(f),
        "SD": float(np.std(f)),
        "SF": _spatial_frequency(f),
        "AG": _average_gradient(f, ag_norm),
        "MI": (_mutual_information(f, a) + _mutual_information(f, b)) / log_divisor,
        "SCD": _scd(f, a, b),
        "VIF": _vif(a, f) + _vif(b, f),
        "Qabf": _qabf(f, a, b),
        "SSIM": _fusion_ssim(f, a, b, ssim_range, ssim_reduce),
    }


def fusion_metrics(fused: Any, ir: Any, vis: Any, *, mi_base: Any = "e",
                   ssim_reduce: str = "sum", ssim_data_range: float = 2.0,
                   ag_norm: str = "cddfuse") -> dict[str, float]:
    """The nine fusion figures of one fused image, keyed as :data:`FUSION_METRICS`.

    Args:
      fused, ir, vis: grayscale images (H, W) or (H, W, 1) of the same shape on the
        0-255 scale, at least :data:`MIN_SIZE` pixels on each side.
      mi_base: ``"e"`` (MI in nats) or 2 (bits).
      ssim_reduce: ``"sum"`` or ``"mean"`` of the two source SSIMs.
      ssim_data_range: the SSIM data range (2.0 as the CDDFuse evaluator).
      ag_norm: ``"cddfuse"`` or ``"vifb"`` (see the module docstring).

    The defaults reproduce the CDDFuse evaluator.
    """
    options = _check_options("fusion_metrics", mi_base, ssim_reduce, ssim_data_range, ag_norm)
    f, a, b = _images("fusion_metrics", MIN_SIZE, fused=fused, ir=ir, vis=vis)
    return _all_metrics(f, a, b, options)


def _batch(x: Any, arg: str, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 3:
        raise ValueError(f"{name}: {arg} must be a batch (N, H, W) or (N, H, W, 1) of "
                         f"grayscale images, got shape {np.shape(x)}")
    return a


class FusionMeter:
    """Running mean of :func:`fusion_metrics` over the images of an evaluation.

    Args:
      mi_base, ssim_reduce, ssim_data_range, ag_norm: the conventions, as in
        :func:`fusion_metrics` (checked here).

    :meth:`add` takes batches of fused, infrared and visible images and an optional
    ``valid`` mask; images whose ``valid`` is False (padding of the last batch) are
    neither scored nor checked. :meth:`compute` gives the mean over the images
    scored so far (a nan figure of one image makes that mean nan).
    """

    def __init__(self, *, mi_base: Any = "e", ssim_reduce: str = "sum",
                 ssim_data_range: float = 2.0, ag_norm: str = "cddfuse"):
        self._options = _check_options("FusionMeter", mi_base, ssim_reduce, ssim_data_range,
                                       ag_norm)
        self.reset()

    def reset(self) -> None:
        """Forget every image added so far."""
        self._sums = dict.fromkeys(FUSION_METRICS, 0.0)
        self._count = 0

    @property
    def count(self) -> int:
        """Number of images scored so far."""
        return self._count

    def add(self, fused: Any, ir: Any, vis: Any, valid: Any = None) -> None:
        """Add a batch: fused, ir, vis (N, H, W) or (N, H, W, 1), uint8 or 0-255 floats;
        valid (N,) bool or None (all valid)."""
        name = "FusionMeter.add"
        batches = {"fused": _batch(fused, "fused", name), "ir": _batch(ir, "ir", name),
                   "vis": _batch(vis, "vis", name)}
        shapes = {arg: x.shape for arg, x in batches.items()}
        if len(set(shapes.values())) != 1:
            listed = ", ".join(f"{arg} {np.shape(x)}" for arg, x in
                               (("fused", fused), ("ir", ir), ("vis", vis)))
            raise ValueError(f"{name}: fused, ir and vis must have the same shape, got {listed}")
        n = shapes["fused"][0]
        keep = np.ones(n, bool)
        if valid is not None:
            v = np.asarray(valid)
            if v.shape != (n,):
                raise ValueError(f"{name}: valid must have shape ({n},) to match the batch, "
                                 f"got {v.shape}")
            if v.dtype != np.bool_ and not np.issubdtype(v.dtype, np.integer):
                raise ValueError(f"{name}: valid must be boolean, got dtype {v.dtype}")
            keep = v.astype(bool)
        scores = []
        for i in np.flatnonzero(keep):
            f, a, b = _images(f"{name} (image {i})", MIN_SIZE, fused=batches["fused"][i],
                              ir=batches["ir"][i], vis=batches["vis"][i])
            scores.append(_all_metrics(f, a, b, self._options))
        # A bad image raises above, before the meter changes.
        for s in scores:
            for k in FUSION_METRICS:
                self._sums[k] += s[k]
        self._count += len(scores)

    def compute(self) -> dict[str, float]:
        """Mean of every figure over the images scored, keyed as :data:`FUSION_METRICS`."""
        if self._count == 0:
            raise ValueError("FusionMeter.compute: no image has been scored yet (none added, "
                             "or every one marked invalid)")
        return {k: self._sums[k] / self._count for k in FUSION_METRICS}
