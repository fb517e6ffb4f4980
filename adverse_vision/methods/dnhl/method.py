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
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adverse_vision import methods
from adverse_vision import workdir as workdir_lib
from adverse_vision import xla_options
from adverse_vision.config import ConfigError, check_choice, check_ranges
from adverse_vision.data import catalog
from adverse_vision.losses.cross_entropy import cross_entropy, pixel_cross_entropy
from adverse_vision.methods.dnhl import comparison
from adverse_vision.methods.dnhl.stages import (
    DENOISER_KEYS,
    HIGH_KEYS,
    MAX_PSNR,
    STAGES,
    TASKS,
    add_noise,
    crop,
    eval_noise,
    load_stage,
    mse_255,
)
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

#: data.name -> source: the scenes' class masks or object crops, image and class
#: folders, VOC segmentation.
DATASETS = {"scenes": catalog.scenes_segmentation, "scenes_crops": catalog.scenes_crops,
            "image_folder": catalog.image_folder, "class_folder": catalog.class_folder,
            "voc_seg": catalog.voc_seg}
#: The datasets of each task.
TASK_DATASETS = {"classification": ("scenes_crops", "class_folder"),
                 "segmentation": ("scenes", "voc_seg")}


@methods.register("dnhl")
class DNHLMethod(methods.Method):
    """One stage of DN-HL as a trainer method (see the package docstring)."""

    datasets = DATASETS

    @classmethod
    def defaults(cls) -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict()
        c.model.init_from = ""  # the trained network's starting weights (an earlier stage's run)
        d = c.dnhl = ml_collections.ConfigDict()
        d.stage = "joint"  # high | denoise | joint
        d.task = "classification"  # classification | segmentation
        d.denoiser_form = "default"  # default ([0,1] RGB, padded) | official (Caffe form)
        d.denoiser_width = 1.0  # channel multiplier of the denoiser
        d.high_width = 1.0  # channel multiplier of the classifier / segmenter convs
        d.high_fc = 0  # fc features (0: 4096 for VGG-16, 1024 for DeepLab-LargeFOV)
        d.high_head = "avg"  # classifier: avg (global pool, any size) | flatten (224 px)
        d.high_dropout = 0.5
        d.high_from = ""  # joint: workdir of the high-level stage (loaded frozen)
        d.sigmas = (30.0,)  # training noise sigmas on the 0-255 scale, one per batch
        d.eval_sigmas = (15.0, 25.0, 50.0)  # evaluate's comparison
        d.val_sigma = 50.0  # noise of the validation runs during training
        d.rec_weight = 0.0038  # w in L_high + w * MSE (MSE on the 0-255 scale)
        d.clip_noisy = False  # clip noisy images to [0, 1]
        d.tile = 140  # tiled inference for whole images of any size
        d.tile_stride = 64
        d.psnr_border = 3
        return c

    @classmethod
    def check_config(cls, cfg: ml_collections.ConfigDict) -> None:
        super().check_config(cfg)
        d = cfg.dnhl
        check_choice(cfg, "dnhl.stage", STAGES)
        check_choice(cfg, "dnhl.task", TASKS)
        check_choice(cfg, "dnhl.denoiser_form", ("default", "official"))
        check_choice(cfg, "dnhl.high_head", ("avg", "flatten"))
        task = "denoise" if d.stage == "denoise" else d.task
        if task != "denoise" and cfg.data.name not in TASK_DATASETS[task]:
            raise ConfigError(f"config key 'data.name' is {cfg.data.name!r}, which has no "
                              f"{'class labels' if task == 'classification' else 'masks'} for "
                              f"'dnhl.task' {task!r}; use one of {TASK_DATASETS[task]}")
        sigmas = tuple(d.sigmas)
        if not sigmas or any(not float(s) >= 0 for s in sigmas):
            raise ConfigError(f"config key 'dnhl.sigmas' must be a non-empty list of values "
                              f">= 0, got {d.sigmas!r}")
        if any(not float(s) >= 0 for s in tuple(d.eval_sigmas)):
            raise ConfigError(f"config key 'dnhl.eval_sigmas' must hold values >= 0, got "
                              f"{d.eval_sigmas!r}")
        check_ranges(cfg, (("dnhl.val_sigma", 0.0, None, True),
                           ("dnhl.denoiser_width", 0.0, None, False),
                           ("dnhl.high_width", 0.0, None, False),
                           ("dnhl.rec_weight", 0.0, None, True),
                           ("dnhl.high_fc", 0, None, True),
                           ("dnhl.tile", 1, None, True), ("dnhl.tile_stride", 1, None, True),
                           ("dnhl.psnr_border", 0, None, True)))
        if not 0.0 <= float(d.high_dropout) < 1.0:
            raise ConfigError(f"config key 'dnhl.high_dropout' must be in [0, 1), got "
                              f"{d.high_dropout!r}")
        size = int(cfg.image_size)
        multiple_of = size - 4 if d.denoiser_form == "official" else size
        if d.stage != "high" and (multiple_of <= 0 or multiple_of % 4):
            need = "image_size - 4" if d.denoiser_form == "official" else "image_size"
            raise ConfigError(f"config key 'image_size' is {size}: the {d.denoiser_form} "
                              f"denoiser needs {need} to be a positive multiple of 4")

    def __init__(self, cfg: ml_collections.ConfigDict):
        super().__init__(cfg)
        d = cfg.dnhl
        self.stage, self.task = d.stage, d.task
        self.num_classes = len(catalog.class_names(cfg.data))
        dtype = jnp.dtype(cfg.model.dtype)
        self.denoiser = Denoiser(form=d.denoiser_form, width=float(d.denoiser_width), dtype=dtype,
                                 remat=bool(cfg.model.remat))
        self.crop = denoiser_crop(d.denoiser_form) if self.stage != "high" else 0
        fc = int(d.high_fc)
        if self.task == "classification":
            self.high = VGG16Classifier(num_classes=self.num_classes, width=float(d.high_width),
                                        fc_features=fc or 4096, head=d.high_head,
                                        dropout_rate=float(d.high_dropout), dtype=dtype)
            self.best_metric = "top1"
            label_keys = ("label",)
        else:
            self.high = DeepLabLargeFOV(num_classes=self.num_classes, width=float(d.high_width),
                                        fc_features=fc or 1024,
                                        dropout_rate=float(d.high_dropout), dtype=dtype)
            self.best_metric = "miou"
            label_keys = ("mask",)
        if self.stage == "denoise":
            self.best_metric = "psnr"
            label_keys = ()
        self.eval_keys = ("valid", "index") + label_keys + (("image",) if self.stage != "high" else ())

    # ------------------------------------------------------------------ data
    @property
    def dense_task(self) -> str:
        """What a batch carries besides the image: "denoise" (nothing), a class
        "label" ("classification") or a "mask" ("segmentation")."""
        return "denoise" if self.stage == "denoise" else self.task

    def make_pipeline(self, bundle, source, *, train, seed, data_cfg):
        return catalog.dense_pipeline(bundle, source, train=train, seed=seed, data_cfg=data_cfg,
                                      task=self.dense_task)

    def report(self, trainer, variables, bundle, entry, options):
        """The comparison table of :mod:`adverse_vision.methods.dnhl.comparison`."""
        rows, table = comparison.report(trainer, variables, bundle, entry, options.get("images"))
        return {"rows": rows}, f"DN-HL stage {self.stage}\n{table}"

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
        workdir_lib.check_fit(new, current, "the loaded checkpoint")
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

    # ------------------------------------------------------------------ image files
    def evaluation_images(self, batch):
        """The validation input: the clean image with the noise of ``dnhl.val_sigma``
        that evaluation adds (the same per-sample key), quantised to 8 bits."""
        if self.stage == "high":
            return {"image": batch["image"]}
        clean = jnp.asarray(batch["image"], jnp.float32) / 255.0
        noisy = eval_noise(clean, jnp.float32(self.cfg.dnhl.val_sigma),
                           jnp.asarray(batch["index"]), clip=True)
        return {"image": np.asarray(jnp.round(noisy * 255.0), np.uint8),
                "clean": batch["image"]}

    def predict_fn(self, restore: bool):
        """The denoiser on image files taken as they are (already noisy); the official
        form's output, 3 px smaller per side, is padded back by repeating its edge."""
        del restore
        if self.stage == "high":
            raise ValueError("a DN-HL 'high' stage run has no denoiser: predict a 'denoise' "
                             "or 'joint' run's workdir")

        def denoise(variables, batch):
            den, _ = self.split_variables(variables)
            x = batch["image"].astype(jnp.float32) / 255.0
            out = jnp.clip(self.denoiser.apply(den, x, train=False), 0.0, 1.0)
            c = self.crop
            return {"denoised": jnp.pad(out, ((0, 0), (c, c), (c, c), (0, 0)), mode="edge")}

        return denoise

    def prediction_images(self, outputs, i, to_original):
        if "denoised" not in outputs:
            return {}
        return {"_denoised.png": to_original(outputs["denoised"][i], value_range=(0.0, 1.0))}

    def official_contenders(self, checkout, batches):
        """The official Caffe denoiser of a checkout of Ding-Liu/DeepDenoising, restated
        in PyTorch from its deploy prototxt (:mod:`adverse_vision.methods.dnhl.official`)."""
        from adverse_vision.methods.dnhl import official  # pylint: disable=import-outside-toplevel
        return official.contenders(self.cfg, checkout, batches)

    def make_evaluator(self) -> "DNHLEvaluator":
        return DNHLEvaluator(self.task, self.num_classes, self.crop,
                             int(self.cfg.dnhl.psnr_border))

    # ------------------------------------------------------------------ benchmark
    def bench_extra(self, bench, variables, batch, steps):
        """The denoiser alone on the inference batch, in megapixels per second (stages
        that have one)."""
        if self.stage == "high":
            return {}
        den, _ = self.split_variables(variables)
        x = batch["image"].astype(jnp.float32) / 255.0
        denoiser = bench.measure(
            xla_options.jit(lambda d, x: self.denoiser.apply(d, x, train=False)), (den, x), steps)
        pixels = x.shape[0] * x.shape[1] * x.shape[2]
        return {"denoiser_batch_s": denoiser.seconds,
                "denoiser_megapixels_per_s": pixels / denoiser.seconds / 1e6}

    @staticmethod
    def bench_lines(result):
        if "denoiser_megapixels_per_s" not in result:
            return []
        return [f"denoiser alone         {result['denoiser_batch_s'] * 1e3:9.1f} ms   "
                f"{result['denoiser_megapixels_per_s']:8.2f} megapixels/s"]


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
