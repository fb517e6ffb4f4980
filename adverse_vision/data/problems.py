"""Bad-input reporting shared by the file-backed data sources.

Real datasets are never clean: images go missing, JPEGs get truncated, boxes stick
out of the image or have zero area, XML files name classes nobody asked for. The
sources in this package never die on such input. Each problem is

* counted by kind (:data:`PROBLEM_KINDS`, plus the silent kinds in
  :data:`SILENT_KINDS` that are expected and only counted),
* logged once per distinct (kind, file, reason) through
  ``logging.getLogger("adverse_vision.data")`` with the file and the reason,
* handled according to a :class:`DataPolicy` (clip, skip, keep) or turned into one
  :class:`DataError` naming the file and the reason when the policy says ``"error"``.

Annotation problems are found when a source is built, in the main process. Undecodable
images are only seen when a sample is decoded, which happens inside the loader's
worker processes; :func:`decode_image` then returns ``None`` and the source returns an
invalid record (:func:`invalid_record`) instead of raising, so no worker dies. The
loader reads every sample inside :func:`found_while_reading`, which collects those
problems instead of recording them; they travel with the sample to the consuming
process, which records them into the source's :class:`DataProblems`
(:meth:`DataProblems.add_found`), once per distinct (kind, file, reason) however
often and in however many workers the sample is read. So the counts of a run are
exact whatever ``data.num_workers`` is.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from adverse_vision.data.files import ImageDecodeError, open_image, read_rgb
from adverse_vision.errors import DataError  # the package's name for bad dataset input

LOGGER_NAME = "adverse_vision.data"
logger = logging.getLogger(LOGGER_NAME)

# Problems that are reported (logged once per distinct file and reason).
PROBLEM_KINDS = (
    "missing_image",  # image file not found
    "corrupt_image",  # image file cannot be decoded
    "box_outside",  # box extends outside the image (clipped or dropped by policy)
    "box_degenerate",  # zero / negative area or non-finite box (dropped)
    "unknown_class",  # object of a class that is neither wanted nor known
    "empty_annotation",  # no object left for an image (kept or skipped by policy)
    "bad_annotation",  # unparseable annotation file or entry
    "too_many_boxes",  # more objects than data.max_boxes: the largest kept
)
# Expected, harmless filtering: only counted, never logged per file.
SILENT_KINDS = (
    "other_class",  # known class outside the configured subset, dropped
    "crowd",  # COCO iscrowd=1 region, dropped
    "difficult_dropped",  # difficult object dropped because keep_difficult=False
)
ALL_KINDS = PROBLEM_KINDS + SILENT_KINDS

# Side of the zero image returned for samples that could not be decoded.
INVALID_IMAGE_SIZE = 32

_POLICY_CHOICES = {
    "on_bad_box": ("clip", "skip", "error"),
    "on_unknown_class": ("skip", "error"),
    "on_empty": ("keep", "skip"),
    "on_missing_image": ("skip", "error"),
    "on_bad_annotation": ("skip", "error"),
}


@dataclasses.dataclass(frozen=True)
class DataPolicy:
    """What a source does with bad input.

    Attributes:
      on_bad_box: boxes that extend outside the image are clipped to it (``"clip"``),
        dropped (``"skip"``) or raise (``"error"``). Boxes with no area (after
        clipping) are always dropped, except under ``"error"`` where they raise.
      on_unknown_class: objects of unknown classes are dropped or raise.
      on_empty: images left without objects are kept (as negatives) or skipped.
      on_missing_image: annotated images whose file is absent are skipped or raise.
      on_bad_annotation: unparseable annotation files / entries are skipped or raise.
    """

    on_bad_box: str = "clip"
    on_unknown_class: str = "skip"
    on_empty: str = "keep"
    on_missing_image: str = "skip"
    on_bad_annotation: str = "skip"

    def __post_init__(self):
        for key, choices in _POLICY_CHOICES.items():
            value = getattr(self, key)
            if value not in choices:
                raise DataError(
                    f"data policy {key}={value!r} is not one of {', '.join(map(repr, choices))}"
                )

    @classmethod
    def from_config(cls, config: Any = None) -> "DataPolicy":
        """Builds a policy from ``None``, a policy, a mapping or a ConfigDict.

        Keys other than the ``on_*`` fields are ignored, so a whole data config can
        be passed; an unknown ``on_*`` key is taken for a typo and raises.
        """
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        if not isinstance(config, Mapping):
            raise DataError(f"data policy must be a mapping or DataPolicy, got {type(config).__name__}")
        unknown = sorted(k for k in config if str(k).startswith("on_") and k not in _POLICY_CHOICES)
        if unknown:
            raise DataError(
                f"unknown data policy key(s) {unknown}; known: {sorted(_POLICY_CHOICES)}"
            )
        return cls(**{k: config[k] for k in _POLICY_CHOICES if k in config})


# Per thread: the lists collecting problems (innermost last), see found_while_reading.
_COLLECTING = threading.local()


@contextlib.contextmanager
def found_while_reading() -> Iterator[list[tuple]]:
    """Collects the problems met in this thread instead of recording them.

    Inside the block every :meth:`DataProblems.add`, of any collector, appends
    ``(kind, file, reason, action, count, silent)`` to the yielded list and neither
    counts nor logs. The loader reads each sample so and hands the list to the
    consuming process (:meth:`DataProblems.add_found`), where the counts of a run are
    kept. Errors (:meth:`DataProblems.error`) are raised as usual.
    """
    stack = getattr(_COLLECTING, "stack", None)
    if stack is None:
        stack = _COLLECTING.stack = []
    found: list[tuple] = []
    stack.append(found)
    try:
        yield found
    finally:
        stack.pop()


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str
    file: str
    reason: str
    action: str


class DataProblems:
    """Collects the problems met while reading a dataset.

    ``counts`` counts occurrences (e.g. boxes clipped), ``files`` the distinct files
    per kind. Each distinct (kind, file, reason) is logged once at WARNING level;
    after ``max_logged_per_kind`` messages of one kind further ones are only
    counted (one line says so). Silent kinds are never logged per file.
    """

    def __init__(
        self,
        name: str = "data",
        *,
        max_logged_per_kind: int = 50,
        max_records: int = 10_000,
        log: bool = True,
    ):
        self.name = name
        self.log = log
        self.max_logged_per_kind = max_logged_per_kind
        self.max_records = max_records
        self.counts: collections.Counter = collections.Counter()
        self._files: dict[str, set] = collections.defaultdict(set)
        self._seen: set = set()
        self._logged_per_kind: collections.Counter = collections.Counter()
        self.records: list[Problem] = []

    # -- recording ---------------------------------------------------------------
    def add(
        self,
        kind: str,
        file: str,
        reason: str,
        action: str,
        *,
        count: int = 1,
        silent: bool = False,
        once: bool = False,
    ) -> None:
        """Records ``count`` occurrences of a problem and logs it once.

        With ``once=True`` a repeat of the same (kind, file, reason) is not counted
        again either (for problems met each time a sample is read). Inside
        :func:`found_while_reading` the problem is collected there instead.
        """
        if kind not in ALL_KINDS:
            raise ValueError(f"unknown data problem kind {kind!r}; known: {ALL_KINDS}")
        file = str(file)
        collecting = getattr(_COLLECTING, "stack", None)
        if collecting:
            collecting[-1].append((kind, file, str(reason), str(action), int(count), bool(silent)))
            return
        key = (kind, file, reason)
        if once and key in self._seen:
            return
        self.counts[kind] += count
        self._files[kind].add(file)
        if key in self._seen:
            return
        self._seen.add(key)
        if len(self.records) < self.max_records:
            self.records.append(Problem(kind, file, reason, action))
        if silent or kind in SILENT_KINDS or not self.log:
            return
        n = self._logged_per_kind[kind]
        self._logged_per_kind[kind] += 1
        if n < self.max_logged_per_kind:
            logger.warning("%s: %s: %s (%s) -> %s", self.name, kind, file, reason, action)
        elif n == self.max_logged_per_kind:
            logger.warning(
                "%s: %s: more than %d problems of this kind; further ones are counted, not logged",
                self.name, kind, self.max_logged_per_kind,
            )

    def error(self, kind: str, file: str, reason: str, hint: str = "") -> DataError:
        """Records a problem that the policy turns into an error and returns the error.

        Usage: ``raise problems.error("box_outside", path, "box [...] outside 10x10")``.
        """
        self.counts[kind] += 1
        self._files[kind].add(str(file))
        msg = f"{file}: {reason}"
        if hint:
            msg += f" ({hint})"
        return DataError(msg)

    def add_found(self, found: Iterable[Sequence[Any]]) -> None:
        """Records problems collected by :func:`found_while_reading` (in any process);
        each distinct (kind, file, reason) is counted and logged once, so a file read
        again (another epoch, another worker, an evaluation pass) is not counted again."""
        for kind, file, reason, action, count, silent in found:
            self.add(kind, file, reason, action, count=int(count), silent=bool(silent), once=True)

    def merge(self, other: "DataProblems") -> None:
        self.counts.update(other.counts)
        for kind, files in other._files.items():
            self._files[kind] |= files
        for rec in other.records:
            key = (rec.kind, rec.file, rec.reason)
            if key not in self._seen:
                self._seen.add(key)
                if len(self.records) < self.max_records:
                    self.records.append(rec)

    # -- reading -----------------------------------------------------------------
    def count(self, kind: str) -> int:
        return int(self.counts.get(kind, 0))

    def files(self, kind: str) -> list[str]:
        return sorted(self._files.get(kind, ()))

    @property
    def total(self) -> int:
        """Occurrences of reported (non-silent) problems."""
        return sum(self.counts.get(k, 0) for k in PROBLEM_KINDS)

    def summary(self) -> dict[str, int]:
        """Counts for every kind (zeros included) plus ``"total"`` (reported kinds)."""
        out = {k: int(self.counts.get(k, 0)) for k in ALL_KINDS}
        out["total"] = self.total
        return out

    def summary_text(self) -> str:
        nonzero = [f"{k}={v}" for k, v in self.summary().items() if v and k != "total"]
        if not nonzero:
            return f"{self.name}: no data problems"
        return f"{self.name}: " + ", ".join(nonzero)

    def __str__(self) -> str:
        return self.summary_text()

    def __repr__(self) -> str:
        return f"DataProblems({self.summary_text()!r})"


# -- boxes -----------------------------------------------------------------------


class PolicyReporting:
    """Skip-or-raise reporting for a source that holds ``policy`` and ``problems``: a
    missing file, a bad annotation or an unknown class is recorded with what was done
    about it (``action``), or raised when the data policy says "error". ``problems``
    overrides the source's collector (a per-read one, say); ``once`` and ``count`` are
    those of :meth:`DataProblems.add`."""

    policy: DataPolicy
    problems: DataProblems

    def _report(self, kind: str, policy_key: str, path: str, reason: str, action: str, *,
                hint: str = "", problems: DataProblems | None = None, once: bool = False,
                count: int = 1) -> None:
        problems = self.problems if problems is None else problems
        if getattr(self.policy, policy_key) == "error":
            raise problems.error(kind, path, reason,
                                 f"data policy {policy_key}='error'" + (f"; {hint}" if hint else ""))
        problems.add(kind, path, reason, action, once=once, count=count)

    def _missing(self, path: str, reason: str, action: str = "sample skipped", **kw) -> None:
        self._report("missing_image", "on_missing_image", path, reason, action, **kw)

    def _bad_sample(self, path: str, reason: str, action: str = "sample skipped", **kw) -> None:
        """A ``bad_annotation`` problem (an annotation, mask, label or paired image that
        cannot be read or does not fit)."""
        self._report("bad_annotation", "on_bad_annotation", path, reason, action, **kw)

    def _unknown_class(self, path: str, reason: str, action: str, **kw) -> None:
        self._report("unknown_class", "on_unknown_class", path, reason, action,
                     hint="map it with class_map or use 'skip'", **kw)


def sanitize_boxes(
    boxes: Any,
    classes: Any,
    difficult: Any,
    width: float,
    height: float,
    policy: DataPolicy,
    problems: DataProblems,
    file: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Makes pixel xyxy boxes valid for a ``width`` x ``height`` image.

    Boxes that extend outside the image are clipped (or dropped, or raise) per
    ``policy.on_bad_box``; boxes with non-finite coordinates or no area after
    clipping are dropped (raise under ``"error"``). Every change is reported to
    ``problems`` under ``file``, once per kind.

    Returns:
      ``(boxes float32 (N, 4), classes int32 (N,), difficult bool (N,))``.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes, np.int32).reshape(-1)
    difficult = np.asarray(difficult, bool).reshape(-1)
    if not (len(boxes) == len(classes) == len(difficult)):
        raise ValueError(
            f"{file}: boxes, classes and difficult differ in length "
            f"({len(boxes)}, {len(classes)}, {len(difficult)})"
        )
    if len(boxes) == 0:
        return boxes, classes, difficult
    w, h = float(width), float(height)
    size = f"{int(round(w))}x{int(round(h))}"

    finite = np.all(np.isfinite(boxes), axis=1)
    if not finite.all():
        n = int((~finite).sum())
        reason = f"{n} box(es) with non-finite coordinates"
        if policy.on_bad_box == "error":
            raise problems.error("box_degenerate", file, reason, "data policy on_bad_box='error'")
        problems.add("box_degenerate", file, reason, "dropped", count=n)
        boxes, classes, difficult = boxes[finite], classes[finite], difficult[finite]

    limits = np.array([w, h, w, h], np.float32)
    outside = np.any((boxes < 0) | (boxes > limits), axis=1)
    if outside.any():
        n = int(outside.sum())
        first = np.round(boxes[outside][0], 2).tolist()
        reason = f"{n} box(es) extend outside the {size} image (first: {first})"
        if policy.on_bad_box == "error":
            raise problems.error("box_outside", file, reason, "data policy on_bad_box='error'")
        if policy.on_bad_box == "skip":
            problems.add("box_outside", file, reason, "dropped", count=n)
            keep = ~outside
            boxes, classes, difficult = boxes[keep], classes[keep], difficult[keep]
        else:
            problems.add("box_outside", file, reason, "clipped to the image", count=n)
            boxes = np.clip(boxes, 0.0, limits)

    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if degenerate.any():
        n = int(degenerate.sum())
        first = np.round(boxes[degenerate][0], 2).tolist()
        reason = f"{n} box(es) with zero or negative area (first: {first})"
        if policy.on_bad_box == "error":
            raise problems.error("box_degenerate", file, reason, "data policy on_bad_box='error'")
        problems.add("box_degenerate", file, reason, "dropped", count=n)
        keep = ~degenerate
        boxes, classes, difficult = boxes[keep], classes[keep], difficult[keep]
    return boxes.astype(np.float32), classes.astype(np.int32), difficult.astype(bool)


def fit_boxes_to_image(
    boxes: np.ndarray, classes: np.ndarray, difficult: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips boxes to the image and drops the ones left without area (no reporting)."""
    limits = np.array([width, height, width, height], np.float32)
    boxes = np.clip(boxes, 0.0, limits)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], classes[keep], difficult[keep]


