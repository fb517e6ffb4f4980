"""Host-side augmentation of sample records (numpy + Pillow).

Every geometric transform moves all pixel-aligned arrays of a record together:

* ``image`` and its degraded twin ``hazy`` (RGB uint8, bilinear),
* ``depth`` (float32, bilinear),
* ``mask`` (uint8 labels, nearest neighbour),
* ``thermal`` (uint8 (H, W, 1), bilinear),
* ``saliency`` (float (H, W) or (H, W, 1), values in [0, 1], bilinear),

and maps ``boxes`` (xyxy pixels) with them. Records are never modified in place:
each function returns a new dict (unchanged arrays may be shared).

Padding values (letterbox and canvas placement):

* RGB images: grey ``PAD_VALUE`` = 114 (the YOLOX convention),
* ``mask``: 255 (ignore),
* ``depth``: the record's maximum depth (padding looks "far"),
* ``thermal``: 0,
* ``saliency``: 0.

Geometric transforms also keep a private ``"_window"`` entry, int32
``(y0, x0, y1, x1)``: the part of the current image that holds real pixels (not
padding). The pipeline synthesises degradations only inside it, so padding stays
identical in the clean and the degraded image. It is absent until the first
geometric transform; absent means the whole image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

PAD_VALUE = 114
MASK_IGNORE = 255

RGB_KEYS = ("image", "hazy")
ALIGNED_KEYS = ("image", "hazy", "depth", "mask", "thermal", "saliency")
WINDOW_KEY = "_window"

DEFAULT_AUGMENT: dict[str, Any] = {
    # Probability of a horizontal flip (0 disables).
    "flip": 0.5,
    # Random resize range, relative to the output canvas (None disables).
    "scale": (0.5, 1.5),
    # Aspect-ratio jitter: the aspect is multiplied by U(1-j, 1+j) / U(1-j, 1+j).
    "jitter": 0.3,
    # Multiplicative HSV gains (hue, saturation, value) (None disables).
    "hsv": (0.1, 0.7, 0.4),
    # Boxes narrower or shorter than this (pixels) after a random crop are dropped.
    "min_box_size": 2.0,
}


def _record_name(record: Mapping[str, Any]) -> str:
    return str(record.get("id", "<record without id>"))


def check_record(record: Mapping[str, Any]) -> tuple[int, int]:
    """Validates the aligned arrays of a record; returns the image (h, w)."""
    if not isinstance(record, Mapping):
        raise ValueError(f"a sample record must be a dict, got {type(record).__name__}")
    if "image" not in record:
        raise ValueError(f"record {_record_name(record)}: missing key 'image'")
    image = np.asarray(record["image"])
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"record {_record_name(record)}: 'image' must be uint8 (H, W, 3), got"
            f" {image.dtype} {image.shape}"
        )
    h, w = image.shape[:2]
    expected = {
        "hazy": ((h, w, 3), np.uint8),
        "depth": ((h, w), None),
        "mask": ((h, w), np.uint8),
        "thermal": ((h, w, 1), np.uint8),
    }
    for key, (shape, dtype) in expected.items():
        if key in record:
            arr = np.asarray(record[key])
            if arr.shape != shape or (dtype is not None and arr.dtype != dtype):
                want = f"{np.dtype(dtype).name if dtype else 'float'} {shape}"
                raise ValueError(
                    f"record {_record_name(record)}: {key!r} must be {want} to match"
                    f" 'image', got {arr.dtype} {arr.shape}"
                )
    if "saliency" in record:
        arr = np.asarray(record["saliency"])
        if arr.shape not in ((h, w), (h, w, 1)) or not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(
                f"record {_record_name(record)}: 'saliency' must be float {(h, w)} or"
                f" {(h, w, 1)} to match 'image', got {arr.dtype} {arr.shape}"
            )
    boxes = np.asarray(record.get("boxes", np.zeros((0, 4), np.float32)))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"record {_record_name(record)}: 'boxes' must be (N, 4), got {boxes.shape}"
        )
    n = boxes.shape[0]
    for key in ("classes", "difficult"):
        if key in record and np.asarray(record[key]).shape != (n,):
            raise ValueError(
                f"record {_record_name(record)}: {key!r} must have shape ({n},) like"
                f" 'boxes', got {np.asarray(record[key]).shape}"
            )
    return h, w


def _boxes(record):
    return np.asarray(record.get("boxes", np.zeros((0, 4), np.float32)), np.float32)


def _select_boxes(out: dict, keep: np.ndarray) -> None:
    """Keeps the boxes (and their per-box fields) where ``keep`` is True."""
    for key in ("boxes", "classes", "difficult"):
        if key in out:
            out[key] = np.asarray(out[key])[keep]


def _window(record, h, w) -> np.ndarray:
    if WINDOW_KEY in record:
        return np.asarray(record[WINDOW_KEY], np.int32)
    return np.array([0, 0, h, w], np.int32)


# ----------------------------------------------------------------------------
# Resizing.


def _resize(arr: np.ndarray, key: str, new_h: int, new_w: int) -> np.ndarray:
    """Resizes one aligned array to (new_h, new_w) with the filter of its kind."""
    if arr.shape[0] == new_h and arr.shape[1] == new_w:
        return arr
    size = (new_w, new_h)
    if key == "mask":
        return np.asarray(Image.fromarray(arr).resize(size, Image.NEAREST))
    if key == "depth":
        img = Image.fromarray(np.ascontiguousarray(arr, np.float32), mode="F")
        return np.asarray(img.resize(size, Image.BILINEAR), np.float32)
    if key == "thermal":
        img = Image.fromarray(np.ascontiguousarray(arr[..., 0]))
        return np.asarray(img.resize(size, Image.BILINEAR))[..., None]
    if key == "saliency":
        img = Image.fromarray(np.ascontiguousarray(arr.reshape(arr.shape[:2]), np.float32))
        return np.asarray(img.resize(size, Image.BILINEAR), np.float32).reshape(
            (new_h, new_w) + arr.shape[2:]
        )
    return np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize(size, Image.BILINEAR))


def _fill_value(record, key):
    if key in RGB_KEYS:
        return PAD_VALUE
    if key == "mask":
        return MASK_IGNORE
    if key in ("thermal", "saliency"):
        return 0
    depth = np.asarray(record["depth"])
    return float(depth.max()) if depth.size else 1.0


def _place(
    record: Mapping[str, Any],
    new_h: int,
    new_w: int,
    dx: int,
    dy: int,
    out_h: int,
    out_w: int,
    box_scale: tuple[float, float],
    min_box_size: float | None,
) -> dict:
    """Resizes the aligned arrays to (new_h, new_w) and pastes them at (dx, dy).

    The canvas is (out_h, out_w); parts outside it are cropped. Boxes are mapped
    by ``x * sx + dx``, clipped to the canvas, and, when ``min_box_size`` is given,
    boxes narrower or shorter than it are dropped.
    """
    h, w = check_record(record)
    out = dict(record)
    # Canvas region that receives the resized image, and the matching source region.
    x0, y0 = max(dx, 0), max(dy, 0)
    x1, y1 = min(dx + new_w, out_w), min(dy + new_h, out_h)
    for key in ALIGNED_KEYS:
        if key not in record:
            continue
        arr = np.asarray(record[key])
        resized = _resize(arr, key, new_h, new_w)
        canvas = np.full((out_h, out_w) + arr.shape[2:], _fill_value(record, key), arr.dtype)
        if x1 > x0 and y1 > y0:
            canvas[y0:y1, x0:x1] = resized[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
        out[key] = canvas

    sx, sy = box_scale
    # Real-pixel window, mapped the same way as the boxes and clipped.
    wy0, wx0, wy1, wx1 = _window(record, h, w).astype(np.float64)
    win = np.array(
        [
            np.clip(np.floor(wy0 * new_h / h) + dy, 0, out_h),
            np.clip(np.floor(wx0 * new_w / w) + dx, 0, out_w),
            np.clip(np.ceil(wy1 * new_h / h) + dy, 0, out_h),
            np.clip(np.ceil(wx1 * new_w / w) + dx, 0, out_w),
        ],
        np.int32,
    )
    out[WINDOW_KEY] = win

    boxes = _boxes(record)
    boxes = boxes * np.array([sx, sy, sx, sy], np.float32) + np.array([dx, dy, dx, dy], np.float32)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, out_w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, out_h)
    out["boxes"] = boxes.astype(np.float32)
    if min_box_size is not None:
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        _select_boxes(out, (bw >= min_box_size) & (bh >= min_box_size))
    return out


# ----------------------------------------------------------------------------
# Transforms.


def random_flip(record: Mapping[str, Any], rng: np.random.Generator, p: float = 0.5) -> dict:
    """Horizontal flip of every aligned array and the boxes with probability ``p``."""
    h, w = check_record(record)
    if not rng.random() < p:
        return dict(record)
    out = dict(record)
    for key in ALIGNED_KEYS:
        if key in record:
            out[key] = np.ascontiguousarray(np.asarray(record[key])[:, ::-1])
    boxes = _boxes(record).copy()
    boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    out["boxes"] = boxes
    if WINDOW_KEY in record:
        y0, x0, y1, x1 = _window(record, h, w)
        out[WINDOW_KEY] = np.array([y0, w - x1, y1, w - x0], np.int32)
    return out


def random_scale_crop(
    record: Mapping[str, Any],
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.5, 1.5),
    jitter: float = 0.3,
    out_size: int | tuple[int, int] | None = None,
    min_box_size: float = 2.0,
) -> dict:
    """Random resize with aspect jitter, placed at a random offset on a canvas.

    The canvas is ``out_size`` ((h, w) or an int for a square) or the image size.
    The new aspect ratio is ``w / h * U(1-jitter, 1+jitter) / U(1-jitter, 1+jitter)``;
    the longer side of the resized image is ``U(*scale)`` times the matching canvas
    side. The offset is uniform over all placements (negative offsets crop when
    the resized image is larger than the canvas). Boxes are scaled, shifted,
    clipped to the canvas, and dropped when narrower or shorter than
    ``min_box_size`` pixels.
    """
    h, w = check_record(record)
    if out_size is None:
        out_h, out_w = h, w
    elif isinstance(out_size, int):
        out_h = out_w = out_size
    else:
        out_h, out_w = (int(v) for v in out_size)
    lo, hi = scale
    if not 0 < lo <= hi:
        raise ValueError(f"random_scale_crop: scale must be 0 < lo <= hi, got {scale}")
    if not 0 <= jitter < 1:
        raise ValueError(f"random_scale_crop: jitter must be in [0, 1), got {jitter}")
    aspect = (w / h) * rng.uniform(1 - jitter, 1 + jitter) / rng.uniform(1 - jitter, 1 + jitter)
    s = rng.uniform(lo, hi)
    if aspect < 1:
        new_h = s * out_h
        new_w = new_h * aspect
    else:
        new_w = s * out_w
        new_h = new_w / aspect
    new_h, new_w = max(1, int(round(new_h))), max(1, int(round(new_w)))
    span_x, span_y = out_w - new_w, out_h - new_h
    dx = int(np.floor(rng.uniform(min(0, span_x), max(0, span_x) + 1)))
    dy = int(np.floor(rng.uniform(min(0, span_y), max(0, span_y) + 1)))
    dx = min(max(dx, min(0, span_x)), max(0, span_x))
    dy = min(max(dy, min(0, span_y)), max(0, span_y))
    return _place(record, new_h, new_w, dx, dy, out_h, out_w, (new_w / w, new_h / h), min_box_size)


def hsv_jitter(images: list[np.ndarray], gains: tuple[float, float, float]) -> list[np.ndarray]:
    """Applies the same multiplicative HSV gains to each RGB uint8 image."""
    gains = np.asarray(gains, np.float64)
    if np.all(gains == 1.0):
        return [np.asarray(im) for im in images]
    x = np.arange(256, dtype=np.float64)
    lut_h = np.mod(np.round(x * gains[0]), 256)
    lut_s = np.clip(np.round(x * gains[1]), 0, 255)
    lut_v = np.clip(np.round(x * gains[2]), 0, 255)
    lut = np.concatenate([lut_h, lut_s, lut_v]).astype(np.int64).tolist()
    out = []
    for im in images:
        hsv = Image.fromarray(np.ascontiguousarray(im)).convert("HSV").point(lut)
        out.append(np.asarray(hsv.convert("RGB")))
    return out


def random_hsv(
    record: Mapping[str, Any],
    rng: np.random.Generator,
    hgain: float = 0.1,
    sgain: float = 0.7,
    vgain: float = 0.4,
) -> dict:
    """HSV colour jitter with gains ``1 + U(-1, 1) * gain`` per channel.

    The same gains are used for ``image`` and its degraded twin ``hazy``; depth,
    mask and thermal are untouched. Hue is multiplied modulo the full circle.
    """
    check_record(record)
    gains = rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain]) + 1.0
    out = dict(record)
    keys = [k for k in RGB_KEYS if k in record]
    for key, im in zip(keys, hsv_jitter([record[k] for k in keys], gains)):
        out[key] = im
    return out


def letterbox(record: Mapping[str, Any], size: int) -> dict:
    """Resizes keeping the aspect (long side = ``size``) and pads to size x size.

    The resized image is centred. Adds ``scale`` (float32), ``offset`` (float32
    (x, y) padding) and ``orig_size`` (int32 (h, w) of the input): a box in the
    output maps back to the input by ``(box - [ox, oy, ox, oy]) / scale``. Boxes
    are transformed with exactly that ``scale``/``offset`` and are all kept.
    """
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"letterbox: size must be a positive int, got {size!r}")
    h, w = check_record(record)
    s = size / max(h, w)
    new_h, new_w = max(1, int(round(h * s))), max(1, int(round(w * s)))
    dx, dy = (size - new_w) // 2, (size - new_h) // 2
    out = _place(record, new_h, new_w, dx, dy, size, size, (s, s), None)
    out["scale"] = np.float32(s)
    out["offset"] = np.array([dx, dy], np.float32)
    out["orig_size"] = np.array([h, w], np.int32)
    return out


# ----------------------------------------------------------------------------
# Config-driven composition.


def augment_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Returns ``DEFAULT_AUGMENT`` updated by ``cfg``; rejects unknown keys."""
    out = dict(DEFAULT_AUGMENT)
    if cfg is None:
        return out
    if not isinstance(cfg, Mapping) and not hasattr(cfg, "items"):
        raise ValueError(f"augment config must be a dict, got {type(cfg).__name__}")
    for key, value in dict(cfg.items()).items():
        if key not in DEFAULT_AUGMENT:
            raise ValueError(
                f"augment config: unknown key {key!r} (known: {sorted(DEFAULT_AUGMENT)})"
            )
        out[key] = value
    if not 0 <= float(out["flip"]) <= 1:
        raise ValueError(f"augment config: 'flip' must be a probability, got {out['flip']}")
    if out["scale"] is not None:
        lo, hi = out["scale"]
        if not 0 < lo <= hi:
            raise ValueError(f"augment config: 'scale' must be 0 < lo <= hi, got {out['scale']}")
    if not 0 <= float(out["jitter"]) < 1:
        raise ValueError(f"augment config: 'jitter' must be in [0, 1), got {out['jitter']}")
    if out["hsv"] is not None and len(out["hsv"]) != 3:
        raise ValueError(f"augment config: 'hsv' must be 3 gains (h, s, v), got {out['hsv']}")
    return out


def augment(
    record: Mapping[str, Any],
    rng: np.random.Generator,
    cfg: Mapping[str, Any] | None = None,
    out_size: int | tuple[int, int] | None = None,
) -> dict:
    """Training augmentation: flip, random scale/aspect/placement, HSV jitter.

    ``cfg`` entries (see ``DEFAULT_AUGMENT``) override the defaults. With
    ``out_size``, the random placement draws directly on an ``out_size`` canvas
    (so a following ``letterbox`` to the same size is the identity); without
    it the canvas keeps the image size.
    """
    cfg = augment_config(cfg)
    out = random_flip(record, rng, p=float(cfg["flip"]))
    if cfg["scale"] is not None:
        out = random_scale_crop(
            out,
            rng,
            scale=tuple(cfg["scale"]),
            jitter=float(cfg["jitter"]),
            out_size=out_size,
            min_box_size=float(cfg["min_box_size"]),
        )
    if cfg["hsv"] is not None:
        out = random_hsv(out, rng, *(float(g) for g in cfg["hsv"]))
    return out
