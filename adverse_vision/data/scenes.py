"""Procedural street scenes: the built-in dataset, rendered from a seed, no files.

Each sample is a synthetic street view drawn with vectorised numpy: a sky
gradient above the horizon, a perspective road over a flat ground plane,
background buildings and trees, and one to six objects of five classes (person, bicycle,
car, motorbike, bus) standing on the ground. The renderer knows the geometry, so every sample
carries exact boxes, per-pixel metric depth, a semantic mask and an aligned
thermal image, and one source serves detection, depth-aware dehazing (see
:func:`adverse_vision.degrade.haze`), segmentation and infrared-visible fusion.
Images are clean; the data pipeline degrades them.

Camera model: a pinhole camera with focal length ``f`` pixels, ``c`` metres above
flat ground, looking horizontally; the horizon is image row ``h0``. A ground
point at depth ``Z`` metres projects to row ``h0 + c * f / Z``, so ground row
``y`` below the horizon has depth ``c * f / (y - h0)`` (capped at
:data:`SKY_DEPTH`, the depth of the sky), and an object ``H`` metres tall at depth
``Z`` is ``H * f / Z`` pixels tall with its bottom on that ground row.

Objects are drawn from far to near so nearer ones occlude farther ones; every
object pixel gets its object's depth. An object is annotated with the box of its
visible pixels unless less than :data:`MIN_VISIBLE_FRACTION` of it is visible or
its visible box is under :data:`MIN_BOX_SIDE` pixels on a side (its pixels stay in
the mask).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Sequence

import numpy as np

from adverse_vision.data import scenes_conditions as conditions_lib

__all__ = [
    "CLASSES",
    "MIN_BOX_SIDE",
    "MIN_VISIBLE_FRACTION",
    "SKY_DEPTH",
    "Layout",
    "Placement",
    "ScenesSource",
    "render_layout",
    "render_scene",
    "sample_layout",
]

CLASSES = ("person", "bicycle", "car", "motorbike", "bus")
SKY_DEPTH = 250.0  # metres: depth of the sky and cap of the ground depth
MIN_VISIBLE_FRACTION = 0.25
MIN_BOX_SIDE = 6
MIN_IMAGE_SIDE = 32

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

# Nominal side-view (height, width) in metres. Object shapes below are written in
# these units, with x = 0 at the object's centre, y = 0 on the ground and the
# object facing +x; each placement scales its object by a few per cent.
_CLASS_SIZE = {
    "person": (1.75, 0.62),
    "bicycle": (1.05, 1.74),
    "car": (1.45, 4.3),
    "motorbike": (1.6, 2.08),
    "bus": (3.1, 10.0),
}

_TYRE = np.array([0.07, 0.07, 0.08])
_METAL = np.array([0.55, 0.56, 0.6])
_GLASS = np.array([0.16, 0.21, 0.27])
_SKIN = ((0.96, 0.8, 0.69), (0.87, 0.67, 0.52), (0.67, 0.46, 0.33), (0.42, 0.28, 0.2))
_PAINT = (
    (0.92, 0.92, 0.9),
    (0.1, 0.1, 0.12),
    (0.7, 0.72, 0.75),
    (0.75, 0.12, 0.1),
    (0.12, 0.25, 0.6),
    (0.1, 0.35, 0.2),
    (0.95, 0.75, 0.1),
    (0.5, 0.3, 0.2),
)
_SKIES = (  # (zenith, horizon) colours: clear, overcast, dusk
    ((0.25, 0.45, 0.8), (0.7, 0.8, 0.9)),
    ((0.55, 0.58, 0.62), (0.78, 0.79, 0.8)),
    ((0.3, 0.3, 0.5), (0.95, 0.65, 0.45)),
)
_OFF_ROAD = ((0.3, 0.45, 0.2), (0.55, 0.53, 0.5), (0.65, 0.58, 0.42))  # grass, pavement, sand


@dataclasses.dataclass(frozen=True)
class Placement:
    """One thing standing on the ground.

    ``kind`` is a class of :data:`CLASSES` (annotated) or ``"building"`` /
    ``"tree"`` (background). ``x_center`` is the pixel column of its centre,
    ``depth`` its distance in metres, ``height`` / ``width`` its size in metres
    and ``facing`` +1 (facing right) or -1 (facing left).
    """

    kind: str
    x_center: float
    depth: float
    height: float
    width: float
    facing: int = 1


@dataclasses.dataclass(frozen=True)
class Layout:
    """The geometry of one scene: camera, road and placements (see the module doc)."""

    height: int
    width: int
    horizon: float  # image row of the horizon
    focal: float  # pixels
    camera_height: float  # metres
    road_offset: float  # metres from the camera axis to the road centre
    road_half_width: float  # metres
    items: tuple[Placement, ...]


# ---------------------------------------------------------------------------
# Layout sampling


def _check_size(height: int, width: int) -> None:
    if not all(isinstance(v, (int, np.integer)) and v >= MIN_IMAGE_SIDE for v in (height, width)):
        raise ValueError(
            f"scenes: image size must be two integers >= {MIN_IMAGE_SIDE}, got ({height!r}, {width!r})"
        )


def _place_object(
    rng: np.random.Generator, kind: str, height: int, width: int, focal: float, cam: float, horizon: float
) -> Placement:
    """Places an object whose pixel height is typically 15-60% of the image height.

    Its depth is log-uniform over that range, raised where needed so that its
    bottom stays inside the image, its top below the first row and its width
    within 90% of the image width; its column keeps it wholly inside the frame.
    """
    scale = rng.uniform(0.9, 1.1)
    obj_h, obj_w = (s * scale for s in _CLASS_SIZE[kind])
    z_min = max(
        cam * focal / (height - 1 - horizon),
        (obj_h - cam) * focal / horizon,
        obj_w * focal / (0.9 * width),
        2.0,
    )
    z_lo = max(obj_h * focal / (0.6 * height), z_min)
    z_hi = obj_h * focal / (0.15 * height)
    depth = z_lo if z_lo >= z_hi else math.exp(rng.uniform(math.log(z_lo), math.log(z_hi)))
    half_px = 0.5 * obj_w * focal / depth
    x_center = rng.uniform(half_px, width - half_px)
    facing = 1 if rng.random() < 0.5 else -1
    return Placement(kind, x_center, depth, obj_h, obj_w, facing)


def _place_background(
    rng: np.random.Generator, kind: str, width: int, focal: float, road_offset: float, road_half: float
) -> Placement:
    """Places a building or tree beside the road."""
    side = 1 if rng.random() < 0.5 else -1
    if kind == "building":
        depth = rng.uniform(40.0, 160.0)
        lateral = road_offset + side * (road_half + rng.uniform(3.0, 20.0))
        size = (rng.uniform(8.0, 30.0), rng.uniform(8.0, 25.0))
    else:
        depth = rng.uniform(12.0, 80.0)
        lateral = road_offset + side * (road_half + rng.uniform(1.5, 8.0))
        crown = rng.uniform(2.5, 5.0)
        size = (crown + rng.uniform(2.0, 4.0), crown)
    x_center = 0.5 * width + lateral * focal / depth
    return Placement(kind, x_center, depth, size[0], size[1], side)


def sample_layout(rng: np.random.Generator, height: int, width: int) -> Layout:
    """Draws a random scene geometry: camera, road, 0-4 buildings, 0-4 trees, 1-6 objects."""
    _check_size(height, width)
    focal = width * rng.uniform(0.9, 1.3)
    cam = rng.uniform(1.2, 2.0)
    horizon = height * rng.uniform(0.3, 0.5)
    road_offset = rng.uniform(-3.0, 3.0)
    road_half = rng.uniform(3.5, 7.0)
    items = [
        _place_background(rng, kind, width, focal, road_offset, road_half)
        for kind in ["building"] * int(rng.integers(0, 5)) + ["tree"] * int(rng.integers(0, 5))
    ]
    for _ in range(int(rng.integers(1, 7))):
        kind = CLASSES[int(rng.integers(len(CLASSES)))]
        items.append(_place_object(rng, kind, height, width, focal, cam, horizon))
    return Layout(height, width, horizon, focal, cam, road_offset, road_half, tuple(items))


# ---------------------------------------------------------------------------
# Shape primitives. X is a (1, w) row and Y an (h, 1) column of coordinates in
# shape units (metres of the nominal object, y up from the ground); each
# primitive returns a boolean mask that broadcasts to (h, w).


def _disc(X, Y, cx, cy, r):
    return (X - cx) ** 2 + (Y - cy) ** 2 <= r * r


def _ellipse(X, Y, cx, cy, rx, ry):
    return ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 <= 1.0


def _ring(X, Y, cx, cy, r, half_thickness):
    return np.abs(np.sqrt((X - cx) ** 2 + (Y - cy) ** 2) - r) <= half_thickness


def _box(X, Y, x0, x1, y0, y1):
    return (X >= x0) & (X <= x1) & (Y >= y0) & (Y <= y1)


def _rounded_box(X, Y, x0, x1, y0, y1, r):
    qx = np.maximum(np.abs(X - 0.5 * (x0 + x1)) - (0.5 * (x1 - x0) - r), 0.0)
    qy = np.maximum(np.abs(Y - 0.5 * (y0 + y1)) - (0.5 * (y1 - y0) - r), 0.0)
    return qx * qx + qy * qy <= r * r


def _capsule(X, Y, a, b, r):
    """Points within r of the segment a-b."""
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    t = np.clip(((X - ax) * dx + (Y - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return (X - ax - t * dx) ** 2 + (Y - ay - t * dy) ** 2 <= r * r


# A part: (mask, RGB colour, temperature on the 0-255 scale of the simple thermal
# rendering, material). The material is what the LWIR model
# (:mod:`adverse_vision.data.scenes_conditions`) gives a temperature.
_Part = tuple[np.ndarray, Sequence[float], float, str]
_MAT = {name: i for i, name in enumerate(conditions_lib.MATERIALS)}


def _paint(rng: np.random.Generator) -> np.ndarray:
    base = np.asarray(_PAINT[int(rng.integers(len(_PAINT)))])
    return np.clip(base + rng.uniform(-0.06, 0.06, 3), 0.0, 1.0)


# Shapes: f(X, Y, rng, pix[, height, width]) -> parts, drawn in order (later parts
# on top). pix is the size of one pixel in the shape's units. Buildings and trees
# also get their size.


def _thick(r: float, pix: float) -> float:
    """A radius kept at least about a pixel wide, so thin parts never break up."""
    return max(r, 0.6 * pix)


def _person(X, Y, rng, pix) -> list[_Part]:
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    top = rng.uniform(0.05, 0.95, 3)
    trousers = rng.uniform(0.05, 0.55, 3)
    hair = rng.uniform(0.02, 0.3) * np.array([1.0, 0.8, 0.6])
    stride = rng.uniform(0.0, 0.28)
    swing = rng.uniform(0.05, 0.22)
    hip, shoulder = 0.92, 1.42
    return [
        (_capsule(X, Y, (-0.02, shoulder), (-swing, 0.9), _thick(0.055, pix)), top * 0.8, 205, "clothing"),
        (_capsule(X, Y, (-0.04, hip), (-stride, 0.07), _thick(0.075, pix)), trousers * 0.85, 205, "clothing"),
        (_capsule(X, Y, (0.04, hip), (stride, 0.07), _thick(0.075, pix)), trousers, 205, "clothing"),
        (_capsule(X, Y, (0.0, hip + 0.05), (0.0, shoulder - 0.02), _thick(0.17, pix)), top, 215, "clothing"),
        (_capsule(X, Y, (0.02, shoulder), (swing + 0.03, 0.88), _thick(0.055, pix)), top, 210, "clothing"),
        (_disc(X, Y, 0.0, 1.63, 0.11), skin, 235, "skin"),
        (_disc(X, Y, 0.0, 1.63, 0.115) & (Y > 1.67), hair, 225, "hair"),
    ]


def _bicycle(X, Y, rng, pix) -> list[_Part]:
    frame = _paint(rng)
    r, rear, front = 0.34, (-0.52, 0.34), (0.52, 0.34)
    bracket, seat, head = (0.0, 0.32), (-0.2, 0.86), (0.38, 0.9)
    tubes = [(rear, bracket), (rear, seat), (seat, bracket), (seat, head), (head, bracket), (head, front)]
    parts = [(_ring(X, Y, cx, cy, r - 0.02, _thick(0.025, pix)), _TYRE, 175, "tyre") for cx, cy in (rear, front)]
    parts += [(_disc(X, Y, cx, cy, _thick(0.04, pix)), _METAL, 160, "metal") for cx, cy in (rear, front)]
    parts += [(_capsule(X, Y, a, b, _thick(0.025, pix)), frame, 150, "paint") for a, b in tubes]
    parts += [
        (_capsule(X, Y, (-0.3, 0.93), (-0.1, 0.93), _thick(0.035, pix)), _TYRE, 140, "rubber"),
        (_capsule(X, Y, head, (0.32, 1.02), _thick(0.02, pix)), _METAL, 150, "metal"),
        (_capsule(X, Y, (0.24, 1.02), (0.42, 1.02), _thick(0.02, pix)), _METAL, 150, "metal"),
    ]
    return parts


def _car(X, Y, rng, pix) -> list[_Part]:
    del pix
    body = _paint(rng)
    cabin = _box(X, Y, -2.0, 2.0, 0.9, 1.45) & (X >= -1.75 + 0.45 * (Y - 0.9)) & (X <= 1.05 - 1.3 * (Y - 0.9))
    windows = (
        _box(X, Y, -2.0, 2.0, 0.98, 1.37)
        & (X >= -1.6 + 0.45 * (Y - 0.98))
        & (X <= 0.92 - 1.3 * (Y - 0.98))
        & (np.abs(X + 0.35) > 0.06)
    )
    parts = [
        (_rounded_box(X, Y, -2.15, 2.15, 0.25, 0.95, 0.18), body, 150, "paint"),
        (cabin, body, 150, "paint"),
        (windows, _GLASS, 110, "glass"),
        (_rounded_box(X, Y, 1.3, 2.15, 0.25, 0.95, 0.18), body * 0.95, 215, "engine"),
        (_box(X, Y, 2.03, 2.15, 0.7, 0.82), (0.95, 0.95, 0.8), 200, "lamp"),
        (_box(X, Y, -2.15, -2.05, 0.7, 0.85), (0.8, 0.05, 0.05), 160, "lamp"),
    ]
    for cx in (-1.35, 1.35):
        parts += [(_disc(X, Y, cx, 0.33, 0.33), _TYRE, 225, "tyre"), (_disc(X, Y, cx, 0.33, 0.15), _METAL, 225, "metal")]
    return parts


def _motorbike(X, Y, rng, pix) -> list[_Part]:
    body = _paint(rng)
    jacket = rng.uniform(0.05, 0.7, 3)
    helmet = _paint(rng)
    parts = []
    for cx in (-0.72, 0.72):
        parts += [(_disc(X, Y, cx, 0.31, 0.31), _TYRE, 205, "tyre"), (_disc(X, Y, cx, 0.31, 0.12), _METAL, 205, "metal")]
    parts += [
        (_box(X, Y, -0.28, 0.22, 0.22, 0.55), _METAL * 0.6, 245, "engine"),
        (_capsule(X, Y, (0.72, 0.31), (0.52, 0.98), _thick(0.04, pix)), _METAL, 180, "metal"),
        (_capsule(X, Y, (0.52, 0.98), (0.4, 1.03), _thick(0.03, pix)), _METAL, 180, "metal"),
        (_ellipse(X, Y, 0.0, 0.66, 0.5, 0.17), body, 200, "paint"),
        (_capsule(X, Y, (-0.45, 0.72), (-0.82, 0.8), _thick(0.06, pix)), body, 190, "paint"),
        (_capsule(X, Y, (-0.2, 0.85), (0.18, 0.58), _thick(0.09, pix)), jacket * 0.7, 210, "clothing"),
        (_capsule(X, Y, (0.18, 0.58), (0.1, 0.32), _thick(0.07, pix)), jacket * 0.7, 210, "clothing"),
        (_capsule(X, Y, (-0.18, 0.88), (0.02, 1.3), _thick(0.17, pix)), jacket, 215, "clothing"),
        (_capsule(X, Y, (0.0, 1.25), (0.43, 1.02), _thick(0.06, pix)), jacket, 210, "clothing"),
        (_disc(X, Y, 0.12, 1.46, 0.14), helmet, 190, "paint"),
    ]
    return parts


def _bus(X, Y, rng, pix) -> list[_Part]:
    del pix
    body = _paint(rng)
    accent = _paint(rng)
    shell = _rounded_box(X, Y, -5.0, 5.0, 0.3, 3.1, 0.25)
    windows = _box(X, Y, -4.6, 3.9, 1.7, 2.7) & (np.mod(X + 4.6, 1.3) < 1.1)
    parts = [
        (shell, body, 150, "paint"),
        (shell & _box(X, Y, -5.0, 5.0, 1.1, 1.3), accent, 150, "paint"),
        (windows, _GLASS, 120, "glass"),
        (_box(X, Y, 4.3, 4.95, 1.2, 2.85), _GLASS, 120, "glass"),
        (_box(X, Y, 3.15, 3.95, 0.4, 2.6), _GLASS * 0.7, 130, "glass"),
        (_box(X, Y, 3.4, 4.8, 2.8, 3.0), (0.95, 0.6, 0.1), 140, "lamp"),
        (shell & _box(X, Y, -5.0, -4.2, 0.4, 1.4), body * 0.85, 230, "engine"),
    ]
    for cx in (-3.2, 3.0):
        parts += [(_disc(X, Y, cx, 0.5, 0.5), _TYRE, 220, "tyre"), (_disc(X, Y, cx, 0.5, 0.22), _METAL, 220, "metal")]
    return parts


def _building(X, Y, rng, pix, height, width) -> list[_Part]:
    del pix
    wall = rng.uniform(0.3, 0.8) * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.7, 1.0)])
    period_x, period_y = rng.uniform(2.5, 4.0), rng.uniform(3.0, 3.6)
    windows = (
        _box(X, Y, -0.5 * width + 0.8, 0.5 * width - 0.8, 2.0, height - 1.0)
        & (np.mod(X + 0.5 * width, period_x) < 0.55 * period_x)
        & (np.mod(Y, period_y) > 0.4 * period_y)
    )
    return [
        (_box(X, Y, -0.5 * width, 0.5 * width, 0.0, height), wall, 115, "wall"),
        (windows, _GLASS, 90, "window"),
    ]


def _tree(X, Y, rng, pix, height, width) -> list[_Part]:
    crown = np.array([0.15, rng.uniform(0.3, 0.5), 0.12]) * rng.uniform(0.7, 1.2)
    trunk = max(0.12 * width, 0.6 * pix)
    return [
        (_box(X, Y, -trunk, trunk, 0.0, height - 0.5 * width), (0.35, 0.24, 0.15), 85, "bark"),
        (_ellipse(X, Y, 0.0, height - 0.5 * width, 0.5 * width, 0.5 * width), crown, 70, "foliage"),
    ]


_SHAPES: dict[str, Callable[..., list[_Part]]] = {
    "person": _person,
    "bicycle": _bicycle,
    "car": _car,
    "motorbike": _motorbike,
    "bus": _bus,
    "building": _building,
    "tree": _tree,
}


# ---------------------------------------------------------------------------
# Rendering


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth random field, float32 (height, width), roughly N(0, 1) at grid nodes.

    A coarse Gaussian grid with ``cells`` cells along the shorter side, upsampled
    separably with smoothstep-eased bilinear weights.
    """
    gh = max(1, round(cells * height / min(height, width)))
    gw = max(1, round(cells * width / min(height, width)))
    grid = rng.standard_normal((gh + 1, gw + 1)).astype(np.float32)

    def axis(n, g):
        pos = (np.arange(n, dtype=np.float32) + 0.5) * (g / n)
        idx = np.minimum(pos.astype(np.int64), g - 1)
        frac = pos - idx.astype(np.float32)
        return idx, frac * frac * (3.0 - 2.0 * frac)

    iy, fy = axis(height, gh)
    ix, fx = axis(width, gw)
    rows = grid[iy] * (1.0 - fy)[:, None] + grid[iy + 1] * fy[:, None]
    return np.ascontiguousarray(rows[:, ix] * (1.0 - fx) + rows[:, ix + 1] * fx)


