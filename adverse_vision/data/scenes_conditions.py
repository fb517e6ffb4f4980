"""Time of day, fog, and what a visible and a thermal camera record in them.

The embedded scenes (:mod:`adverse_vision.data.scenes`) are rendered in daylight, and
their simple thermal image shows every object hot over a cold background in any
weather. With ``data.conditions`` each sample is seen in one condition, drawn per
sample from the listed ones:

* ``day_clear``: the daylight rendering as it is.
* ``day_fog``: fog on it (the scattering model with the scene's depth, A 0.6-0.9,
  beta 0.08-0.16: the fog of the scenes' other recipes).
* ``night``: the scene lit by 1-3 street lamps beside the road (pools of warm light,
  each a few metres wide on the ground, with the lamp heads' glare) over a faint
  ambient light (0.3-2 % of daylight); running vehicles' head and tail lamps glow;
  then the sensor noise of a dark exposure (exposure gain 0.6-1, shot and read noise).
* ``night_fog``: the night scene in fog with a dark airlight (A 0.03-0.12).

With ``data.thermal="lwir"`` the infrared image comes from the model below, in the
same condition, instead of the simple rendering. It works in degrees Celsius:

* Per scene: the ambient temperature (day 5-35, night -5-25) and, by day, a solar
  load ``S`` (0.3-1: cloud cover).
* Background: a clear sky 15-35 below ambient; asphalt ambient + ``S`` x 10-25 by
  day and ambient + 2-8 at night (the heat it stored), markings a little cooler;
  other ground ambient + ``S`` x 0-8 by day and 1-4 below ambient at night
  (radiative cooling); walls ambient + ``S`` x 0-10 (night + 0.5-4), windows
  reflecting the sky by day (2-6 below ambient) and leaking heat at night (+3-10);
  tree crowns 3 below to 1 above ambient. Smooth patches of warmer and cooler surface
  (0.8 K on the ground at night, up to 3.8 K in full sun; less on objects) add the
  clutter a sunlit scene has.
* Per object, drawn per sample: a person's skin 30-34, clothing between ambient and
  skin (30-70 % of the difference gets through its insulation, plus sun); a vehicle runs or is
  parked (car 50 %, motorbike and bus 80 % running): running, its engine is 15-60
  above ambient by type, its tyres 8-20, its exhaust a hot spot at the rear bottom
  (20-60), its lamps warm at night; parked, it sits at ambient plus the sun it
  absorbs (dark paint more: ``S`` x (1 - luminance) x 8-18) and cools below ambient
  at night. Bicycles carry no heat of their own. Glass reflects the sky.
* Fog attenuates the infrared far less than the visible light (extinction
  0.003-0.012 per metre, growing with the fog's density), towards the ambient
  temperature.
* The camera: optics blur, a quarter of the visible resolution (a 640-pixel thermal
  core beside a 2.5k visible camera; registered back to the visible grid bilinearly), temporal noise (NETD 0.04-0.1 K), column stripes
  (0.05-0.3 K) and pixel offsets (0.02-0.1 K) left after non-uniformity correction,
  and a linear automatic gain control that maps the frame's 1st-99.9th percentile of
  temperature (at least a 4 K span) onto 0-255.

By day the visible camera sees everything and the thermal image has lower contrast
(sun-warmed, cluttered ground; parked cars at the road's temperature); at night the
visible camera sees what street lamps light, the thermal camera people and running
vehicles, while parked cars and bicycles fade into, or below, a warm road. Every
draw is seeded per sample (see :class:`adverse_vision.data.scenes.ScenesSource`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from adverse_vision import degrade

__all__ = ["CONDITIONS", "MATERIALS", "THERMAL_MODELS", "Weather", "camera", "draw_weather",
           "lwir_image", "object_states", "temperatures", "visible_image"]

CONDITIONS = ("day_clear", "day_fog", "night", "night_fog")
THERMAL_MODELS = ("simple", "lwir")

#: Materials of the scene's surfaces: the background's first, then the objects'.
MATERIALS = ("sky", "ground", "road", "marking", "clothing", "skin", "hair", "tyre", "metal",
             "paint", "glass", "engine", "lamp", "rubber", "wall", "window", "bark", "foliage")
_M = {name: i for i, name in enumerate(MATERIALS)}

#: The infrared sensor's pixel pitch in visible pixels.
IR_DOWNSAMPLE = 4
#: Fraction of vehicles of each class that run (engine, tyres and exhaust hot).
RUNNING = {"car": 0.5, "motorbike": 0.8, "bus": 0.8}
#: Engine temperature above ambient while running, per class (degrees).
ENGINE = {"car": (20.0, 45.0), "motorbike": (30.0, 60.0), "bus": (15.0, 35.0)}
_VEHICLES = tuple(RUNNING)
_PEOPLE = ("person", "motorbike")  # classes with a person (a motorbike's rider)
_MIN_AGC_SPAN = 4.0  # degrees


@dataclasses.dataclass(frozen=True)
class Weather:
    """One sample's condition and the scene-wide draws both cameras share."""
    condition: str
    night: bool
    fog: float  # 0: clear; else the fog's density in (0, 1]
    ambient: float  # degrees Celsius
    sun: float  # solar load, 0 at night


