"""YOLOX detection on degraded images: model, loss, prediction and VOC evaluation.

The plain detection method, and the base of the methods built on a YOLOX detector.
Its config keys (``model.*``): the YOLOX ``size`` (or ``depth`` and ``width``
multipliers), ``act``, the loss variant ``loss`` ("yolox" or TogetherNet's
"togethernet" focal objectness) with ``l1_from_fraction`` (stock YOLOX turns on its
L1 term for the last part of training), the postprocessing (``conf_threshold``,
``nms_iou``, ``max_detections``) and ``init_from`` (a workdir, a checkpoint or an
official ``.pth`` whose matching tensors start the run).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from adverse_vision import methods
from adverse_vision.config import ConfigError, check_choice, check_ranges
from adverse_vision.data import catalog
from adverse_vision.losses.detection import yolox_loss
from adverse_vision.metrics.detection import VOCEvaluator, official_tool
from adverse_vision.models.yolox import YOLOX
from adverse_vision.ops import boxes as box_ops
from adverse_vision.ops.nms import postprocess

MODEL_SIZES = ("nano", "tiny", "s", "m", "l", "x")
LOSS_VARIANTS = ("yolox", "togethernet")
#: Official YOLOX keys (Megvii's and the "bubbliiiing" YOLOX that TogetherNet builds on
#: share them) -> the flax paths of :class:`adverse_vision.models.yolox.YOLOX`.
YOLOX_RULES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.backbone\.stem\.conv\.", "backbone/stem/conv/"),
    (r"^backbone\.backbone\.dark5\.0\.", "backbone/dark5/conv/"),
    (r"^backbone\.backbone\.dark5\.1\.", "backbone/dark5/spp/"),
    (r"^backbone\.backbone\.dark5\.2\.", "backbone/dark5/csp/"),
    (r"^backbone\.backbone\.dark([234])\.0\.", r"backbone/dark\1/conv/"),
    (r"^backbone\.backbone\.dark([234])\.1\.", r"backbone/dark\1/csp/"),
    (r"^backbone\.(lateral_conv0|C3_p4|reduce_conv1|C3_p3|bu_conv2|C3_n3|bu_conv1|C3_n4)\.",
     r"neck/\1/"),
    (r"^head\.stems\.(\d+)\.", r"head/stems_\1/"),
    (r"^head\.(cls|reg)_convs\.(\d+)\.(\d+)\.", r"head/\1_convs_\2_\3/"),
    (r"^head\.(cls|reg|obj)_preds\.(\d+)\.", r"head/\1_preds_\2/"),
)


# The ImageNet statistics the TogetherNet / bubbliiiing YOLOX code normalises inputs with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images: jax.Array) -> jax.Array:
    """uint8 RGB (B, H, W, 3) -> float32, ImageNet mean/std normalised."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def model_size(cfg: ml_collections.ConfigDict):
    if cfg.model.depth > 0 and cfg.model.width > 0:
        return (cfg.model.depth, cfg.model.width)
    return cfg.model.size


def yolox_defaults() -> ml_collections.ConfigDict:
    """The ``model`` keys of a YOLOX detector."""
    return ml_collections.ConfigDict({"model": {
        "size": "s",
        "depth": 0.0,  # >0 overrides the size's depth multiplier
        "width": 0.0,  # >0 overrides the size's width multiplier
        "act": "silu",
        "loss": "yolox",  # or "togethernet"
        "l1_from_fraction": 1.0,  # stock YOLOX turns on L1 for the last epochs
        "conf_threshold": 0.001,
        "nms_iou": 0.65,
        "max_detections": 100,
    }})


def check_yolox(cfg: ml_collections.ConfigDict) -> None:
    """The values of :func:`yolox_defaults`' keys; a stride-32 image size."""
    check_choice(cfg, "model.size", MODEL_SIZES)
    check_choice(cfg, "model.loss", LOSS_VARIANTS)
    check_ranges(cfg, (("model.depth", 0.0, None, True), ("model.width", 0.0, None, True),
                       ("model.l1_from_fraction", 0.0, 1.0, True),
                       ("model.conf_threshold", 0.0, 1.0, True), ("model.nms_iou", 0.0, 1.0, True),
                       ("model.max_detections", 1, None, True)))
    if cfg.image_size % 32:
        raise ConfigError(f"config key 'image_size' must be a multiple of 32, got {cfg.image_size}")


