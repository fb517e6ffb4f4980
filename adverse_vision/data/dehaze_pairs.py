"""Paired hazy / clear images (dehazing benchmarks) as random-access data sources.

Records follow the record contract of :mod:`adverse_vision.data.pipeline`: ``image``
is the CLEAR image (uint8 (H, W, 3)), ``hazy`` its real hazy twin (uint8, same
size; the pipeline moves it with ``image`` through augmentation and letterbox and
uses it as the network input instead of synthesising haze), ``id`` (str, the hazy
file's stem) and ``valid``. There are no boxes (the pipeline pads zero boxes).
Evaluation at native size reads the records directly: ``source[i]`` gives both
images at their stored size.

Layouts (``layout="auto"`` finds the first that fits; folder names are matched
case-insensitively):

* ``"reside"``: ``root/hazy`` with ``root/gt`` or ``root/clear`` (RESIDE SOTS,
  ITS, OTS, HAZE4K, RESIDE-6K copies).
* ``"lowq"``: ``root/lowq`` with ``root/clear``, a test layout of released dehazing
  code (partners share a file name there).
* ``"ntire"``: the NTIRE real-haze sets (O-HAZE, I-HAZE, NH-HAZE, Dense-Haze):
  ``root/hazy`` with ``root/GT``, or both kinds of files in ``root`` itself, told
  apart by a ``hazy`` / ``GT`` word in the name.

``hazy_dir`` / ``clear_dir`` name the two folders directly instead.

Pairing. File stems are compared case-insensitively and split into words at
``_``. A hazy file is paired with the first clear file found for, in order:

1. the same stem (``lowq/0001.png`` -> ``clear/0001.png``; the extensions may
   differ);
2. the stem without its ``hazy`` / ``haze`` word, compared with clear stems
   without their ``gt`` / ``clear`` / ``clean`` word (``01_outdoor_hazy.jpg`` ->
   ``01_outdoor_GT.jpg``, ``01_hazy.png`` -> ``01_GT.png``);
3. the stem with trailing numeric words dropped one at a time (RESIDE's
   ``<id>_<A>_<beta>`` outdoor and ``<id>_<k>`` indoor names, ITS's
   ``<id>_<k>_<A>``: ``0001_0.8_0.2.jpg`` -> ``0001.png``, ``1400_3.png`` ->
   ``1400.png``). Several hazy images may share one clear image.

Files are those whose extension is in ``extensions`` (any case). In the one-folder
NTIRE layout a file with neither word is ignored (logged). ``list_file`` (a text
file of hazy file names or stems, one per line, UTF-8 with or without a byte-order
mark, absolute or relative to ``root``) restricts the source to the listed images.

Bad input follows :mod:`adverse_vision.data.problems`. A missing root or folder, a
root that fits no layout, two files with one stem in a folder, or no usable pair at
all raise one :class:`DataError` naming the path. When the source is built, each
pair is checked from the file headers: a hazy image without a clear partner (or a
listed name without its file) is ``missing_image`` (skipped, or raised under
``on_missing_image="error"``); partners of different sizes are ``bad_annotation``
(skipped, or raised under ``on_bad_annotation="error"``); an unreadable header is
``corrupt_image`` (the pair skipped; a clear image's problem is reported once with
the number of pairs skipped). A file that cannot be decoded when a sample is read,
or decodes to another size than its partner, gives an invalid record (``valid``
False, zero 32 x 32 images) and a ``corrupt_image`` report naming the file.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adverse_vision import storage
from adverse_vision.data.files import check_folder, read_id_list
from adverse_vision.data.folders import (
    IMAGE_EXTENSIONS,
    _header,
    _image_files,
    _normalize_extensions,
)
from adverse_vision.data.problems import (
    DataError,
    DataPolicy,
    DataProblems,
    PolicyReporting,
    decode_image,
    invalid_record,
)

__all__ = ["CLEAR_WORDS", "DEHAZE_LAYOUTS", "HAZY_WORDS", "DehazePairSource", "clear_keys",
           "hazy_keys"]

logger = logging.getLogger("adverse_vision.data")

#: Layout name -> (hazy folder, clear folders tried in order); "ntire" may also be
#: one folder holding both kinds of files.
DEHAZE_LAYOUTS = {
    "reside": ("hazy", ("gt", "clear")),
    "lowq": ("lowq", ("clear",)),
    "ntire": ("hazy", ("gt",)),
}
#: Words that mark a hazy file and a clear (ground-truth) file in a stem.
HAZY_WORDS = ("hazy", "haze")
CLEAR_WORDS = ("gt", "clear", "clean")

_NUMBER = re.compile(r"^\d+(\.\d+)?$")


def _drop_word(stem: str, words: Sequence[str]) -> str | None:
    """``stem`` (already lower-case) without its first word in ``words``, or None."""
    parts = stem.split("_")
    for k, part in enumerate(parts):
        if part in words and len(parts) > 1:
            return "_".join(parts[:k] + parts[k + 1:])
    return None


def _named(name: str, words: Sequence[str]) -> bool:
    """Whether the stem of the file ``name`` holds one of ``words``."""
    return _drop_word(os.path.splitext(name)[0].lower(), words) is not None


def clear_keys(stem: str) -> list[str]:
    """The names a clear image answers to: its stem, and the stem without its
    ``gt`` / ``clear`` / ``clean`` word (lower-case)."""
    stem = stem.lower()
    bare = _drop_word(stem, CLEAR_WORDS)
    return [stem] if bare is None else [stem, bare]


def hazy_keys(stem: str) -> list[str]:
    """The clear-image names tried for a hazy stem, in order (see the module
    docstring): the stem, the stem without its ``hazy`` word, then the stem with
    trailing numeric words dropped one at a time."""
    stem = stem.lower()
    keys = [stem]
    bare = _drop_word(stem, HAZY_WORDS)
    if bare is not None:
        keys.append(bare)
    parts = stem.split("_")
    while len(parts) > 1 and _NUMBER.match(parts[-1]):
        parts = parts[:-1]
        keys.append("_".join(parts))
    return list(dict.fromkeys(keys))


def _subfolders(root: str) -> dict[str, str]:
    """Lower-case name -> name of the folders directly in ``root``."""
    return {d.lower(): d for d in sorted(storage.listdir(root)) if storage.isdir(os.path.join(root, d))}


class DehazePairSource(PolicyReporting):
    """Hazy / clear image pairs from a dehazing benchmark (see the module docstring).

    Args:
      root: the dataset folder.
      layout: ``"auto"``, or one of :data:`DEHAZE_LAYOUTS`.
      hazy_dir, clear_dir: the two folder names under ``root`` (both or neither;
        they override ``layout``).
      list_file: an optional list of the hazy images to use.
      extensions: file name endings that count as images (case-insensitive).
      policy: a :class:`DataPolicy` or a mapping of its fields.
      problems: a :class:`DataProblems` to report to (one is made if None).

    Records: ``{"image" (clear), "hazy", "id", "valid"}``, sorted by hazy file
    name. ``hazy_paths`` / ``clear_paths`` hold the files of each pair and
    ``layout`` the layout used.
    """

    def __init__(
        self,
        root: str,
        layout: str = "auto",
        *,
        hazy_dir: str | None = None,
        clear_dir: str | None = None,
        list_file: str | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        policy: DataPolicy | Mapping[str, Any] | None = None,
        problems: DataProblems | None = None,
    ):
        self.root = check_folder(root, "dehazing dataset root")
        self.extensions = _normalize_extensions(extensions)
        self.policy = DataPolicy.from_config(policy)
        self.problems = problems if problems is not None else DataProblems(f"dehaze {self.root}")
        self.layout, hazy_root, clear_root = self._find_layout(layout, hazy_dir, clear_dir)
        self.hazy_root, self.clear_root = hazy_root, clear_root
        hazy_files, clear_files = self._list_files(hazy_root, clear_root)
        if list_file is not None:
            hazy_files = self._listed(list_file, hazy_files, hazy_root)
        self.ids: list[str] = []
        self.hazy_paths: list[str] = []
        self.clear_paths: list[str] = []
        self._pair(hazy_files, clear_files, clear_root)
        if not self.ids:
            raise DataError(
                f"{self.root}: no hazy/clear pairs ({self.layout} layout, hazy images in "
                f"{hazy_root}, clear images in {clear_root}; {self.problems.summary_text()})")
        logger.info("dehazing pairs %s (%s layout): %d pairs of %d clear images; %s", self.root,
                    self.layout, len(self.ids), len(set(self.clear_paths)),
                    self.problems.summary_text())

    # -- building -----------------------------------------------------------------
    def _find_layout(self, layout: str, hazy_dir: str | None,
                     clear_dir: str | None) -> tuple[str, str, str]:
        """(layout, hazy folder, clear folder); one folder for both in the one-folder
        NTIRE layout."""
        if (hazy_dir is None) != (clear_dir is None):
            raise DataError(f"{self.root}: give both hazy_dir and clear_dir, or neither")
        if hazy_dir is not None:
            return ("folders",
                    check_folder(os.path.join(self.root, hazy_dir), "hazy image folder"),
                    check_folder(os.path.join(self.root, clear_dir), "clear image folder"))
        if layout != "auto" and layout not in DEHAZE_LAYOUTS:
            raise DataError(f"{self.root}: dehazing layout {layout!r} is not 'auto' or one of "
                            f"{', '.join(map(repr, DEHAZE_LAYOUTS))}")
        found = _subfolders(self.root)
        for name in DEHAZE_LAYOUTS if layout == "auto" else (layout,):
            hazy, clears = DEHAZE_LAYOUTS[name]
            clear = next((c for c in clears if c in found), None)
            if hazy in found and clear is not None:
                hazy_root = os.path.join(self.root, found[hazy])
                if layout == "auto" and name == "reside" and clear == "gt" and any(
                        _named(n, HAZY_WORDS) for n in _image_files(hazy_root, self.extensions)):
                    name = "ntire"  # hazy/ + GT/ with *_hazy names: the NTIRE sets
                return name, hazy_root, os.path.join(self.root, found[clear])
        if layout in ("auto", "ntire") and any(
                _named(n, HAZY_WORDS) for n in _image_files(self.root, self.extensions)):
            return "ntire", self.root, self.root
        wanted = "; ".join(f"{n}: {h}/ + {' or '.join(c + '/' for c in cs)}"
                           for n, (h, cs) in DEHAZE_LAYOUTS.items()
                           if layout in ("auto", n))
        raise DataError(
            f"{self.root}: no dehazing layout found (folders here: {sorted(found.values())}; "
            f"expected {wanted}" + ("; or *_hazy / *_GT images in the folder itself"
                                    if layout in ("auto", "ntire") else "") + ")")

    def _by_stem(self, folder: str, names: Sequence[str]) -> dict[str, str]:
        """Lower-case stem -> path; two files with one stem raise."""
        out: dict[str, str] = {}
        for name in names:
            stem = os.path.splitext(name)[0].lower()
            path = os.path.join(folder, name)
            if stem in out:
                raise DataError(
                    f"{path}: two images with the stem {stem!r} in one folder "
                    f"({os.path.basename(out[stem])} and {name}); keep one")
            out[stem] = path
        return out

    def _list_files(self, hazy_root: str,
                    clear_root: str) -> tuple[dict[str, str], dict[str, str]]:
        """(hazy stem -> path, clear key -> path)."""
        hazy_names = _image_files(hazy_root, self.extensions)
        clear_names = _image_files(clear_root, self.extensions)
        if hazy_root == clear_root:  # one folder: told apart by the words in the names
            others = [n for n in hazy_names
                      if not _named(n, HAZY_WORDS) and not _named(n, CLEAR_WORDS)]
            if others:
                logger.warning("%s: %d image(s) named neither hazy nor GT ignored (first: %s)",
                               hazy_root, len(others), others[0])
            clear_names = [n for n in hazy_names
                           if _named(n, CLEAR_WORDS) and not _named(n, HAZY_WORDS)]
            hazy_names = [n for n in hazy_names if _named(n, HAZY_WORDS)]
        hazy = self._by_stem(hazy_root, hazy_names)
        self._by_stem(clear_root, clear_names)  # refuses duplicate stems
        clear: dict[str, str] = {}
        for name in clear_names:
            path = os.path.join(clear_root, name)
            for key in clear_keys(os.path.splitext(name)[0]):
                other = clear.get(key)
                if other is not None and other != path:
                    raise DataError(
                        f"{path}: the clear images {os.path.basename(other)} and {name} both "
                        f"answer to {key!r}; keep one")
                clear[key] = path
        return hazy, clear

    def _listed(self, list_file: str, hazy: dict[str, str], hazy_root: str) -> dict[str, str]:
        """The hazy images named in ``list_file`` (file names or stems)."""
        path = list_file if storage.isabs(list_file) else os.path.join(self.root, list_file)
        if not storage.isfile(path):
            raise DataError(f"{path}: hazy image list not found")
        out: dict[str, str] = {}
        for entry in read_id_list(path, "hazy image list"):
            name = os.path.basename(entry.replace("\\", "/"))
            stem = name.lower()
            if os.path.splitext(stem)[1] in self.extensions:
                stem = os.path.splitext(stem)[0]
            if stem in hazy:
                out[stem] = hazy[stem]
            else:
                self._missing(os.path.join(hazy_root, name),
                              f"listed in {path} but not found")
        return out

    def _pair(self, hazy: dict[str, str], clear: dict[str, str], clear_root: str) -> None:
        """Matches each hazy image to its clear image and checks the sizes."""
        groups: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        for stem, path in sorted(hazy.items(), key=lambda kv: os.path.basename(kv[1])):
            partner = next((clear[k] for k in hazy_keys(stem) if k in clear), None)
            if partner is None:
                self._missing(path, f"no clear image for it in {clear_root} (tried the names "
                              f"{hazy_keys(stem)})")
                continue
            groups[partner].append((os.path.splitext(os.path.basename(path))[0], path))
        pairs = []
        for clear_path, members in groups.items():
            clear_size = self._size(clear_path, "clear image",
                                    f"its {len(members)} pair(s) skipped")
            if clear_size is None:
                continue
            cw, ch = clear_size
            for sample_id, hazy_path in members:
                size = self._size(hazy_path, "hazy image", "sample skipped")
                if size is None:
                    continue
                if size != (cw, ch):
                    self._bad_sample(hazy_path, f"hazy image is {size[0]}x{size[1]} but its "
                                     f"clear image {clear_path} is {cw}x{ch}")
                    continue
                pairs.append((os.path.basename(hazy_path), sample_id, hazy_path, clear_path))
        for _, sample_id, hazy_path, clear_path in sorted(pairs):
            self.ids.append(sample_id)
            self.hazy_paths.append(hazy_path)
            self.clear_paths.append(clear_path)

    def _size(self, path: str, what: str, action: str) -> tuple[int, int] | None:
        header = _header(path)
        if header is None:
            self.problems.add("corrupt_image", path, f"cannot read the {what} header", action)
            return None
        return header[0]

    # -- reading ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def _invalid(self, i: int) -> dict[str, Any]:
        record = invalid_record(self.ids[i], extra_image_keys=("hazy",))
        return {k: record[k] for k in ("image", "hazy", "id", "valid")}

    def __getitem__(self, index: Any) -> dict[str, Any]:
        i = int(index)
        n = len(self.ids)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"DehazePairSource: index {index} out of range for {n} samples")
        clear = decode_image(self.clear_paths[i], self.problems)
        hazy = decode_image(self.hazy_paths[i], self.problems)
        if clear is None or hazy is None:
            return self._invalid(i)
        if hazy.shape != clear.shape:
            self.problems.add(
                "corrupt_image", self.hazy_paths[i],
                f"decoded hazy image is {hazy.shape[1]}x{hazy.shape[0]}, its clear image "
                f"{self.clear_paths[i]} is {clear.shape[1]}x{clear.shape[0]}",
                "sample marked invalid", once=True)
            return self._invalid(i)
        return {"image": clear, "hazy": hazy, "id": self.ids[i], "valid": np.bool_(True)}

    def __repr__(self) -> str:
        return (f"DehazePairSource(root={self.root!r}, layout={self.layout!r}, {len(self)} pairs, "
                f"{len(set(self.clear_paths))} clear images)")
