"""COCO-style JSON detection annotations as a random-access data source.

The JSON is read with the standard ``json`` module (no pycocotools needed):
``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
(``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]`` in pixels, ``iscrowd``)
and ``categories`` (``id``, ``name``).

* COCO boxes are already 0-based continuous pixel coordinates; they become
  ``x1, y1, x2, y2 = x, y, x + w, y + h`` with no shift.
* Category ids (sparse in COCO: 1..90) map to contiguous class ids: by default the
  categories sorted by id give ``class_names``; with explicit ``class_names`` the
  categories are matched by name (case-insensitive, ``class_map`` renames first),
  other categories are dropped silently (``other_class``).
* ``iscrowd=1`` regions are dropped and counted (``crowd``), not reported per file.
* Images without any annotation entry are normal in COCO: they are counted as
  ``empty_annotation`` (kept or skipped per policy) without a log line each; images
  whose annotations were all rejected as bad are reported.

Problems name the JSON file, plus the image file name for per-image problems.
Images are decoded in ``__getitem__``; the sample ``id`` is the file stem and the
COCO image id is kept in :attr:`COCOSource.coco_ids` (and ``annotation(i)``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from adverse_vision import storage
from adverse_vision.data.annotated import AnnotatedSource
from adverse_vision.data.problems import (
    ClassMatcher,
    DataError,
    DataPolicy,
    DataProblems,
    normalize_name,
    read_image_size,
    sanitize_boxes,
)

logger = logging.getLogger("adverse_vision.data")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class COCOSource(AnnotatedSource):
    """Random-access source over a COCO JSON file and an image folder.

    Args:
      annotation_json: path of the ``instances_*.json`` file.
      image_dir: folder the ``file_name`` entries are relative to.
      class_names: the config's classes in class-id order, or None for the JSON's
        categories sorted by id.
      class_map: dataset name -> config name renames (``None`` value: drop on purpose).
      ignore_other_classes: drop categories outside ``class_names`` silently.
      policy: a :class:`DataPolicy` or a mapping of its fields.
      problems: a :class:`DataProblems` to report to (one is made if None).
    """

    size_label = "size in the JSON"

    def __init__(
        self,
        annotation_json: str,
        image_dir: str,
        class_names: Sequence[str] | None = None,
        *,
        class_map: Mapping[str, str | None] | None = None,
        ignore_other_classes: bool = True,
        policy: DataPolicy | Mapping[str, Any] | None = None,
        problems: DataProblems | None = None,
    ):
        self.annotation_json = os.fspath(annotation_json)
        self.image_dir = os.fspath(image_dir)
        self.policy = DataPolicy.from_config(policy)
        self.problems = problems if problems is not None else DataProblems(f"COCO {self.annotation_json}")
        jpath = self.annotation_json

        if not storage.isdir(self.image_dir):
            raise DataError(f"{self.image_dir}: COCO image folder does not exist (annotations {jpath})")
        try:
            # a byte-order mark is skipped
            data = json.loads(storage.read_bytes(jpath).decode("utf-8-sig"))
        except FileNotFoundError:
            raise DataError(f"{jpath}: COCO annotation file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{jpath}: not valid JSON ({e})") from None
        except OSError as e:
            raise DataError(f"{jpath}: cannot read ({e})") from None
        if not isinstance(data, dict):
            raise DataError(f"{jpath}: top level is a {type(data).__name__}, expected an object")
        for key in ("images", "categories"):
            if not isinstance(data.get(key), list):
                raise DataError(f"{jpath}: missing or non-list '{key}' entry")
        annotations = data.get("annotations", [])
        if not isinstance(annotations, list):
            raise DataError(f"{jpath}: 'annotations' is not a list")

        # -- categories -----------------------------------------------------------
        categories = {}
        for k, cat in enumerate(data["categories"]):
            if not (isinstance(cat, dict) and isinstance(cat.get("id"), int) and "name" in cat):
                self._bad_sample(jpath, f"categories[{k}] lacks an integer 'id' or a 'name': {cat!r:.80}", "category ignored")
                continue
            categories[cat["id"]] = str(cat["name"])
        if not categories:
            raise DataError(f"{jpath}: no usable categories")
        cat_names_by_id = [categories[c] for c in sorted(categories)]
        if class_names is None:
            # The JSON's categories, renamed by class_map (entries mapped to None dropped).
            renames = {normalize_name(k): v for k, v in dict(class_map or {}).items()}
            class_names = []
            for name in cat_names_by_id:
                new = renames.get(normalize_name(name), name)
                if new is not None and normalize_name(new) not in map(normalize_name, class_names):
                    class_names.append(new)
        self.matcher = ClassMatcher(class_names, class_map, cat_names_by_id, ignore_other_classes)
        self.class_names = self.matcher.class_names
        # category id -> (class id or None, status)
        self.category_to_class = {cid: self.matcher.match(name) for cid, name in categories.items()}

        # -- images ---------------------------------------------------------------
        images: dict[int, dict] = {}
        order: list[int] = []
        for k, img in enumerate(data["images"]):
            if not (isinstance(img, dict) and isinstance(img.get("id"), int)
                    and isinstance(img.get("file_name"), str) and img["file_name"]):
                self._bad_sample(jpath, f"images[{k}] lacks an integer 'id' or a 'file_name': {img!r:.80}", "image skipped")
                continue
            if img["id"] in images:
                self._bad_sample(jpath, f"images[{k}] repeats image id {img['id']}", "duplicate skipped")
                continue
            images[img["id"]] = img
            order.append(img["id"])

        # -- annotations ----------------------------------------------------------
        per_image: dict[int, list] = {i: [] for i in order}
        n_rejected: dict[int, int] = {i: 0 for i in order}
        n_silent: dict[int, int] = {i: 0 for i in order}
        for k, ann in enumerate(annotations):
            if not isinstance(ann, dict) or ann.get("image_id") not in images:
                image_id = ann.get("image_id") if isinstance(ann, dict) else None
                self._bad_sample(jpath, f"annotations[{k}] refers to unknown image_id {image_id!r}", "annotation dropped")
                continue
            iid = ann["image_id"]
            where = f"{jpath} (image {images[iid]['file_name']})"
            if ann.get("iscrowd", 0):
                self.problems.add("crowd", where, "iscrowd=1", "annotation dropped")
                n_silent[iid] += 1
                per_image[iid].append(None)
                continue
            bbox = ann.get("bbox")
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                self._bad_sample(where, f"annotations[{k}] has a bad 'bbox' {bbox!r:.60}", "annotation dropped")
                n_rejected[iid] += 1
                per_image[iid].append(None)
                continue
            cid = ann.get("category_id")
            cls, status = self.category_to_class.get(cid, (None, "unknown"))
            if status == "other":
                self.problems.add("other_class", where, f"category {cid}", "annotation dropped")
                n_silent[iid] += 1
                per_image[iid].append(None)
                continue
            if status == "unknown":
                name = categories.get(cid, f"<undefined category id {cid!r}>")
                self._unknown_class(
                    where, f"annotations[{k}] class {name!r} is not in class_names {list(self.class_names)}",
                    "annotation dropped")
                n_rejected[iid] += 1
                per_image[iid].append(None)
                continue
            x, y, w, h = (float(v) for v in bbox)
            per_image[iid].append((x, y, x + w, y + h, cls))

        # -- per image ------------------------------------------------------------
        super().__init__()
        self.coco_ids: list[int] = []
        for iid in order:
            img = images[iid]
            file_name = img["file_name"]
            where = f"{jpath} (image {file_name})"
            path = os.path.join(self.image_dir, file_name)
            if not storage.isfile(path):
                self._missing(path, f"image file not found (listed in {jpath})", "image skipped")
                continue
            width, height = img.get("width"), img.get("height")
            if not (_is_number(width) and _is_number(height) and width > 0 and height > 0):
                size = read_image_size(path)
                if size is None:
                    self.problems.add(
                        "corrupt_image", path,
                        "no size in the JSON and the image header cannot be read", "image skipped",
                    )
                    continue
                width, height = size
            entries = [e for e in per_image[iid] if e is not None]
            arr = np.asarray([e[:4] for e in entries], np.float32).reshape(-1, 4)
            cls = np.asarray([e[4] for e in entries], np.int32)
            boxes, classes, difficult = sanitize_boxes(
                arr, cls, np.zeros(len(cls), bool), width, height, self.policy, self.problems, where,
            )
            if len(boxes) == 0:
                n_all = len(per_image[iid])
                if n_all == 0:
                    reason, quiet = "no annotations", True
                elif n_silent[iid] == n_all:
                    reason, quiet = "no annotation of the configured classes (or only crowd regions)", True
                else:
                    reason, quiet = "no valid annotation left", False
                action = "kept as a negative image" if self.policy.on_empty == "keep" else "image skipped"
                self.problems.add("empty_annotation", where, reason, action, silent=quiet)
                if self.policy.on_empty == "skip":
                    continue
            sample_id = os.path.splitext(os.path.basename(file_name))[0]
            self._add_image(sample_id, path, width, height, boxes, classes, difficult)
            self.coco_ids.append(int(iid))

        logger.info(
            "COCO %s: %d images, %d objects; %s",
            jpath, len(self.ids), sum(len(b) for b in self._boxes), self.problems.summary_text(),
        )
        if not self.ids:
            raise DataError(f"{jpath}: no usable images in {self.image_dir} ({self.problems.summary_text()})")

    # -- access --------------------------------------------------------------------
    def _annotation_file(self, index: int) -> str:
        return f"{self.annotation_json} (image {os.path.basename(self.image_paths[index])})"

    def _extra_annotation(self, index: int) -> dict[str, Any]:
        return {"image_id": self.coco_ids[index]}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._load(index)

    def __repr__(self) -> str:
        return (
            f"COCOSource({self.annotation_json!r}, {self.image_dir!r}, {len(self)} images, "
            f"{len(self.class_names)} classes)"
        )