def _background(layout: Layout, rng: np.random.Generator):
    """Sky and ground: RGB (H, W, 3), depth (H, W) and temperature (H, W), float32, and
    the material (H, W) uint8 (sky, ground, road or marking: where each weighs most)."""
    H, W = layout.height, layout.width
    rows = np.arange(H, dtype=np.float32) + 0.5
    dy = rows - layout.horizon
    ground_depth = layout.camera_height * layout.focal / np.maximum(dy, 1e-6)
    depth_col = np.where(dy > 0, np.minimum(ground_depth, SKY_DEPTH), SKY_DEPTH).astype(np.float32)
    depth = np.repeat(depth_col[:, None], W, axis=1)
    g = int(np.count_nonzero(dy <= 0))  # first ground row

    image = np.empty((H, W, 3), np.float32)
    heat = np.empty((H, W), np.float32)

    zenith, horizon_colour = (np.asarray(c, np.float32) for c in _SKIES[int(rng.integers(len(_SKIES)))])
    sky_gain = rng.uniform(0.8, 1.1)
    t = (rows[:g] / max(layout.horizon, 1.0))[:, None] ** 0.8
    clouds = rng.uniform(0.0, 0.15) * np.maximum(_smooth_noise(rng, g, W, 4), 0.0) if g else 0.0
    # Colour planes are written one channel at a time: numpy is much slower
    # broadcasting over a trailing axis of length 3.
    for c in range(3):
        sky = (zenith[c] + (horizon_colour[c] - zenith[c]) * t) * sky_gain
        image[:g, :, c] = np.clip(sky + clouds, 0.0, 1.0)
    heat[:g] = 20.0 + 20.0 * t

    z = depth_col[g:, None]
    per_metre = layout.focal / z  # ground pixels per metre, per row
    lateral = np.abs((np.arange(W, dtype=np.float32) + 0.5 - 0.5 * W) / per_metre - layout.road_offset)
    road = np.clip((layout.road_half_width - lateral) * per_metre + 0.5, 0.0, 1.0)
    edge = np.clip((0.1 - np.abs(lateral - (layout.road_half_width - 0.3))) * per_metre + 0.5, 0.0, 1.0)
    centre = np.clip((0.08 - lateral) * per_metre + 0.5, 0.0, 1.0) * (np.mod(z, 6.0) < 3.0)
    marks = np.maximum(edge, centre * (rng.random() < 0.8)) * road
    texture = _smooth_noise(rng, H - g, W, 10)
    asphalt = rng.uniform(0.22, 0.42) * np.array([1.0, 1.0, rng.uniform(1.0, 1.08)], np.float32)
    off_road = np.asarray(_OFF_ROAD[int(rng.integers(len(_OFF_ROAD)))], np.float32) * rng.uniform(0.8, 1.1)
    unmarked = 1.0 - marks
    off_weight = (1.0 + 0.15 * texture) * (1.0 - road) * unmarked
    road_weight = (1.0 + 0.08 * texture) * road * unmarked
    for c in range(3):
        image[g:, :, c] = off_weight * off_road[c] + road_weight * asphalt[c] + 0.85 * marks
    heat[g:] = 70.0 + 28.0 * road + 8.0 * texture - 15.0 * marks
    material = np.full((H, W), _MAT["sky"], np.uint8)
    material[g:] = np.where(marks >= 0.5, _MAT["marking"],
                            np.where(road >= 0.5, _MAT["road"], _MAT["ground"]))
    return image, depth, heat, material


