"""Image degradations: haze (even or patchy), Gaussian noise, low light, rain and snow.

Every function takes a float image in [0, 1] shaped (H, W, 3), or a batch shaped
(N, H, W, 3), and a ``numpy.random.Generator`` that supplies all randomness, and
returns a new float32 array of the same shape clipped to [0, 1]. The input is
never modified, so a caller keeps its clean twin. The functions are plain numpy
and are meant to run on the host, in data-loader workers.

Parameters written as a ``(low, high)`` pair are drawn uniformly, once per image
of a batch; a plain number is used as given. The noise level of
:func:`gaussian_noise` is the exception: a sequence there lists the levels to
choose from (blind training), one choice per call.

:func:`apply` dispatches on a degradation name from :data:`DEGRADATIONS`, which
is how configs select a degradation.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "DEGRADATIONS",
    "apply",
    "gaussian_noise",
    "haze",
    "haze_distance",
    "low_light",
    "patchy_haze",
    "rain",
    "smooth_field",
    "snow",
    "transmission",
    "vocfog_depth",
]

DEGRADATIONS = ("none", "haze", "noise", "low_light", "rain", "snow", "patchy_haze")

# Scene depths below this fraction of an image's farthest depth are raised to it
# before the logarithmic normalisation in `haze_distance` (caps the dynamic range).
MIN_RELATIVE_DEPTH = 1e-3


# ---------------------------------------------------------------------------
# Input handling


def _as_batch(image: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """Checks an image or batch and returns it as float32 (N, H, W, 3) plus a batch flag."""
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"{name}: image must be float in [0, 1], got dtype {image.dtype} "
            "(convert uint8 images with image.astype(np.float32) / 255)"
        )
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"{name}: image must be (H, W, 3) or (N, H, W, 3), got shape {image.shape}")
    batched = image.ndim == 4
    images = image.astype(np.float32, copy=False)
    return (images if batched else images[None]), batched


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_range(value, name: str) -> tuple[float, float]:
    """Reads a parameter given as a number or a (low, high) pair as a (low, high) pair."""
    if _is_number(value):
        return float(value), float(value)
    if isinstance(value, Sequence) and len(value) == 2 and all(_is_number(v) for v in value):
        low, high = float(value[0]), float(value[1])
        if low > high:
            raise ValueError(f"parameter {name!r}: range low {low} is above high {high}")
        return low, high
    raise ValueError(f"parameter {name!r} must be a number or a (low, high) pair, got {value!r}")


def _draw(rng: np.random.Generator, value, name: str, count: int) -> np.ndarray:
    """Draws `count` values of a parameter given as a number or a (low, high) range."""
    low, high = _as_range(value, name)
    if _is_number(value):
        return np.full(count, low)
    return rng.uniform(low, high, count)


def _column(values: np.ndarray) -> np.ndarray:
    """Per-image values shaped (N, 1, 1, 1) to broadcast against (N, H, W, C)."""
    return values.astype(np.float32).reshape(-1, 1, 1, 1)


def _finish(images: np.ndarray, batched: bool, clip: bool = True) -> np.ndarray:
    out = np.clip(images, 0.0, 1.0) if clip else images
    out = out.astype(np.float32, copy=False)
    return out if batched else out[0]


# ---------------------------------------------------------------------------
# Haze


def vocfog_depth(height: int, width: int) -> np.ndarray:
    """The pseudo-depth map of the VOC-FOG recipe, float32 (height, width).

    ``d = sqrt(max(H, W)) - 0.04 * r`` where ``r`` is the Euclidean distance in
    pixels from pixel (row, col) to the centre (H // 2, W // 2), as in the script
    widely used to make VOC-FOG. The centre is the farthest point; note that ``d``
    turns negative at the corners of images larger than about 1250 pixels.
    """
    rows = np.arange(height, dtype=np.float64) - height // 2
    cols = np.arange(width, dtype=np.float64) - width // 2
    dist = np.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2)
    return (math.sqrt(max(height, width)) - 0.04 * dist).astype(np.float32)


def transmission(depth: np.ndarray, beta) -> np.ndarray:
    """Medium transmission ``t = exp(-beta * depth)`` (beta broadcasts against depth)."""
    return np.exp(-np.asarray(beta, np.float32) * np.asarray(depth, np.float32)).astype(np.float32)


def haze_distance(depth: np.ndarray) -> np.ndarray:
    """Maps scene depth to the distance range of the VOC-FOG recipe.

    Scene depth (any unit, larger = farther, shaped (..., H, W)) is normalised per
    image on a log scale, ``r = log(z / z_min) / log(z_max / z_min)`` in [0, 1],
    and mapped linearly onto ``[d_lo, d_hi]``, the range that :func:`vocfog_depth`
    spans for an image of that size: ``d_hi = sqrt(max(H, W))`` and
    ``d_lo = max(d_hi - 0.04 * hypot(H // 2, W // 2), 0)``. The nearest pixel thus
    gets the fog of a VOC-FOG corner and the farthest (usually the sky) that of a
    VOC-FOG centre, so the recipe's beta range gives the same overall strength
    while the fog follows the scene geometry. The log scale spreads depths that
    span orders of magnitude (a few metres to the horizon); depths below 1e-3 of
    the image's maximum are raised to it first. An image of constant depth gets
    ``d_hi`` everywhere. The result does not depend on the depth unit.
    """
    z = np.asarray(depth, np.float64)
    height, width = z.shape[-2:]
    d_hi = math.sqrt(max(height, width))
    d_lo = max(d_hi - 0.04 * math.hypot(height // 2, width // 2), 0.0)
    z_max = z.max(axis=(-2, -1), keepdims=True)
    z = np.maximum(z, z_max * MIN_RELATIVE_DEPTH)
    z_min = z.min(axis=(-2, -1), keepdims=True)
    span = np.log(z_max / z_min)
    flat = span < 1e-9
    r = np.where(flat, 1.0, np.log(z / z_min) / np.where(flat, 1.0, span))
    return (d_lo + (d_hi - d_lo) * r).astype(np.float32)


def _fog_distance(depth: np.ndarray | None, shape: tuple[int, ...], name: str,
                  image_shape: tuple[int, ...]) -> np.ndarray:
    """The fog distance of a batch of images shaped ``shape`` (N, H, W, C): the VOC-FOG
    pseudo-depth without ``depth``, else :func:`haze_distance` of it; (1 or N, H, W).
    Errors name ``name`` and the caller's ``image_shape``."""
    n, height, width, _ = shape
    if depth is None:
        return vocfog_depth(height, width)[None]
    depth = np.asarray(depth)
    if (
        depth.ndim not in (2, 3)
        or depth.shape[-2:] != (height, width)
        or (depth.ndim == 3 and depth.shape[0] != n)
    ):
        raise ValueError(f"{name}: depth shape {depth.shape} does not match image shape "
                         f"{image_shape}")
    if not np.all(np.isfinite(depth)) or np.any(depth <= 0):
        raise ValueError(f"{name}: depth must be finite and > 0 everywhere")
    d = haze_distance(depth)
    return d if d.ndim == 3 else d[None]


def haze(
    image: np.ndarray,
    rng: np.random.Generator,
    depth: np.ndarray | None = None,
    A=0.5,
    beta=(0.05, 0.14),
) -> np.ndarray:
    """Adds fog with the atmospheric scattering model ``I = J t + A (1 - t)``.

    ``t = exp(-beta * d)``. Without ``depth``, ``d`` is the VOC-FOG pseudo-depth
    (:func:`vocfog_depth`), which with the defaults reproduces the VOC-FOG recipe
    (A = 0.5, beta uniform in [0.05, 0.14]). With ``depth`` (scene depth shaped
    (H, W) or (N, H, W), larger = farther, > 0), ``d`` is :func:`haze_distance` of
    it, so farther pixels get more fog. ``A`` (airlight) and ``beta`` are numbers
    or (low, high) ranges drawn once per image.
    """
    images, batched = _as_batch(image, "haze")
    n = images.shape[0]
    d = _fog_distance(depth, images.shape, "haze", np.shape(image))
    airlight = _column(_draw(rng, A, "A", n))
    t = transmission(d[..., None], _column(_draw(rng, beta, "beta", n)))
    return _finish(images * t + airlight * (1.0 - t), batched)


def smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """A smooth random field, float32 (height, width), N(0, 1) at the nodes of a coarse
    grid of ``cells`` cells along the shorter side, bilinear in between."""
    gh = max(1, round(cells * height / min(height, width)))
    gw = max(1, round(cells * width / min(height, width)))
    grid = rng.standard_normal((gh + 1, gw + 1)).astype(np.float32)
    ys = (np.arange(height, dtype=np.float32) + 0.5) * (gh / height)
    xs = (np.arange(width, dtype=np.float32) + 0.5) * (gw / width)
    y0, x0 = np.minimum(ys.astype(np.int64), gh - 1), np.minimum(xs.astype(np.int64), gw - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    rows = grid[y0] * (1.0 - fy) + grid[y0 + 1] * fy
    return rows[:, x0] * (1.0 - fx) + rows[:, x0 + 1] * fx


def patchy_haze(
    image: np.ndarray,
    rng: np.random.Generator,
    depth: np.ndarray | None = None,
    A=(0.7, 1.0),
    beta=(0.05, 0.14),
    variation=(0.3, 0.8),
    cells=(2, 5),
    tint=0.05,
) -> np.ndarray:
    """Non-homogeneous fog: :func:`haze` with a density that varies over the image and
    a slightly coloured airlight, as real haze (RTTS) has and the even fog of the
    training recipes has not.

    ``beta(x, y) = beta * exp(variation * n(x, y))`` with ``n`` a smooth N(0, 1) field
    over a grid of ``cells`` cells (banks and gaps of fog some tens of pixels wide);
    the airlight of channel ``c`` is ``A * (1 + u_c)``, ``u_c`` uniform in
    ``[-tint, tint]``. ``depth`` as in :func:`haze`. ``A``, ``beta``, ``variation``
    and ``cells`` are numbers or ranges drawn per image (``cells`` rounded).
    """
    images, batched = _as_batch(image, "patchy_haze")
    n, height, width, _ = images.shape
    d = np.broadcast_to(_fog_distance(depth, images.shape, "patchy_haze", np.shape(image)), (n, height, width))
    if not _is_number(tint) or not 0.0 <= float(tint) < 1.0:
        raise ValueError(f"parameter 'tint' must be a number in [0, 1), got {tint!r}")
    a = _draw(rng, A, "A", n)
    b = _draw(rng, beta, "beta", n)
    v = _draw(rng, variation, "variation", n)
    g = np.maximum(np.rint(_draw(rng, cells, "cells", n)), 1).astype(int)
    out = np.empty_like(images)
    for i in range(n):
        field = b[i] * np.exp(v[i] * smooth_field(rng, height, width, int(g[i])))
        t = np.exp(-field * d[i])[..., None]
        airlight = a[i] * (1.0 + rng.uniform(-tint, tint, 3)).astype(np.float32)
        out[i] = images[i] * t + airlight * (1.0 - t)
    return _finish(out, batched)


# ---------------------------------------------------------------------------
# Noise and low light


def gaussian_noise(image: np.ndarray, rng: np.random.Generator, sigma=30.0, clip: bool = True) -> np.ndarray:
    """Adds white Gaussian noise with standard deviation ``sigma / 255``.

    ``sigma`` is on the 0-255 scale: a number, or a sequence of levels of which
    one is drawn per call (blind training; a whole batch shares it). With
    ``clip=False`` the noisy values are returned unclipped, as some denoising
    setups train on.
    """
    images, batched = _as_batch(image, "gaussian_noise")
    if _is_number(sigma):
        level = float(sigma)
    elif isinstance(sigma, Sequence) and len(sigma) > 0 and all(_is_number(s) for s in sigma):
        level = float(sigma[rng.integers(len(sigma))])
    else:
        raise ValueError(f"parameter 'sigma' must be a number or a list of numbers, got {sigma!r}")
    if level < 0:
        raise ValueError(f"parameter 'sigma' must be >= 0, got {level}")
    noise = rng.standard_normal(images.shape, dtype=np.float32) * np.float32(level / 255.0)
    return _finish(images + noise, batched, clip=clip)


def low_light(
    image: np.ndarray,
    rng: np.random.Generator,
    gamma=(2.0, 3.5),
    gain=(0.2, 0.5),
    shot=(1e-3, 1e-2),
    read=(2e-3, 1e-2),
) -> np.ndarray:
    """Darkens an image and adds sensor noise.

    The clean signal becomes ``x = gain * J ** gamma`` (the gamma curve crushes
    mid-tones, the gain lowers the exposure). Noise follows the usual
    heteroscedastic Gaussian approximation of a raw sensor: photon shot noise
    with variance proportional to the signal plus signal-independent read noise,
    ``y = x + sqrt(shot * x + read ** 2) * n``, ``n ~ N(0, 1)`` per pixel and
    channel. All four parameters are numbers or ranges drawn per image.
    """
    images, batched = _as_batch(image, "low_light")
    n = images.shape[0]
    dark = _column(_draw(rng, gain, "gain", n)) * np.power(images, _column(_draw(rng, gamma, "gamma", n)))
    variance = _column(_draw(rng, shot, "shot", n)) * dark + _column(_draw(rng, read, "read", n)) ** 2
    noise = rng.standard_normal(images.shape, dtype=np.float32)
    return _finish(dark + np.sqrt(variance) * noise, batched)


# ---------------------------------------------------------------------------
# Rain and snow


def _gaussian_taps(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian kernel truncated at three sigma."""
    radius = max(1, math.ceil(3.0 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def _blur(layer: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D layer with reflected edges."""
    taps = _gaussian_taps(sigma)
    radius = len(taps) // 2
    height, width = layer.shape
    padded = np.pad(layer, radius, mode="reflect")
    rows = sum(t * padded[k : k + height] for k, t in enumerate(taps))
    return sum(t * rows[:, k : k + width] for k, t in enumerate(taps))


def _streaks(
    rng: np.random.Generator, height: int, width: int, density: float, length: float, angle: float
) -> np.ndarray:
    """A layer of motion-blurred rain streaks in [0, 1], float32 (height, width).

    Drops are seeded at random pixels (probability ``density`` each), then
    smeared along the common direction ``angle`` (degrees from vertical) by
    summing shifted copies with a tapered profile, and softened by a small
    Gaussian blur.
    """
    steps = max(round(length), 1)
    pad = steps + 1
    seeds = (rng.random((height + 2 * pad, width + 2 * pad)) < density) * rng.uniform(
        0.5, 1.0, (height + 2 * pad, width + 2 * pad)
    )
    dx, dy = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    layer = np.zeros((height, width), np.float64)
    for k in range(steps):
        weight = math.sin(math.pi * (k + 0.5) / steps)
        oy, ox = round(k * dy), round(k * dx)
        layer += weight * seeds[pad - oy : pad - oy + height, pad - ox : pad - ox + width]
    layer = _blur(layer, 0.6)
    return np.clip(2.0 * layer, 0.0, 1.0).astype(np.float32)


def rain(
    image: np.ndarray,
    rng: np.random.Generator,
    density=(0.002, 0.006),
    length=(10.0, 30.0),
    angle=(-25.0, 25.0),
    intensity=(0.4, 0.8),
) -> np.ndarray:
    """Adds rain streaks: line segments at a common angle, motion-blurred.

    ``density`` is the probability that a pixel seeds a streak, ``length`` the
    streak length in pixels, ``angle`` its direction in degrees from vertical
    (shared by all streaks of an image) and ``intensity`` the streak opacity.
    The streak layer ``s`` is screen-blended: ``1 - (1 - J) (1 - intensity * s)``.
    """
    images, batched = _as_batch(image, "rain")
    n, height, width, _ = images.shape
    densities = _draw(rng, density, "density", n)
    lengths = _draw(rng, length, "length", n)
    angles = _draw(rng, angle, "angle", n)
    strengths = _draw(rng, intensity, "intensity", n)
    out = np.empty_like(images)
    for i in range(n):
        alpha = strengths[i] * _streaks(rng, height, width, densities[i], lengths[i], angles[i])
        out[i] = 1.0 - (1.0 - images[i]) * (1.0 - alpha[..., None])
    return _finish(out, batched)


def _flakes(
    rng: np.random.Generator, height: int, width: int, density: float, size: tuple[float, float]
) -> np.ndarray:
    """A layer of soft snowflakes in [0, 1], float32 (height, width).

    About ``density * height * width`` flakes with radii uniform in ``size``
    (pixels). Radii are rounded to four levels; each level's flakes are splatted
    as points, blurred with a Gaussian of sigma ``radius / 1.5`` (scaled so a lone
    flake peaks at its brightness) and sharpened into a disc of about that radius
    with a soft rim.
    """
    count = rng.poisson(density * height * width)
    rows = rng.integers(0, height, count)
    cols = rng.integers(0, width, count)
    radii = rng.uniform(size[0], size[1], count)
    brightness = rng.uniform(0.6, 1.0, count)
    levels = np.unique(np.linspace(size[0], size[1], 4))
    nearest = np.abs(radii[:, None] - levels[None, :]).argmin(axis=1)
    layer = np.zeros((height, width), np.float64)
    for j, radius in enumerate(levels):
        pick = nearest == j
        points = np.zeros((height, width), np.float64)
        np.add.at(points, (rows[pick], cols[pick]), brightness[pick])
        sigma = max(radius, 0.5) / 1.5
        layer += _blur(points, sigma) / _gaussian_taps(sigma).max() ** 2
    return np.clip(1.6 * layer, 0.0, 1.0).astype(np.float32)


def snow(
    image: np.ndarray,
    rng: np.random.Generator,
    density=(0.001, 0.004),
    size=(1.0, 4.0),
    veil=(0.05, 0.2),
) -> np.ndarray:
    """Adds falling snow: soft discs of varied size over a whitish veil.

    ``density`` is the number of flakes per pixel, ``size`` the (low, high) range
    of flake radii in pixels (a number gives one size), ``veil`` the strength of
    the brightening veil. The image is first veiled,
    ``J' = (1 - veil) J + veil * 0.9``, then flakes of opacity ``a`` are
    composited, ``(1 - a) J' + a * 0.95``.
    """
    images, batched = _as_batch(image, "snow")
    n, height, width, _ = images.shape
    densities = _draw(rng, density, "density", n)
    veils = _column(_draw(rng, veil, "veil", n))
    radius_range = _as_range(size, "size")
    if radius_range[0] <= 0:
        raise ValueError(f"parameter 'size' must be > 0, got {size!r}")
    veiled = (1.0 - veils) * images + veils * 0.9
    out = np.empty_like(images)
    for i in range(n):
        alpha = _flakes(rng, height, width, densities[i], radius_range)[..., None]
        out[i] = (1.0 - alpha) * veiled[i] + alpha * 0.95
    return _finish(out, batched)


# ---------------------------------------------------------------------------
# Dispatcher


def _identity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """No degradation: a float32 copy of the image clipped to [0, 1]."""
    del rng
    images, batched = _as_batch(image, "none")
    return _finish(images, batched)


_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "none": _identity,
    "haze": haze,
    "patchy_haze": patchy_haze,
    "noise": gaussian_noise,
    "low_light": low_light,
    "rain": rain,
    "snow": snow,
}


@functools.lru_cache(maxsize=None)
def parameters(name: str) -> tuple[str, ...]:
    """The parameters that configure degradation ``name`` (after ``image`` and ``rng``)."""
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown degradation {name!r}; choose one of {DEGRADATIONS}")
    return tuple(inspect.signature(_FUNCTIONS[name]).parameters)[2:]


def apply(name: str, image: np.ndarray, rng: np.random.Generator, **params) -> np.ndarray:
    """Applies the degradation called ``name`` (one of :data:`DEGRADATIONS`).

    ``params`` are passed to the function (``"noise"`` is :func:`gaussian_noise`);
    an unknown name or parameter raises a ValueError naming it.
    """
    accepted = parameters(name)
    function = _FUNCTIONS[name]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"degradation {name!r} has no parameter(s) {unknown}; accepted: {accepted}")
    return function(image, rng, **params)
