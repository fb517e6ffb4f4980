"""Reading dataset files: images as 8-bit arrays, and lists of sample ids.

Every image reader of the package (the training sources and ``predict``) decodes
through :func:`read_rgb` or :func:`read_gray`, so one file gives the same pixels
wherever it is read. Pillow opens the file by its content, never by its extension.

Bit depth. 16-bit images (Pillow modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and
``I`` as older Pillow versions open 16-bit PNGs) are reduced to 8 bits by keeping the
high byte, ``v >> 8``: the full 16-bit range maps onto the full 8-bit range, a
16-bit copy of an 8-bit image (``v * 257``) reads back exactly, and it is what
Pillow itself does with 16-bit colour PNGs, which it opens as 8-bit ``RGB`` /
``RGBA``, so grey and colour 16-bit files of one scene agree. The scaling is fixed,
not stretched per image (minimum to maximum): a stretch would change an image's
brightness and contrast with its content, so that a dark night frame, a foggy one
and a bright one would all read as full-range images, 8-bit and 16-bit copies of a
file would differ, and neighbouring infrared frames would get different
temperature scales. Sensors that fill only part of the range (e.g. 14-bit infrared
in 16-bit files) therefore read dark; calibrate or rescale such data before
training. 32-bit integer images with values outside 0..65535 and floating-point
images (mode ``F``, range unknown) are refused with :class:`ImageDecodeError`.

Other modes: palette, grey, bilevel, CMYK, YCbCr and LAB images are converted by
Pillow; an alpha channel (``RGBA``, ``LA``, ``PA``, palette transparency) is
dropped, keeping the stored colours. Grey images read by :func:`read_rgb` repeat the
grey value in the three channels; colour images read by :func:`read_gray` become
Pillow's ``L`` luma (ITU-R 601: ``0.299 R + 0.587 G + 0.114 B``).

Id lists (VOC ``ImageSets``, split files) are read by :func:`read_id_list` as UTF-8
with or without a byte-order mark.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import numpy as np

from adverse_vision import storage
from adverse_vision.errors import DataError, MissingPathError

__all__ = ["ImageDecodeError", "check_folder", "read_gray", "read_id_list", "read_rgb"]

# Pillow modes of 16-bit single-channel images.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16BS", "I;16LS")


class ImageDecodeError(ValueError):
    """An image file cannot be read as an 8-bit image; the message gives the reason
    (callers add the file name)."""


def _eight_bit(im):
    """``im`` with 8-bit channels: 16-bit (and 16-bit-range 32-bit integer) grey
    images become ``L`` by their high byte; float images raise."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    mode = im.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        arr = np.asarray(im)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 0xFFFF):
            raise ImageDecodeError(
                f"a {mode!r} image with values {int(arr.min())}..{int(arr.max())} outside the "
                "16-bit range 0..65535; store it as an 8- or 16-bit image")
        return Image.fromarray((arr.astype(np.uint32) >> 8).astype(np.uint8), "L")
    if mode == "F" or mode.startswith("F;"):
        raise ImageDecodeError(
            f"a floating-point image (mode {mode!r}) has no known value range; store it as "
            "an 8- or 16-bit image")
    return im


@contextlib.contextmanager
def open_image(path: str) -> Iterator[Any]:
    """PIL's ``Image.open`` of a local file or a URL (``gs://...``), closed on exit."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    if not storage.is_url(path):
        with Image.open(path) as im:
            yield im
        return
    with storage.open_file(path) as f, Image.open(f) as im:
        yield im


def _decode(path: str, mode: str) -> np.ndarray:
    try:
        with open_image(path) as im:
            im = _eight_bit(im)
            if im.mode != mode:
                if im.mode == "P" and "transparency" in im.info:
                    im = im.convert("RGBA")  # Pillow warns when converting it straight
                im = im.convert(mode)
            arr = np.asarray(im, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many exception types
        raise ImageDecodeError(f"cannot decode image ({type(e).__name__}: {e})") from None
    if arr.size == 0:
        raise ImageDecodeError(f"decoded to an empty image of shape {arr.shape}")
    return arr


def read_rgb(path: str) -> np.ndarray:
    """The image file ``path`` as uint8 RGB (H, W, 3) (see the module docstring).

    Raises:
      ImageDecodeError: the file cannot be opened or decoded, or has no 8-bit reading.
    """
    return _decode(os.fspath(path), "RGB")


def read_gray(path: str) -> np.ndarray:
    """The image file ``path`` as uint8 grey (H, W) (colour files: Pillow's ``L``).

    Raises:
      ImageDecodeError: as :func:`read_rgb`.
    """
    return _decode(os.fspath(path), "L")


def read_id_list(path: str, what: str = "id list") -> list[str]:
    """The first token of every non-blank line of a text file (UTF-8, a byte-order mark
    at its start ignored), e.g. a VOC ``ImageSets/Main/<split>.txt``.

    Raises:
      DataError: the file cannot be read or is not UTF-8; the message names it as
        ``what``.
    """

    try:
        text = storage.read_bytes(path).decode("utf-8-sig")
        return [line.split()[0] for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read {what} ({e})") from None


def check_folder(path: str, what: str) -> str:
    """``path`` when it is a folder; otherwise one error naming it and ``what`` it should
    be (:class:`~adverse_vision.errors.MissingPathError` when it does not exist)."""
    path = os.fspath(path)
    if not storage.exists(path):
        raise MissingPathError(f"{path}: {what} does not exist")
    if not storage.isdir(path):
        raise DataError(f"{path}: {what} is not a folder")
    return path
