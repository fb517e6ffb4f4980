"""Labelled detection boxes on RGB uint8 images (Pillow).

Each class has its own colour (:func:`class_color`); a box is its outline in that
colour and a label ``"<class> <score>"`` in a filled rectangle of the same colour,
with black or white text, whichever reads better on it. Boxes and labels are clipped
to the image: a box partly outside is drawn along the image edge, a label that would
leave the image is moved inside it.
"""

from __future__ import annotations

import colorsys
import functools
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["class_color", "draw_detections", "line_width_for"]

# Hues of the first classes, picked by eye to be far apart; later classes step the hue
# circle by the golden angle, so neighbouring ids never share a colour.
_BASE_HUES = (0.0, 0.33, 0.6, 0.14, 0.8, 0.5, 0.07, 0.92, 0.25, 0.7)
_GOLDEN = 0.6180339887498949


def class_color(class_id: int) -> tuple[int, int, int]:
    """A saturated RGB colour for a class id, the same on every call."""
    class_id = int(class_id)
    if class_id < 0:
        raise ValueError(f"class_color: class id must be >= 0, got {class_id}")
    if class_id < len(_BASE_HUES):
        hue, value = _BASE_HUES[class_id], 0.95
    else:
        hue = (_BASE_HUES[-1] + (class_id - len(_BASE_HUES) + 1) * _GOLDEN) % 1.0
        value = 0.95 if (class_id // len(_BASE_HUES)) % 2 else 0.75
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _text_color(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def line_width_for(height: int, width: int) -> int:
    """Box outline width that stays visible on small and large images."""
    return max(1, int(round(min(height, width) / 240)))


@functools.lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _label_text(class_names: Optional[Sequence[str]], class_id: int,
                score: Optional[float]) -> str:
    if class_names is not None and 0 <= class_id < len(class_names):
        name = str(class_names[class_id])
    else:
        name = str(class_id)
    return name if score is None else f"{name} {score:.2f}"


def draw_detections(
    image: np.ndarray,
    boxes,
    classes,
    scores=None,
    class_names: Optional[Sequence[str]] = None,
    line_width: Optional[int] = None,
    font_size: Optional[int] = None,
    labels: bool = True,
) -> np.ndarray:
    """Draws boxes with class labels and scores; returns a new RGB uint8 image.

    Args:
      image: uint8 (H, W, 3) RGB; not modified.
      boxes: (N, 4) x1, y1, x2, y2 in pixels of ``image`` (continuous coordinates: the
        box covers pixel columns x1 .. x2 - 1).
      classes: (N,) integer class ids (>= 0), which pick the colours.
      scores: optional (N,) scores shown after the class name.
      class_names: names indexed by class id; an id without a name is shown as a number.
      line_width: outline width in pixels (default from the image size).
      font_size: label text height in pixels (default from the image size).
      labels: False draws the outlines only.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_detections: image must be uint8 (H, W, 3), got "
                         f"{image.dtype} {image.shape}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    classes = np.asarray(classes, np.int64).reshape(-1)
    if classes.shape[0] != boxes.shape[0]:
        raise ValueError(f"draw_detections: {boxes.shape[0]} boxes but {classes.shape[0]} classes")
    if scores is not None:
        scores = np.asarray(scores, np.float64).reshape(-1)
        if scores.shape[0] != boxes.shape[0]:
            raise ValueError(f"draw_detections: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    if np.any(classes < 0):
        raise ValueError(f"draw_detections: class ids must be >= 0, got {classes.min()}")

    h, w = image.shape[:2]
    lw = line_width if line_width is not None else line_width_for(h, w)
    fs = font_size if font_size is not None else max(8, min(24, int(round(min(h, w) / 24))))
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    font = _font(fs)

    # Lowest scores first, so the most confident boxes and labels end up on top.
    order = np.argsort(scores, kind="stable") if scores is not None else np.arange(len(boxes))
    for i in order:
        x1, y1, x2, y2 = boxes[i]
        if not np.all(np.isfinite(boxes[i])):
            continue
        # Continuous box -> inclusive pixel rectangle, clipped to the image.
        px1 = int(np.clip(np.floor(x1), 0, w - 1))
        py1 = int(np.clip(np.floor(y1), 0, h - 1))
        px2 = int(np.clip(np.ceil(x2) - 1, 0, w - 1))
        py2 = int(np.clip(np.ceil(y2) - 1, 0, h - 1))
        if px2 < px1 or py2 < py1 or x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
            continue  # empty or entirely outside the image
        color = class_color(classes[i])
        draw.rectangle((px1, py1, px2, py2), outline=color, width=lw)
        if not labels:
            continue
        text = _label_text(class_names, int(classes[i]),
                           None if scores is None else float(scores[i]))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2, bottom - top + 2  # one pixel of margin each side
        # Above the box when there is room, otherwise just inside its top edge.
        ty = py1 - th if py1 - th >= 0 else py1
        tx = px1
        tx = max(0, min(tx, w - tw))
        ty = max(0, min(ty, h - th))
        draw.rectangle((tx, ty, min(tx + tw - 1, w - 1), min(ty + th - 1, h - 1)), fill=color)
        draw.text((tx + 1 - left, ty + 1 - top), text, fill=_text_color(color), font=font)
    return np.asarray(canvas)
