"""DN-HL: a denoiser trained through a frozen classifier or segmenter (Liu et al., IJCAI 2018).

Three stages, each a run of its own (``cfg.dnhl.stage``), run one after another:

``high``
    The high-level network (``cfg.dnhl.task``: a VGG-16-layout classifier or a
    DeepLab-LargeFOV segmenter, :mod:`adverse_vision.models.dnhl`) trained on clean
    images: cross-entropy (per pixel for segmentation, the stride-8 logits upsampled
    bilinearly to the label size, label 255 ignored).
``denoise``
    The three-scale denoiser trained alone on noisy / clean pairs: mean squared error on
    the 0-255 scale (``MSE_255``). Gaussian noise of standard deviation ``sigma / 255``
    is added on the device; ``sigma`` is drawn per batch from ``cfg.dnhl.sigmas`` (one
    value: a fixed level; several: blind training).
``joint``
    The denoiser, started from a ``denoise`` run (``cfg.model.init_from``), trained
    through the high-level network of a ``high`` run (``cfg.dnhl.high_from``), which is
    FROZEN: ``L = L_high(high(denoised)) + w * MSE_255(denoised, clean)``
    (``w = cfg.dnhl.rec_weight``; the paper's 0.0038 for classification and 7.8e-4 for
    segmentation are on this 0-255 scale). Only the denoiser's parameters are the
    train state's ``params``: the frozen network lives in ``model_state["frozen"]``, so
    it has no gradient and no optimiser state; it runs in inference mode (no dropout,
    BatchNorm statistics, if any, unchanged) and is returned untouched.

The noisy images are not clipped to [0, 1] unless ``cfg.dnhl.clip_noisy``. In the
``official`` denoiser form the output is 3 px smaller on each side, and targets, labels
and masks are cropped to match.

Validation (during training) adds noise of ``cfg.dnhl.val_sigma`` (stages ``denoise``
and ``joint``; the ``high`` stage is validated on clean images) from a key fixed per
sample index, so every evaluation sees the same noisy images. It reports ``top1`` /
``top5`` or ``miou`` / ``pixel_acc`` of the high-level network and, where a denoiser
runs, ``psnr`` and ``ssim`` of its output on the 0-255 scale (``cfg.dnhl.psnr_border``
pixels left out), with ``psnr_noisy`` for the noisy input.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from adverse_vision.metrics.classification import AccuracyMeter
from adverse_vision.metrics.image import psnr, ssim
from adverse_vision.metrics.segmentation import SegmentationMeter
from adverse_vision.models.dnhl import (
    DeepLabLargeFOV,
    Denoiser,
    VGG16Classifier,
    denoiser_crop,
    upsample_logits,
)

log = logging.getLogger("adverse_vision.dnhl")

STAGES = ("high", "denoise", "joint")
TASKS = ("classification", "segmentation")
IGNORE_LABEL = 255
#: Separates the evaluation noise from every other use of the run seed.
EVAL_NOISE_SEED = 0x0D15E
#: PSNR cap of one image (dB), so that a perfect image keeps the mean finite.
MAX_PSNR = 100.0


def add_noise(clean: jax.Array, sigma: jax.Array, key: jax.Array, clip: bool = False) -> jax.Array:
    """``clean`` (float, [0, 1]) plus Gaussian noise of std ``sigma / 255``."""
    noisy = clean + (sigma / 255.0) * jax.random.normal(key, clean.shape, clean.dtype)
    return jnp.clip(noisy, 0.0, 1.0) if clip else noisy


def eval_noise(clean: jax.Array, sigma: jax.Array, index: jax.Array, clip: bool = False) -> jax.Array:
    """Noise drawn from a key fixed by each sample's ``index``: identical whatever the
    batch, the device count or the model."""
    base = jax.random.key(EVAL_NOISE_SEED)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.maximum(index, 0))
    noise = jax.vmap(lambda k: jax.random.normal(k, clean.shape[1:], clean.dtype))(keys)
    noisy = clean + (sigma / 255.0) * noise
    return jnp.clip(noisy, 0.0, 1.0) if clip else noisy


def crop(x: jax.Array, pixels: int) -> jax.Array:
    """Drops ``pixels`` rows and columns on each side of axes 1 and 2."""
    if pixels == 0:
        return x
    return x[:, pixels:x.shape[1] - pixels, pixels:x.shape[2] - pixels]


def mse_255(a: jax.Array, b: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean squared error on the 0-255 scale of [0, 1] images, over valid images."""
    per_image = jnp.mean(jnp.square((a - b) * 255.0), axis=tuple(range(1, a.ndim)))
    w = valid.astype(jnp.float32)
    return jnp.sum(per_image * w) / jnp.maximum(jnp.sum(w), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """Classification cross-entropy, mean over valid images."""
    per = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    w = valid.astype(jnp.float32)
    return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


def pixel_cross_entropy(logits: jax.Array, mask: jax.Array, valid: jax.Array) -> jax.Array:
    """Per-pixel cross-entropy of stride-8 ``logits`` upsampled to the mask's size, mean
    over the labelled pixels (label 255 ignored) of valid images."""
    logits = upsample_logits(logits, mask.shape[1], mask.shape[2]).astype(jnp.float32)
    labels = mask.astype(jnp.int32)
    keep = (labels != IGNORE_LABEL) & valid[:, None, None]
    per = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(keep, labels, 0))
    w = keep.astype(jnp.float32)
    return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first unusable ``dnhl`` key."""
    d = cfg.dnhl
    choices = {"dnhl.stage": (d.stage, STAGES), "dnhl.task": (d.task, TASKS),
               "dnhl.denoiser_form": (d.denoiser_form, ("default", "official")),
               "dnhl.high_head": (d.high_head, ("avg", "flatten"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"config key '{key}' is {value!r}; expected one of {allowed}")
    sigmas = tuple(d.sigmas)
    if not sigmas or any(not float(s) >= 0 for s in sigmas):
        raise ValueError(f"config key 'dnhl.sigmas' must be a non-empty list of values >= 0, "
                         f"got {d.sigmas!r}")
    if any(not float(s) >= 0 for s in tuple(d.eval_sigmas)) or not float(d.val_sigma) >= 0:
        raise ValueError("config keys 'dnhl.eval_sigmas' and 'dnhl.val_sigma' must be >= 0")
    for key in ("denoiser_width", "high_width"):
        if not float(d[key]) > 0:
            raise ValueError(f"config key 'dnhl.{key}' must be > 0, got {d[key]!r}")
    if not float(d.rec_weight) >= 0:
        raise ValueError(f"config key 'dnhl.rec_weight' must be >= 0, got {d.rec_weight!r}")
    if not 0.0 <= float(d.high_dropout) < 1.0:
        raise ValueError(f"config key 'dnhl.high_dropout' must be in [0, 1), got {d.high_dropout!r}")
    size = int(cfg.image_size)
    multiple_of = size - 4 if d.denoiser_form == "official" else size
    if d.stage != "high" and (multiple_of <= 0 or multiple_of % 4):
        need = "image_size - 4" if d.denoiser_form == "official" else "image_size"
        raise ValueError(f"config key 'image_size' is {size}: the {d.denoiser_form} denoiser "
                         f"needs {need} to be a positive multiple of 4")


def num_classes(cfg: ml_collections.ConfigDict) -> int:
    """``len(data.class_names)``; for a class folder without class names, the number of
    class subfolders of its training split."""
    if cfg.data.class_names:
        return len(cfg.data.class_names)
    if cfg.data.name == "class_folder":
        root = os.path.join(cfg.data.root, cfg.data.train_split)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"config key 'data.root': class folder {root} not found")
        names = [n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n))]
        if names:
            return len(names)
        raise ValueError(f"config key 'data.root': {root} has no class subfolders")
    raise ValueError("config key 'data.class_names' is empty")


#: Config keys that must agree between a stage and the run that loads it.
DENOISER_KEYS = ("dnhl.denoiser_form", "dnhl.denoiser_width")
HIGH_KEYS = ("dnhl.task", "dnhl.high_width", "dnhl.high_fc", "dnhl.high_head")


def _value(cfg, path: str):
    for part in path.split("."):
        cfg = cfg[part]
    return cfg


def _shapes(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}


def check_fit(loaded, current, what: str) -> None:
    """Raises ValueError naming the first variable that ``loaded`` lacks, has in excess
    or holds with another shape, compared with ``current``."""
    have, want = _shapes(loaded), _shapes(current)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = [k for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        if extra:
            parts.append(f"unexpected {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
        if wrong:
            k = wrong[0]
            parts.append(f"{k} has shape {have[k]}, the model needs {want[k]}"
                         + (f" ({len(wrong) - 1} more differ)" if len(wrong) > 1 else ""))
        raise ValueError(f"{what} does not fit this model: " + "; ".join(parts))


def load_stage(workdir: str, key: str, stages: tuple[str, ...], cfg: ml_collections.ConfigDict,
               agree: tuple[str, ...]):
    """(config, eval variables, step) of an earlier DN-HL stage's ``workdir``, named by
    config key ``key``; checks that it is a DN-HL run of one of ``stages`` whose
    ``agree`` config keys equal ``cfg``'s."""
    from adverse_vision import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
    if not workdir:
        raise ValueError(f"config key '{key}' is empty: stage '{cfg.dnhl.stage}' starts from "
                         f"the workdir of a '{'/'.join(stages)}' run")
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"config key '{key}': {workdir} is not a directory")
    other = trainer_lib.load_workdir_config(workdir)
    if other.method != "dnhl" or other.dnhl.stage not in stages:
        got = other.method if other.method != "dnhl" else f"dnhl stage '{other.dnhl.stage}'"
        raise ValueError(f"config key '{key}': {workdir} is a {got} run; expected a DN-HL "
                         f"'{'/'.join(stages)}' run")
    for path in agree + (("data.class_names",) if "dnhl.task" in agree else ()):
        mine, theirs = _value(cfg, path), _value(other, path)
        if tuple(np.atleast_1d(mine)) != tuple(np.atleast_1d(theirs)):
            raise ValueError(f"config key '{key}': {workdir} was trained with {path}={theirs!r}, "
                             f"this run has {mine!r}")
    _, variables, step = trainer_lib.restore_for_eval(workdir, "best")
    return other, variables, step


