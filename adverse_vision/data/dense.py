"""The grain input pipeline of the dense tasks: classification, segmentation, denoising.

Records (``image`` uint8 RGB (H, W, 3), plus ``label`` for classification or
``mask`` uint8 (H, W), 255 = ignore, for segmentation) become fixed-size batches of
*clean* images; the noise of a denoising method is added on the device.

Batches (per host), ``S`` = ``image_size``:

* ``image``: uint8 (B, S, S, 3), the clean image,
* ``valid``: bool (B,), False for evaluation padding and undecodable samples,
* ``index``: int32 (B,), the global source index (-1 for padding),
* ``label``: int32 (B,) (task ``"classification"``),
* ``mask``: uint8 (B, S, S), 255 = ignore (task ``"segmentation"``).

Per-sample processing:

* training: classification images are first resized to S x S (as in evaluation);
  then every task scales the image by a random factor drawn from
  ``augment["scale"]`` (bilinear; the mask with nearest neighbour), pads it at the
  bottom and right to at least S x S (image 0, mask 255), takes a random S x S
  crop and flips it horizontally with probability ``augment["flip"]`` (image and
  mask together);
* evaluation (deterministic): classification resizes the image to S x S;
  segmentation and denoising pad as in training and take the centre S x S crop.

Sharding over hosts, shuffling, repetition, per-element random numbers, the padded
single evaluation pass, the problems met while reading (recorded into the source's
``problems`` in the consuming process) and the checkpointable iterator are those of
:func:`adverse_vision.data.pipeline.make_pipeline` (see its module docstring); save
and restore positions with :func:`adverse_vision.data.pipeline.get_state` /
:func:`~adverse_vision.data.pipeline.set_state`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from PIL import Image

from adverse_vision.data import handoff
from adverse_vision.data.pipeline import (
    _INDEX_KEY,
    _PAD_KEY,
    _positive_int,
    batched,
    check_common,
)

__all__ = ["DEFAULT_DENSE_AUGMENT", "MASK_IGNORE", "TASKS", "dense_augment_config",
           "make_dense_pipeline"]

TASKS = ("classification", "segmentation", "denoise")
MASK_IGNORE = 255
IMAGE_PAD = 0

DEFAULT_DENSE_AUGMENT: dict[str, Any] = {
    # Random resize factor range of the image (None disables).
    "scale": (0.75, 1.25),
    # Probability of a horizontal flip (0 disables).
    "flip": 0.5,
}


def dense_augment_config(augment: Mapping[str, Any] | None) -> dict[str, Any]:
    """``DEFAULT_DENSE_AUGMENT`` updated by ``augment``; rejects unknown keys and bad values."""
    out = dict(DEFAULT_DENSE_AUGMENT)
    if augment is None:
        return out
    if hasattr(augment, "to_dict"):
        augment = augment.to_dict()
    if not isinstance(augment, Mapping):
        raise ValueError(f"make_dense_pipeline: augment must be a dict, got {type(augment).__name__}")
    for key, value in augment.items():
        if key not in DEFAULT_DENSE_AUGMENT:
            raise ValueError(
                f"make_dense_pipeline: unknown augment key {key!r} "
                f"(known: {sorted(DEFAULT_DENSE_AUGMENT)})"
            )
        out[key] = value
    try:
        flip = float(out["flip"])
    except (TypeError, ValueError):
        flip = math.nan
    if not 0.0 <= flip <= 1.0:
        raise ValueError(f"make_dense_pipeline: augment 'flip' must be a probability, got {out['flip']!r}")
    out["flip"] = flip
    if out["scale"] is not None:
        try:
            lo, hi = (float(v) for v in out["scale"])
        except (TypeError, ValueError):
            lo = hi = math.nan
        if not 0.0 < lo <= hi:
            raise ValueError(
                f"make_dense_pipeline: augment 'scale' must be (lo, hi) with 0 < lo <= hi or None,"
                f" got {out['scale']!r}"
            )
        out["scale"] = (lo, hi)
    return out


# ----------------------------------------------------------------------------
# Per-sample processing (runs in grain workers; everything here must pickle).


def _resize(arr: np.ndarray, h: int, w: int, nearest: bool) -> np.ndarray:
    if arr.shape[:2] == (h, w):
        return arr
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((w, h), resample))


def _pad_to(arr: np.ndarray, size: int, value: int) -> np.ndarray:
    """Pads at the bottom and right so that both sides are at least ``size``."""
    h, w = arr.shape[:2]
    if h >= size and w >= size:
        return arr
    out = np.full((max(h, size), max(w, size)) + arr.shape[2:], value, arr.dtype)
    out[:h, :w] = arr
    return out


def _check_record(record: Mapping[str, Any], task: str, index: int) -> None:
    name = record.get("id", f"index {index}")
    image = np.asarray(record.get("image"))
    if "image" not in record or image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"record {name}: 'image' must be uint8 (H, W, 3), got {image.dtype} {image.shape}"
        )
    if task == "segmentation" and "mask" in record:
        mask = np.asarray(record["mask"])
        if mask.shape != image.shape[:2] or mask.dtype != np.uint8:
            raise ValueError(
                f"record {name}: 'mask' must be uint8 {image.shape[:2]} to match its image,"
                f" got {mask.dtype} {mask.shape}"
            )


class _DenseProcessor:
    """Crop / resize / flip of one record into its batch entry (train and eval)."""

    def __init__(self, *, task: str, image_size: int, augment_cfg: dict[str, Any] | None):
        self.task = task
        self.image_size = image_size
        self.augment_cfg = augment_cfg

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        record = dict(record)
        index = int(record.pop(_INDEX_KEY, -1))
        pad = bool(record.pop(_PAD_KEY, False))
        found = handoff.pop_found(record)
        valid = bool(record.get("valid", True)) and not pad
        _check_record(record, self.task, index)
        s = self.image_size
        image = np.asarray(record["image"])
        mask = None
        if self.task == "segmentation":
            if "mask" in record:
                mask = np.asarray(record["mask"])
            elif valid:
                raise ValueError(f"record {record.get('id', index)}: segmentation needs a 'mask'")
            else:
                mask = np.full(image.shape[:2], MASK_IGNORE, np.uint8)
        label = 0
        if self.task == "classification":
            if "label" in record:
                label = int(record["label"])
            elif valid:
                raise ValueError(f"record {record.get('id', index)}: classification needs a 'label'")

        if self.task == "classification":
            image = _resize(image, s, s, nearest=False)
        if self.augment_cfg is not None and rng is not None and not pad:
            image, mask = self._random(image, mask, rng)
        elif self.task != "classification":
            image, mask = self._centre(image, mask)

        out = {
            "image": np.ascontiguousarray(image, np.uint8),
            "valid": np.asarray(valid),
            "index": np.asarray(-1 if pad else index, np.int32),
            handoff.FOUND_KEY: handoff.found_entry(found),
        }
        if self.task == "classification":
            out["label"] = np.asarray(label, np.int32)
        if self.task == "segmentation":
            out["mask"] = np.ascontiguousarray(mask, np.uint8)
        return out

    def _random(self, image, mask, rng: np.random.Generator):
        s = self.image_size
        cfg = self.augment_cfg
        factor = rng.uniform(*cfg["scale"]) if cfg["scale"] is not None else 1.0
        if factor != 1.0:
            h, w = image.shape[:2]
            nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
            image = _resize(image, nh, nw, nearest=False)
            if mask is not None:
                mask = _resize(mask, nh, nw, nearest=True)
        image = _pad_to(image, s, IMAGE_PAD)
        if mask is not None:
            mask = _pad_to(mask, s, MASK_IGNORE)
        h, w = image.shape[:2]
        y0 = int(rng.integers(0, h - s + 1))
        x0 = int(rng.integers(0, w - s + 1))
        image = image[y0:y0 + s, x0:x0 + s]
        if mask is not None:
            mask = mask[y0:y0 + s, x0:x0 + s]
        if rng.random() < cfg["flip"]:
            image = image[:, ::-1]
            if mask is not None:
                mask = mask[:, ::-1]
        return image, mask

    def _centre(self, image, mask):
        s = self.image_size
        image = _pad_to(image, s, IMAGE_PAD)
        h, w = image.shape[:2]
        y0, x0 = (h - s) // 2, (w - s) // 2
        image = image[y0:y0 + s, x0:x0 + s]
        if mask is not None:
            mask = _pad_to(mask, s, MASK_IGNORE)[y0:y0 + s, x0:x0 + s]
        return image, mask


class _DenseTrainMap(grain.transforms.RandomMap):
    def __init__(self, processor: _DenseProcessor):
        self.processor = processor

    def random_map(self, element, rng: np.random.Generator):
        return self.processor(element, rng)


class _DenseEvalMap(grain.transforms.Map):
    def __init__(self, processor: _DenseProcessor):
        self.processor = processor

    def map(self, element):
        return self.processor(element, None)


# ----------------------------------------------------------------------------
# Pipeline construction.


def make_dense_pipeline(
    source: Any,
    *,
    batch_size: int,
    image_size: int,
    train: bool,
    task: str,
    seed: int = 0,
    augment: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    read_threads: int = 2,
    prefetch_batches: int = 2,
) -> grain.IterDataset:
    """Builds the classification / segmentation / denoising pipeline over ``source``.

    Args:
      source: ``len(source)`` and ``source[i]`` -> record (see the module docstring).
      batch_size: per-host batch size.
      image_size: side S of the batch images.
      train: shuffled, repeated, augmented stream; else one deterministic padded pass.
      task: "classification", "segmentation" or "denoise".
      seed: seeds the shuffle and the augmentation.
      augment: ``{"scale": (lo, hi) or None, "flip": p}`` (missing keys take
        :data:`DEFAULT_DENSE_AUGMENT`; None = the defaults). Used for training only.
      num_workers: grain worker processes (0: in this process, with
        ``read_threads`` threads).
      process_index, process_count: this host's slot; default from JAX.
      num_epochs: training epochs (None: forever). Evaluation is always one pass.
      drop_remainder: training only; evaluation always pads its last batch.
      read_threads: threads per process that read and process samples.
      prefetch_batches: batches buffered ahead per process.

    Returns:
      A ``grain.IterDataset``; ``iter()`` on it gives a checkpointable iterator.
    """
    if task not in TASKS:
        raise ValueError(f"make_dense_pipeline: task must be one of {TASKS}, got {task!r}")
    common = check_common("make_dense_pipeline", source, batch_size=batch_size,
                          num_workers=num_workers, seed=seed, num_epochs=num_epochs,
                          process_index=process_index, process_count=process_count)
    image_size = _positive_int("image_size", image_size, "make_dense_pipeline")
    augment_cfg = dense_augment_config(augment)
    first = common["first"]
    _check_record(first, task, 0)
    needed = {"classification": "label", "segmentation": "mask"}.get(task)
    if needed is not None and needed not in first:
        raise ValueError(
            f"make_dense_pipeline: task {task!r} needs records with {needed!r}, but source "
            f"{type(source).__name__} gives keys {sorted(first)}"
        )
    processor = _DenseProcessor(
        task=task, image_size=image_size, augment_cfg=augment_cfg if train else None
    )
    return batched(
        source, caller="make_dense_pipeline", train=train, train_map=_DenseTrainMap(processor),
        eval_map=_DenseEvalMap(processor), batch_size=common["batch_size"], seed=int(seed),
        process_index=common["process_index"], process_count=common["process_count"],
        num_epochs=common["num_epochs"], drop_remainder=drop_remainder,
        num_workers=int(num_workers), read_threads=read_threads,
        prefetch_batches=prefetch_batches)
