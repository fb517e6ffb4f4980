"""The grain input pipeline: source records -> degraded, letterboxed, padded batches.

Training::

  MapDataset.source(source)          records, tagged with their global index
    .shuffle(seed)                   a new order every epoch, the same on every host
    .repeat(num_epochs)              None: forever
    .random_map(...)                 augment -> letterbox -> degrade -> pack
    .batch(batch_size)               this host's share of a global batch ...
    [process_index::process_count]   ... every process_count-th one (lazy: a host
                                     reads and processes only its own elements)
    .to_iter_dataset()
    .mp_prefetch(num_workers)        when num_workers > 0
    ConsumerStep                     in this process: records the problems met while
                                     reading, releases grain's shared memory

Evaluation: no shuffle, no augmentation, one pass; the degradation of sample ``i``
is drawn from a generator seeded by ``(seed, i)``, so the validation fog is the same
in every evaluation and on any number of hosts. Every host yields the same number
of batches; the tail is filled with padding samples whose ``valid`` is False, so
each sample is seen exactly once with static shapes.

Random numbers: training samples get grain's per-element generator, seeded from
``seed`` and the element's position in the global stream, so batches are
reproducible and independent of ``num_workers`` and of the number of hosts: the
global batches of a run on several hosts equal those of one host with the same
global batch size.

Batches follow the contract in the package docs (``image`` degraded, ``clean``,
``boxes``/``classes``/``box_mask``/``difficult`` padded to ``max_boxes``,
``valid``, ``scale``, ``offset``, ``orig_size`` and the aligned ``depth``,
``mask``, ``thermal`` when the source has them) plus ``index`` (B,) int32, the
global source index of each sample (-1 for eval padding).

Bad input met while reading (see :mod:`adverse_vision.data.problems`) is recorded
into the source's ``problems`` (a collector of the pipeline's own when the source has
none) in the consuming process, whatever ``num_workers`` is (see
:mod:`adverse_vision.data.handoff`). A sample with more boxes than ``max_boxes``
keeps the ``max_boxes`` largest by area; the file is reported once as
``too_many_boxes``.

Saliency (``make_pipeline(..., saliency=True)``): every batch also gets
``saliency`` (B, S, S, 1) float32, the infrared weight of the fusion target
``s * thermal + (1 - s) * Y`` (see :mod:`adverse_vision.data.saliency`). A record
that carries its own ``saliency`` (precomputed maps in [0, 1], (H, W) or
(H, W, 1)) has it augmented and letterboxed with the thermal image (bilinear,
padding 0) and used as is. Otherwise it is computed on the host after letterbox
and degradation as ``fusion_weight(thermal, Y)`` with ``Y = 0.299 R + 0.587 G +
0.114 B`` of the degraded image (the visible input the fusion network sees),
over the real-pixel part of the canvas only; letterbox padding, padding samples
and invalid records get 0. Every valid record must then carry ``thermal``
(ValueError naming the record otherwise). With ``saliency=False`` (the default)
a record's ``saliency`` is dropped unread and batches are unchanged.

Degradation specs: ``{"name": "haze", "A": ..., "beta": ...}`` calls
``adverse_vision.degrade.apply(name, image01, rng, **params)``; ``{"name": "none"}``
(or None) keeps the clean image; a list of specs picks one per sample uniformly.
A degradation with a ``depth`` parameter (haze, patchy haze) receives the
record's ``depth`` when there is one (else the degradation module's own default
depth). Degradations are applied to the real-pixel part of
the letterboxed image only: padding stays the same grey in ``image`` and
``clean``. Records that already carry a degraded twin (``hazy``) use it instead.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
import math
from typing import Any

import grain
import numpy as np

from adverse_vision.data import augment as aug
from adverse_vision.data import handoff
from adverse_vision.data import saliency as sal
from adverse_vision.data.problems import DataProblems

# Optional aligned arrays that are carried into the batch when the source has them.
OPTIONAL_KEYS = ("depth", "mask", "thermal")
_INDEX_KEY = "_index"
_PAD_KEY = "_pad"
_EVAL_STREAM = 0x5EED_E7A1  # separates eval draws from anything else seeded by `seed`


# ----------------------------------------------------------------------------
# Degradation specs.


def _plain(spec: Any) -> dict[str, Any]:
    if hasattr(spec, "to_dict"):  # ml_collections.ConfigDict
        spec = spec.to_dict()
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"degrade spec must be a dict with a 'name', got {type(spec).__name__}: {spec!r}"
        )
    spec = dict(spec)
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"degrade spec {spec!r}: missing or empty 'name'")
    return spec


def normalize_degrade(degrade: Any) -> list[dict[str, Any]]:
    """Degradation config -> non-empty list of specs (each a plain dict with 'name')."""
    if degrade is None:
        return [{"name": "none"}]
    if isinstance(degrade, (list, tuple)):
        if not degrade:
            raise ValueError("degrade: an empty list of specs; use {'name': 'none'} for none")
        return [_plain(s) for s in degrade]
    return [_plain(degrade)]


def _degrade_module():
    try:
        from adverse_vision import degrade as degrade_lib  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ValueError(
            f"degradations need adverse_vision.degrade, which failed to import: {e}"
        ) from e
    return degrade_lib


def _check_degrade_specs(specs: list[dict[str, Any]]) -> None:
    """Runs each spec once on a tiny image so a bad name/parameter fails at build time."""
    probe = np.full((8, 8, 3), 0.5, np.float32)
    for spec in specs:
        if spec["name"] == "none":
            if len(spec) > 1:
                raise ValueError(f"degrade spec {spec!r}: 'none' takes no parameters")
            continue
        params = {k: v for k, v in spec.items() if k != "name"}
        try:
            out = _degrade_module().apply(spec["name"], probe, np.random.default_rng(0), **params)
        except ValueError as e:
            raise ValueError(f"degrade spec {spec!r}: {e}") from e
        except TypeError as e:
            raise ValueError(f"degrade spec {spec!r}: bad parameters ({e})") from e
        if np.shape(out) != probe.shape:
            raise ValueError(
                f"degrade spec {spec!r}: returned shape {np.shape(out)} for input {probe.shape}"
            )


# ----------------------------------------------------------------------------
# Per-sample processing (runs in grain workers; everything here must pickle).


class _AttachIndex:
    """Tags a record with its source index (grain passes ``epoch * n + i`` after
    ``repeat``, hence the modulo)."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, index: int, record: Mapping[str, Any]) -> dict[str, Any]:
        index = int(index) % self.n
        if not isinstance(record, Mapping):
            raise ValueError(
                f"source element {index} must be a dict record, got {type(record).__name__}"
            )
        out = dict(record)
        out[_INDEX_KEY] = index
        return out


