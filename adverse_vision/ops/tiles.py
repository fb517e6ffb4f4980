"""Apply a fixed-size network to an image of any size by overlapping tiles.

:func:`tiled_apply` cuts an (H, W, C) image into ``tile`` x ``tile`` windows
placed every ``stride`` pixels (:func:`tile_starts`; the last window of a row or
column is flush with the image end), runs ``fn`` on fixed-size batches of windows
and averages the overlapping outputs into an (H, W, C') float32 image.

``fn`` may shrink each window by ``margin`` pixels on every side (a network with
unpadded convolutions, e.g. the "official" DN-HL denoiser with ``margin=3``): the
image is first extended by ``margin`` pixels on every side so that the shrunk
outputs cover the image exactly.

Padding: the margin is a mirror reflection of the image without repeating the
edge pixel (numpy "reflect"); an image still smaller than one tile is extended at
its bottom / right to the tile size, also by reflection. Along a side where a
single reflection cannot supply enough pixels (the padding is not smaller than
the side) the edge pixel is repeated instead. Padded pixels only feed ``fn``; the
outputs are cropped back to H x W.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["tile_starts", "tiled_apply"]


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)``.

    Tiles start at ``0, stride, 2 * stride, ...`` while they fit, and one more tile
    flush with the end (start ``size - tile``) is added when they leave a gap. When
    ``size <= tile`` the answer is ``[0]`` (one tile, which overhangs the end when
    ``size < tile``). ``stride`` must not exceed ``tile``.
    """
    size = _positive_int(size, "tile_starts: size")
    tile = _positive_int(tile, "tile_starts: tile")
    stride = _positive_int(stride, "tile_starts: stride")
    if stride > tile:
        raise ValueError(f"tile_starts: stride {stride} is larger than tile {tile}, "
                         "which would leave gaps")
    if size <= tile:
        return [0]
    last = size - tile
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def _pad_axis(x: np.ndarray, axis: int, before: int, after: int) -> np.ndarray:
    """Reflect-pad one axis, or edge-pad it where one reflection is not enough."""
    if before == 0 and after == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    side = x.shape[axis]
    mode = "reflect" if max(before, after) < side else "edge"
    return np.pad(x, widths, mode=mode)


def tiled_apply(fn: Callable[[Any], Any], image: Any, tile: int = 140, stride: int = 64,
                margin: int = 0, batch: int = 8) -> np.ndarray:
    """Run ``fn`` over overlapping tiles of ``image`` and average the outputs.

    Args:
      fn: maps a float32 batch ``(batch, tile, tile, C)`` (numpy) to an array
        ``(batch, tile - 2 * margin, tile - 2 * margin, C')`` (numpy or jax). It is
        always called with exactly ``batch`` tiles (the last batch is filled up by
        repeating its last tile), so a jitted ``fn`` is compiled once.
      image: (H, W, C) real array of any H, W >= 1; it is cast to float32.
      tile: the side of the square tiles fed to ``fn``.
      stride: the distance between neighbouring tiles; at most
        ``tile - 2 * margin`` so that the outputs leave no gap.
      margin: pixels that ``fn`` removes from each side of a tile.
      batch: the number of tiles per call of ``fn``.

    Returns the (H, W, C') float32 image where every pixel is the mean of the
    outputs of all tiles that cover it.
    """
    tile = _positive_int(tile, "tiled_apply: tile")
    stride = _positive_int(stride, "tiled_apply: stride")
    margin = _positive_int(margin, "tiled_apply: margin", minimum=0)
    batch = _positive_int(batch, "tiled_apply: batch")
    out_tile = tile - 2 * margin
    if out_tile < 1:
        raise ValueError(f"tiled_apply: margin {margin} leaves nothing of a {tile}-pixel tile")
    if stride > out_tile:
        raise ValueError(f"tiled_apply: stride {stride} is larger than the output tile "
                         f"{out_tile} (tile {tile} - 2 * margin {margin}), which would leave gaps")
    img = np.asarray(image)
    if img.ndim != 3 or min(img.shape) < 1:
        raise ValueError(f"tiled_apply: image must have shape (H, W, C) with every size >= 1, "
                         f"got {img.shape}")
    if img.dtype == np.bool_ or not np.issubdtype(img.dtype, np.number) \
            or np.issubdtype(img.dtype, np.complexfloating):
        raise ValueError(f"tiled_apply: image must hold real numbers, got dtype {img.dtype}")
    h, w = img.shape[:2]
    x = img.astype(np.float32)
    for axis in (0, 1):
        x = _pad_axis(x, axis, margin, margin)
        x = _pad_axis(x, axis, 0, max(tile - x.shape[axis], 0))
    ys = tile_starts(x.shape[0], tile, stride)
    xs = tile_starts(x.shape[1], tile, stride)
    positions = [(y, xx) for y in ys for xx in xs]

    total: np.ndarray | None = None
    count = np.zeros((x.shape[0] - 2 * margin, x.shape[1] - 2 * margin, 1), np.float64)
    for first in range(0, len(positions), batch):
        group = positions[first:first + batch]
        tiles = [x[y:y + tile, xx:xx + tile] for y, xx in group]
        tiles += [tiles[-1]] * (batch - len(tiles))
        out = np.asarray(fn(np.stack(tiles)))
        if out.ndim != 4 or out.shape[:3] != (batch, out_tile, out_tile):
            raise ValueError(f"tiled_apply: fn returned shape {out.shape}, expected "
                             f"({batch}, {out_tile}, {out_tile}, C') for tile {tile} and margin {margin}")
        if total is None:
            total = np.zeros(count.shape[:2] + out.shape[3:], np.float64)
        for (y, xx), o in zip(group, out[:len(group)]):
            total[y:y + out_tile, xx:xx + out_tile] += o
            count[y:y + out_tile, xx:xx + out_tile] += 1.0
    assert total is not None
    return (total[:h, :w] / count[:h, :w]).astype(np.float32)
