"""Random access shared by the sources whose annotations are parsed up front.

:class:`~adverse_vision.data.voc.VOCSource` and
:class:`~adverse_vision.data.coco.COCOSource` read all their annotations when they
are built (main process) and keep one entry per usable image in parallel lists;
images are decoded in ``__getitem__``. :class:`AnnotatedSource` holds those lists
and implements the access that does not depend on the file format: ``len``,
:meth:`~AnnotatedSource.annotation` and the decoding of one record
(:meth:`~AnnotatedSource._load`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from adverse_vision.data.problems import (
    DataProblems,
    PolicyReporting,
    decode_image,
    fit_boxes_to_image,
    invalid_record,
    make_record,
)


class AnnotatedSource(PolicyReporting):
    """Base of the file-backed sources with pre-parsed per-image annotations.

    Subclasses call ``super().__init__()`` before parsing, add each usable image
    with :meth:`_add_image`, set :attr:`problems`, and name the annotation an image
    comes from in :meth:`_annotation_file` (used when the decoded image does not
    have its annotated size). :attr:`size_label` says where that size was read.

    Attributes:
      ids: sample ids, one per usable image.
      sizes: ``(width, height)`` from the annotation (or the image header).
      image_paths: image files.
    """

    problems: DataProblems
    # How messages name the size stored in the annotation.
    size_label = "annotated size"

    def __init__(self):
        self.ids: list[str] = []
        self.image_paths: list[str] = []
        self.sizes: list[tuple[int, int]] = []  # (width, height) from the annotation
        self._boxes: list[np.ndarray] = []
        self._classes: list[np.ndarray] = []
        self._difficult: list[np.ndarray] = []

    def _add_image(
        self,
        sample_id: str,
        image_path: str,
        width: float,
        height: float,
        boxes: np.ndarray,
        classes: np.ndarray,
        difficult: np.ndarray,
    ) -> None:
        """Appends one usable image and its sanitized ground truth."""
        self.ids.append(sample_id)
        self.image_paths.append(image_path)
        self.sizes.append((int(width), int(height)))
        self._boxes.append(boxes)
        self._classes.append(classes)
        self._difficult.append(difficult)

    def _annotation_file(self, index: int) -> str:
        """Where the annotation of sample ``index`` comes from, for problem reports."""
        raise NotImplementedError

    def _extra_annotation(self, index: int) -> dict[str, Any]:
        """Source-specific entries of :meth:`annotation`, placed after ``id``."""
        return {}

    # -- access --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def annotation(self, index: int) -> dict[str, Any]:
        """Ground truth of one sample without decoding its image."""
        index = int(index)
        w, h = self.sizes[index]
        return {
            "boxes": self._boxes[index].copy(),
            "classes": self._classes[index].copy(),
            "difficult": self._difficult[index].copy(),
            "id": self.ids[index],
            **self._extra_annotation(index),
            "width": w,
            "height": h,
        }

    def _load(self, index: int, extra_image_keys: Sequence[str] = ()) -> dict[str, Any]:
        """The record of sample ``index``, or an invalid record (with zero images
        under ``extra_image_keys``) if its image cannot be decoded.

        When the decoded image does not have the annotated size, the annotation's size
        entry is bad: under ``on_bad_annotation="error"`` a :class:`DataError` names the
        annotation file, both sizes and the image; under ``"skip"`` the entry is
        ignored (reported as ``bad_annotation``, once per file) and the boxes are
        clipped to the decoded image.
        """
        index = int(index)
        sample_id = self.ids[index]
        image = decode_image(self.image_paths[index], self.problems)
        if image is None:
            return invalid_record(sample_id, extra_image_keys)
        boxes = self._boxes[index].copy()
        classes = self._classes[index].copy()
        difficult = self._difficult[index].copy()
        h, w = image.shape[:2]
        if (w, h) != self.sizes[index]:
            aw, ah = self.sizes[index]
            reason = (f"{self.size_label} {aw}x{ah} differs from the decoded image {w}x{h} "
                      f"({self.image_paths[index]})")
            self._bad_sample(self._annotation_file(index), reason,
                             "size ignored, boxes clipped to the decoded image", once=True)
            boxes, classes, difficult = fit_boxes_to_image(boxes, classes, difficult, w, h)
        return make_record(image, boxes, classes, difficult, sample_id)