class _Processor:
    """augment -> letterbox -> degrade -> pack, shared by train and eval."""

    def __init__(
        self,
        *,
        image_size: int,
        max_boxes: int,
        augment_cfg: dict[str, Any] | None,
        degrade_specs: list[dict[str, Any]],
        optional_keys: tuple[str, ...],
        saliency: bool = False,
    ):
        self.image_size = image_size
        self.max_boxes = max_boxes
        self.augment_cfg = augment_cfg
        self.degrade_specs = degrade_specs
        self.optional_keys = optional_keys
        self.saliency = saliency

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        record = dict(record)
        index = int(record.pop(_INDEX_KEY, -1))
        pad = bool(record.pop(_PAD_KEY, False))
        found = handoff.pop_found(record)
        name = record.get("id", f"index {index}")
        annotated = len(record.get("boxes", ()))
        if "boxes" in record and "classes" not in record:
            raise ValueError(f"record {name}: has 'boxes' but no 'classes'")
        if not self.saliency:
            record.pop("saliency", None)
        else:
            _check_thermal(record, name, pad)
        if self.augment_cfg is not None and not pad:
            scale_on = self.augment_cfg["scale"] is not None
            record = aug.augment(
                record, rng, self.augment_cfg, out_size=self.image_size if scale_on else None
            )
        record = aug.letterbox(record, self.image_size)
        clean = record["image"]
        if "hazy" in record:
            degraded = np.asarray(record["hazy"])
        else:
            degraded = self._degrade(record, rng)
        out = self._pack(record, clean, degraded, index, pad)
        if not pad and len(record.get("boxes", ())) > self.max_boxes:
            # The reason names the annotated count, the same every epoch (augmentation
            # may crop some boxes away), so a file is reported once.
            m = self.max_boxes
            found.append(("too_many_boxes", str(name),
                          f"{annotated} boxes, more than data.max_boxes={m}",
                          f"the {m} largest by area kept", 1, False))
        out[handoff.FOUND_KEY] = handoff.found_entry(found)
        if self.saliency:
            out["saliency"] = self._saliency(record, degraded, bool(out["valid"]))
        return out

    def _saliency(self, record: dict[str, Any], degraded: np.ndarray, valid: bool) -> np.ndarray:
        s = self.image_size
        out = np.zeros((s, s, 1), np.float32)
        if not valid:
            return out
        if "saliency" in record:
            return np.asarray(record["saliency"], np.float32).reshape(s, s, 1)
        y0, x0, y1, x1 = (int(v) for v in record[aug.WINDOW_KEY])
        if y1 <= y0 or x1 <= x0:
            return out
        ir = np.asarray(record["thermal"])[y0:y1, x0:x1, 0]
        vis_y = sal.luma(np.asarray(degraded)[y0:y1, x0:x1])
        out[y0:y1, x0:x1, 0] = sal.fusion_weight(ir, vis_y)
        return out

    def _degrade(self, record: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        specs = self.degrade_specs
        spec = specs[0] if len(specs) == 1 else specs[int(rng.integers(len(specs)))]
        clean = record["image"]
        if spec["name"] == "none":
            return clean
        y0, x0, y1, x1 = (int(v) for v in record[aug.WINDOW_KEY])
        if y1 <= y0 or x1 <= x0:
            return clean
        params = {k: v for k, v in spec.items() if k != "name"}
        if "depth" in record and "depth" in _degrade_module().parameters(spec["name"]):
            params["depth"] = np.asarray(record["depth"], np.float32)[y0:y1, x0:x1]
        crop = clean[y0:y1, x0:x1].astype(np.float32) / 255.0
        out = np.asarray(_degrade_module().apply(spec["name"], crop, rng, **params), np.float32)
        if out.shape != crop.shape:
            raise ValueError(
                f"degradation {spec['name']!r} returned shape {out.shape} for input {crop.shape}"
            )
        degraded = clean.copy()
        degraded[y0:y1, x0:x1] = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
        return degraded

    def _pack(self, record, clean, degraded, index, pad) -> dict[str, Any]:
        s, m = self.image_size, self.max_boxes
        boxes = np.asarray(record.get("boxes", np.zeros((0, 4), np.float32)), np.float32)
        n = boxes.shape[0]
        classes = np.asarray(record.get("classes", np.zeros((n,), np.int32)), np.int32)
        difficult = np.asarray(record.get("difficult", np.zeros((n,), bool)), bool)
        if pad:
            n = 0
        if n > m:
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            keep = np.sort(np.argsort(-area, kind="stable")[:m])
        else:
            keep = np.arange(n)
        k = keep.shape[0]
        out_boxes = np.zeros((m, 4), np.float32)
        out_classes = np.zeros((m,), np.int32)
        out_difficult = np.zeros((m,), bool)
        box_mask = np.zeros((m,), bool)
        out_boxes[:k] = boxes[keep]
        out_classes[:k] = classes[keep]
        out_difficult[:k] = difficult[keep]
        box_mask[:k] = True
        out = {
            "image": np.asarray(degraded, np.uint8),
            "clean": np.asarray(clean, np.uint8),
            "boxes": out_boxes,
            "classes": out_classes,
            "box_mask": box_mask,
            "difficult": out_difficult,
            "valid": np.asarray(bool(record.get("valid", True)) and not pad),
            "scale": np.asarray(record["scale"], np.float32),
            "offset": np.asarray(record["offset"], np.float32),
            "orig_size": np.asarray(record["orig_size"], np.int32),
            "index": np.asarray(-1 if pad else index, np.int32),
        }
        defaults = {
            "depth": lambda: np.ones((s, s), np.float32),
            "mask": lambda: np.full((s, s), aug.MASK_IGNORE, np.uint8),
            "thermal": lambda: np.zeros((s, s, 1), np.uint8),
        }
        dtypes = {"depth": np.float32, "mask": np.uint8, "thermal": np.uint8}
        for key in self.optional_keys:
            out[key] = np.asarray(record[key], dtypes[key]) if key in record else defaults[key]()
        return out


def _check_thermal(record: Mapping[str, Any], name: Any, pad: bool = False) -> None:
    """With saliency on, every valid record must carry its thermal image."""
    if bool(record.get("valid", True)) and not pad and "thermal" not in record:
        raise ValueError(
            f"record {name}: saliency=True needs a 'thermal' image (H, W, 1) in every"
            " valid record; this one has none"
        )


class _TrainMap(grain.transforms.RandomMap):
    def __init__(self, processor: _Processor):
        self.processor = processor

    def random_map(self, element, rng: np.random.Generator):
        return self.processor(element, rng)


class _EvalMap(grain.transforms.Map):
    """Deterministic per-sample processing: the generator is seeded by (seed, index)."""

    def __init__(self, processor: _Processor, seed: int):
        self.processor = processor
        self.seed = seed

    def map(self, element):
        index = int(element.get(_INDEX_KEY, -1))
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _EVAL_STREAM, index + 1]))
        return self.processor(element, rng)