def draw_weather(condition: str, rng: np.random.Generator) -> Weather:
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose from {CONDITIONS}")
    night = condition.startswith("night")
    fog = float(rng.uniform(0.05, 1.0)) if condition.endswith("fog") else 0.0
    ambient = float(rng.uniform(-5.0, 25.0) if night else rng.uniform(5.0, 35.0))
    sun = 0.0 if night else float(rng.uniform(0.3, 1.0))
    return Weather(condition, night, fog, ambient, sun)


def object_states(items: Sequence[Any], rng: np.random.Generator) -> list[dict[str, float]]:
    """Per layout item, its thermal state: ``running`` (vehicles), ``skin`` and
    ``insulation`` (people and riders), offsets of its surfaces (degrees)."""
    states = []
    for p in items:
        s = {"running": 0.0, "jitter": float(rng.normal(0.0, 0.5))}
        if p.kind in _VEHICLES:
            s["running"] = float(rng.random() < RUNNING[p.kind])
            s["engine"] = float(rng.uniform(*ENGINE[p.kind]))
            s["tyre"] = float(rng.uniform(8.0, 20.0))
            s["exhaust"] = float(rng.uniform(20.0, 60.0))
            s["lamp"] = float(rng.uniform(5.0, 25.0))
        if p.kind in _PEOPLE:
            s["skin"] = float(rng.uniform(30.0, 34.0))
            s["insulation"] = float(rng.uniform(0.3, 0.7))
        s["absorb"] = float(rng.uniform(8.0, 18.0))
        s["cool"] = float(rng.uniform(0.0, 2.0))
        states.append(s)
    return states


# ---------------------------------------------------------------------------
# Thermal (LWIR) camera


def _background_temperatures(w: Weather, rng: np.random.Generator) -> np.ndarray:
    """Degrees per material for pixels that belong to no object (and the defaults of
    materials an object does not set itself)."""
    a, sun = w.ambient, w.sun
    t = np.full(len(MATERIALS), a, np.float32)
    t[_M["sky"]] = a - rng.uniform(15.0, 35.0)
    road = a + (rng.uniform(2.0, 8.0) if w.night else sun * rng.uniform(10.0, 25.0))
    t[_M["road"]] = road
    t[_M["marking"]] = road - (rng.uniform(0.5, 1.5) if w.night else sun * rng.uniform(3.0, 8.0))
    t[_M["ground"]] = a + (-rng.uniform(1.0, 4.0) if w.night else sun * rng.uniform(0.0, 8.0))
    t[_M["wall"]] = a + (rng.uniform(0.5, 4.0) if w.night else sun * rng.uniform(0.0, 10.0))
    t[_M["window"]] = a + (rng.uniform(3.0, 10.0) if w.night else -rng.uniform(2.0, 6.0))
    t[_M["bark"]] = a + (-rng.uniform(0.0, 1.0) if w.night else sun * rng.uniform(0.0, 4.0))
    t[_M["foliage"]] = a + (-rng.uniform(0.5, 2.0) if w.night else rng.uniform(-3.0, 1.0))
    return t