# -- images ----------------------------------------------------------------------

_DECODE_FAILURES_LOGGED: set = set()


def decode_image(path: str, problems: DataProblems | None = None) -> np.ndarray | None:
    """Decodes an image file to uint8 RGB (H, W, 3), or returns ``None`` on failure.

    Decoding is :func:`adverse_vision.data.files.read_rgb` (16-bit images scaled to 8
    bits, alpha dropped). Any error raised while opening or decoding (missing file,
    truncated or garbage data, unsupported format, a float image) gives ``None``; the
    failure is reported once per file, to ``problems`` when given (kind
    ``corrupt_image``) or to the ``adverse_vision.data`` logger. EXIF orientation is
    not applied: dataset annotations refer to the stored pixel grid.
    """
    try:
        return read_rgb(path)
    except ImageDecodeError as e:
        reason = str(e)
    if problems is not None:
        problems.add("corrupt_image", path, reason, "sample marked invalid", once=True)
    elif path not in _DECODE_FAILURES_LOGGED:
        _DECODE_FAILURES_LOGGED.add(path)
        logger.warning("corrupt_image: %s (%s) -> sample marked invalid", path, reason)
    return None


def read_image_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the image header, or ``None`` if it cannot be read."""
    try:
        with open_image(path) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001
        return None
    if w <= 0 or h <= 0:
        return None
    return int(w), int(h)


def make_record(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    difficult: np.ndarray,
    sample_id: str,
    **extra: Any,
) -> dict[str, Any]:
    """The record of a decoded sample: image, its ground truth, ``id`` and
    ``valid=True``, followed by the ``extra`` entries (e.g. a degraded twin)."""
    return {
        "image": image,
        "boxes": boxes,
        "classes": classes,
        "difficult": difficult,
        "id": sample_id,
        "valid": np.bool_(True),
        **extra,
    }


def invalid_record(sample_id: str, extra_image_keys: Iterable[str] = ()) -> dict[str, Any]:
    """The record returned for a sample whose image could not be decoded."""
    s = INVALID_IMAGE_SIZE
    rec: dict[str, Any] = {
        "image": np.zeros((s, s, 3), np.uint8),
        "boxes": np.zeros((0, 4), np.float32),
        "classes": np.zeros((0,), np.int32),
        "difficult": np.zeros((0,), bool),
        "id": str(sample_id),
        "valid": np.bool_(False),
    }
    for key in extra_image_keys:
        rec[key] = np.zeros((s, s, 3), np.uint8)
    return rec


def normalize_name(name: Any) -> str:
    """Class names are compared case-insensitively after stripping whitespace."""
    return str(name).strip().lower()


class ClassMatcher:
    """Maps dataset class names to config class ids.

    ``class_map`` renames dataset names first (keys and values are normalised); a
    name mapped to ``None`` is dropped on purpose (counted as ``other_class``). A
    name in ``class_names`` gets its index. Otherwise, with ``ignore_other_classes``
    and the name among ``known_classes`` (the dataset's own vocabulary), the object
    is dropped silently (``other_class``); else it is an ``unknown_class``.
    """

    def __init__(
        self,
        class_names: Iterable[str],
        class_map: Mapping[str, str | None] | None = None,
        known_classes: Iterable[str] = (),
        ignore_other_classes: bool = True,
    ):
        self.class_names = tuple(str(c) for c in class_names)
        if not self.class_names:
            raise DataError("class_names is empty")
        self.index = {}
        for i, c in enumerate(self.class_names):
            key = normalize_name(c)
            if key in self.index:
                raise DataError(f"class_names has a duplicate name {c!r}")
            self.index[key] = i
        self.class_map = {
            normalize_name(k): (None if v is None else normalize_name(v))
            for k, v in dict(class_map or {}).items()
        }
        self.known = {normalize_name(c) for c in known_classes}
        self.ignore_other_classes = ignore_other_classes

    def match(self, name: Any) -> tuple[int | None, str]:
        """Returns (class id or None, status) with status in ok/other/unknown."""
        original = key = normalize_name(name)
        if key in self.class_map:
            key = self.class_map[key]
            if key is None:
                return None, "other"
        if key in self.index:
            return self.index[key], "ok"
        if self.ignore_other_classes and (key in self.known or original in self.known):
            return None, "other"
        return None, "unknown"
