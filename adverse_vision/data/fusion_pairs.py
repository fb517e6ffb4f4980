"""Infrared-visible image pairs as random-access data sources.

Every record follows the record contract of :mod:`adverse_vision.data.pipeline`:
``image`` (uint8 (H, W, 3), the visible image; a grayscale visible image is
replicated to three channels), ``thermal`` (uint8 (H, W, 1), the registered
infrared image), ``id`` (str) and ``valid``, plus per dataset:

* :class:`M3FDSource`: M3FD detection (the layout of the M3FD release)::

      root/Ir/<id>.png           infrared
      root/Vis/<id>.png          visible
      root/Annotation/<id>.xml   VOC-style boxes (People, Car, Bus, Motorcycle, Lamp, Truck)
      root/Main/<split>.txt      one id per line
      root/Mask/<id>.png         optional precomputed saliency maps, 0-255

  Records add ``boxes``/``classes``/``difficult`` (parsed by
  :class:`~adverse_vision.data.voc.VOCSource`, so boxes follow its convention:
  ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` by default) and, when
  the mask folder exists, ``saliency`` (float32 (H, W, 1) in [0, 1], the mask
  divided by 255).
* :class:`MFNetSource`: MFNet RGB-thermal segmentation::

      root/images/<id>.png       4-channel PNG: R, G, B, thermal
      root/labels/<id>.png       uint8 class ids 0..8 (:data:`MFNET_CLASSES`)
      root/<split>.txt           one id per line (train, val, test, ...)

  Records add ``mask`` (uint8 (H, W)).
* :class:`FusionFolderSource`: fusion-only benchmarks stored as two folders of
  images paired by file stem (any extensions), e.g. TNO and RoadScene copies
  with ``ir``/``vi`` folders, or the original RoadScene release's
  ``cropinfrared``/``crop_HR_visible`` (:data:`FUSION_FOLDER_NAMES`). No boxes.

Infrared images are read as 8-bit grayscale by
:func:`adverse_vision.data.files.read_gray`: colour files are converted with
Pillow's ``L`` luma, 16-bit files keep their high byte (the full 16-bit range maps
onto 0..255); float images are reported as ``corrupt_image``.

Bad input follows :mod:`adverse_vision.data.problems`, as in
:mod:`adverse_vision.data.voc` and :mod:`adverse_vision.data.folders`. A missing
dataset root, folder or split list raises :class:`DataError` (a ValueError)
naming the path. When a source is built, every listed sample is checked from
the file headers: a missing file is ``missing_image`` (skipped, or raised under
``on_missing_image="error"``); an infrared, mask or label file whose size differs
from the visible image, or a label file that is not single-channel, is
``bad_annotation`` (skipped, or raised under ``on_bad_annotation="error"``); an
unreadable header is ``corrupt_image`` (skipped). Boxes outside the image are
handled by ``on_bad_box`` (see :func:`~adverse_vision.data.problems.sanitize_boxes`).
A file that cannot be decoded when a sample is read, or decodes to another size,
gives an invalid record (``valid`` False, zero 32 x 32 images, no boxes, an
all-ignore mask) and a report naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adverse_vision import storage
from adverse_vision.data.files import (ImageDecodeError, check_folder, open_image, read_gray,
                                        read_id_list)
from adverse_vision.data.folders import (
    IMAGE_EXTENSIONS,
    MASK_IGNORE,
    _header,
    _image_files,
    _normalize_extensions,
    read_voc_mask,
)
from adverse_vision.data.problems import (
    INVALID_IMAGE_SIZE,
    DataError,
    DataPolicy,
    DataProblems,
    PolicyReporting,
    decode_image,
    invalid_record,
)
from adverse_vision.data.voc import VOCSource, find_image

__all__ = [
    "FUSION_FOLDER_NAMES",
    "M3FD_CLASSES",
    "MFNET_CLASSES",
    "FusionFolderSource",
    "M3FDSource",
    "MFNetSource",
    "read_thermal",
]

logger = logging.getLogger("adverse_vision.data")

M3FD_CLASSES = ("People", "Car", "Bus", "Motorcycle", "Lamp", "Truck")
MFNET_CLASSES = (
    "unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump",
)
# (infrared folder, visible folder) names found in public copies of TNO and RoadScene.
FUSION_FOLDER_NAMES = (("ir", "vi"), ("cropinfrared", "crop_HR_visible"))


# -- shared helpers -----------------------------------------------------------------


def read_thermal(path: str, problems: DataProblems | None = None) -> np.ndarray | None:
    """Decodes an infrared image to uint8 (H, W, 1), or returns None.

    Decoding is :func:`adverse_vision.data.files.read_gray`: colour files become
    grey (Pillow ``L``), 16-bit files are scaled to 8 bits by their high byte.
    Undecodable files and float images are reported to ``problems``
    (``corrupt_image``, once per file) and give None.
    """
    return _read_gray(path, problems, "infrared image")


def _read_gray(path: str, problems: DataProblems | None, what: str) -> np.ndarray | None:
    try:
        return read_gray(path)[..., None]
    except ImageDecodeError as e:
        reason = f"{what}: {e}"
    if problems is not None:
        problems.add("corrupt_image", path, reason, "sample marked invalid", once=True)
    else:
        logger.warning("corrupt_image: %s (%s) -> sample marked invalid", path, reason)
    return None


def _read_saliency(path: str, problems: DataProblems) -> np.ndarray | None:
    """A 0-255 saliency PNG as float32 (H, W, 1) in [0, 1], or None (reported)."""
    arr = _read_gray(path, problems, "saliency map")
    return None if arr is None else arr.astype(np.float32) / 255.0


def _split_list(root: str, split: str, default_dir: str | None) -> tuple[str, list[str]]:
    """(list path, ids) for a split name or a ``.txt`` path (absolute or under root)."""
    split = os.fspath(split)
    if not split:
        raise DataError(f"{root}: split is empty")
    if split.endswith(".txt"):
        path = split if storage.isabs(split) else os.path.join(root, split)
    else:
        parts = [root] + ([default_dir] if default_dir else []) + [split + ".txt"]
        path = os.path.join(*parts)
    if not storage.isfile(path):
        raise DataError(f"{path}: split file not found (split {split!r})")
    return path, read_id_list(path, "split file")


class _Reporting(PolicyReporting):
    """Policy-driven reporting shared by the sources below."""

    def _header_size(self, path: str, what: str) -> tuple[int, int] | None:
        """(width, height) of an image file, or None (reported, sample skipped)."""
        header = _header(path)
        if header is None:
            self.problems.add("corrupt_image", path, f"cannot read the {what} header",
                              "sample skipped")
            return None
        return header[0]

    def _check_sizes(self, vis_path: str, others: Sequence[tuple[str, str]]) -> bool:
        """True when every (path, what) file has the visible image's size."""
        vis_size = self._header_size(vis_path, "visible image")
        if vis_size is None:
            return False
        for path, what in others:
            size = self._header_size(path, what)
            if size is None:
                return False
            if size != vis_size:
                self._bad_sample(
                    path, f"{what} is {size[0]}x{size[1]} but the visible image {vis_path} is "
                    f"{vis_size[0]}x{vis_size[1]}",
                )
                return False
        return True

    def _thermal(self, i: int, image: np.ndarray) -> np.ndarray | None:
        """Sample ``i``'s infrared image (``self.ir_paths``), or None when it cannot be
        read or differs in size from ``image`` (reported)."""
        ir_path = self.ir_paths[i]
        thermal = read_thermal(ir_path, self.problems)
        if thermal is not None and thermal.shape[:2] != image.shape[:2]:
            self._size_mismatch(ir_path, "infrared image", thermal, image)
            return None
        return thermal

    def _size_mismatch(self, path: str, what: str, got: np.ndarray, image: np.ndarray) -> None:
        self.problems.add(
            "corrupt_image", path,
            f"decoded {what} is {got.shape[1]}x{got.shape[0]}, the visible image is "
            f"{image.shape[1]}x{image.shape[0]}", "sample marked invalid", once=True,
        )


