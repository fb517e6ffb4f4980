"""Plain image folders as random-access data sources.

Three layouts, all returning records with ``image`` (uint8 RGB (H, W, 3)), ``id``
(str) and ``valid``:

* :class:`ImageFolderSource`: every image file directly in one folder (the
  denoising benchmarks: Kodak, CBSD68, McMaster). ``id`` is the file name.
* :class:`ClassFolderSource`: one sub-folder per class (ImageNet style); records
  add ``label`` (int, index in ``class_names``). ``id`` is ``"<class>/<file>"``.
* :class:`VOCSegmentationSource`: the Pascal VOC 2012 segmentation layout::

      root/ImageSets/Segmentation/<image_set>.txt
      root/JPEGImages/<id>.jpg
      root/SegmentationClass/<id>.png

  Records add ``mask`` (uint8 (H, W)): the palette *indices* of the PNG (class ids,
  0 = background, 255 = void / ignore), never its RGB colours.

Bad input follows the rules of :mod:`adverse_vision.data.problems`. Folder sources
list the files that exist, so nothing can be missing there; the VOC list names
files that may be absent, which are skipped (reported as ``missing_image``) or
raise under ``on_missing_image="error"``. Masks that do not match their image
(another size, RGB instead of indices) are found when the source is built and are
skipped (``bad_annotation``) or raise under ``on_bad_annotation="error"``. A file
that cannot be decoded when read gives an invalid record (``valid`` False, a zero
image, an all-ignore mask) and a ``corrupt_image`` report naming the file.
Grayscale and palette images are returned as 3-channel RGB.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adverse_vision import storage
from adverse_vision.data.files import check_folder, open_image, read_id_list
from adverse_vision.data.problems import (
    INVALID_IMAGE_SIZE,
    DataError,
    DataPolicy,
    DataProblems,
    PolicyReporting,
    decode_image,
)
from adverse_vision.data.voc import VOC_CLASSES

__all__ = [
    "IMAGE_EXTENSIONS",
    "VOC_PALETTE",
    "VOC_SEG_CLASSES",
    "ClassFolderSource",
    "ImageFolderSource",
    "VOCSegmentationSource",
    "read_voc_mask",
    "voc_palette",
    "write_voc_mask",
]

logger = logging.getLogger("adverse_vision.data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

VOC_SEG_CLASSES = ("background",) + VOC_CLASSES
MASK_IGNORE = 255


def voc_palette(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map: uint8 (n, 3), entry ``k`` the colour of label ``k``.

    The bits of ``k`` are spread over the channels from the most significant bit
    down (bit 0 -> R, bit 1 -> G, bit 2 -> B, then the next three bits one place
    lower), so 0 is black, 1 dark red, 15 (person) (192, 128, 128) and 255 (void)
    (224, 224, 192).
    """
    out = np.zeros((n, 3), np.uint8)
    for k in range(n):
        rgb = [0, 0, 0]
        code = k
        for shift in range(7, -1, -1):
            for c in range(3):
                rgb[c] |= ((code >> c) & 1) << shift
            code >>= 3
        out[k] = rgb
    return out


VOC_PALETTE = voc_palette()


def _normalize_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    out = []
    for ext in extensions:
        ext = str(ext).lower()
        if not ext:
            raise DataError("extensions: an empty extension")
        out.append(ext if ext.startswith(".") else "." + ext)
    if not out:
        raise DataError("extensions is empty")
    return tuple(out)


def _image_files(folder: str, extensions: tuple[str, ...]) -> list[str]:
    """Sorted names of the image files directly in ``folder``."""
    names = []
    for name in storage.listdir(folder):
        if os.path.splitext(name)[1].lower() in extensions and storage.isfile(
            os.path.join(folder, name)
        ):
            names.append(name)
    return sorted(names)


