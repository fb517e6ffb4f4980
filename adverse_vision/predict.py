r"""Run a trained workdir on image files: detections as JSON, labelled boxes, and the
images the method makes (restored, fused, ...).

  python -m adverse_vision.predict --workdir runs/tiny --images photos/ --out preds/ \
      [--checkpoint best|latest] [--score_threshold 0.3] [--norestore] [--batch_size 8] \
      [--infrared FOLDER]

What is computed and written is the run's method's to say (see the prediction hooks
of :class:`adverse_vision.methods.Method`). For each image (``.jpg``, ``.jpeg``,
``.png``, ``.bmp``; a folder is read non-recursively, in sorted order) it writes, in
``--out``:

* for methods that detect, ``<stem>.json``: ``{"image", "width", "height",
  "detections": [{"box": [x1, y1, x2, y2], "class", "class_id", "score"}, ...]}`` with
  boxes in pixels of the original image, highest score first, and
  ``<stem>_boxes.jpg``: the labelled boxes drawn on the image (or on the image the
  method says its detector saw, e.g. a fused one);
* ``<stem><suffix>`` for each image the method makes (e.g. ``_restored.png``,
  ``_fused.png``), at the original size. Methods that restore images at an extra
  cost (their ``restores``) leave the restoration out with ``--norestore``.

Methods that read an infrared image with each visible one (``predict_inputs``
``("thermal",)``) take the visible images with ``--images`` and the infrared ones with
``--infrared FOLDER``, paired by file stem; a visible image without its infrared twin
is skipped with a warning.

Images are decoded to RGB (EXIF orientation not applied, as in training), letterboxed
to the trained ``image_size`` exactly as the evaluation pipeline does, and batched
over all devices; the method's own prediction does the normalisation. Unreadable files
are skipped with a warning each; the program fails only when no file could be read.
Detections below the model's ``model.conf_threshold`` are already gone before
``--score_threshold`` applies, and at most ``model.max_detections`` are kept per image.
Boxes are clipped to the image; those left smaller than ``MIN_BOX_SIZE`` are dropped.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import numpy as np
from PIL import Image

from adverse_vision import cli, parallel, storage, xla_options
from adverse_vision import draw as draw_lib
from adverse_vision.data.augment import letterbox
from adverse_vision.data import files

log = logging.getLogger("adverse_vision")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# Boxes narrower or shorter than this (original pixels, after clipping to the image) are
# dropped: boxes in the letterbox padding, and slivers that would collapse when the JSON
# rounds coordinates to 0.01 px.
MIN_BOX_SIZE = 0.02


class ImageReadError(ValueError):
    """An image file could not be opened or decoded; the message names it."""


# --------------------------------------------------------------------------- files

def list_images(path: str) -> list[str]:
    """The image files of a folder (not recursive, sorted), or ``[path]`` for a file."""
    if not storage.exists(path):
        raise FileNotFoundError(f"--images {path} does not exist")
    if storage.isdir(path):
        names = [n for n in storage.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS)
                 and not storage.isdir(storage.join(path, n))]
        if not names:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
        return [storage.join(path, n) for n in names]
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        raise ValueError(f"--images {path} is not an image file: expected one of "
                         f"{', '.join(IMAGE_EXTENSIONS)}")
    return [path]


def read_image(path: str) -> np.ndarray:
    """uint8 RGB (H, W, 3), decoded as the training data sources decode images
    (:func:`adverse_vision.data.files.read_rgb`: 16-bit images scaled to 8 bits)."""
    try:
        return files.read_rgb(path)
    except files.ImageDecodeError as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from None


def read_infrared(path: str) -> np.ndarray:
    """uint8 (H, W, 1) infrared image, decoded as in training
    (:func:`adverse_vision.data.files.read_gray`: colour to grey, 16-bit scaled)."""
    try:
        return files.read_gray(path)[..., None]
    except files.ImageDecodeError as e:
        raise ImageReadError(f"cannot read infrared image {path}: {e}") from None


class ExtraInput(NamedTuple):
    """How predict reads an image that a method needs with each visible one."""
    flag: str  # names the folder of those images (paired with --images by file stem)
    noun: str  # what the messages call them
    read: Callable[[str], np.ndarray]  # one file -> uint8 (H, W, C)


#: What a method may read with each visible image (its ``predict_inputs``).
EXTRA_INPUTS: dict[str, ExtraInput] = {"thermal": ExtraInput("--infrared", "infrared", read_infrared)}


def infrared_pairs(paths: Sequence[str], folder: str) -> list[Optional[str]]:
    """The infrared file of each visible image in ``folder``, matched by file stem
    (None where there is none)."""
    if not storage.isdir(folder):
        raise FileNotFoundError(f"--infrared {folder} is not a folder")
    by_stem: dict[str, str] = {}
    for name in storage.listdir(folder):
        if name.lower().endswith(IMAGE_EXTENSIONS):
            by_stem.setdefault(os.path.splitext(name)[0], storage.join(folder, name))
    return [by_stem.get(os.path.splitext(os.path.basename(p))[0]) for p in paths]


def output_stems(paths: Sequence[str]) -> list[str]:
    """File stems for the outputs; stems shared by several inputs (``a.jpg``, ``a.png``)
    get their extension appended (``a_jpg``, ``a_png``), and a number if still taken, so
    nothing is overwritten."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    used = {stem for stem in stems if counts[stem] == 1}
    out = []
    for path, stem in zip(paths, stems, strict=True):
        name = stem
        if counts[stem] > 1:
            name = base = f"{stem}_{os.path.splitext(path)[1].lstrip('.').lower()}"
            k = 1
            while name in used:
                k += 1
                name = f"{base}{k}"
        used.add(name)
        out.append(name)
    return out