def _object_temperatures(kind: str, s: dict[str, float], w: Weather,
                         background: np.ndarray) -> np.ndarray:
    """Degrees per material on one object (paint's sun load is added per pixel)."""
    a = w.ambient
    passive = a + s["jitter"] - (s["cool"] if w.night else 0.0)
    t = np.full(len(MATERIALS), passive, np.float32)
    t[_M["glass"]] = a - (s["cool"] + 1.0 if w.night else 2.0 + 4.0 * w.sun)
    if kind in _PEOPLE:
        skin = s["skin"]
        cloth = a + (1.0 - s["insulation"]) * (skin - a) + 2.0 * w.sun
        t[_M["skin"]] = skin
        t[_M["clothing"]] = cloth
        t[_M["hair"]] = a + 0.5 * (skin - a)
    if kind in _VEHICLES and s["running"]:
        t[_M["engine"]] = a + s["engine"]
        t[_M["tyre"]] = t[_M["metal"]] = a + s["tyre"]
        t[_M["glass"]] += 2.0 if w.night else 0.0  # a warm cabin behind it
        if w.night:
            t[_M["lamp"]] = a + s["lamp"]
    if kind in ("building", "tree"):
        for m in ("wall", "window", "bark", "foliage"):
            t[_M[m]] = background[_M[m]] + s["jitter"]
    return t


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a (H, W) float32 field, edges extended."""
    radius = max(1, math.ceil(3.0 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="edge")
        n = x.shape[axis]
        x = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(taps))
    return x.astype(np.float32)


def _to_sensor(x: np.ndarray, factor: int) -> np.ndarray:
    """Area average over ``factor`` x ``factor`` blocks (edges extended)."""
    h, w = x.shape
    hs, ws = -(-h // factor), -(-w // factor)
    x = np.pad(x, ((0, hs * factor - h), (0, ws * factor - w)), mode="edge")
    return x.reshape(hs, factor, ws, factor).mean(axis=(1, 3))


def _to_visible_grid(x: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Bilinear resampling of the sensor image onto the visible pixel grid."""
    def axis(n, m):
        pos = np.clip((np.arange(n, dtype=np.float32) + 0.5) / factor - 0.5, 0.0, m - 1)
        i0 = np.minimum(pos.astype(np.int64), m - 1)
        i1 = np.minimum(i0 + 1, m - 1)
        return i0, i1, (pos - i0).astype(np.float32)
    y0, y1, fy = axis(shape[0], x.shape[0])
    x0, x1, fx = axis(shape[1], x.shape[1])
    rows = x[y0] * (1.0 - fy)[:, None] + x[y1] * fy[:, None]
    return rows[:, x0] * (1.0 - fx) + rows[:, x1] * fx


def temperatures(layout: Any, material: np.ndarray, owner: np.ndarray, depth: np.ndarray,
                 clean01: np.ndarray, weather: Weather, states: Sequence[dict[str, float]],
                 rng: np.random.Generator) -> np.ndarray:
    """The scene's apparent temperature in degrees Celsius, float32 (H, W), as the
    thermal camera's lens receives it (fog included; see the module docstring).

    ``material`` indexes :data:`MATERIALS`, ``owner`` is the layout item each pixel
    shows (-1: background), ``clean01`` the daylight image in [0, 1] (paint's
    absorption of the sun follows its luminance)."""
    h, w = material.shape
    background = _background_temperatures(weather, rng)
    temp = background[material]
    ground = (material == _M["road"]) | (material == _M["ground"]) | (material == _M["marking"])
    clutter = np.where(ground, 0.8 + 3.0 * weather.sun, 0.2 + 1.0 * weather.sun)
    temp = temp + clutter * degrade.smooth_field(rng, h, w, 12)
    luma = clean01 @ np.array([0.299, 0.587, 0.114], np.float32)
    for i, p in enumerate(layout.items):
        where = owner == i
        if not where.any():
            continue
        s = states[i]
        table = _object_temperatures(p.kind, s, weather, background)
        temp[where] = table[material[where]]
        paint = where & (material == _M["paint"])
        temp[paint] += weather.sun * (1.0 - luma[paint]) * s["absorb"]
        if p.kind in _VEHICLES and s["running"]:
            temp += _exhaust(layout, p, where, s["exhaust"])
    if weather.fog:
        t = np.exp(-(0.003 + 0.009 * weather.fog) * depth).astype(np.float32)
        temp = temp * t + weather.ambient * (1.0 - t)
    return temp.astype(np.float32)