def _draw_item(p: Placement, layout: Layout, rng: np.random.Generator):
    """Rasterises one placement into its on-screen patch.

    Returns (y0, y1, x0, x1), silhouette (bool), RGB (float32), temperature (float32)
    and material (uint8) over the patch, or None when the patch is off-screen.
    """
    scale = layout.focal / p.depth  # pixels per metre
    bottom = layout.horizon + layout.camera_height * scale
    half_w = 0.5 * p.width * scale
    x0, x1 = max(math.floor(p.x_center - half_w), 0), min(math.ceil(p.x_center + half_w), layout.width)
    y0 = max(math.floor(bottom - p.height * scale), 0)
    y1 = min(math.ceil(bottom), layout.height)
    if x0 >= x1 or y0 >= y1:
        return None
    if p.kind in _CLASS_SIZE:
        ref_height = _CLASS_SIZE[p.kind][0]
        unit, args = ref_height / p.height, ()  # shape units per metre
    else:
        ref_height = p.height
        unit, args = 1.0, (p.height, p.width)
    X = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - p.x_center) * (p.facing * unit / scale))[None, :]
    Y = ((bottom - np.arange(y0, y1, dtype=np.float32) - 0.5) * (unit / scale))[:, None]
    size = (y1 - y0, x1 - x0)
    parts = _SHAPES[p.kind](X, Y, rng, unit / scale, *args)
    part_index = np.zeros(size, np.uint8)  # 0 = outside, k = parts[k - 1]
    for k, (mask, _, _, _) in enumerate(parts, start=1):
        part_index[np.broadcast_to(mask, size)] = k
    palette = np.array([(0.0, 0.0, 0.0)] + [rgb for _, rgb, _, _ in parts], np.float32)
    temperatures = np.array([0.0] + [t for _, _, t, _ in parts], np.float32)
    materials = np.array([0] + [_MAT[m] for _, _, _, m in parts], np.uint8)
    silhouette = part_index > 0
    shade = 0.82 + 0.28 * np.clip(Y / ref_height, 0.0, 1.0)  # lit from above
    colour = np.empty(size + (3,), np.float32)
    for c in range(3):
        colour[..., c] = palette[part_index, c] * shade
    heat = temperatures[part_index] + np.float32(rng.normal(0.0, 6.0))
    return (y0, y1, x0, x1), silhouette, colour, heat, materials[part_index]


