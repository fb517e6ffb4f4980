"""The procedural scenes as segmentation and classification data.

* :class:`ScenesSegmentationSource`: the scenes with their semantic masks, for a
  segmenter. Mask values are 0 for background (sky, ground, buildings, trees) and
  ``k + 1`` for class ``k`` of :data:`adverse_vision.data.scenes.CLASSES`; the class
  names in label order are :data:`SEG_CLASSES`.
* :class:`ScenesCropsSource`: object classification. Sample ``i`` is the ``i``-th
  annotated object met when the scenes of a split are rendered in order (scene 0's
  boxes in their order, then scene 1's, ...), cut out as a square around its box
  and resized; its label is the object's class index in ``scenes.CLASSES``.

Both are deterministic functions of ``(split, seed, index)`` like
:class:`~adverse_vision.data.scenes.ScenesSource`, so every process and host sees
the same data.
"""

from __future__ import annotations

import logging
import math
import operator
import threading
import time
from typing import Any

import numpy as np
from PIL import Image

from adverse_vision.data import scenes

__all__ = ["SEG_CLASSES", "ScenesCropsSource", "ScenesSegmentationSource"]

SEG_CLASSES = ("background",) + scenes.CLASSES

logger = logging.getLogger("adverse_vision.data")


def _image_size(image_size: Any, name: str) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        return int(image_size), int(image_size)
    if np.shape(image_size) != (2,):
        raise ValueError(f"{name}: image_size must be an int or (height, width), got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _check_index(index: Any, n: int, name: str) -> int:
    i = operator.index(index)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"{name}: index {index} out of range for {n} samples")
    return i


class ScenesSegmentationSource:
    """Rendered scenes with their semantic masks (see the module docstring).

    Args:
      split: "train", "val" or "test".
      num_samples: length of the source.
      image_size: an int (square) or (height, width), each at least 32.
      seed: selects the dataset instance (the same scenes as a
        :class:`~adverse_vision.data.scenes.ScenesSource` with these arguments).

    Records: ``{"image", "mask", "id", "valid"}``; ``mask`` uint8 (H, W) with values
    in ``[0, len(SEG_CLASSES))``.
    """

    def __init__(self, split: str = "train", num_samples: int = 1000,
                 image_size: int | tuple[int, int] = 256, seed: int = 0):
        self.scenes = scenes.ScenesSource(
            split=split, num_samples=num_samples,
            image_size=_image_size(image_size, "ScenesSegmentationSource"), seed=seed,
        )
        self.split = split
        self.class_names = SEG_CLASSES

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: Any) -> dict[str, Any]:
        rec = self.scenes[index]
        return {"image": rec["image"], "mask": rec["mask"], "id": rec["id"],
                "valid": np.bool_(True)}

    def __repr__(self) -> str:
        s = self.scenes
        return (
            f"ScenesSegmentationSource(split={s.split!r}, num_samples={s.num_samples}, "
            f"image_size={s.image_size}, seed={s.seed})"
        )


