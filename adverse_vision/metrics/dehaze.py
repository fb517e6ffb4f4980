"""Dehazing scores at native size, with the released test protocol beside them.

PSNR and SSIM are those of :mod:`adverse_vision.metrics.image` (scikit-image's
``peak_signal_noise_ratio`` and ``structural_similarity`` with ``channel_axis=-1``,
the 7x7 uniform window, ``data_range=1``) on RGB images in [0, 1], each hazy input
and each dehazed output scored against its clear image at the images' NATIVE size.

The released test script of the depth-guided dehazing paper scores differently: it
resizes the hazy input and the clear image before the network sees them, and scores
the output of the resized input against the resized clear image. The size
(:func:`official_size`): when the longer side exceeds 1024 it becomes 1024 and the
shorter side ``ceil(short * 1024 / long)``; then both sides are floored to a multiple
of 32 (``32 * (side // 32)``). The resampling is Pillow's Lanczos filter (the old
``Image.ANTIALIAS``) on the 8-bit images, a copy when the size does not change. Its
PSNR is ``10 log10(1 / MSE)`` over the RGB tensor and its SSIM scikit-image's with
the same defaults as here, so only the resizing differs; the resized scores are
reported apart, labelled ``*_official``, and are not comparable with native ones.

Inputs: (H, W, 3) images, uint8 (divided by 255) or floats in [0, 1]. Float images
are clipped to [0, 1] before scoring, as an image written to disk would be (a
network output overshoots a little); non-finite values raise. :func:`official_resize`
resizes uint8 images exactly as the script does; float images are resized channel by
channel in float32 with the same filter (Pillow's 8-bit path rounds and clips between
its two passes, so the two differ by a grey level or so on natural images).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from adverse_vision.metrics.image import psnr, ssim

__all__ = ["DEHAZE_KEYS", "OFFICIAL_MAX_SIDE", "OFFICIAL_MULTIPLE", "DehazeMeter",
           "dehaze_scores", "official_resize", "official_size"]

OFFICIAL_MAX_SIDE = 1024
OFFICIAL_MULTIPLE = 32

#: Every key :func:`dehaze_scores` may give: (key, what is scored, protocol).
DEHAZE_KEYS = (
    ("psnr_input", "hazy input", "native"),
    ("ssim_input", "hazy input", "native"),
    ("psnr", "dehazed", "native"),
    ("ssim", "dehazed", "native"),
    ("psnr_input_official", "hazy input", "official"),
    ("ssim_input_official", "hazy input", "official"),
    ("psnr_official", "dehazed", "official"),
    ("ssim_official", "dehazed", "official"),
)


def official_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) the released test script resizes a ``width`` x ``height``
    image to (see the module docstring).

    Raises:
      ValueError: a side would become 0 (the image is under 32 pixels).
    """
    w, h = int(width), int(height)
    if w <= 0 or h <= 0:
        raise ValueError(f"official_size: the image size must be positive, got {w}x{h}")
    if h > w and h > OFFICIAL_MAX_SIDE:
        w, h = int(math.ceil(w * OFFICIAL_MAX_SIDE / h)), OFFICIAL_MAX_SIDE
    elif h <= w and w > OFFICIAL_MAX_SIDE:
        w, h = OFFICIAL_MAX_SIDE, int(math.ceil(h * OFFICIAL_MAX_SIDE / w))
    m = OFFICIAL_MULTIPLE
    w, h = m * (w // m), m * (h // m)
    if w == 0 or h == 0:
        raise ValueError(f"official_size: a {width}x{height} image has a side under "
                         f"{OFFICIAL_MULTIPLE} pixels, which the released protocol resizes to 0")
    return w, h


def _check_image(image: Any, name: str) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3 or a.size == 0:
        raise ValueError(f"{name}: expected an RGB image (H, W, 3), got shape {a.shape}")
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected uint8 or float values in [0, 1], got dtype {a.dtype}")
    if a.dtype != np.uint8 and not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: the image has non-finite values")
    return a


def _unit(image: np.ndarray) -> np.ndarray:
    """float64 in [0, 1]: uint8 / 255, floats clipped."""
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    return np.clip(image.astype(np.float64), 0.0, 1.0)


def official_resize(image: Any, name: str = "official_resize") -> np.ndarray:
    """``image`` resized as the released test script does (Lanczos to
    :func:`official_size`); uint8 stays uint8, floats come back as float32 in their
    own range (not clipped)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    a = _check_image(image, name)
    h, w = a.shape[:2]
    size = official_size(w, h)
    if size == (w, h):
        return a.copy() if a.dtype == np.uint8 else a.astype(np.float32)
    lanczos = Image.Resampling.LANCZOS
    if a.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize(size, lanczos))
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c], np.float32), "F")
                           .resize(size, lanczos)) for c in range(3)]
    return np.stack(channels, axis=-1)


def _pair_scores(clear: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    a, b = _unit(clear), _unit(other)
    return float(psnr(a, b, 1.0)), float(ssim(a, b, 1.0))


def dehaze_scores(clear: Any, dehazed: Any = None, hazy: Any = None, *,
                  official: Any = None, official_protocol: bool = True) -> dict[str, float]:
    """The scores of one image (keys of :data:`DEHAZE_KEYS`).

    Args:
      clear: the clear (ground-truth) image at native size.
      dehazed: the dehazed output at native size, or None.
      hazy: the hazy input at native size, or None.
      official: the network's output for ``official_resize(hazy)`` (the released
        protocol's input), at the official size; None scores ``dehazed`` resized
        instead, which approximates it (the network saw the native image).
      official_protocol: also give the ``*_official`` scores.

    Returns ``psnr``/``ssim`` (given ``dehazed``), ``psnr_input``/``ssim_input``
    (given ``hazy``) and, with ``official_protocol``, their ``*_official`` twins.
    """
    c = _check_image(clear, "clear image")
    images = {}
    for key, value in (("", dehazed), ("_input", hazy)):
        if value is None:
            continue
        image = _check_image(value, "dehazed image" if key == "" else "hazy image")
        if image.shape != c.shape:
            raise ValueError(f"{'dehazed' if key == '' else 'hazy'} image is "
                             f"{image.shape[1]}x{image.shape[0]} but the clear image is "
                             f"{c.shape[1]}x{c.shape[0]}")
        images[key] = image
    if not images:
        raise ValueError("dehaze_scores: give a dehazed image, a hazy image or both")
    if official is not None and ("" not in images or not official_protocol):
        raise ValueError("dehaze_scores: an official-protocol output needs the native "
                         "dehazed image too, and official_protocol=True")
    out: dict[str, float] = {}
    for key, image in images.items():
        out[f"psnr{key}"], out[f"ssim{key}"] = _pair_scores(c, image)
    if official_protocol:
        small_clear = official_resize(c, "clear image")
        for key, image in images.items():
            if key == "" and official is not None:
                small = _check_image(official, "official-protocol output")
                if small.shape != small_clear.shape:
                    raise ValueError(
                        f"official-protocol output is {small.shape[1]}x{small.shape[0]} but "
                        f"the protocol resizes this {c.shape[1]}x{c.shape[0]} image to "
                        f"{small_clear.shape[1]}x{small_clear.shape[0]}")
            else:
                small = official_resize(image, "dehazed image" if key == "" else "hazy image")
            out[f"psnr{key}_official"], out[f"ssim{key}_official"] = _pair_scores(small_clear,
                                                                                 small)
    return {k: out[k] for k, _, _ in DEHAZE_KEYS if k in out}


class DehazeMeter:
    """Mean dehazing scores over the images of an evaluation, one image at a time.

    Args:
      official_protocol: also score the released protocol (``*_official`` keys).

    :meth:`add` takes one image's clear image and its dehazed output and/or hazy
    input, at native size (the images of a benchmark differ in size); every image
    must give the same kinds. :meth:`compute` gives the means and ``images``;
    :attr:`rows` keeps each image's scores (with its ``id``); :meth:`table` prints
    the means, the native and the resized protocol labelled apart.
    """

    def __init__(self, *, official_protocol: bool = True):
        self.official_protocol = bool(official_protocol)
        self.rows: list[dict[str, Any]] = []

    def reset(self) -> None:
        """Forget every image added so far."""
        self.rows = []

    @property
    def count(self) -> int:
        return len(self.rows)

    def add(self, clear: Any, dehazed: Any = None, hazy: Any = None, *, official: Any = None,
            image_id: str | None = None) -> dict[str, float]:
        """Scores one image (see :func:`dehaze_scores`) and returns its scores."""
        scores = dehaze_scores(clear, dehazed, hazy, official=official,
                               official_protocol=self.official_protocol)
        name = str(image_id) if image_id is not None else f"image {len(self.rows)}"
        if self.rows and set(scores) != set(self.rows[0]) - {"id"}:
            raise ValueError(
                f"DehazeMeter.add ({name}): scores {sorted(scores)} differ from the first "
                f"image's {sorted(set(self.rows[0]) - {'id'})}; give the same images for each")
        self.rows.append({"id": name, **scores})
        return scores

    def compute(self) -> dict[str, float | int]:
        """Mean of every score over the images added, and ``images`` (their number).
        An identical pair (PSNR ``inf``) makes the PSNR mean ``inf``."""
        if not self.rows:
            raise ValueError("DehazeMeter.compute: no image has been added yet")
        keys = [k for k, _, _ in DEHAZE_KEYS if k in self.rows[0]]
        out: dict[str, float | int] = {k: float(np.mean([r[k] for r in self.rows])) for k in keys}
        out["images"] = len(self.rows)
        return out

    def table(self, result: dict[str, Any] | None = None) -> str:
        """The means as text: one line per scored image kind and protocol."""
        r = self.compute() if result is None else result
        labels = {"native": "native size",
                  "official": f"resized to multiples of {OFFICIAL_MULTIPLE} (released protocol)"}
        lines = [f"Dehazing, {r['images']} images; PSNR in dB on [0, 1] RGB, SSIM 7x7 uniform"]
        rows = []
        for key, what, protocol in DEHAZE_KEYS:
            if key.startswith("psnr") and key in r:
                rows.append((f"{what}, {labels[protocol]}", r[key], r[key.replace("psnr", "ssim")]))
        width = max(len(label) for label, _, _ in rows)
        lines.append(f"{'':<{width}}  {'PSNR':>7}  {'SSIM':>6}")
        for label, p, s in rows:
            lines.append(f"{label:<{width}}  {p:>7.2f}  {s:>6.4f}")
        return "\n".join(lines)