def _index(source: Any, index: Any) -> int:
    i = int(index)
    n = len(source)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"{type(source).__name__}: index {index} out of range for {n} samples")
    return i


def _zeros_thermal() -> np.ndarray:
    return np.zeros((INVALID_IMAGE_SIZE, INVALID_IMAGE_SIZE, 1), np.uint8)


# -- M3FD -----------------------------------------------------------------------------


class M3FDSource(_Reporting, VOCSource):
    """M3FD infrared-visible detection (layout in the module docstring).

    Args:
      root: the dataset folder.
      split: a split name (``root/Main/<split>.txt``) or a ``.txt`` list (absolute
        or relative to ``root``); the first token of each line is the id.
      class_names: the config's classes in class-id order (matched
        case-insensitively; a subset drops the other M3FD classes silently).
      policy: a :class:`DataPolicy` or a mapping of its fields.
      problems: a :class:`DataProblems` to report to (one is made if None).
      class_map, ignore_other_classes, keep_difficult, coordinates: as for
        :class:`~adverse_vision.data.voc.VOCSource`.
      ir_dir, vis_dir, annotation_dir: folder names under ``root``.
      saliency_dir: folder of precomputed saliency maps, used when it exists
        under ``root`` (every sample then needs its map); None ignores it.

    Records: ``image``, ``boxes``, ``classes``, ``difficult``, ``id``, ``valid``,
    ``thermal`` and, with the saliency folder, ``saliency``.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        class_names: Sequence[str] = M3FD_CLASSES,
        policy: DataPolicy | Mapping[str, Any] | None = None,
        problems: DataProblems | None = None,
        *,
        class_map: Mapping[str, str | None] | None = None,
        ignore_other_classes: bool = True,
        keep_difficult: bool = True,
        coordinates: str = "continuous",
        ir_dir: str = "Ir",
        vis_dir: str = "Vis",
        annotation_dir: str = "Annotation",
        saliency_dir: str | None = "Mask",
    ):
        root = check_folder(root, "M3FD dataset root")
        self.ir_root = check_folder(os.path.join(root, ir_dir), "infrared image folder")
        check_folder(os.path.join(root, vis_dir), "visible image folder")
        check_folder(os.path.join(root, annotation_dir), "annotation folder")
        list_path, _ = _split_list(root, split, "Main")
        list_path = os.path.abspath(list_path)
        self.split = split
        self.saliency_root = None
        if saliency_dir is not None and storage.isdir(os.path.join(root, saliency_dir)):
            self.saliency_root = os.path.join(root, saliency_dir)
        self.ir_paths: list[str] = []
        self.saliency_paths: list[str | None] = []
        super().__init__(
            root, list_path, class_names, class_map=class_map,
            ignore_other_classes=ignore_other_classes, keep_difficult=keep_difficult,
            policy=policy, coordinates=coordinates, image_dir=vis_dir,
            annotation_dir=annotation_dir, known_classes=M3FD_CLASSES,
            problems=problems if problems is not None else DataProblems(f"M3FD {root}"),
        )

    def _add_sample(self, set_root: str, stem: str, prefix: str) -> None:
        ir_path = find_image(self.ir_root, stem)
        if ir_path is None:
            self._missing(os.path.join(self.ir_root, stem + ".png"), "infrared image not found")
            return
        mask_path = None
        if self.saliency_root is not None:
            mask_path = find_image(self.saliency_root, stem)
            if mask_path is None:
                self._missing(os.path.join(self.saliency_root, stem + ".png"),
                              "saliency map not found")
                return
        n = len(self.ids)
        super()._add_sample(set_root, stem, prefix)
        if len(self.ids) == n:
            return  # skipped while parsing the annotation (already reported)
        others = [(ir_path, "infrared image")]
        if mask_path is not None:
            others.append((mask_path, "saliency map"))
        if not self._check_sizes(self.image_paths[-1], others):
            self._drop_last()
            return
        self.ir_paths.append(ir_path)
        self.saliency_paths.append(mask_path)

    def _drop_last(self) -> None:
        """Removes the sample the VOC parser just added (every per-sample list)."""
        for values in (self.ids, self.image_paths, self.sizes, self._boxes, self._classes,
                       self._difficult, self.degraded_paths, self.annotation_paths):
            values.pop()

    def _invalid(self, index: int) -> dict[str, Any]:
        record = invalid_record(self.ids[index])
        record["thermal"] = _zeros_thermal()
        if self.saliency_root is not None:
            record["saliency"] = np.zeros(record["thermal"].shape, np.float32)
        return record

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        record = self._load(i)
        if not record["valid"]:
            return self._invalid(i)
        image = record["image"]
        thermal = self._thermal(i, image)
        if thermal is None:
            return self._invalid(i)
        record["thermal"] = thermal
        mask_path = self.saliency_paths[i]
        if mask_path is not None:
            saliency = _read_saliency(mask_path, self.problems)
            if saliency is None:
                return self._invalid(i)
            if saliency.shape[:2] != image.shape[:2]:
                self._size_mismatch(mask_path, "saliency map", saliency, image)
                return self._invalid(i)
            record["saliency"] = saliency
        return record

    def __repr__(self) -> str:
        return (
            f"M3FDSource(root={self.root!r}, split={self.split!r}, {len(self)} images, "
            f"classes={list(self.class_names)}, saliency={self.saliency_root is not None})"
        )


# -- MFNet ----------------------------------------------------------------------------


def _read_rgbt(path: str, problems: DataProblems) -> tuple[np.ndarray, np.ndarray] | None:
    """A 4-channel PNG as (RGB uint8 (H, W, 3), thermal uint8 (H, W, 1)), or None."""
    try:
        with open_image(path) as im:
            mode = im.mode
            arr = np.asarray(im, dtype=np.uint8) if mode == "RGBA" else None
    except Exception as e:  # noqa: BLE001 - PIL raises many exception types
        problems.add("corrupt_image", path, f"cannot decode image ({type(e).__name__}: {e})",
                     "sample marked invalid", once=True)
        return None
    if arr is None or arr.ndim != 3 or arr.shape[2] != 4 or arr.size == 0:
        problems.add("corrupt_image", path,
                     f"expected a 4-channel (RGB + thermal) PNG, got mode {mode!r}",
                     "sample marked invalid", once=True)
        return None
    return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3:])


class MFNetSource(_Reporting):
    """MFNet RGB-thermal semantic segmentation (layout in the module docstring).

    Args:
      root: the dataset folder.
      split: a split name (``root/<split>.txt``) or a ``.txt`` list (absolute or
        relative to ``root``); the first token of each line is the id.
      policy: a :class:`DataPolicy` or a mapping of its fields.
      problems: a :class:`DataProblems` to report to (one is made if None).
      image_dir, label_dir: folder names under ``root``.

    Records: ``{"image", "thermal", "mask", "id", "valid"}``; ``mask`` holds the
    class ids of :data:`MFNET_CLASSES`. A label value above 8 other than 255
    (ignore) is a ``bad_annotation`` and makes the record invalid.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        policy: DataPolicy | Mapping[str, Any] | None = None,
        problems: DataProblems | None = None,
        *,
        image_dir: str = "images",
        label_dir: str = "labels",
    ):
        self.root = check_folder(root, "MFNet dataset root")
        image_root = check_folder(os.path.join(self.root, image_dir), "image folder")
        label_root = check_folder(os.path.join(self.root, label_dir), "label folder")
        self.split = split
        self.policy = DataPolicy.from_config(policy)
        self.problems = problems if problems is not None else DataProblems(f"MFNet {self.root}")
        self.class_names = MFNET_CLASSES
        self.ids: list[str] = []
        self.image_paths: list[str] = []
        self.label_paths: list[str] = []
        list_path, stems = _split_list(self.root, split, None)
        for stem in stems:
            self._add(stem, image_root, label_root)
        if not self.ids:
            raise DataError(f"{list_path}: no usable samples ({self.problems.summary_text()})")
        logger.info("MFNet %s (%s): %d pairs; %s", self.root, split, len(self.ids),
                    self.problems.summary_text())

    def _add(self, stem: str, image_root: str, label_root: str) -> None:
        image_path = os.path.join(image_root, stem + ".png")
        label_path = os.path.join(label_root, stem + ".png")
        if not storage.isfile(image_path):
            self._missing(image_path, "RGB-thermal image not found")
            return
        if not storage.isfile(label_path):
            self._missing(label_path, "label image not found")
            return
        image_header = _header(image_path)
        if image_header is None:
            self.problems.add("corrupt_image", image_path, "cannot read the image header",
                              "sample skipped")
            return
        (iw, ih), image_mode = image_header
        if image_mode != "RGBA":
            self.problems.add("corrupt_image", image_path,
                              f"expected a 4-channel (RGB + thermal) PNG, got mode {image_mode!r}",
                              "sample skipped")
            return
        label_header = _header(label_path)
        if label_header is None:
            self._bad_sample(label_path, "cannot read the label header")
            return
        (lw, lh), label_mode = label_header
        if label_mode not in ("L", "P"):
            self._bad_sample(
                label_path, f"label mode {label_mode!r} is not a single-channel (L or P) PNG")
            return
        if (lw, lh) != (iw, ih):
            self._bad_sample(
                label_path, f"label is {lw}x{lh} but its image {image_path} is {iw}x{ih}")
            return
        self.ids.append(stem)
        self.image_paths.append(image_path)
        self.label_paths.append(label_path)

    def __len__(self) -> int:
        return len(self.ids)

    def _invalid(self, i: int) -> dict[str, Any]:
        s = INVALID_IMAGE_SIZE
        return {"image": np.zeros((s, s, 3), np.uint8), "thermal": _zeros_thermal(),
                "mask": np.full((s, s), MASK_IGNORE, np.uint8), "id": self.ids[i],
                "valid": np.bool_(False)}

    def __getitem__(self, index: Any) -> dict[str, Any]:
        i = _index(self, index)
        pair = _read_rgbt(self.image_paths[i], self.problems)
        if pair is None:
            return self._invalid(i)
        image, thermal = pair
        path = self.label_paths[i]
        try:
            mask = read_voc_mask(path)
        except Exception as e:  # noqa: BLE001 - PIL raises many exception types
            self.problems.add("corrupt_image", path,
                              f"cannot decode label ({type(e).__name__}: {e})",
                              "sample marked invalid", once=True)
            return self._invalid(i)
        if mask.shape != image.shape[:2]:
            self.problems.add(
                "bad_annotation", path,
                f"decoded label {mask.shape[1]}x{mask.shape[0]} differs from the image "
                f"{image.shape[1]}x{image.shape[0]}", "sample marked invalid", once=True,
            )
            return self._invalid(i)
        bad = (mask >= len(MFNET_CLASSES)) & (mask != MASK_IGNORE)
        if bad.any():
            self.problems.add(
                "bad_annotation", path,
                f"label values {np.unique(mask[bad]).tolist()[:5]} are not class ids "
                f"0..{len(MFNET_CLASSES) - 1} or {MASK_IGNORE}", "sample marked invalid", once=True,
            )
            return self._invalid(i)
        return {"image": image, "thermal": thermal, "mask": mask, "id": self.ids[i],
                "valid": np.bool_(True)}

    def __repr__(self) -> str:
        return f"MFNetSource(root={self.root!r}, split={self.split!r}, {len(self)} pairs)"