def _invalid(sample_id: str, **extra: Any) -> dict[str, Any]:
    s = INVALID_IMAGE_SIZE
    return {"image": np.zeros((s, s, 3), np.uint8), "id": sample_id, "valid": np.bool_(False),
            **extra}


class _FileSource:
    """Random access over a list of (id, image file) pairs."""

    problems: DataProblems

    def __init__(self):
        self.ids: list[str] = []
        self.image_paths: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def _index(self, index: Any) -> int:
        i = int(index)
        n = len(self.ids)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {n} samples")
        return i

    def _read(self, i: int) -> np.ndarray | None:
        return decode_image(self.image_paths[i], self.problems)


class ImageFolderSource(_FileSource):
    """Every image file directly in ``root``, sorted by name.

    Args:
      root: the folder.
      extensions: file name endings that count as images (case-insensitive).
      problems: a :class:`DataProblems` to report to (one is made if None).
      policy: a :class:`DataPolicy` or a mapping of its fields; kept for the
        interface of the other sources (a listed folder has no missing files).

    Records: ``{"image", "id", "valid"}`` with ``id`` the file name.
    """

    def __init__(
        self,
        root: str,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        problems: DataProblems | None = None,
        policy: DataPolicy | Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.root = check_folder(root, "image folder")
        self.extensions = _normalize_extensions(extensions)
        self.policy = DataPolicy.from_config(policy)
        self.problems = problems if problems is not None else DataProblems(f"images {self.root}")
        for name in _image_files(self.root, self.extensions):
            self.ids.append(name)
            self.image_paths.append(os.path.join(self.root, name))
        if not self.ids:
            raise DataError(
                f"{self.root}: no image files ({', '.join(self.extensions)}) in the folder"
            )
        logger.info("image folder %s: %d images", self.root, len(self.ids))

    def __getitem__(self, index: Any) -> dict[str, Any]:
        i = self._index(index)
        image = self._read(i)
        if image is None:
            return _invalid(self.ids[i])
        return {"image": image, "id": self.ids[i], "valid": np.bool_(True)}

    def __repr__(self) -> str:
        return f"ImageFolderSource(root={self.root!r}, {len(self)} images)"


class ClassFolderSource(_FileSource):
    """Image classification from one sub-folder of ``root`` per class.

    Args:
      root: the folder holding the class folders.
      class_names: the classes in label order, each the name of a sub-folder;
        None: every sub-folder, sorted by name. Sub-folders that are not listed are
        ignored (counted as ``other_class``).
      extensions: file name endings that count as images (case-insensitive).
      problems, policy: as for :class:`ImageFolderSource`.

    Records: ``{"image", "label", "id", "valid"}``; ``label`` is the index of the
    class in :attr:`class_names` and ``id`` is ``"<class>/<file name>"``. Images
    are the files directly inside each class folder, sorted by class then name.
    """

    def __init__(
        self,
        root: str,
        class_names: Sequence[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        problems: DataProblems | None = None,
        policy: DataPolicy | Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.root = check_folder(root, "class folder root")
        self.extensions = _normalize_extensions(extensions)
        self.policy = DataPolicy.from_config(policy)
        self.problems = problems if problems is not None else DataProblems(f"classes {self.root}")
        folders = sorted(
            d for d in storage.listdir(self.root) if storage.isdir(os.path.join(self.root, d))
        )
        if class_names is None or (not isinstance(class_names, str) and len(class_names) == 0):
            if not folders:
                raise DataError(f"{self.root}: no class sub-folders")
            class_names = folders
        elif isinstance(class_names, str):
            raise DataError(f"class_names must be a sequence of names, got the string {class_names!r}")
        self.class_names = tuple(str(c) for c in class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"class_names has duplicate names: {list(self.class_names)}")
        for name in self.class_names:
            if not storage.isdir(os.path.join(self.root, name)):
                raise DataError(
                    f"{os.path.join(self.root, name)}: no folder for class {name!r} "
                    f"(class folders found: {folders})"
                )
        for name in sorted(set(folders) - set(self.class_names)):
            self.problems.add("other_class", os.path.join(self.root, name),
                              "folder not in class_names", "folder ignored")
        self.labels: list[int] = []
        for label, name in enumerate(self.class_names):
            folder = os.path.join(self.root, name)
            files = _image_files(folder, self.extensions)
            if not files:
                logger.warning("class folder %s has no images", folder)
            for file in files:
                self.ids.append(f"{name}/{file}")
                self.image_paths.append(os.path.join(folder, file))
                self.labels.append(label)
        if not self.ids:
            raise DataError(f"{self.root}: no image files in the class folders {list(self.class_names)}")
        logger.info("class folders %s: %d images, %d classes", self.root, len(self.ids),
                    len(self.class_names))

    def __getitem__(self, index: Any) -> dict[str, Any]:
        i = self._index(index)
        label = self.labels[i]
        image = self._read(i)
        if image is None:
            return _invalid(self.ids[i], label=label)
        return {"image": image, "label": label, "id": self.ids[i], "valid": np.bool_(True)}

    def __repr__(self) -> str:
        return (
            f"ClassFolderSource(root={self.root!r}, {len(self)} images, "
            f"{len(self.class_names)} classes)"
        )


# -- VOC segmentation -------------------------------------------------------------


def write_voc_mask(path: str, mask: Any) -> None:
    """Writes a label map as a palette PNG with :data:`VOC_PALETTE` (VOC's format).

    ``mask``: integer (H, W) with values in [0, 255] (255 = void).
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel

    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"write_voc_mask {path}: mask must be a non-empty (H, W) array, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"write_voc_mask {path}: mask values must be integers in [0, 255]")
    image = Image.fromarray(arr.astype(np.uint8), mode="P")
    image.putpalette(VOC_PALETTE.reshape(-1).tolist())
    image.save(path, format="PNG")


def read_voc_mask(path: str) -> np.ndarray:
    """Reads a segmentation PNG as uint8 (H, W) class ids.

    Palette PNGs give their palette indices (the colours are ignored); single-
    channel ("L") PNGs, as in the augmented VOC set, give their values. Other
    modes (e.g. RGB colour masks) raise ValueError naming the file.
    """
    with open_image(path) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(
                f"{path}: segmentation mask has mode {im.mode!r}; expected a palette (P) or "
                "grayscale (L) PNG of class indices"
            )
        return np.array(im, dtype=np.uint8)


def _header(path: str) -> tuple[tuple[int, int], str] | None:
    """((width, height), mode) from the file header, or None if unreadable."""
    try:
        with open_image(path) as im:
            return (int(im.size[0]), int(im.size[1])), str(im.mode)
    except Exception:  # noqa: BLE001 - PIL raises many exception types
        return None


class VOCSegmentationSource(PolicyReporting, _FileSource):
    """Pascal VOC 2012 semantic segmentation (layout in the module docstring).

    Args:
      root: the VOC2012 folder.
      image_set: a split name (``"train"``, ``"val"``, ``"trainval"``: the list
        ``root/ImageSets/Segmentation/<image_set>.txt``) or a path to a ``.txt``
        list (absolute or relative to ``root``). The first token of each line is
        the sample id.
      problems, policy: bad-input reporting and handling (see the module docstring).
      image_dir, mask_dir: folder names under ``root`` (``mask_dir`` e.g.
        ``"SegmentationClassAug"`` for the augmented set's grayscale PNGs).

    Records: ``{"image", "mask", "id", "valid"}``; ``mask`` is uint8 (H, W) with the
    class ids of :data:`VOC_SEG_CLASSES` and 255 for void. Each image and its mask
    are checked (header only) when the source is built.
    """

    def __init__(
        self,
        root: str,
        image_set: str = "train",
        problems: DataProblems | None = None,
        policy: DataPolicy | Mapping[str, Any] | None = None,
        image_dir: str = "JPEGImages",
        mask_dir: str = "SegmentationClass",
    ):
        super().__init__()
        self.root = check_folder(root, "VOC segmentation root")
        self.image_set = str(image_set)
        self.policy = DataPolicy.from_config(policy)
        self.problems = problems if problems is not None else DataProblems(f"VOC seg {self.root}")
        self.class_names = VOC_SEG_CLASSES
        self.mask_paths: list[str] = []
        if self.image_set.endswith(".txt"):
            list_path = self.image_set if storage.isabs(self.image_set) else os.path.join(
                self.root, self.image_set)
        else:
            list_path = os.path.join(self.root, "ImageSets", "Segmentation", self.image_set + ".txt")
        if not storage.isfile(list_path):
            raise FileNotFoundError(f"{list_path}: image set file not found (image_set {image_set!r})")
        stems = read_id_list(list_path, "image set file")
        for stem in stems:
            self._add(stem, os.path.join(self.root, image_dir), os.path.join(self.root, mask_dir))
        if not self.ids:
            raise DataError(
                f"{list_path}: no usable samples ({self.problems.summary_text()})"
            )
        logger.info("VOC segmentation %s (%s): %d images; %s", self.root, self.image_set,
                    len(self.ids), self.problems.summary_text())

    def _add(self, stem: str, image_dir: str, mask_dir: str) -> None:
        image_path = None
        for ext in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG"):
            candidate = os.path.join(image_dir, stem + ext)
            if storage.isfile(candidate):
                image_path = candidate
                break
        mask_path = os.path.join(mask_dir, stem + ".png")
        if image_path is None:
            self._missing(os.path.join(image_dir, stem + ".jpg"), "image file not found")
            return
        if not storage.isfile(mask_path):
            self._missing(mask_path, "segmentation mask not found")
            return
        image_header = _header(image_path)
        if image_header is None:
            self.problems.add("corrupt_image", image_path, "cannot read the image header",
                              "sample skipped")
            return
        mask_header = _header(mask_path)
        if mask_header is None:
            self._bad_sample(mask_path, "cannot read the mask header")
            return
        (iw, ih), _ = image_header
        (mw, mh), mode = mask_header
        if mode not in ("P", "L"):
            self._bad_sample(mask_path, f"mask mode {mode!r} is not a palette (P) or grayscale (L) PNG")
            return
        if (mw, mh) != (iw, ih):
            self._bad_sample(mask_path, f"mask is {mw}x{mh} but its image {image_path} is {iw}x{ih}")
            return
        self.ids.append(stem)
        self.image_paths.append(image_path)
        self.mask_paths.append(mask_path)

    def _invalid(self, i: int) -> dict[str, Any]:
        s = INVALID_IMAGE_SIZE
        return _invalid(self.ids[i], mask=np.full((s, s), MASK_IGNORE, np.uint8))

    def __getitem__(self, index: Any) -> dict[str, Any]:
        i = self._index(index)
        image = self._read(i)
        if image is None:
            return self._invalid(i)
        path = self.mask_paths[i]
        try:
            mask = read_voc_mask(path)
        except Exception as e:  # noqa: BLE001 - PIL raises many exception types
            self.problems.add("corrupt_image", path, f"cannot decode mask ({type(e).__name__}: {e})",
                              "sample marked invalid", once=True)
            return self._invalid(i)
        if mask.shape != image.shape[:2]:
            self.problems.add(
                "bad_annotation", path,
                f"decoded mask {mask.shape[1]}x{mask.shape[0]} differs from the image "
                f"{image.shape[1]}x{image.shape[0]}", "sample marked invalid", once=True,
            )
            return self._invalid(i)
        return {"image": image, "mask": mask, "id": self.ids[i], "valid": np.bool_(True)}

    def __repr__(self) -> str:
        return (
            f"VOCSegmentationSource(root={self.root!r}, image_set={self.image_set!r}, "
            f"{len(self)} images)"
        )