def camera(temp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What the thermal camera makes of ``temp`` (degrees, (H, W)): its 8-bit image on
    the visible grid, uint8 (H, W, 1) (optics, sensor and gain control as the module
    docstring says)."""
    h, w = temp.shape
    f = IR_DOWNSAMPLE
    sensor = _to_sensor(_blur(temp, f * rng.uniform(0.5, 1.0)), f)
    hs, ws = sensor.shape
    sensor = (sensor + rng.normal(0.0, rng.uniform(0.04, 0.1), (hs, ws))
              + rng.normal(0.0, rng.uniform(0.05, 0.3), (1, ws))
              + rng.normal(0.0, rng.uniform(0.02, 0.1), (hs, ws))).astype(np.float32)
    lo, hi = np.percentile(sensor, (1.0, 99.9))
    if hi - lo < _MIN_AGC_SPAN:
        mid = 0.5 * (hi + lo)
        lo, hi = mid - 0.5 * _MIN_AGC_SPAN, mid + 0.5 * _MIN_AGC_SPAN
    counts = np.clip((sensor - lo) * (255.0 / (hi - lo)), 0.0, 255.0)
    return (_to_visible_grid(counts, (h, w), f) + 0.5).astype(np.uint8)[..., None]


def lwir_image(layout: Any, material: np.ndarray, owner: np.ndarray, depth: np.ndarray,
               clean01: np.ndarray, weather: Weather, states: Sequence[dict[str, float]],
               rng: np.random.Generator) -> np.ndarray:
    """The thermal camera's image of the scene: :func:`camera` of
    :func:`temperatures`, uint8 (H, W, 1)."""
    return camera(temperatures(layout, material, owner, depth, clean01, weather, states, rng),
                  rng)


def _exhaust(layout: Any, p: Any, where: np.ndarray, rise: float) -> np.ndarray:
    """A hot spot at a running vehicle's rear bottom, on its own pixels."""
    scale = layout.focal / p.depth
    bottom = layout.horizon + layout.camera_height * scale
    x = p.x_center - p.facing * 0.42 * p.width * scale
    y = bottom - 0.12 * p.height * scale
    r = max(0.25 * scale, 1.0)
    rows = np.arange(where.shape[0], dtype=np.float32)[:, None] + 0.5
    cols = np.arange(where.shape[1], dtype=np.float32)[None, :] + 0.5
    spot = np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2.0 * r * r)).astype(np.float32)
    return np.where(where, rise * spot, 0.0).astype(np.float32)


# ---------------------------------------------------------------------------
# Visible camera


_LAMP_LIGHT = np.array([1.0, 0.88, 0.68], np.float32)  # sodium-ish warm white


def _street_light(layout: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Illumination (H, W) of 1-3 street lamps over a faint ambient light, and the
    lamp heads' glare (H, W)."""
    h, w = layout.height, layout.width
    rows = np.arange(h, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(w, dtype=np.float32)[None, :] + 0.5
    light = np.full((h, w), rng.uniform(0.003, 0.02), np.float32)
    glare = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        side = 1.0 if rng.random() < 0.5 else -1.0
        lateral = layout.road_offset + side * (layout.road_half_width + rng.uniform(0.5, 2.0))
        z = rng.uniform(6.0, 60.0)
        scale = layout.focal / z
        x = 0.5 * w + lateral * scale
        y = layout.horizon + layout.camera_height * scale
        radius = rng.uniform(4.0, 8.0) * scale
        light += rng.uniform(0.4, 0.9) * np.exp(
            -((cols - x) ** 2 + (rows - y) ** 2) / (2.0 * radius * radius))
        head_y = layout.horizon + (layout.camera_height - 6.0) * scale
        head_r = max(0.3 * scale, 0.7)
        glare += np.exp(-((cols - x) ** 2 + (rows - head_y) ** 2) / (2.0 * head_r * head_r))
    return light, glare


def visible_image(layout: Any, clean01: np.ndarray, material: np.ndarray, owner: np.ndarray,
                  depth: np.ndarray, weather: Weather, states: Sequence[dict[str, float]],
                  rng: np.random.Generator) -> np.ndarray:
    """The visible camera's image of the scene in its condition, uint8 (H, W, 3)."""
    image = clean01
    if weather.night:
        light, glare = _street_light(layout, rng)
        image = image * light[..., None] * _LAMP_LIGHT
        lamps = np.zeros(material.shape, bool)
        for i, p in enumerate(layout.items):
            if p.kind in _VEHICLES and states[i]["running"]:
                lamps |= (owner == i) & (material == _M["lamp"])
        image = np.where(lamps[..., None], np.maximum(clean01 * 1.2, 0.6), image)
        image = image + np.minimum(glare, 1.0)[..., None] * _LAMP_LIGHT
    if weather.fog:
        beta = 0.08 + 0.08 * weather.fog
        airlight = (0.03, 0.12) if weather.night else (0.6, 0.9)
        image = degrade.haze(np.clip(image, 0.0, 1.0), rng, depth=depth, A=airlight, beta=beta)
    if weather.night:
        image = degrade.low_light(np.clip(image, 0.0, 1.0), rng, gamma=1.0, gain=(0.6, 1.0),
                                  shot=(5e-3, 2e-2), read=(1e-2, 3e-2))
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