class DNHLMethod:
    """One stage of DN-HL as a trainer method (see the module docstring)."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        check_config(cfg)
        self.cfg = cfg
        d = cfg.dnhl
        self.stage, self.task = d.stage, d.task
        self.num_classes = num_classes(cfg)
        dtype = jnp.dtype(cfg.model.dtype)
        self.denoiser = Denoiser(form=d.denoiser_form, width=float(d.denoiser_width), dtype=dtype)
        self.crop = denoiser_crop(d.denoiser_form) if self.stage != "high" else 0
        fc = int(d.high_fc)
        if self.task == "classification":
            self.high = VGG16Classifier(num_classes=self.num_classes, width=float(d.high_width),
                                        fc_features=fc or 4096, head=d.high_head,
                                        dropout_rate=float(d.high_dropout), dtype=dtype)
            self.best_metric = "val/top1"
            label_keys = ("label",)
        else:
            self.high = DeepLabLargeFOV(num_classes=self.num_classes, width=float(d.high_width),
                                        fc_features=fc or 1024,
                                        dropout_rate=float(d.high_dropout), dtype=dtype)
            self.best_metric = "val/miou"
            label_keys = ("mask",)
        if self.stage == "denoise":
            self.best_metric = "val/psnr"
            label_keys = ()
        self.eval_keys = ("valid", "index") + label_keys + (("image",) if self.stage != "high" else ())

    # ------------------------------------------------------------------ state
    def _high_input_size(self) -> int:
        return int(self.cfg.image_size) - 2 * self.crop

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        s = int(self.cfg.image_size)
        k_den, k_high = jax.random.split(rng)
        high_x = jnp.zeros((1, self._high_input_size(), self._high_input_size(), 3), jnp.float32)
        if self.stage == "high":
            return dict(self.high.init({"params": k_high}, high_x, train=False))
        variables = dict(self.denoiser.init({"params": k_den}, jnp.zeros((1, s, s, 3)), train=False))
        if self.stage == "joint":
            variables["frozen"] = dict(self.high.init({"params": k_high}, high_x, train=False))
        return variables

    def _loaded_high(self, other, variables):
        return variables.get("frozen") if other.dnhl.stage == "joint" else variables

    def _loaded_denoiser(self, other, variables):
        return {k: v for k, v in variables.items() if k != "frozen"}

    def prepare_state(self, state, trainer):
        """A fresh train state with the weights of the earlier stages its config names:
        ``model.init_from`` (the starting weights of the trained network; required for
        the joint stage) and ``dnhl.high_from`` (the frozen network of the joint stage).
        The optimiser state is initialised again."""
        cfg = self.cfg
        current = {"params": state.params, **state.model_state}
        new = dict(current)
        if self.stage == "high":
            if cfg.model.init_from:
                other, variables, step = load_stage(cfg.model.init_from, "model.init_from",
                                                    ("high", "joint"), cfg, HIGH_KEYS)
                new = dict(self._loaded_high(other, variables))
                log.info("high-level network from %s (step %d)", cfg.model.init_from, step)
        else:
            if cfg.model.init_from or self.stage == "joint":
                other, variables, step = load_stage(cfg.model.init_from, "model.init_from",
                                                    ("denoise", "joint"), cfg, DENOISER_KEYS)
                new.update(self._loaded_denoiser(other, variables))
                log.info("denoiser from %s (step %d)", cfg.model.init_from, step)
            if self.stage == "joint":
                other, variables, step = load_stage(cfg.dnhl.high_from, "dnhl.high_from",
                                                    ("high", "joint"), cfg, HIGH_KEYS)
                new["frozen"] = dict(self._loaded_high(other, variables))
                log.info("frozen high-level network from %s (step %d)", cfg.dnhl.high_from, step)
        check_fit(new, current, "the loaded checkpoint")
        params = new.pop("params")
        return trainer.with_variables(state, params, model_state=new)

    # ------------------------------------------------------------------ training
    def _high_loss(self, logits, batch):
        if self.task == "classification":
            return cross_entropy(logits, batch["label"], batch["valid"])
        return pixel_cross_entropy(logits, crop(batch["mask"], self.crop), batch["valid"])

    def _denoise(self, params, model_state, noisy, train: bool):
        variables = {"params": params, "batch_stats": model_state.get("batch_stats", {})}
        if train and "batch_stats" in model_state:
            out, updates = self.denoiser.apply(variables, noisy, train=True,
                                               mutable=["batch_stats"])
            return out, dict(updates)
        return self.denoiser.apply(variables, noisy, train=False), {}

    def loss_fn(self, params, model_state, batch, rng, step):
        del step
        d = self.cfg.dnhl
        clean = batch["image"].astype(jnp.float32) / 255.0
        valid = batch["valid"]
        k_sigma, k_noise, k_drop = jax.random.split(rng, 3)
        if self.stage == "high":
            rngs = {"dropout": k_drop} if float(d.high_dropout) > 0 else {}
            logits = self.high.apply({"params": params, **model_state}, clean, train=True,
                                     rngs=rngs)
            loss = self._high_loss(logits, batch)
            return loss, (dict(model_state), {"high": loss})
        sigmas = jnp.asarray(tuple(float(s) for s in d.sigmas), jnp.float32)
        sigma = jax.random.choice(k_sigma, sigmas)
        noisy = add_noise(clean, sigma, k_noise, bool(d.clip_noisy))
        out, updates = self._denoise(params, model_state, noisy, train=True)
        rec = mse_255(out, crop(clean, self.crop), valid)
        new_state = dict(model_state, **updates)
        metrics = {"mse_255": rec, "sigma": sigma}
        if self.stage == "denoise":
            return rec, (new_state, metrics)
        frozen = jax.lax.stop_gradient(model_state["frozen"])
        logits = self.high.apply(frozen, out, train=False)
        high = self._high_loss(logits, batch)
        metrics["high"] = high
        return high + float(d.rec_weight) * rec, (new_state, metrics)

    # ------------------------------------------------------------------ inference
    def high_outputs(self, high_variables, x: jax.Array) -> dict[str, jax.Array]:
        """The high-level network's prediction on [0, 1] images ``x``: ``logits`` (B, C)
        or ``pred`` (B, H, W) int32 at the input's size."""
        logits = self.high.apply(high_variables, x, train=False)
        if self.task == "classification":
            return {"logits": logits.astype(jnp.float32)}
        full = upsample_logits(logits, x.shape[1], x.shape[2])
        return {"pred": jnp.argmax(full, axis=-1).astype(jnp.int32)}

    def run(self, denoiser_variables, high_variables, batch, sigma) -> dict[str, jax.Array]:
        """Noise of ``sigma`` (per-sample fixed keys), the denoiser (when
        ``denoiser_variables`` is not None) and the high-level network (when
        ``high_variables`` is not None) on ``batch``. Returns ``denoised`` (float32 in
        [0, 1], cropped like the denoiser output; the noisy input when there is no
        denoiser) and the high-level outputs."""
        clean = batch["image"].astype(jnp.float32) / 255.0
        x = eval_noise(clean, jnp.asarray(sigma, jnp.float32), batch["index"],
                       bool(self.cfg.dnhl.clip_noisy))
        if denoiser_variables is not None:
            x = self.denoiser.apply(denoiser_variables, x, train=False)
        else:
            x = crop(x, self.crop)
        out = {"denoised": jnp.clip(x, 0.0, 1.0).astype(jnp.float32)}
        if high_variables is not None:
            out.update(self.high_outputs(high_variables, x))
        return out

    def split_variables(self, variables) -> tuple[Optional[dict], Optional[dict]]:
        """(denoiser variables, high-level variables) of a train state's eval variables."""
        if self.stage == "high":
            return None, variables
        den = {k: v for k, v in variables.items() if k != "frozen"}
        return den, variables.get("frozen")

    def predict(self, variables, batch) -> dict[str, jax.Array]:
        den, high = self.split_variables(variables)
        if self.stage == "high":
            clean = batch["image"].astype(jnp.float32) / 255.0
            return self.high_outputs(high, clean)
        return self.run(den, high, batch, float(self.cfg.dnhl.val_sigma))

    def make_evaluator(self) -> "DNHLEvaluator":
        return DNHLEvaluator(self.task, self.num_classes, self.crop,
                             int(self.cfg.dnhl.psnr_border))


