"""TFDS detection datasets (``voc/2007``, ``coco/2017``, ...) as record sources.

Wraps ``tfds.data_source`` (random access over prepared ``array_record`` files; no
tensorflow needed to read) and converts detection-style examples to the record
contract:

* ``objects/bbox``: TFDS ``BBoxFeature``, normalised ``[ymin, xmin, ymax, xmax]``
  -> pixel ``[x1, y1, x2, y2] = [xmin * W, ymin * H, xmax * W, ymax * H]``.
  Note that TFDS ``voc`` 5.0.0 stores the raw 1-based XML values divided by the
  image size, so its pixel boxes equal the raw XML numbers (``coordinates="raw"``
  of :class:`~adverse_vision.data.voc.VOCSource`); pass
  ``pixel_offset=(-1, -1, 0, 0)`` to get that source's default continuous boxes.
* ``objects/label``: ``ClassLabel`` ids, mapped by *name* to ``class_names``
  (default: the dataset's own label names).
* ``objects/is_difficult`` when present (``voc``), else all False;
  ``objects/is_crowd`` when present (``coco``): crowd regions are dropped and
  counted.

Problems are found lazily here (the examples are only read in ``__getitem__``,
usually in loader workers); the pipeline brings them back to the consuming process,
where each example's problems are counted and logged once (read directly, outside a
pipeline, they are counted the first time an example is read in a process).
``on_empty="skip"`` cannot be honoured without reading every example first: empty
images are kept (a warning says so once).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from adverse_vision import storage
from adverse_vision.data.problems import (
    ClassMatcher,
    DataError,
    DataPolicy,
    DataProblems,
    PolicyReporting,
    invalid_record,
    make_record,
    sanitize_boxes,
)

logger = logging.getLogger("adverse_vision.data")

_OTHER = -1
_UNKNOWN = -2


def _shown_data_dir(data_dir: str | None) -> str:
    return os.fspath(data_dir) if data_dir else os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")


def _looks_prepared(name: str, data_dir: str | None) -> bool:
    root = _shown_data_dir(data_dir)
    base = storage.join(root if storage.is_url(root) else os.path.expanduser(root),
                        *name.split(":")[0].split("/"))
    if not storage.isdir(base):
        return False
    return bool(storage.glob(base, "*/dataset_info.json")
                or storage.glob(base, "*/*/dataset_info.json"))


def open_tfds_source(name: str, split: str, data_dir: str | None = None):
    """``tfds.data_source`` without downloading; a :class:`DataError` if not prepared.

    When the dataset's builder code itself needs tensorflow (e.g. ``coco``), the
    prepared files are read through TFDS's read-only builder instead.
    """
    import tensorflow_datasets as tfds

    shown = _shown_data_dir(data_dir)
    hint = (
        f"prepare it with `tfds build {name} --data_dir={shown} "
        f"--file_format=array_record` (building needs tensorflow, reading does not)"
    )

    def fail(e: BaseException) -> DataError:
        msg = " ".join(str(e).split())
        if len(msg) > 300:
            msg = msg[:300] + "..."
        if not _looks_prepared(name, data_dir):
            base = name.split(":")[0]
            # TFDS's own message for an absent dataset talks about file formats;
            # only an unknown name is worth repeating.
            detail = f" ({type(e).__name__}: {msg})" if "NotFound" in type(e).__name__ else ""
            return DataError(
                f"TFDS dataset {name!r} (split {split!r}) is not prepared in data_dir {shown!r}: "
                f"no {os.path.join(shown, base)}/.../dataset_info.json{detail}; {hint}"
            )
        return DataError(
            f"TFDS dataset {name!r} split {split!r} cannot be opened from data_dir {shown!r} "
            f"({type(e).__name__}: {msg}); if it is not prepared, {hint}"
        )

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False, try_gcs=False)
    except ModuleNotFoundError as e:
        if "tensorflow" not in str(e):
            raise fail(e) from None
        try:
            from tensorflow_datasets.core import read_only_builder

            kwargs = {"data_dir": data_dir} if data_dir else {}
            builder = read_only_builder.builder_from_files(name, **kwargs)
            return builder.as_data_source(split=split)
        except Exception as e2:  # noqa: BLE001 - any failure means "not readable"
            raise fail(e2) from None
    except Exception as e:  # noqa: BLE001
        raise fail(e) from None


def _lookup(example: Mapping[str, Any], key: str) -> Any:
    """``example[key]`` for flat keys (``"image/filename"``) or nested paths
    (``"objects/bbox"`` -> ``example["objects"]["bbox"]``); None if absent."""
    if key in example:
        return example[key]
    node: Any = example
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _feature(features: Any, key: str) -> Any:
    try:
        return features[key]
    except (KeyError, TypeError):
        pass
    node = features
    for part in key.split("/"):
        try:
            node = node[part]
        except (KeyError, TypeError):
            if hasattr(node, "feature"):  # tfds.features.Sequence
                try:
                    node = node.feature[part]
                    continue
                except (KeyError, TypeError):
                    pass
            return None
    return node


def _to_rgb(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image dtype {image.dtype}, expected uint8")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    elif image.shape[2] != 3:
        raise ValueError(f"image has {image.shape[2]} channels")
    return np.ascontiguousarray(image)


class TFDSSource(PolicyReporting):
    """Random-access detection source over a prepared TFDS dataset.

    Args:
      name: TFDS name with config, e.g. ``"voc/2007"``, ``"coco/2017"``.
      split: TFDS split (slicing such as ``"train[:10%]"`` works).
      data_dir: TFDS data folder (default: ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      class_names: the config's classes in class-id order, matched by name to the
        dataset's ``ClassLabel`` names; None keeps the dataset's classes.
      class_map: dataset name -> config name renames (``None`` value: drop).
      ignore_other_classes: drop dataset classes outside ``class_names`` silently.
      image_key, bbox_key, label_key, difficult_key, crowd_key, id_key: feature keys
        (nested keys with ``/``); absent optional features are ignored.
      keep_difficult: keep difficult objects (flagged) or drop them.
      pixel_offset: added to the pixel ``(x1, y1, x2, y2)`` after scaling.
      policy: a :class:`DataPolicy` or a mapping of its fields.
      problems: a :class:`DataProblems` to report to (one is made if None).
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        class_names: Sequence[str] | None = None,
        *,
        class_map: Mapping[str, str | None] | None = None,
        ignore_other_classes: bool = True,
        image_key: str = "image",
        bbox_key: str = "objects/bbox",
        label_key: str = "objects/label",
        difficult_key: str = "objects/is_difficult",
        crowd_key: str = "objects/is_crowd",
        id_key: str = "image/filename",
        keep_difficult: bool = True,
        pixel_offset: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        policy: DataPolicy | Mapping[str, Any] | None = None,
        problems: DataProblems | None = None,
    ):
        self.name, self.split, self.data_dir = name, split, data_dir
        self.image_key, self.bbox_key, self.label_key = image_key, bbox_key, label_key
        self.difficult_key, self.crowd_key, self.id_key = difficult_key, crowd_key, id_key
        self.keep_difficult = keep_difficult
        self.pixel_offset = np.asarray(pixel_offset, np.float32).reshape(4)
        self.policy = DataPolicy.from_config(policy)
        self.problems = problems if problems is not None else DataProblems(f"TFDS {name}:{split}")
        self._counted: set[int] = set()

        self._source = open_tfds_source(name, split, data_dir)
        info = getattr(self._source, "dataset_info", None)
        features = getattr(info, "features", None)
        for key in (image_key, bbox_key, label_key):
            if features is not None and _feature(features, key) is None:
                raise DataError(
                    f"TFDS dataset {name!r} has no feature {key!r} (data_dir {_shown_data_dir(data_dir)!r})"
                )
        label_feature = _feature(features, label_key) if features is not None else None
        label_names = list(getattr(label_feature, "names", None) or [])
        if not label_names:
            if class_names is None:
                raise DataError(
                    f"TFDS dataset {name!r}: feature {label_key!r} has no class names; pass class_names"
                )
            label_names = list(class_names)
        self.label_names = tuple(label_names)
        if class_names is None:
            renames = {str(k).strip().lower(): v for k, v in dict(class_map or {}).items()}
            class_names = []
            for n in label_names:
                new = renames.get(str(n).strip().lower(), n)
                if new is not None and new not in class_names:
                    class_names.append(new)
        self.matcher = ClassMatcher(class_names, class_map, label_names, ignore_other_classes)
        self.class_names = self.matcher.class_names
        lut = []
        for n in label_names:
            cls, status = self.matcher.match(n)
            lut.append(cls if status == "ok" else (_OTHER if status == "other" else _UNKNOWN))
        self._label_to_class = np.asarray(lut, np.int64)
        if self.policy.on_empty == "skip":
            logger.warning(
                "TFDS %s:%s: on_empty='skip' needs a full pass over the data; empty images are kept",
                name, split,
            )

    def __len__(self) -> int:
        return len(self._source)

    def _where(self, index: int, filename: str | None) -> str:
        base = f"{self.name}:{self.split}[{index}]"
        return f"{base} ({filename})" if filename else base

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        fallback_id = f"{self.name}/{self.split}/{index}"
        # Problems are counted the first time an example is read in this process;
        # later epochs report to a scratch collector that neither counts nor logs.
        if index in self._counted:
            problems = DataProblems(self.problems.name, log=False)
        else:
            self._counted.add(index)
            problems = self.problems
        try:
            example = self._source[index]
        except Exception as e:  # noqa: BLE001 - undecodable example: invalid sample
            problems.add(
                "corrupt_image", self._where(index, None),
                f"cannot read or decode example ({type(e).__name__}: {e})", "sample marked invalid",
            )
            return invalid_record(fallback_id)

        filename = _lookup(example, self.id_key)
        if isinstance(filename, bytes):
            filename = filename.decode("utf-8", "replace")
        if isinstance(filename, np.ndarray):
            filename = str(filename.item())
        filename = str(filename) if filename not in (None, "") else None
        sample_id = os.path.splitext(os.path.basename(filename))[0] if filename else fallback_id
        where = self._where(index, filename)

        try:
            image = _to_rgb(_lookup(example, self.image_key))
        except ValueError as e:
            problems.add("corrupt_image", where, f"bad image ({e})", "sample marked invalid")
            return invalid_record(sample_id)
        h, w = image.shape[:2]

        bbox = _lookup(example, self.bbox_key)
        bbox = np.asarray(bbox if bbox is not None else [], np.float32).reshape(-1, 4)
        labels = _lookup(example, self.label_key)
        labels = np.asarray(labels if labels is not None else [], np.int64).reshape(-1)
        n = len(bbox)
        parts = {"label": labels}
        difficult = _lookup(example, self.difficult_key)
        if difficult is not None:
            parts["difficult"] = np.asarray(difficult, bool).reshape(-1)
        crowd = _lookup(example, self.crowd_key)
        if crowd is not None:
            parts["crowd"] = np.asarray(crowd, bool).reshape(-1)
        lengths = {"bbox": n, **{k: len(v) for k, v in parts.items()}}
        if len(set(lengths.values())) > 1:
            n = min(lengths.values())
            self._bad_sample(where, f"object features differ in length {lengths}",
                             f"truncated to {n} objects", problems=problems)
        bbox, labels = bbox[:n], labels[:n]
        difficult = parts["difficult"][:n] if "difficult" in parts else np.zeros(n, bool)
        crowd = parts["crowd"][:n] if "crowd" in parts else np.zeros(n, bool)

        keep = np.ones(n, bool)
        if crowd.any():
            problems.add("crowd", where, "is_crowd", "object dropped", count=int(crowd.sum()))
            keep &= ~crowd
        in_range = (labels >= 0) & (labels < len(self._label_to_class))
        classes = np.where(in_range, self._label_to_class[np.clip(labels, 0, len(self._label_to_class) - 1)], _UNKNOWN)
        other = keep & (classes == _OTHER)
        if other.any():
            problems.add("other_class", where, "class outside class_names", "object dropped", count=int(other.sum()))
            keep &= ~other
        unknown = keep & (classes == _UNKNOWN)
        if unknown.any():
            bad = sorted({int(x) for x in labels[unknown]})
            names = [self.label_names[b] if 0 <= b < len(self.label_names) else f"<label {b}>" for b in bad]
            reason = f"object class(es) {names} not in class_names {list(self.class_names)}"
            self._unknown_class(where, reason, "object dropped", problems=problems,
                                count=int(unknown.sum()))
            keep &= ~unknown
        if not self.keep_difficult:
            drop = keep & difficult
            if drop.any():
                problems.add("difficult_dropped", where, "difficult object", "object dropped", count=int(drop.sum()))
                keep &= ~drop
        bbox, classes, difficult = bbox[keep], classes[keep], difficult[keep]

        # [ymin, xmin, ymax, xmax] normalised -> [x1, y1, x2, y2] pixels.
        boxes = bbox[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32) + self.pixel_offset
        boxes, classes, difficult = sanitize_boxes(
            boxes, classes, difficult, w, h, self.policy, problems, where
        )
        if len(boxes) == 0:
            n_silent = int(crowd.sum() + other.sum()) + (0 if self.keep_difficult else int(drop.sum()))
            if n == 0:
                reason, quiet = "no objects", True
            elif n_silent == n:
                reason, quiet = "no object of the configured classes", True
            else:
                reason, quiet = "no valid object left", False
            problems.add("empty_annotation", where, reason, "kept as a negative image", silent=quiet)
        return make_record(image, boxes, classes.astype(np.int32), difficult, sample_id)

    def __repr__(self) -> str:
        return (
            f"TFDSSource({self.name!r}, split={self.split!r}, {len(self)} examples, "
            f"classes={list(self.class_names)})"
        )