class _PaddedShard:
    """``i`` -> this host's ``i``-th record, or a padding record past its share."""

    def __init__(self, indexed: grain.MapDataset, indices: np.ndarray):
        self.indexed = indexed
        self.indices = indices

    def __call__(self, i: int) -> dict[str, Any]:
        n = len(self.indices)
        if i < n:
            return self.indexed[int(self.indices[i])]
        record = dict(self.indexed[int(self.indices[i % n]) if n else 0])
        record[_PAD_KEY] = True
        return record


# ----------------------------------------------------------------------------
# Pipeline construction.


def num_eval_batches(num_samples: int, batch_size: int, process_count: int = 1) -> int:
    """Batches per host of an evaluation pipeline (the same on every host)."""
    per_host = math.ceil(num_samples / process_count)
    return math.ceil(per_host / batch_size)


def _ensure_flags_parsed() -> None:
    # grain's multiprocess prefetch reads an absl flag; outside an absl app the
    # flags are unparsed and that read raises. Mark them parsed (defaults).
    from absl import flags  # pylint: disable=import-outside-toplevel

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _positive_int(name: str, value: Any, caller: str = "make_pipeline") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{caller}: {name} must be a positive int, got {value!r}")
    return int(value)


def check_common(caller: str, source: Any, *, batch_size: Any, num_workers: Any, seed: Any,
                 num_epochs: Any, process_index: Any, process_count: Any) -> dict[str, Any]:
    """Validates the arguments every pipeline builder shares and reads the first record.

    Returns ``batch_size``, ``num_epochs``, ``process_index``, ``process_count`` (from
    JAX when None) as checked ints, ``n`` (the source length) and ``first`` (record 0).
    Raises ValueError naming ``caller`` and the argument.
    """
    batch_size = _positive_int("batch_size", batch_size, caller)
    if (
        isinstance(num_workers, bool)
        or not isinstance(num_workers, (int, np.integer))
        or num_workers < 0
    ):
        raise ValueError(f"{caller}: num_workers must be an int >= 0, got {num_workers!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{caller}: seed must be an int >= 0, got {seed!r}")
    if num_epochs is not None:
        num_epochs = _positive_int("num_epochs", num_epochs, caller)
    if process_index is None or process_count is None:
        import jax  # pylint: disable=import-outside-toplevel

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    process_count = _positive_int("process_count", process_count, caller)
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"{caller}: process_index must be in [0, {process_count}), got {process_index}"
        )
    if not hasattr(source, "__len__") or not hasattr(source, "__getitem__"):
        raise ValueError(f"{caller}: source {type(source).__name__} needs __len__ and __getitem__")
    n = len(source)
    if n == 0:
        raise ValueError(f"{caller}: source {type(source).__name__} is empty")
    first = source[0]
    if not isinstance(first, Mapping):
        raise ValueError(
            f"{caller}: source {type(source).__name__} must return dict records,"
            f" got {type(first).__name__}"
        )
    return {"batch_size": batch_size, "num_epochs": num_epochs,
            "process_index": int(process_index), "process_count": process_count,
            "n": n, "first": first}