# -- paired folders -------------------------------------------------------------------


class FusionFolderSource(_Reporting):
    """Infrared and visible images in two folders, paired by file stem.

    Args:
      root: the dataset folder.
      ir_dir, vis_dir: the infrared and visible folder names under ``root``
        (see :data:`FUSION_FOLDER_NAMES` for the usual ones).
      extensions: file name endings that count as images (case-insensitive); the
        two files of a pair may have different endings.
      policy: a :class:`DataPolicy` or a mapping of its fields.
      problems: a :class:`DataProblems` to report to (one is made if None).

    Records: ``{"image", "thermal", "id", "valid"}`` with ``id`` the stem; pairs
    are sorted by stem. A stem found in one folder only is a ``missing_image``
    (its partner); two files with one stem in the same folder raise DataError.
    """

    def __init__(
        self,
        root: str,
        ir_dir: str = "ir",
        vis_dir: str = "vi",
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        policy: DataPolicy | Mapping[str, Any] | None = None,
        problems: DataProblems | None = None,
    ):
        self.root = check_folder(root, "fusion dataset root")
        known = ", ".join(f"{a!r}/{b!r}" for a, b in FUSION_FOLDER_NAMES)
        try:
            self.ir_root = check_folder(os.path.join(self.root, ir_dir), "infrared folder")
            self.vis_root = check_folder(os.path.join(self.root, vis_dir), "visible folder")
        except DataError as e:
            found = sorted(d for d in storage.listdir(self.root)
                           if storage.isdir(os.path.join(self.root, d)))
            raise DataError(f"{e} (folders in the root: {found}; usual ir_dir/vis_dir: {known})") \
                from None
        self.extensions = _normalize_extensions(extensions)
        self.policy = DataPolicy.from_config(policy)
        self.problems = problems if problems is not None else DataProblems(f"fusion {self.root}")
        self.ids: list[str] = []
        self.image_paths: list[str] = []
        self.ir_paths: list[str] = []
        ir_files = self._by_stem(self.ir_root)
        vis_files = self._by_stem(self.vis_root)
        for stem in sorted(set(ir_files) | set(vis_files)):
            if stem not in vis_files:
                self._missing(os.path.join(self.vis_root, stem + ".*"),
                              f"no visible partner for {ir_files[stem]}")
                continue
            if stem not in ir_files:
                self._missing(os.path.join(self.ir_root, stem + ".*"),
                              f"no infrared partner for {vis_files[stem]}")
                continue
            if not self._check_sizes(vis_files[stem], [(ir_files[stem], "infrared image")]):
                continue
            self.ids.append(stem)
            self.image_paths.append(vis_files[stem])
            self.ir_paths.append(ir_files[stem])
        if not self.ids:
            raise DataError(
                f"{self.root}: no infrared-visible pairs in {ir_dir!r}/{vis_dir!r} "
                f"({self.problems.summary_text()})"
            )
        logger.info("fusion folders %s: %d pairs; %s", self.root, len(self.ids),
                    self.problems.summary_text())

    def _by_stem(self, folder: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for name in _image_files(folder, self.extensions):
            stem = os.path.splitext(name)[0]
            path = os.path.join(folder, name)
            if stem in out:
                raise DataError(
                    f"{path}: two images with the stem {stem!r} in one folder "
                    f"({os.path.basename(out[stem])} and {name}); keep one"
                )
            out[stem] = path
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def _invalid(self, i: int) -> dict[str, Any]:
        s = INVALID_IMAGE_SIZE
        return {"image": np.zeros((s, s, 3), np.uint8), "thermal": _zeros_thermal(),
                "id": self.ids[i], "valid": np.bool_(False)}

    def __getitem__(self, index: Any) -> dict[str, Any]:
        i = _index(self, index)
        image = decode_image(self.image_paths[i], self.problems)
        if image is None:
            return self._invalid(i)
        thermal = self._thermal(i, image)
        if thermal is None:
            return self._invalid(i)
        return {"image": image, "thermal": thermal, "id": self.ids[i], "valid": np.bool_(True)}

    def __repr__(self) -> str:
        return (
            f"FusionFolderSource(root={self.root!r}, ir={os.path.basename(self.ir_root)!r}, "
            f"vis={os.path.basename(self.vis_root)!r}, {len(self)} pairs)"
        )
