"""TogetherNet: joint dehazing and detection (Wang et al., CGF 2022) as a trainer method.

The network (:class:`adverse_vision.models.togethernet.TogetherNet`) sees the
degraded image of each sample (``batch["image"]``, ImageNet-normalised as for
YOLOX) and is trained on

    loss = det_weight * L_det + restore_weight * MSE(restored, clear target)

(``cfg.model.det_weight`` 0.2, ``cfg.model.restore_weight`` 0.8 in the paper).
``L_det`` is the detection loss of :mod:`adverse_vision.methods.detection`
(``cfg.model.loss``: the "togethernet" focal-objectness variant in the TogetherNet
configs, or stock "yolox"). The clear twin (``batch["clean"]``) is used only as
the reconstruction target, so any batch size on any number of devices works. (The
official training code feeds the hazy and clear batches concatenated and the
network splits them back as 4 + 4 images, which is right only for 4 image pairs
on one GPU; with several GPUs each one gets a slice and the halves misalign.)

Targets (``cfg.model.restore_target``):

* ``"signed"`` (default): the clear image in [-1, 1] (``clean / 255 * 2 - 1``),
  the range of the decoder's final tanh;
* ``"imagenet"``: the clear image ImageNet-normalised like the input, as the
  official code does (values outside the tanh range cannot be reached); for
  parity with official checkpoints.

Images whose ``valid`` is False count neither in the detection loss nor in the
MSE mean. The transformer dropout (``cfg.model.dropout``) draws from the step's
``rng``. Training metrics: ``det`` (the unweighted detection loss),
``restore_mse`` and the detection components (``iou``, ``obj``, ``cls``, ``l1``,
``num_fg``).

Evaluation: VOC mAP@0.5 of the detections plus, when the evaluation images are
degraded (``data.val_degrade`` is not "none"), the PSNR (data range 1) of the
restored image against the clear one (``psnr_restored``) and of the degraded
input against the clear one (``psnr_input``, the do-nothing baseline), each the
mean over valid images of the PSNR over the letterboxed image's real pixels (the
padding is left out). Without degradation there is no clear reference, the
decoder is skipped and only ``mAP`` is reported. The decoder costs about a quarter
of the network's FLOPs (12 of 47 GFLOPs for TogetherNet-s at 640 px), so
:meth:`TogetherNetMethod.predict` runs it only when asked (``restore=True``,
:meth:`TogetherNetMethod.predict_with_restoration`) or when the evaluation needs it.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adverse_vision import methods
from adverse_vision.config import ConfigError, check_choice, check_ranges
from adverse_vision.methods.detection import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    YOLOX_RULES,
    DetectionEvaluator,
    DetectionMethod,
    model_size,
    normalize_images,
)
from adverse_vision.metrics.image import psnr
from adverse_vision.models.togethernet import TogetherNet

#: Official TogetherNet keys -> the flax paths of
#: :class:`adverse_vision.models.togethernet.TogetherNet` (YOLOX's for the rest).
TOGETHERNET_RULES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.backbone\.deconv\.", "dtfe/deconv/"),
    (r"^backbone\.backbone\.swt1\.m\.tr\.(\d+)\.", r"dtfe/swt1/m/tr_\1/"),
    (r"^backbone\.backbone\.swt1\.", "dtfe/swt1/"),
    (r"^backbone\.(sc\d+)\.k1\.0\.", r"neck/\1/k1/"),
    (r"^backbone\.(sc\d+)\.scconv\.k2\.1\.", r"neck/\1/scconv/k2/"),
    (r"^backbone\.(sc\d+)\.scconv\.k([34])\.0\.", r"neck/\1/scconv/k\2/"),
    (r"^backbone\.(sc\d+)\.", r"neck/\1/"),
    (r"^backbone\.decoder\.conv_([123])\.0\.", r"decoder/conv_\1/deconv/"),
    (r"^backbone\.decoder\.conv_([123])\.1\.", r"decoder/conv_\1/bn/"),
    (r"^backbone\.decoder\.conv_4\.1\.", "decoder/conv_4/"),
) + YOLOX_RULES


#: PSNR cap of one image pair (dB): identical images would give inf and make the mean inf.
MAX_PSNR = 100.0


@methods.register("togethernet")
class TogetherNetMethod(DetectionMethod):
    """TogetherNet trained on the degraded image with the clear twin as the
    restoration target; evaluated by VOC mAP@0.5 and the PSNR of its restoration."""

    # The images are needed on the host for the PSNR (small at these sizes).
    eval_keys = DetectionMethod.eval_keys + ("orig_size", "image", "clean")
    converters = {"togethernet": methods.Converter(
        "adverse_vision.models.togethernet:TogetherNet", TOGETHERNET_RULES,
        config="configs/togethernet_scenes.py")}
    init_rules = TOGETHERNET_RULES

    @classmethod
    def defaults(cls) -> ml_collections.ConfigDict:
        c = super().defaults()
        # The joint loss: det_weight x detection + restore_weight x MSE(restored, clear).
        c.model.det_weight = 0.2
        c.model.restore_weight = 0.8
        c.model.restore_target = "signed"  # clear image in [-1, 1]; "imagenet": the official quirk
        c.model.dropout = 0.1  # transformer dropout in the DTFE
        return c

    @classmethod
    def check_config(cls, cfg: ml_collections.ConfigDict) -> None:
        super().check_config(cfg)
        check_choice(cfg, "model.restore_target", ("signed", "imagenet"))
        check_ranges(cfg, (("model.det_weight", 0.0, None, True),
                           ("model.restore_weight", 0.0, None, True)))
        if not 0.0 <= float(cfg.model.dropout) < 1.0:
            raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got "
                              f"{cfg.model.dropout!r}")

    def make_model(self) -> TogetherNet:
        return TogetherNet(num_classes=self.num_classes, size=model_size(self.cfg),
                           act=self.cfg.model.act, dtype=jnp.dtype(self.cfg.model.dtype),
                           dropout_rate=float(self.cfg.model.dropout),
                           remat=bool(self.cfg.model.remat))

    # ------------------------------------------------------------------ targets
    def restore_target(self, clean: jax.Array) -> jax.Array:
        """uint8 clear images -> the float32 target of the decoder output."""
        if self.cfg.model.restore_target == "imagenet":
            return normalize_images(clean)
        return clean.astype(jnp.float32) * (2.0 / 255.0) - 1.0

    def restored_image(self, restored: jax.Array) -> jax.Array:
        """The decoder output -> the RGB image in [-1, 1] (``(x + 1) / 2`` in [0, 1]),
        undoing the ImageNet normalisation of the "imagenet" target."""
        if self.cfg.model.restore_target == "imagenet":
            unit = restored * jnp.asarray(IMAGENET_STD) + jnp.asarray(IMAGENET_MEAN)
            return jnp.clip(unit, 0.0, 1.0) * 2.0 - 1.0
        return jnp.clip(restored, -1.0, 1.0)

    # ------------------------------------------------------------------ training
    def loss_fn(self, params, model_state, batch, rng, step):
        cfg = self.cfg.model
        restore = float(cfg.restore_weight) > 0
        rngs = {"dropout": rng} if float(cfg.dropout) > 0 else {}
        out, updates = self.model.apply(
            {"params": params, **model_state}, normalize_images(batch["image"]), train=True,
            restore=restore, mutable=list(model_state), rngs=rngs)
        det, parts = self.detection_loss(out["heads"], batch, step)
        loss = float(cfg.det_weight) * det
        metrics = dict(parts, det=det)
        if restore:
            valid = batch["valid"].astype(jnp.float32)
            err = jnp.square(out["restored"] - self.restore_target(batch["clean"]))
            per_image = jnp.mean(err, axis=(1, 2, 3))
            mse = jnp.sum(per_image * valid) / jnp.maximum(jnp.sum(valid), 1.0)
            loss = loss + float(cfg.restore_weight) * mse
            metrics["restore_mse"] = mse
        return loss, (dict(updates), metrics)

    # ------------------------------------------------------------------ inference
    @property
    def eval_restore(self) -> bool:
        """Whether evaluation restores images: only when an evaluation degrades them (the
        run's ``data.val_degrade`` or an ``evals`` entry's own), since the clear twin is
        then a reference (read when ``predict`` is traced); on an evaluation without
        degradation the input's PSNR is then the cap, :data:`MAX_PSNR`. Never without
        a restoration loss (``model.restore_weight`` 0): the decoder is not trained."""
        if float(self.cfg.model.restore_weight) <= 0:
            return False
        specs = [self.cfg.data.val_degrade] + [entry.data.val_degrade for entry in
                                               self.cfg.evals.values() if "val_degrade" in entry.data]
        return any(spec.name != "none" for value in specs
                   for spec in (value if isinstance(value, tuple) else (value,)))

    def predict(self, variables, batch, restore: Optional[bool] = None) -> dict[str, jax.Array]:
        """Detections (``boxes``, ``scores``, ``classes``, ``valid``) of the degraded
        ``batch["image"]``, plus ``restored``, the float32 (B, S, S, 3) RGB image in
        [-1, 1] (letterboxed like the input), when ``restore`` (default:
        :attr:`eval_restore`)."""
        if restore is None:
            restore = self.eval_restore
        out = self.model.apply(variables, normalize_images(batch["image"]), train=False,
                               restore=bool(restore))
        result = self.detect(out["heads"])
        if restore:
            result["restored"] = self.restored_image(out["restored"])
        return result

    def predict_with_restoration(self, variables, batch) -> dict[str, jax.Array]:
        """:meth:`predict` with the restored image, whatever the evaluation needs."""
        return self.predict(variables, batch, restore=True)

    #: ``predict`` writes the restored image (``_restored.png``) unless ``--norestore``.
    restores = True

    def predict_fn(self, restore: bool):
        return functools.partial(self.predict, restore=bool(restore))

    def prediction_images(self, outputs, i, to_original):
        if "restored" not in outputs:
            return {}
        return {"_restored.png": to_original(outputs["restored"][i], value_range=(-1.0, 1.0))}

    def make_evaluator(self) -> "TogetherNetEvaluator":
        return TogetherNetEvaluator(self.cfg.data.class_names)

    def official_contenders(self, checkout, batches):
        """The official PyTorch network of a checkout of yz-wang/TogetherNet
        (:mod:`adverse_vision.methods.togethernet_official`)."""
        from adverse_vision.methods import togethernet_official  # pylint: disable=import-outside-toplevel
        return togethernet_official.contenders(self.cfg, checkout, batches)


def real_region(scale: float, offset, orig_size, size: int) -> tuple[slice, slice]:
    """Rows and columns of the real pixels of a letterboxed ``size`` x ``size`` image
    (``augment.letterbox`` places the resized image at the integer ``offset``)."""
    h, w = int(orig_size[0]), int(orig_size[1])
    new_h = min(max(1, int(round(h * float(scale)))), size)
    new_w = min(max(1, int(round(w * float(scale)))), size)
    x0, y0 = int(round(float(offset[0]))), int(round(float(offset[1])))
    x0, y0 = min(max(x0, 0), size - 1), min(max(y0, 0), size - 1)
    return slice(y0, min(y0 + new_h, size)), slice(x0, min(x0 + new_w, size))


class TogetherNetEvaluator(DetectionEvaluator):
    """VOC mAP@0.5 plus the mean PSNR of restored and of input images against the
    clear ones (when the outputs carry ``restored``).

    ``compute()`` -> ``{"mAP", "psnr_restored", "psnr_input"}`` (the PSNR entries
    only when restored images were added), each PSNR the mean over valid images,
    in dB at data range 1, over the real (unpadded) pixels, capped at ``MAX_PSNR``.
    """

    def __init__(self, class_names):
        super().__init__(class_names)
        self.psnr_restored: list[float] = []
        self.psnr_input: list[float] = []

    def add(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        super().add(outputs, batch)
        if "restored" not in outputs:
            return
        restored = (np.asarray(outputs["restored"], np.float64) + 1.0) * 0.5
        image = np.asarray(batch["image"], np.float64) / 255.0
        clean = np.asarray(batch["clean"], np.float64) / 255.0
        valid = np.asarray(batch["valid"], bool)
        size = clean.shape[1]
        for i in np.flatnonzero(valid):
            rows, cols = real_region(batch["scale"][i], batch["offset"][i],
                                     batch["orig_size"][i], size)
            ref = clean[i, rows, cols]
            self.psnr_restored.append(min(psnr(ref, restored[i, rows, cols], 1.0), MAX_PSNR))
            self.psnr_input.append(min(psnr(ref, image[i, rows, cols], 1.0), MAX_PSNR))

    def compute(self) -> dict[str, float]:
        result = super().compute()
        if self.psnr_restored:
            result["psnr_restored"] = float(np.mean(self.psnr_restored))
            result["psnr_input"] = float(np.mean(self.psnr_input))
        return result

    def table(self) -> str:
        text = super().table()
        if self.psnr_restored:
            text += (f"\nPSNR vs clear images ({len(self.psnr_restored)} images): "
                     f"restored {np.mean(self.psnr_restored):.2f} dB, "
                     f"input {np.mean(self.psnr_input):.2f} dB")
        return text


__all__ = ["MAX_PSNR", "TogetherNetEvaluator", "TogetherNetMethod", "real_region"]