def batched(source: Any, *, caller: str, train: bool, train_map: grain.transforms.RandomMap,
            eval_map: grain.transforms.Map, batch_size: int, seed: int, process_index: int,
            process_count: int, num_epochs: int | None, drop_remainder: bool,
            num_workers: int, read_threads: int, prefetch_batches: int) -> grain.IterDataset:
    """This host's share of ``source``, processed and batched.

    Training: one global stream, shuffled every epoch, repeated, ``train_map`` with
    per-element random numbers, batched; this host's rows of each global batch.
    Evaluation: one pass with the last batch
    padded by invalid samples (``eval_map`` sees records carrying the pad flag).
    Then read threads, prefetching and, with ``num_workers``, worker processes; last
    the :class:`~adverse_vision.data.handoff.ConsumerStep` in this process. Records
    carry the problems met while reading them (``handoff.FOUND_KEY``); the maps must
    pass them on as one :func:`~adverse_vision.data.handoff.found_entry` per sample.
    """
    n = len(source)
    indexed = grain.MapDataset.source(handoff.Reader(source)).map_with_index(_AttachIndex(n))
    if train:
        # One global stream, the same on every host and for any number of hosts:
        # shuffled, repeated and augmented by the element's position in it. Global batch
        # k is its elements [k * B, (k + 1) * B); host p reads and processes only its
        # rows [p * b, (p + 1) * b) (B = process_count * b), so a run on several hosts
        # sees the very batches of a one-host run with the same global batch.
        shuffle_seed, map_seed = (
            int(v) for v in np.random.SeedSequence([seed, 0]).generate_state(2)
        )
        ds = indexed.shuffle(seed=shuffle_seed).repeat(num_epochs)
        ds = ds.random_map(train_map, seed=map_seed)
        if process_count == 1:
            ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        else:
            if num_epochs is not None and n * num_epochs < batch_size * process_count:
                raise ValueError(
                    f"{caller}: {n} samples x {num_epochs} epochs do not fill one global "
                    f"batch of {batch_size} x {process_count} processes")
            # A partial global batch cannot be split evenly: every host drops it.
            ds = ds.batch(batch_size, drop_remainder=True)
            ds = ds[:len(ds) // process_count * process_count][process_index::process_count]
    else:
        indices = np.arange(process_index, n, process_count)
        total = num_eval_batches(n, batch_size, process_count) * batch_size
        ds = grain.MapDataset.range(total).map(_PaddedShard(indexed, indices))
        ds = ds.map(eval_map)
        ds = ds.batch(batch_size, drop_remainder=False)

    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
    )
    if num_workers > 0:
        _ensure_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(num_workers)))
    problems = getattr(source, "problems", None)
    if not isinstance(problems, DataProblems):
        problems = DataProblems(type(source).__name__)
    return handoff.ConsumerStep(it_ds, problems)


