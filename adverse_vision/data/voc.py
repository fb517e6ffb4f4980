"""Pascal VOC layout (XML annotations) as a random-access data source.

Layout (one dataset root, as shipped by VOC 2007/2012, VOC-FOG and RTTS)::

    root/Annotations/<id>.xml
    root/JPEGImages/<id>.jpg
    root/ImageSets/Main/<image_set>.txt

Box coordinates
---------------
VOC XML stores 1-based, inclusive pixel indices: ``xmin=1, xmax=W`` covers a whole
image ``W`` pixels wide. The default ``coordinates="continuous"`` turns them into the
0-based continuous coordinates used everywhere else in this library::

    x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax

(the convention of detectron2's ``pascal_voc.py``). Width and height are then the
VOC pixel counts ``xmax - xmin + 1``, so an IoU computed on these boxes *without*
the old "+1" equals, exactly, the IoU the VOC devkit (and the common
PyTorch YOLO ``utils_map.py``) computes *with* "+1" on the raw XML values: area, overlap
and union agree term by term. The detection evaluator of this library therefore
uses plain continuous IoU; to write detections back in XML convention add 1 to
``x1`` and ``y1``.

``coordinates="raw"`` keeps the XML numbers as they are, as the common PyTorch YOLO
``voc_annotation.py`` (and TFDS ``voc`` 5.0.0, which divides the raw values by the
image size) do; use it to reproduce those pipelines bit for bit. The two differ by
one pixel at the top-left corner.

Classes are matched case-insensitively after stripping whitespace; ``class_map``
renames dataset names first (e.g. ``{"motorcycle": "motorbike"}``). With a class
subset (e.g. 5 of the 20 VOC classes) the other VOC classes are dropped
silently and counted as ``other_class``; names that are not VOC classes at all are
``unknown_class`` problems (skipped or raised per policy).

All annotations are parsed when the source is built (main process), so annotation
problems are counted exactly once; images are decoded in ``__getitem__``.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from adverse_vision import storage
from adverse_vision.data.annotated import AnnotatedSource
from adverse_vision.data.files import read_id_list
from adverse_vision.data.problems import (
    ClassMatcher,
    DataError,
    DataPolicy,
    DataProblems,
    decode_image,
    invalid_record,
    read_image_size,
    sanitize_boxes,
)

logger = logging.getLogger("adverse_vision.data")

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp")


def _text(element: ET.Element | None, tag: str) -> str | None:
    if element is None:
        return None
    child = element.find(tag)
    if child is None or child.text is None:
        return None
    value = child.text.strip()
    return value or None


def find_image(directory: str, stem: str, filename: str | None = None) -> str | None:
    """The image file for ``stem`` in ``directory``: ``<stem>.jpg`` first, then the
    file named in the annotation, then other common extensions."""
    candidates = [stem + ".jpg"]
    if filename:
        candidates.append(os.path.basename(filename))
    candidates += [stem + ext for ext in IMAGE_EXTENSIONS[1:]]
    for name in candidates:
        path = os.path.join(directory, name)
        if storage.isfile(path):
            return path
    return None


class VOCSource(AnnotatedSource):
    """Random-access source over VOC-layout folders.

    Args:
      root: dataset root (the folder holding ``Annotations``, ``JPEGImages``,
        ``ImageSets``), or a VOCdevkit folder when ``image_set`` entries name a
        sub-folder.
      image_set: one entry or a list of entries. An entry is a split name
        (``"trainval"`` -> ``root/ImageSets/Main/trainval.txt``), a
        ``"<subdir>/<split>"`` pair (``"VOC2007/trainval"`` ->
        ``root/VOC2007/ImageSets/Main/trainval.txt``, images and annotations read
        from ``root/VOC2007``; sample ids become ``"VOC2007/<stem>"``), or a path to
        a ``.txt`` list (absolute or relative to ``root``). ``None`` uses every XML
        in ``root/Annotations``. Only the first token of each line is used, so the
        per-class lists (``"000005 -1"``) also work.
      class_names: the config's classes, in class-id order.
      class_map: dataset name -> config name renames; a name mapped to ``None`` is
        dropped on purpose (counted as ``other_class``).
      ignore_other_classes: drop VOC classes outside ``class_names`` silently
        (counted as ``other_class``) instead of reporting them.
      keep_difficult: keep objects flagged difficult (with ``difficult=True``, so the
        evaluator can ignore them); if False they are dropped (``difficult_dropped``).
      policy: a :class:`DataPolicy` or a mapping of its fields (e.g. the config).
      coordinates: ``"continuous"`` (default) or ``"raw"``, see the module docstring.
      image_dir, annotation_dir: folder names under each dataset root.
      degraded_dir: optional folder of pre-degraded twins with the same file names
        (e.g. ``"VOC2007-FOG"`` for VOC-FOG); returned under ``degraded_key``.
      problems: a :class:`DataProblems` to report to (one is made if None).
    """

    size_label = "<size>"

    def __init__(
        self,
        root: str,
        image_set: str | Sequence[str] | None = "trainval",
        class_names: Sequence[str] = VOC_CLASSES,
        *,
        class_map: Mapping[str, str | None] | None = None,
        ignore_other_classes: bool = True,
        keep_difficult: bool = True,
        policy: DataPolicy | Mapping[str, Any] | None = None,
        coordinates: str = "continuous",
        image_dir: str = "JPEGImages",
        annotation_dir: str = "Annotations",
        degraded_dir: str | None = None,
        degraded_key: str = "hazy",
        known_classes: Iterable[str] = VOC_CLASSES,
        problems: DataProblems | None = None,
    ):
        self.root = os.fspath(root)
        if not storage.isdir(self.root):
            raise DataError(f"{self.root}: VOC dataset root does not exist or is not a folder")
        if coordinates not in ("continuous", "raw"):
            raise DataError(f"coordinates={coordinates!r} is not 'continuous' or 'raw'")
        self.image_set = image_set
        self.coordinates = coordinates
        self.policy = DataPolicy.from_config(policy)
        self.matcher = ClassMatcher(class_names, class_map, known_classes, ignore_other_classes)
        self.class_names = self.matcher.class_names
        self.keep_difficult = keep_difficult
        self.image_dir = image_dir
        self.annotation_dir = annotation_dir
        self.degraded_dir = degraded_dir
        self.degraded_key = degraded_key
        self.problems = problems if problems is not None else DataProblems(f"VOC {self.root}")

        super().__init__()
        self.degraded_paths: list[str | None] = []
        self.annotation_paths: list[str] = []

        for set_root, stems, prefix in self._resolve_image_sets(image_set):
            for stem in stems:
                self._add_sample(set_root, stem, prefix)

        n_obj = sum(len(b) for b in self._boxes)
        logger.info(
            "VOC %s (%s): %d images, %d objects; %s",
            self.root, image_set, len(self.ids), n_obj, self.problems.summary_text(),
        )
        if not self.ids:
            raise DataError(
                f"{self.root}: no usable images in image set {image_set!r} "
                f"({self.problems.summary_text()})"
            )

    # -- construction --------------------------------------------------------------
    def _resolve_image_sets(self, image_set) -> list[tuple[str, list[str], str]]:
        """[(dataset root, stems, id prefix)] for each image-set entry."""
        if image_set is None:
            ann_dir = os.path.join(self.root, self.annotation_dir)
            if not storage.isdir(ann_dir):
                raise DataError(f"{ann_dir}: annotation folder does not exist")
            stems = sorted(f[:-4] for f in storage.listdir(ann_dir) if f.lower().endswith(".xml"))
            return [(self.root, stems, "")]
        entries = [image_set] if isinstance(image_set, (str, os.PathLike)) else list(image_set)
        if not entries:
            raise DataError(f"{self.root}: image_set is an empty list")
        out = []
        for entry in entries:
            entry = os.fspath(entry)
            if entry.endswith(".txt"):
                list_path = entry if storage.isabs(entry) else os.path.join(self.root, entry)
                set_root, prefix = self.root, ""
            else:
                sub, _, name = entry.rpartition("/")
                set_root = os.path.join(self.root, sub) if sub else self.root
                prefix = sub + "/" if sub else ""
                list_path = os.path.join(set_root, "ImageSets", "Main", name + ".txt")
            if not storage.isfile(list_path):
                raise DataError(f"{list_path}: image set file not found (image_set entry {entry!r})")
            stems = read_id_list(list_path, "image set file")
            out.append((set_root, stems, prefix))
        return out

    def _add_sample(self, set_root: str, stem: str, prefix: str) -> None:
        xml_path = os.path.join(set_root, self.annotation_dir, stem + ".xml")
        try:
            with storage.open_file(xml_path) as f:
                tree = ET.parse(f)
        except FileNotFoundError:
            self._bad_sample(xml_path, "annotation file not found", "image skipped")
            return
        except (ET.ParseError, OSError, UnicodeDecodeError) as e:
            self._bad_sample(xml_path, f"cannot parse XML ({e})", "image skipped")
            return
        ann = tree.getroot()

        image_dir = os.path.join(set_root, self.image_dir)
        image_path = find_image(image_dir, stem, _text(ann, "filename"))
        if image_path is None:
            self._missing(os.path.join(image_dir, stem + ".jpg"),
                          f"image file not found (annotation {xml_path})", "image skipped")
            return
        degraded_path = None
        if self.degraded_dir is not None:
            degraded_path = find_image(
                os.path.join(set_root, self.degraded_dir), stem, os.path.basename(image_path)
            )
            if degraded_path is None:
                self._missing(os.path.join(set_root, self.degraded_dir, os.path.basename(image_path)),
                              "degraded twin not found", "image skipped")
                return

        size = self._annotated_size(ann)
        if size is None:
            size = read_image_size(image_path)
            if size is None:
                self.problems.add(
                    "corrupt_image", image_path,
                    "no size in the annotation and the image header cannot be read", "image skipped",
                )
                return
        width, height = size

        boxes, classes, difficult = [], [], []
        n_objects = n_silent = 0
        for k, obj in enumerate(ann.findall("object")):
            n_objects += 1
            name = _text(obj, "name")
            if name is None:
                self._bad_sample(xml_path, f"object {k} has no <name>", "object dropped")
                continue
            coords = [_text(obj.find("bndbox"), t) for t in ("xmin", "ymin", "xmax", "ymax")]
            try:
                x1, y1, x2, y2 = (float(c) for c in coords)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                self._bad_sample(
                    xml_path, f"object {k} ({name}) has a missing or non-numeric <bndbox> {coords}",
                    "object dropped",
                )
                continue
            diff_text = _text(obj, "difficult")
            try:
                is_difficult = bool(int(float(diff_text))) if diff_text is not None else False
            except ValueError:
                self._bad_sample(
                    xml_path, f"object {k} ({name}) has a non-numeric <difficult> {diff_text!r}",
                    "object dropped",
                )
                continue
            cls, status = self.matcher.match(name)
            if status == "other":
                self.problems.add("other_class", xml_path, f"class {name}", "object dropped")
                n_silent += 1
                continue
            if status == "unknown":
                self._unknown_class(
                    xml_path, f"object class {name!r} is not in class_names {list(self.class_names)}",
                    "object dropped")
                continue
            if is_difficult and not self.keep_difficult:
                self.problems.add("difficult_dropped", xml_path, "difficult object", "object dropped")
                n_silent += 1
                continue
            if self.coordinates == "continuous":
                x1, y1 = x1 - 1.0, y1 - 1.0
            boxes.append((x1, y1, x2, y2))
            classes.append(cls)
            difficult.append(is_difficult)

        boxes_a, classes_a, difficult_a = sanitize_boxes(
            np.asarray(boxes, np.float32).reshape(-1, 4), classes, difficult,
            width, height, self.policy, self.problems, xml_path,
        )
        if len(boxes_a) == 0:
            # Images that only hold other classes are normal with a class subset:
            # counted, not logged one by one.
            quiet = n_objects > 0 and n_silent == n_objects
            if n_objects == 0:
                reason = "no objects"
            elif quiet:
                reason = "no object of the configured classes"
            else:
                reason = "no valid object left"
            action = "kept as a negative image" if self.policy.on_empty == "keep" else "image skipped"
            self.problems.add("empty_annotation", xml_path, reason, action, silent=quiet)
            if self.policy.on_empty == "skip":
                return

        self._add_image(prefix + stem, image_path, width, height, boxes_a, classes_a, difficult_a)
        self.degraded_paths.append(degraded_path)
        self.annotation_paths.append(xml_path)

    @staticmethod
    def _annotated_size(ann: ET.Element) -> tuple[int, int] | None:
        size = ann.find("size")
        try:
            w = int(float(_text(size, "width")))  # type: ignore[arg-type]
            h = int(float(_text(size, "height")))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        if w <= 0 or h <= 0:
            return None
        return w, h

    # -- access --------------------------------------------------------------------
    def _annotation_file(self, index: int) -> str:
        return self.annotation_paths[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        extra = (self.degraded_key,) if self.degraded_dir is not None else ()
        record = self._load(index, extra)
        if self.degraded_dir is None or not record["valid"]:
            return record
        sample_id, image = self.ids[index], record["image"]
        path = self.degraded_paths[index]
        degraded = decode_image(path, self.problems)
        if degraded is None:
            return invalid_record(sample_id, extra)
        if degraded.shape != image.shape:
            h, w = image.shape[:2]
            self.problems.add(
                "corrupt_image", path,
                f"degraded twin is {degraded.shape[1]}x{degraded.shape[0]}, image is {w}x{h}",
                "sample marked invalid", once=True,
            )
            return invalid_record(sample_id, extra)
        record[self.degraded_key] = degraded
        return record

    def __repr__(self) -> str:
        return (
            f"VOCSource(root={self.root!r}, image_set={self.image_set!r}, "
            f"{len(self)} images, classes={list(self.class_names)})"
        )