class ScenesCropsSource:
    """Object crops of the rendered scenes, for classification.

    The crop of an object is the square centred on its box whose side is the box's
    longer side times ``1 + context``; the parts of that square outside the scene
    are filled with the scene's mean colour, and the square is resized (bilinear)
    to ``crop_size`` x ``crop_size``.

    The list of objects is built on first use by rendering scenes ``0, 1, ...``
    of the split until ``num_samples`` objects are found (about 3 per scene; some
    milliseconds per scene at 256 px). Reading a sample renders its scene again;
    the last scene read is kept, so reading in order renders each scene once.

    Args:
      split: "train", "val" or "test".
      num_samples: number of crops.
      crop_size: side of the returned crops in pixels.
      scene_size: side of the rendered scenes (at least 32).
      seed: selects the scenes (those of ``ScenesSource(split, ..., seed=seed)``).
      context: relative enlargement of the crop around the box (>= 0).

    Records: ``{"image", "label", "id", "valid"}``; ``id`` is
    ``"scenes_crops/<split>/<scene>/<box>"``.
    """

    def __init__(self, split: str = "train", num_samples: int = 1000, crop_size: int = 64,
                 scene_size: int = 256, seed: int = 0, context: float = 0.15):
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
                or num_samples < 1:
            raise ValueError(
                f"ScenesCropsSource: num_samples must be a positive integer, got {num_samples!r}")
        if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) \
                or crop_size < 1:
            raise ValueError(
                f"ScenesCropsSource: crop_size must be a positive integer, got {crop_size!r}")
        if not (isinstance(context, (int, float, np.floating)) and math.isfinite(context)
                and context >= 0):
            raise ValueError(f"ScenesCropsSource: context must be a number >= 0, got {context!r}")
        self.num_samples = int(num_samples)
        self.crop_size = int(crop_size)
        self.context = float(context)
        # Enough scenes for any realistic draw (at least one object is placed in
        # every scene); the search below stops long before.
        self._max_scenes = 100 * self.num_samples + 1000
        self.scenes = scenes.ScenesSource(
            split=split, num_samples=self._max_scenes,
            image_size=_image_size(scene_size, "ScenesCropsSource"), seed=seed,
        )
        self.split = split
        self.scene_size = self.scenes.image_size[0]
        self.seed = int(seed)
        self.class_names = scenes.CLASSES
        self._objects: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._last: tuple[int, dict[str, Any]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lock"] = None
        state["_last"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- the object list -------------------------------------------------------------
    def _scene(self, index: int) -> dict[str, Any]:
        last = self._last
        if last is not None and last[0] == index:
            return last[1]
        rec = self.scenes[index]
        self._last = (index, rec)
        return rec

    @property
    def objects(self) -> dict[str, np.ndarray]:
        """The crops' objects: ``scene`` (int64 (N,), scene index), ``box_index``
        (int64 (N,), position in that scene's boxes), ``box`` (float32 (N, 4), xyxy
        pixels in the scene) and ``label`` (int32 (N,))."""
        if self._objects is None:
            with self._lock:
                if self._objects is None:
                    self._objects = self._find_objects()
        return self._objects

    def _find_objects(self) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        scene_ids, box_ids, boxes, labels = [], [], [], []
        scene = 0
        while len(labels) < self.num_samples:
            if scene >= self._max_scenes:
                raise ValueError(
                    f"ScenesCropsSource: only {len(labels)} objects in {scene} scenes; "
                    f"cannot reach num_samples={self.num_samples}"
                )
            rec = self._scene(scene)
            for k, (box, cls) in enumerate(zip(rec["boxes"], rec["classes"])):
                if len(labels) == self.num_samples:
                    break
                scene_ids.append(scene)
                box_ids.append(k)
                boxes.append(box)
                labels.append(int(cls))
            scene += 1
        logger.info("%r: %d objects found in %d scenes (%.1f s)", self, len(labels), scene,
                    time.perf_counter() - start)
        return {
            "scene": np.asarray(scene_ids, np.int64),
            "box_index": np.asarray(box_ids, np.int64),
            "box": np.asarray(boxes, np.float32).reshape(-1, 4),
            "label": np.asarray(labels, np.int32),
        }

    @property
    def num_scenes(self) -> int:
        """How many scenes the crops come from."""
        return int(self.objects["scene"][-1]) + 1

    # -- access ----------------------------------------------------------------------
    def crop(self, image: np.ndarray, box: Any) -> np.ndarray:
        """The ``crop_size`` square crop of ``box`` (xyxy pixels) from ``image``."""
        h, w = image.shape[:2]
        x1, y1, x2, y2 = (float(v) for v in box)
        side = max(1, round(max(x2 - x1, y2 - y1) * (1.0 + self.context)))
        x0 = round(0.5 * (x1 + x2) - 0.5 * side)
        y0 = round(0.5 * (y1 + y2) - 0.5 * side)
        mean = np.round(image.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
        canvas = np.empty((side, side, 3), np.uint8)
        canvas[:] = mean
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
        if sx1 > sx0 and sy1 > sy0:
            canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
        if side == self.crop_size:
            return canvas
        size = (self.crop_size, self.crop_size)
        return np.asarray(Image.fromarray(canvas).resize(size, Image.BILINEAR))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: Any) -> dict[str, Any]:
        i = _check_index(index, self.num_samples, "ScenesCropsSource")
        objects = self.objects
        scene, k = int(objects["scene"][i]), int(objects["box_index"][i])
        rec = self._scene(scene)
        return {
            "image": self.crop(rec["image"], objects["box"][i]),
            "label": int(objects["label"][i]),
            "id": f"scenes_crops/{self.split}/{scene}/{k}",
            "valid": np.bool_(True),
        }

    def __repr__(self) -> str:
        return (
            f"ScenesCropsSource(split={self.split!r}, num_samples={self.num_samples}, "
            f"crop_size={self.crop_size}, scene_size={self.scene_size}, seed={self.seed}, "
            f"context={self.context})"
        )