def make_pipeline(
    source: Any,
    *,
    batch_size: int,
    image_size: int,
    max_boxes: int,
    train: bool,
    seed: int = 0,
    degrade: Any = None,
    augment: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    drop_remainder: bool = True,
    num_epochs: int | None = None,
    read_threads: int = 2,
    prefetch_batches: int = 2,
    saliency: bool = False,
) -> grain.IterDataset:
    """Builds the input pipeline over a random-access ``source``.

    Args:
      source: ``len(source)`` and ``source[i]`` -> sample record (a grain
        RandomAccessDataSource).
      batch_size: per-host batch size.
      image_size: letterbox side S.
      max_boxes: boxes per sample after padding (M).
      train: shuffled, repeated, augmented stream; else a single padded eval pass.
      seed: seeds the shuffle, the augmentation and the degradations.
      degrade: one spec ``{"name": ..., **params}``, a list of specs (one picked per
        sample), or None / ``{"name": "none"}`` for clean inputs.
      augment: training augmentation config (``augment.DEFAULT_AUGMENT`` keys
        override the defaults; None = the defaults). Ignored for eval.
      num_workers: grain worker processes (0: in this process, with
        ``read_threads`` threads).
      process_index, process_count: this host's slot; default from JAX.
      drop_remainder: training only; eval always pads its last batch.
      num_epochs: training epochs (None: forever). Eval is always one pass.
      read_threads: threads per process that read and process batches.
      prefetch_batches: batches buffered ahead per process.
      saliency: add the ``saliency`` fusion weights (B, S, S, 1) to every batch
        (see the module docstring); every valid record needs ``thermal``.

    Returns:
      A ``grain.IterDataset``; ``iter()`` on it gives a checkpointable
      ``grain.DatasetIterator`` (see :func:`get_state` / :func:`set_state`).
    """
    common = check_common("make_pipeline", source, batch_size=batch_size,
                          num_workers=num_workers, seed=seed, num_epochs=num_epochs,
                          process_index=process_index, process_count=process_count)
    image_size = _positive_int("image_size", image_size)
    max_boxes = _positive_int("max_boxes", max_boxes)
    first = common["first"]
    if saliency not in (True, False):
        raise ValueError(f"make_pipeline: saliency must be a bool, got {saliency!r}")
    if saliency:
        _check_thermal(first, first.get("id", "index 0"))
    else:
        first = {k: v for k, v in first.items() if k != "saliency"}
    aug.check_record(first)
    optional_keys = tuple(k for k in OPTIONAL_KEYS if k in first)
    specs = normalize_degrade(degrade)
    _check_degrade_specs(specs)
    if hasattr(augment, "to_dict"):
        augment = augment.to_dict()
    augment_cfg = aug.augment_config(augment) if train else None
    processor = _Processor(
        image_size=image_size,
        max_boxes=max_boxes,
        augment_cfg=augment_cfg,
        degrade_specs=specs,
        optional_keys=optional_keys,
        saliency=bool(saliency),
    )
    return batched(
        source, caller="make_pipeline", train=train, train_map=_TrainMap(processor),
        eval_map=_EvalMap(processor, int(seed)), batch_size=common["batch_size"], seed=int(seed),
        process_index=common["process_index"], process_count=common["process_count"],
        num_epochs=common["num_epochs"], drop_remainder=drop_remainder,
        num_workers=int(num_workers), read_threads=read_threads,
        prefetch_batches=prefetch_batches)


# ----------------------------------------------------------------------------
# Iterator state.


def get_state(iterator: grain.DatasetIterator) -> bytes:
    """The iterator's position as JSON bytes (restorable by :func:`set_state`).

    A state is tied to the pipeline's shape: restore it into a pipeline built
    with the same source, seed, batch size, process slot and ``num_workers``.
    """
    return json.dumps(iterator.get_state(), sort_keys=True).encode("utf-8")


def set_state(iterator: grain.DatasetIterator, state: bytes | str | Mapping[str, Any]) -> None:
    """Moves ``iterator`` to a position saved by :func:`get_state` (bytes, str or dict)."""
    if isinstance(state, (bytes, bytearray)):
        state = state.decode("utf-8")
    if isinstance(state, str):
        try:
            state = json.loads(state)
        except json.JSONDecodeError as e:
            raise ValueError(f"set_state: the iterator state is not valid JSON: {e}") from e
    if not isinstance(state, Mapping):
        raise ValueError(f"set_state: expected a dict state, got {type(state).__name__}")
    iterator.set_state(dict(state))