class DNHLEvaluator:
    """Accumulates the high-level metric and the denoising quality over padded batches."""

    def __init__(self, task: str, num_classes: int, crop_pixels: int, border: int):
        self.task = task
        self.num_classes = num_classes
        self.crop = crop_pixels
        self.border = border
        self.accuracy = AccuracyMeter() if task == "classification" else None
        self.segmentation = SegmentationMeter(num_classes) if task == "segmentation" else None
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.high_seen = False

    def add(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        valid = np.asarray(batch["valid"], bool)
        if not valid.any():
            return
        if "logits" in outputs:
            self.high_seen = True
            self.accuracy.add(np.asarray(outputs["logits"])[valid],
                              np.asarray(batch["label"])[valid])
        if "pred" in outputs:
            self.high_seen = True
            mask = np.asarray(batch["mask"])
            if self.crop:
                c = self.crop
                mask = mask[:, c:mask.shape[1] - c, c:mask.shape[2] - c]
            self.segmentation.add(np.asarray(outputs["pred"])[valid], mask[valid])
        if "denoised" in outputs and "image" in batch:
            clean = np.asarray(batch["image"])[valid].astype(np.float64)
            if self.crop:
                c = self.crop
                clean = clean[:, c:clean.shape[1] - c, c:clean.shape[2] - c]
            out = np.asarray(outputs["denoised"], np.float64)[valid] * 255.0
            self.psnr.extend(np.minimum(psnr(clean, out, 255.0, border=self.border), MAX_PSNR))
            self.ssim.extend(ssim(clean, out, 255.0))

    def compute(self) -> dict[str, float]:
        result: dict[str, float] = {}
        if self.high_seen and self.accuracy is not None:
            acc = self.accuracy.compute()
            result.update(top1=float(acc["top1"]), top5=float(acc["top5"]))
        if self.high_seen and self.segmentation is not None:
            seg = self.segmentation.compute()
            result.update(miou=float(seg["miou"]), pixel_acc=float(seg["pixel_acc"]))
        if self.psnr:
            result.update(psnr=float(np.mean(self.psnr)), ssim=float(np.mean(self.ssim)))
        return result

    def table(self) -> str:
        return "  ".join(f"{k} {v:.3f}" for k, v in self.compute().items())