def render_layout(layout: Layout, rng: np.random.Generator, record_id: str = "scenes/render", *,
                  thermal: str = "simple", condition: str | None = None,
                  condition_rng: np.random.Generator | None = None) -> dict:
    """Renders a layout into a sample record (see the data contracts).

    Appearance (colours, textures, noise) comes from ``rng``; geometry from the
    layout. Placements are drawn from far to near whatever their order in the
    layout; boxes are listed in layout order.

    With a ``condition`` (one of :data:`scenes_conditions.CONDITIONS`) the record
    also holds ``hazy``, the visible image in that condition (``image`` stays the
    daylight one), and ``condition``; ``thermal="lwir"`` (which needs a condition)
    renders ``thermal`` with the LWIR model instead of the simple rendering. Their
    draws come from ``condition_rng`` (default: a generator spawned from ``rng``),
    so ``image``, boxes, depth and mask are those of the plain rendering.
    """
    if thermal not in conditions_lib.THERMAL_MODELS:
        raise ValueError(f"render_layout: thermal must be one of {conditions_lib.THERMAL_MODELS}, "
                         f"got {thermal!r}")
    if thermal != "simple" and condition is None:
        raise ValueError(f"render_layout: thermal={thermal!r} needs a condition (the time of day "
                         f"and fog the infrared image is rendered in), one of "
                         f"{conditions_lib.CONDITIONS}")
    if condition is not None and condition not in conditions_lib.CONDITIONS:
        raise ValueError(f"render_layout: unknown condition {condition!r}; choose from "
                         f"{conditions_lib.CONDITIONS}")
    _check_size(layout.height, layout.width)
    if not 1.0 <= layout.horizon <= layout.height - 2:
        raise ValueError(f"render_layout: horizon row {layout.horizon!r} is outside the image")
    for p in layout.items:
        if p.kind not in _SHAPES:
            raise ValueError(
                f"render_layout: unknown placement kind {p.kind!r}; choose from {tuple(_SHAPES)}"
            )
        if not p.depth > 0:  # also rejects NaN
            raise ValueError(f"render_layout: placement depth must be > 0, got {p.depth!r} for {p.kind!r}")
    H, W = layout.height, layout.width
    image, depth, heat, material = _background(layout, rng)
    label = np.zeros((H, W), np.uint8)
    instance = np.full((H, W), -1, np.int16)
    owner = np.full((H, W), -1, np.int16)  # the layout item each pixel shows
    drawn = []  # (item index, class id, silhouette size, patch)
    for i in sorted(range(len(layout.items)), key=lambda k: -layout.items[k].depth):
        p = layout.items[i]
        result = _draw_item(p, layout, rng)
        if result is None:
            continue
        (y0, y1, x0, x1), silhouette, colour, item_heat, item_material = result
        cls = CLASSES.index(p.kind) if p.kind in CLASSES else -1
        region = (slice(y0, y1), slice(x0, x1))
        np.copyto(image[region], colour, where=silhouette[..., None])
        np.copyto(heat[region], item_heat, where=silhouette)
        np.copyto(depth[region], p.depth, where=silhouette, casting="unsafe")
        np.copyto(label[region], cls + 1, where=silhouette, casting="unsafe")
        np.copyto(instance[region], i if cls >= 0 else -1, where=silhouette, casting="unsafe")
        np.copyto(material[region], item_material, where=silhouette)
        np.copyto(owner[region], i, where=silhouette, casting="unsafe")
        if cls >= 0:
            drawn.append((i, cls, int(silhouette.sum()), (y0, y1, x0, x1)))

    boxes, classes = [], []
    for i, cls, total, (y0, y1, x0, x1) in sorted(drawn):
        visible = instance[y0:y1, x0:x1] == i
        if visible.sum() < MIN_VISIBLE_FRACTION * total:
            continue
        ys, xs = np.nonzero(visible.any(axis=1))[0], np.nonzero(visible.any(axis=0))[0]
        box = (x0 + xs[0], y0 + ys[0], x0 + xs[-1] + 1, y0 + ys[-1] + 1)
        if min(box[2] - box[0], box[3] - box[1]) < MIN_BOX_SIDE:
            continue
        boxes.append(box)
        classes.append(cls)

    # Global exposure, then sensor grain (uniform noise: cheaper to draw than
    # Gaussian, and equally invisible at this level).
    brightness = np.float32(rng.uniform(0.75, 1.1))
    grain = (rng.random((H, W), dtype=np.float32) - 0.5) * np.float32(rng.uniform(3.5, 10.0) / 255.0)
    for c in range(3):
        image[..., c] = image[..., c] * brightness + grain
    np.clip(image, 0.0, 1.0, out=image)
    heat += (rng.random((H, W), dtype=np.float32) - 0.5) * np.float32(7.0)
    record = {
        "image": (image * 255.0 + 0.5).astype(np.uint8),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "classes": np.asarray(classes, np.int32),
        "difficult": np.zeros(len(classes), bool),
        "depth": depth,
        "mask": label,
        "thermal": np.clip(heat + 0.5, 0.0, 255.0).astype(np.uint8)[..., None],
        "id": record_id,
        "valid": np.array(True),
    }
    if condition is not None:
        crng = condition_rng if condition_rng is not None else rng.spawn(1)[0]
        weather = conditions_lib.draw_weather(condition, crng)
        states = conditions_lib.object_states(layout.items, crng)
        clean01 = record["image"].astype(np.float32) / np.float32(255.0)
        record["hazy"] = conditions_lib.visible_image(layout, clean01, material, owner, depth,
                                                      weather, states, crng)
        if thermal == "lwir":
            record["thermal"] = conditions_lib.lwir_image(layout, material, owner, depth, clean01,
                                                          weather, states, crng)
        record["condition"] = condition
    return record