@methods.register("detection")
class DetectionMethod(methods.Method):
    """YOLOX trained on the degraded image of each sample, evaluated by VOC mAP@0.5."""

    datasets = catalog.BOX_DATASETS
    best_metric = "mAP"
    # Batch entries the evaluator reads (gathered to the host; images are not).
    eval_keys = ("boxes", "classes", "box_mask", "difficult", "valid", "scale", "offset")
    converters = {"yolox": methods.Converter("adverse_vision.models.yolox:YOLOX", YOLOX_RULES,
                                             config="configs/yolox_scenes.py")}
    init_rules = YOLOX_RULES

    @classmethod
    def defaults(cls) -> ml_collections.ConfigDict:
        c = yolox_defaults()
        c.model.init_from = ""  # a workdir, checkpoint or official .pth to start from
        return c

    @classmethod
    def check_config(cls, cfg: ml_collections.ConfigDict) -> None:
        super().check_config(cfg)
        check_yolox(cfg)

    def __init__(self, cfg: ml_collections.ConfigDict):
        super().__init__(cfg)
        self.num_classes = len(cfg.data.class_names)
        self.model = self.make_model()
        grid, strides = box_ops.anchor_grid(cfg.image_size)
        self.grid, self.strides = grid, strides
        self.l1_from_step = int(cfg.model.l1_from_fraction * cfg.total_steps)

    def make_model(self):
        """The network (called once by ``__init__``; subclasses build theirs)."""
        return YOLOX(num_classes=self.num_classes, size=model_size(self.cfg),
                     act=self.cfg.model.act, dtype=jnp.dtype(self.cfg.model.dtype),
                     remat=bool(self.cfg.model.remat))

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        x = jnp.zeros((1, self.cfg.image_size, self.cfg.image_size, 3), jnp.float32)
        return dict(self.model.init({"params": rng}, x, train=False))

    def detection_loss(self, heads, batch, step):
        """(loss, components) of raw head maps against the batch's boxes
        (``cfg.model.loss`` variant; images whose ``valid`` is False are ignored)."""
        use_l1 = (step >= self.l1_from_step).astype(jnp.float32) if self.cfg.model.loss == "yolox" else False
        return yolox_loss(
            box_ops.flatten_heads(heads), self.grid, self.strides, batch["boxes"],
            batch["classes"], batch["box_mask"], self.num_classes,
            variant=self.cfg.model.loss, use_l1=use_l1, image_mask=batch["valid"])

    def loss_fn(self, params, model_state, batch, rng, step):
        del rng  # no stochastic layers
        x = normalize_images(batch["image"])
        heads, updates = self.model.apply({"params": params, **model_state}, x, train=True,
                                          mutable=list(model_state))
        loss, parts = self.detection_loss(heads, batch, step)
        return loss, (dict(updates), parts)

    def predict(self, variables, batch) -> dict[str, jax.Array]:
        heads = self.model.apply(variables, normalize_images(batch["image"]), train=False)
        return self.detect(heads)

    def detect(self, heads) -> dict[str, jax.Array]:
        """Raw head maps -> fixed-size detections (boxes, scores, classes, valid)."""
        boxes, obj, cls = box_ops.decode(box_ops.flatten_heads(heads), self.grid, self.strides)
        # exp(log w) of an untrained or diverging head can overflow: such boxes are dropped.
        finite = jnp.isfinite(boxes).all(-1)
        boxes = jnp.where(finite[..., None], boxes, 0.0)
        obj = jnp.where(finite, obj, -jnp.inf)
        det = postprocess(boxes, obj, cls, conf_threshold=self.cfg.model.conf_threshold,
                          iou_threshold=self.cfg.model.nms_iou,
                          max_detections=self.cfg.model.max_detections)
        return det._asdict()

    def make_pipeline(self, bundle, source, *, train, seed, data_cfg):
        return catalog.box_pipeline(bundle, source, train=train, seed=seed, data_cfg=data_cfg)

    def make_evaluator(self) -> "DetectionEvaluator":
        return DetectionEvaluator(self.cfg.data.class_names)

    def report_evaluator(self, bundle, entry):
        """On VOC-format data (``data.name`` "voc"), ``evaluate`` gives the official
        tool's number beside ours (``mAP_official_tool``)."""
        if bundle.data_config(entry).name != "voc":
            return None
        return self.make_evaluator().with_official_tool()

    @property
    def detects(self) -> bool:
        return True


class DetectionEvaluator:
    """VOC mAP@0.5 (all-point, difficult ignored) over padded batches; with
    :meth:`with_official_tool`, also the number TogetherNet's official tool gives
    (``mAP_official_tool``, for VOC-format data)."""

    def __init__(self, class_names):
        # Sources give continuous 0-based boxes (VOC's 1-based inclusive ones shifted), on
        # which plain IoU equals the VOC devkit's "+1" IoU on the raw XML values.
        self.voc = VOCEvaluator(len(class_names), class_names=tuple(class_names),
                                pixel_offset=0.0)
        self.official = None

    def with_official_tool(self) -> "DetectionEvaluator":
        """Also scores as the official tool does (:func:`metrics.detection.official_tool`:
        integer boxes, predictions truncated); returns self."""
        self.official = official_tool(self.voc.num_classes, self.voc.class_names)
        return self

    def add(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        self.voc.update(outputs, batch)
        if self.official is not None:
            self.official.update(outputs, batch)

    def compute(self) -> dict[str, float]:
        result = {"mAP": float(self.voc.compute()["mAP"])}
        if self.official is not None:
            result["mAP_official_tool"] = float(self.official.compute()["mAP"])
        return result

    def table(self) -> str:
        if self.official is None:
            return self.voc.table()
        return (self.voc.table() + "\n\nAs TogetherNet's official tool scores it (get_map.py: "
                "the XML's integer boxes, predicted boxes truncated to integers, the +1 "
                "pixel rule), for comparison with published tables:\n" + self.official.table())