# --------------------------------------------------------------------------- geometry

def boxes_to_original(boxes: np.ndarray, scale: float, offset: Sequence[float],
                      height: int, width: int) -> np.ndarray:
    """Letterboxed xyxy boxes -> pixels of the original image, clipped to it."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    ox, oy = float(offset[0]), float(offset[1])
    out = (boxes - np.array([ox, oy, ox, oy], np.float32)) / np.float32(scale)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out


def unletterbox_image(image: np.ndarray, scale: float, offset: Sequence[float],
                      height: int, width: int, value_range: tuple[float, float] = (-1.0, 1.0),
                      nearest: bool = False) -> np.ndarray:
    """A letterboxed (S, S, C) float image with values in ``value_range`` -> uint8
    (height, width, C): the padding is cropped (the same rounding as ``letterbox``) and
    the rest resized back (bicubic, or nearest for label maps, which are taken as is)."""
    image = np.asarray(image, np.float32)
    lo, hi = value_range
    if nearest:
        pixels = np.clip(image, 0, 255).astype(np.uint8)
    else:
        pixels = np.clip(np.round((image - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    squeeze = pixels.ndim == 3 and pixels.shape[-1] == 1
    if squeeze:
        pixels = pixels[..., 0]
    new_h = max(1, int(round(height * float(scale))))
    new_w = max(1, int(round(width * float(scale))))
    dx, dy = int(round(float(offset[0]))), int(round(float(offset[1])))
    crop = np.ascontiguousarray(pixels[dy:dy + new_h, dx:dx + new_w])
    if crop.shape[:2] != (new_h, new_w):
        raise ValueError(f"letterboxed image {pixels.shape} does not hold the letterbox window "
                         f"{new_h}x{new_w} at ({dx}, {dy})")
    if (new_h, new_w) != (height, width):
        crop = np.asarray(Image.fromarray(crop).resize(
            (width, height), Image.NEAREST if nearest else Image.BICUBIC))
    return crop[..., None] if squeeze else crop


# --------------------------------------------------------------------------- model

def predict_fn(trainer, restore: bool) -> Callable:
    """The jitted ``fn(variables, batch) -> outputs`` of the trainer's method on image
    files (its ``predict_fn``; ``restore``: with the restored image, for methods that
    restore). When that is the method's evaluation prediction, the trainer's jitted
    one, so that it compiles once."""
    method = trainer.method
    fn = method.predict_fn(bool(restore))
    if fn == method.predict:
        return trainer.predict
    return xla_options.jit(fn, in_shardings=(trainer.replicated, trainer.batch_sharding),
                           out_shardings=trainer.batch_sharding)


@dataclass
class Prediction:
    """The result for one image, in its original pixels."""
    boxes: np.ndarray    # (N, 4) float32 xyxy
    scores: np.ndarray   # (N,) float32, descending
    classes: np.ndarray  # (N,) int32
    # File suffix (e.g. "_restored.png") -> uint8 image at the original size.
    images: dict[str, np.ndarray] = field(default_factory=dict)
    # uint8 RGB image the boxes are drawn on; None: the input image.
    canvas: Optional[np.ndarray] = None


class Predictor:
    """Letterboxes, batches and runs a restored trainer on decoded images.

    What the network reads besides the visible image, whether it detects and which
    images it makes come from the trainer's method. Every batch has the same static
    shape (``batch_size`` images, the last one padded with zero images marked
    invalid), so the prediction compiles once. ``batch_size`` is rounded up to a
    multiple of the device count.
    """

    def __init__(self, trainer, variables, batch_size: int = 8, score_threshold: float = 0.3,
                 restore: bool = True):
        _check_options(score_threshold, batch_size)
        self.trainer = trainer
        self.variables = variables
        self.method = trainer.method
        self.method_name = trainer.cfg.method
        self.inputs = tuple(self.method.predict_inputs)
        unknown = [k for k in self.inputs if k not in EXTRA_INPUTS]
        if unknown:
            raise ValueError(f"method {self.method_name!r} reads {unknown} with each image; "
                             f"predict can pair images with {tuple(EXTRA_INPUTS)} only")
        self.restores = bool(restore) and bool(self.method.restores)
        self.detects = bool(self.method.detects)
        self._predict = predict_fn(trainer, self.restores)
        self.size = int(trainer.cfg.image_size)
        self.score_threshold = float(score_threshold)
        devices = trainer.mesh.devices.size
        self.batch_size = int(math.ceil(int(batch_size) / devices) * devices)
        if self.batch_size != int(batch_size):
            log.info("batch size %d rounded up to %d, a multiple of the %d devices",
                     batch_size, self.batch_size, devices)
        self.class_names = tuple(trainer.cfg.data.class_names)

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The raw outputs (letterboxed coordinates) of one full batch, on the host:
        ``batch["image"]`` uint8 (batch_size, S, S, 3), letterboxed."""
        return parallel.to_host(self._run(batch))

    def _run(self, batch: dict[str, np.ndarray]):
        """Dispatches one padded batch; returns the (still computing) global outputs."""
        pc, pi = jax.process_count(), jax.process_index()
        share = self.batch_size // pc
        local = {k: v[pi * share:(pi + 1) * share] for k, v in batch.items()}
        global_batch = parallel.global_batch(local, self.trainer.mesh)
        return self._predict(self.variables, global_batch)

    def _pack(self, records: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[dict]]:
        """``records``: ``{"image": RGB, <each of self.inputs>: ...}`` at the original size."""
        s, b = self.size, self.batch_size
        batch = {"image": np.zeros((b, s, s, 3), np.uint8), "valid": np.zeros((b,), bool),
                 "scale": np.ones((b,), np.float32), "offset": np.zeros((b, 2), np.float32),
                 "orig_size": np.zeros((b, 2), np.int32)}
        metas = []
        for i, record in enumerate(records):
            boxed = letterbox(record, s)
            for key in ("image",) + self.inputs:
                if key not in batch:
                    batch[key] = np.zeros((b,) + boxed[key].shape, boxed[key].dtype)
                batch[key][i] = boxed[key]
            batch["valid"][i] = True
            batch["scale"][i] = boxed["scale"]
            batch["offset"][i] = boxed["offset"]
            batch["orig_size"][i] = boxed["orig_size"]
            h, w = record["image"].shape[:2]
            metas.append({"scale": float(boxed["scale"]), "offset": boxed["offset"],
                          "height": h, "width": w})
        return batch, metas

    def _unpack(self, outputs, metas: list[dict]) -> list[Prediction]:
        out = parallel.to_host(outputs)
        results = []
        for i, meta in enumerate(metas):
            to_original = functools.partial(unletterbox_image, **meta)
            images = dict(self.method.prediction_images(out, i, to_original))
            canvas = images.pop("canvas", None)
            results.append(Prediction(*self._detections(out, i, meta), images, canvas))
        return results

    def _detections(self, out, i: int, meta: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes, scores, classes) of image ``i`` in its original pixels, best first."""
        if not self.detects:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
        keep = np.asarray(out["valid"][i], bool) & (out["scores"][i] >= self.score_threshold)
        boxes = boxes_to_original(out["boxes"][i][keep], meta["scale"], meta["offset"],
                                  meta["height"], meta["width"])
        scores = np.asarray(out["scores"][i][keep], np.float32)
        classes = np.asarray(out["classes"][i][keep], np.int32)
        # A box inside the letterbox padding has no area left after clipping.
        nonempty = ((boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIZE)
                    & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIZE))
        boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
        order = np.argsort(-scores, kind="stable")
        return boxes[order], scores[order], classes[order]

    def predict_batches(self, items):
        """``items``: iterable of (key, record or None), a record being ``{"image": RGB,
        <each of self.inputs>: ...}`` at the original size. Yields (key, Prediction or
        None) in order; None records are passed through (unreadable files). One batch is
        computed on the device while the next one is decoded and letterboxed."""
        pending = None  # (outputs, metas, waiting)
        waiting: list = []  # (key, record) not yet dispatched, including None records
        for key, record in items:
            waiting.append((key, record))
            if sum(r is not None for _, r in waiting) == self.batch_size:
                if pending is not None:
                    yield from self._finish(*pending)
                pending = self._dispatch(waiting)
                waiting = []
        if waiting:
            if pending is not None:
                yield from self._finish(*pending)
            pending = self._dispatch(waiting)
        if pending is not None:
            yield from self._finish(*pending)

    def _dispatch(self, waiting):
        records = [r for _, r in waiting if r is not None]
        outputs = None
        metas: list[dict] = []
        if records:
            batch, metas = self._pack(records)
            outputs = self._run(batch)
        return outputs, metas, waiting

    def _finish(self, outputs, metas, waiting):
        preds = iter(self._unpack(outputs, metas)) if outputs is not None else iter(())
        for key, record in waiting:
            yield key, (next(preds) if record is not None else None)


# --------------------------------------------------------------------------- outputs

def detections_json(name: str, height: int, width: int, pred: Prediction,
                    class_names: Sequence[str]) -> dict[str, Any]:
    dets = []
    for box, score, cls in zip(pred.boxes, pred.scores, pred.classes, strict=True):
        cid = int(cls)
        dets.append({"box": [round(float(v), 2) for v in box],
                     "class": class_names[cid] if 0 <= cid < len(class_names) else str(cid),
                     "class_id": cid, "score": float(f"{float(score):.6g}")})
    return {"image": name, "width": int(width), "height": int(height), "detections": dets}


def _write_outputs(out: str, stem: str, path: str, image: np.ndarray, pred: Prediction,
                   class_names: Sequence[str], detects: bool = True) -> None:
    h, w = image.shape[:2]
    for suffix, picture in pred.images.items():
        if picture.ndim == 3 and picture.shape[-1] == 1:
            picture = picture[..., 0]  # one channel: an 8-bit grey file
        save_image(picture, storage.join(out, f"{stem}{suffix}"))
    if not detects:
        return
    record = detections_json(os.path.basename(path), h, w, pred, class_names)
    storage.write_text(storage.join(out, f"{stem}.json"), json.dumps(record, indent=2))
    canvas = image if pred.canvas is None else pred.canvas
    drawn = draw_lib.draw_detections(canvas, pred.boxes, pred.classes, pred.scores, class_names)
    save_image(drawn, storage.join(out, f"{stem}_boxes.jpg"), quality=95,
                subsampling=0)  # 4:4:4 keeps thin coloured lines sharp


def save_image(pixels: np.ndarray, path: str, **options: Any) -> None:
    """An image file in a local folder or a bucket; the format from the file name."""
    fmt = Image.registered_extensions()[os.path.splitext(path)[1].lower()]
    with storage.open_file(path, "wb") as f:
        Image.fromarray(pixels).save(f, format=fmt, **options)


def _check_options(score_threshold: float, batch_size: int) -> None:
    if not 0.0 <= float(score_threshold) <= 1.0:
        raise ValueError(f"--score_threshold must be in [0, 1], got {score_threshold}")
    if int(batch_size) < 1:
        raise ValueError(f"--batch_size must be a positive integer, got {batch_size}")


def predict_files(predictor: Predictor, paths: Sequence[str], out: str,
                  progress: Optional[bool] = None,
                  infrared: Optional[Sequence[Optional[str]]] = None) -> dict[str, Any]:
    """Predicts the image files ``paths`` with ``predictor`` and writes the outputs to
    ``out`` (created when missing); returns a summary.

    The summary has ``images`` (how many were predicted), ``detections`` (their total),
    ``skipped`` (``[(path, reason), ...]`` of unreadable files), ``restored`` (whether
    restorations were written) and ``out``. Unreadable files are skipped with one
    warning each; ``ValueError`` when none could be read. Methods that read an
    infrared image with each visible one need ``infrared``, the infrared file of each
    path (None: skipped with a warning).
    """
    paired = {"thermal": infrared}
    for key in predictor.inputs:
        if paired.get(key) is None:
            spec = EXTRA_INPUTS[key]
            raise ValueError(f"method {predictor.method_name!r} reads {spec.noun} images with "
                             f"the visible ones: give their folder ({spec.flag})")
    cli.check_path(out, "--out")
    writer = jax.process_index() == 0
    if writer:
        storage.makedirs(out)
    stems = output_stems(paths)
    skipped: list[tuple[str, str]] = []
    decoded: dict[int, dict[str, np.ndarray]] = {}

    def read(i: int, path: str) -> dict[str, np.ndarray]:
        record = {"image": read_image(path)}
        h, w = record["image"].shape[:2]
        for key in predictor.inputs:
            spec, other = EXTRA_INPUTS[key], paired[key][i]
            if other is None:
                raise ImageReadError(f"no {spec.noun} image with the stem of {path}")
            record[key] = spec.read(other)
            if record[key].shape[:2] != (h, w):
                raise ImageReadError(
                    f"{spec.noun} image {other} is {record[key].shape[1]}x{record[key].shape[0]}, "
                    f"its visible twin {path} {w}x{h}")
        return record

    def items():
        for i, path in enumerate(paths):
            try:
                decoded[i] = read(i, path)
            except ImageReadError as e:
                log.warning("%s; skipped", e)
                skipped.append((path, str(e)))
                yield i, None
                continue
            yield i, decoded[i]

    if progress is None:
        progress = sys.stderr.isatty() and writer
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=len(paths), unit="img", disable=not progress, dynamic_ncols=True)
    done = detections = 0
    try:
        for i, pred in predictor.predict_batches(items()):
            bar.update(1)
            if pred is None:
                continue
            image = decoded.pop(i)["image"]
            done += 1
            detections += len(pred.scores)
            if writer:
                _write_outputs(out, stems[i], paths[i], image, pred, predictor.class_names,
                               detects=predictor.detects)
    finally:
        bar.close()
    if done == 0:
        raise ValueError(f"none of the {len(paths)} image file(s) could be read "
                         f"(first: {skipped[0][1]})")
    return {"images": done, "detections": detections, "skipped": skipped,
            "restored": predictor.restores, "detects": predictor.detects, "out": out}


def predict_folder(workdir: str, images: str, out: str, checkpoint: str = "best",
                   score_threshold: float = 0.3, restore: bool = True, batch_size: int = 8,
                   progress: Optional[bool] = None,
                   infrared: Optional[str] = None) -> dict[str, Any]:
    """Predicts every image of ``images`` (a folder or one file) with the best or latest
    checkpoint of a training workdir and writes the outputs to ``out``.

    Returns the summary of :func:`predict_files` plus ``step``, the checkpoint's step.
    """
    from adverse_vision import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
    if checkpoint not in ("best", "latest"):
        raise ValueError(f"--checkpoint must be 'best' or 'latest', got {checkpoint!r}")
    _check_options(score_threshold, batch_size)
    cli.check_path(workdir, "--workdir", write=False)
    paths = list_images(images)
    cli.check_path(out, "--out")
    trainer, variables, step = trainer_lib.restore_for_eval(workdir, checkpoint)
    predictor = Predictor(trainer, variables, batch_size=batch_size,
                          score_threshold=score_threshold, restore=restore)
    if restore and not predictor.restores and predictor.detects:
        log.info("method %r makes no restored images", predictor.method_name)
    pairs = None
    if infrared:
        if "thermal" in predictor.inputs:
            pairs = infrared_pairs(paths, infrared)
        else:
            log.warning("--infrared %s ignored: method %r reads no infrared images",
                        infrared, predictor.method_name)
    return {"step": int(step), **predict_files(predictor, paths, out, progress=progress,
                                               infrared=pairs)}


# --------------------------------------------------------------------------- program

def _define_flags():
    """The program's flags, defined only when it runs: ``workdir`` and ``checkpoint``
    are also flags of ``evaluate`` and ``train``, and absl refuses a second definition
    when those modules are imported together (e.g. by tests)."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("workdir", None, "A training workdir.")
    flags.DEFINE_string("images", None, "An image file or a folder of images "
                        "(jpg, jpeg, png, bmp; not recursive).")
    flags.DEFINE_string("out", None, "Output folder (created when missing).")
    flags.DEFINE_string("infrared", None, "The folder of infrared images, paired with "
                        "--images by file stem (methods that read one with each visible image).")
    flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                      "The best checkpoint by the validation metric, or the latest.")
    flags.DEFINE_float("score_threshold", 0.3, "Keep detections with at least this score.")
    flags.DEFINE_bool("restore", True, "Also write the restored image (methods that restore).")
    flags.DEFINE_integer("batch_size", 8, "Images per batch (rounded up to a multiple of "
                         "the device count).")
    flags.mark_flags_as_required(["workdir", "images", "out"])


def main() -> int:
    from absl import flags  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    parallel.maybe_initialize_distributed()
    summary = predict_folder(f.workdir, f.images, f.out, checkpoint=f.checkpoint,
                             score_threshold=f.score_threshold, restore=f.restore,
                             batch_size=f.batch_size, infrared=f.infrared)
    if jax.process_index() != 0:  # process 0 wrote the files and says so
        return 0
    skipped = len(summary["skipped"])
    found = (f", {summary['detections']} detection(s) with score >= {f.score_threshold}"
             if summary["detects"] else "")
    print(f"checkpoint step {summary['step']} ({f.checkpoint}): {summary['images']} image(s)"
          f"{found}{', restored images' if summary['restored'] else ''} -> {summary['out']}"
          f"{f'; skipped {skipped} unreadable file(s)' if skipped else ''}")
    return 0


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