def render_scene(rng: np.random.Generator, height: int, width: int, record_id: str = "scenes/render",
                 **conditions) -> dict:
    """Samples a layout with ``rng`` and renders it: one random sample record
    (``conditions``: :func:`render_layout`'s keywords)."""
    return render_layout(sample_layout(rng, height, width), rng, record_id, **conditions)


class ScenesSource:
    """Deterministic procedural scenes as a grain RandomAccessDataSource.

    Sample ``i`` of a split is rendered from ``np.random.default_rng([seed,
    split_code, i])``, so it is identical across calls, instances and processes,
    and the train / val / test splits draw from disjoint seed streams.

    Args:
      split: "train", "val" or "test".
      num_samples: length of the source.
      image_size: (height, width) in pixels, each at least 32.
      seed: non-negative integer selecting the dataset instance.
      thermal: "simple" (every object hot over a cold background, in any weather) or
        "lwir" (:mod:`adverse_vision.data.scenes_conditions`; needs ``conditions``).
      conditions: names from :data:`scenes_conditions.CONDITIONS`; when given, sample
        ``i`` is seen in one of them (drawn from ``[seed, split_code, i, 2]``): its
        record holds ``hazy``, the visible image in that condition, and
        ``condition``. Its draws come from ``[seed, split_code, i, 1]``, so the
        daylight image, boxes, depth and mask do not change with these arguments.
    """

    def __init__(
        self,
        split: str = "train",
        num_samples: int = 1000,
        image_size: tuple[int, int] = (256, 256),
        seed: int = 0,
        thermal: str = "simple",
        conditions: tuple[str, ...] = (),
    ):
        if split not in _SPLIT_CODES:
            raise ValueError(f"ScenesSource: unknown split {split!r}; choose one of {tuple(_SPLIT_CODES)}")
        if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"ScenesSource: num_samples must be a positive integer, got {num_samples!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"ScenesSource: seed must be a non-negative integer, got {seed!r}")
        if np.shape(image_size) != (2,):
            raise ValueError(f"ScenesSource: image_size must be (height, width), got {image_size!r}")
        _check_size(*image_size)
        if thermal not in conditions_lib.THERMAL_MODELS:
            raise ValueError(f"ScenesSource: thermal must be one of {conditions_lib.THERMAL_MODELS}, "
                             f"got {thermal!r}")
        conditions = tuple(conditions)
        unknown = [c for c in conditions if c not in conditions_lib.CONDITIONS]
        if unknown or len(set(conditions)) != len(conditions):
            raise ValueError(f"ScenesSource: conditions must be distinct names from "
                             f"{conditions_lib.CONDITIONS}, got {conditions!r}")
        if thermal != "simple" and not conditions:
            raise ValueError(f"ScenesSource: thermal={thermal!r} needs conditions (the time of day "
                             "and fog the infrared image is rendered in)")
        self.thermal = thermal
        self.conditions = conditions
        self.split = split
        self.num_samples = int(num_samples)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index) -> dict:
        i = operator.index(index)
        if i < 0:
            i += self.num_samples
        if not 0 <= i < self.num_samples:
            raise IndexError(f"ScenesSource: index {index} out of range for {self.num_samples} samples")
        key = [self.seed, _SPLIT_CODES[self.split], i]
        rng = np.random.default_rng(key)
        record_id = f"scenes/{self.split}/{i}"
        if not self.conditions:
            return render_scene(rng, *self.image_size, record_id=record_id)
        pick = int(np.random.default_rng(key + [2]).integers(len(self.conditions)))
        return render_scene(rng, *self.image_size, record_id=record_id, thermal=self.thermal,
                            condition=self.conditions[pick],
                            condition_rng=np.random.default_rng(key + [1]))

    def __repr__(self) -> str:
        extra = (f", thermal={self.thermal!r}, conditions={self.conditions!r}"
                 if self.conditions else "")
        return (
            f"ScenesSource(split={self.split!r}, num_samples={self.num_samples}, "
            f"image_size={self.image_size}, seed={self.seed}{extra})"
        )
