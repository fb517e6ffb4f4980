"""Depth-guided self-supervised dehazing as a trainer method: dehazing learned from
clear images alone, with depth as the guide.

The official release has inference code only; the training scheme below is the
project's, built from the paper's description. Two stages, each a run of its own
(``sdg.stage``):

``depth``
    The depth net (:class:`~adverse_vision.models.depth_dehaze.DepthNet` inside
    :class:`~adverse_vision.models.depth_dehaze.DepthDehaze`) learns the inverse depth
    of CLEAR images where a true depth exists (the embedded scenes): the target is
    ``min(1, sdg.depth_near / z)`` for the depth ``z`` in metres, the network's own
    range (its output is ``1 / max(raw, 1)``); loss ``L1 + sdg.grad_weight * L1 of the
    horizontal and vertical differences`` (DenseDepth's edge term). On a folder of real
    clear photographs there is no depth to learn from: start the dehazing stage from a
    depth run, or from the official weights (``model.init_from``), instead.
``dehaze``
    For each clear image, the TEACHER gives its inverse depth: the frozen depth net of a
    ``depth`` run (``sdg.teacher_from``), or, when none is named, the scenes' true depth
    (an exact teacher). Haze is synthesised on the device from that depth with the
    scattering model, ``I = J t + A (1 - t)``, ``t = exp(-beta d)``, ``d`` the depth
    normalised per image as the host-side haze does (:mod:`adverse_vision.ops.haze`),
    ``A`` and ``beta`` drawn per image from ``sdg.A`` and ``sdg.beta``. The whole
    network sees only the hazy image and learns

    * to invert the haze: ``sdg.rec_weight * L1 (or MSE) (dehazed, clear)``;
    * perceptually: ``sdg.perceptual_weight * sum_l L1(VGG_l(dehazed), VGG_l(clear))``
      over relu1_2, relu2_2, relu3_3 of a frozen VGG-16 (torchvision ImageNet weights
      from ``sdg.vgg_from``; off without them, since a random VGG measures nothing);
    * the teacher's depth from the hazy image (distillation):
      ``sdg.distill_weight * L1(depth_student(hazy), depth_teacher(clear))``, the
      student's depth net starting from the teacher's weights;
    * depth consistency: ``sdg.consistency_weight * L1(depth_teacher(dehazed),
      depth_teacher(clear))``, the frozen teacher run on the dehazed image (only with a
      teacher network).

    The learning rate decays along a cosine (the shared schedule).

Variants (``sdg.guidance``): ``learned`` (the method: the mix sees the depth net's
estimate), ``none`` (the mix sees the hazy image: no depth guidance) and ``true`` (the
mix sees the scenes' true depth: an oracle).

Evaluation: on the validation scenes (fogged on the host with their true depth) the PSNR
and SSIM of the dehazed and of the hazy images against the clear ones
(:class:`adverse_vision.metrics.dehaze.DehazeMeter`; ``psnr``, ``ssim``, ``psnr_input``,
``ssim_input``), over each image's real pixels. ``evaluate`` on an evaluation entry of
real pairs (``data.name = "dehaze_pairs"``: SOTS, O-HAZE, ...) runs the network on each
pair at its NATIVE size and, labelled ``*_official``, by the released test protocol
(resized to a multiple of 32), so both can be compared. The depth stage reports the
inverse depth's ``l1`` and ``delta1`` (the share of pixels within a factor 1.25).
"""

from __future__ import annotations

import logging
import re
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
from adverse_vision.methods.depth_dehaze.keys import (
    DENSENET_RULES,
    MODEL,
    MULTINET_IGNORED,
    MULTINET_RULES,
    example_inputs,
)
from adverse_vision.losses import masked_mean
from adverse_vision.metrics.dehaze import DehazeMeter
from adverse_vision.models.depth_dehaze import DepthDehaze
from adverse_vision.models.dnhl import VGG16Features
from adverse_vision.ops import haze as haze_ops

log = logging.getLogger("adverse_vision.depth_dehaze")

STAGES = ("depth", "dehaze")
ENCODERS = ("densenet169", "densenet121", "tiny")
GUIDANCE = {"learned": "depth", "none": "hazy", "true": "depth"}
#: The datasets a run trains on (clear images); real hazy/clear pairs are for evaluation.
TRAIN_DATASETS = ("scenes", "image_folder")


def _l1(a: jax.Array, b: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean absolute difference over valid images."""
    return masked_mean(jnp.mean(jnp.abs(a - b), axis=tuple(range(1, a.ndim))), valid)


def _mse(a: jax.Array, b: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean squared difference over valid images."""
    return masked_mean(jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim))), valid)


def _gradients(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return x[:, 1:] - x[:, :-1], x[:, :, 1:] - x[:, :, :-1]


@methods.register("depth_dehaze")
class DepthDehazeMethod(methods.Method):
    """A stage of depth-guided self-supervised dehazing (see the module docstring)."""

    datasets = {"scenes": catalog.scenes, "image_folder": catalog.image_folder,
                "dehaze_pairs": catalog.dehaze_pairs}
    converters = {"depth_dehaze": methods.Converter(
        MODEL, MULTINET_RULES, ignored=MULTINET_IGNORED, example_inputs=example_inputs,
        takes_classes=False, config="configs/sdg_scenes.py")}
    init_rules = MULTINET_RULES + DENSENET_RULES

    @classmethod
    def defaults(cls) -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict()
        # Official multi_Net weights, or a torchvision DenseNet's for the encoder.
        c.model.init_from = ""
        s = c.sdg = ml_collections.ConfigDict()
        s.stage = "dehaze"  # depth | dehaze
        s.encoder = "densenet169"  # densenet169 | densenet121 | tiny
        s.guidance = "learned"  # learned | none (mix sees the hazy image) | true (oracle depth)
        s.teacher_from = ""  # dehaze: a depth run (frozen teacher); "": the data's true depth
        s.depth_near = 2.0  # metres: true depth z -> inverse depth min(1, depth_near / z)
        s.A = (0.6, 1.0)  # airlight of the synthesised haze, drawn per image
        s.beta = (0.05, 0.14)  # scattering coefficient, drawn per image
        s.rec_loss = "l1"  # l1 | mse
        s.rec_weight = 1.0
        s.perceptual_weight = 0.0  # needs vgg_from
        s.vgg_from = ""  # torchvision VGG-16 ImageNet weights (.pth / .npz)
        s.distill_weight = 0.5
        s.consistency_weight = 0.1  # needs a teacher network
        s.grad_weight = 1.0  # depth stage: L1 of the inverse depth's differences
        s.drop_path = 0.1  # the dehazer's drop-path (stochastic depth) rate
        c.data = ml_collections.ConfigDict()
        c.data.layout = "auto"  # dehaze_pairs: reside | lowq | ntire | auto
        return c

    @classmethod
    def check_config(cls, cfg: ml_collections.ConfigDict) -> None:
        super().check_config(cfg)
        s = cfg.sdg
        check_choice(cfg, "sdg.stage", STAGES)
        check_choice(cfg, "sdg.encoder", ENCODERS)
        check_choice(cfg, "sdg.guidance", tuple(GUIDANCE))
        check_choice(cfg, "sdg.rec_loss", ("l1", "mse"))
        check_choice(cfg, "data.layout", ("auto", "reside", "lowq", "ntire"))
        check_ranges(cfg, (("sdg.depth_near", 0.0, None, False), ("sdg.rec_weight", 0.0, None, True),
                           ("sdg.perceptual_weight", 0.0, None, True),
                           ("sdg.distill_weight", 0.0, None, True),
                           ("sdg.consistency_weight", 0.0, None, True),
                           ("sdg.grad_weight", 0.0, None, True),
                           ("sdg.drop_path", 0.0, 1.0, True)))
        for key in ("A", "beta"):
            low, high = tuple(s[key]) if isinstance(s[key], tuple) else (s[key], s[key])
            if not 0.0 <= float(low) <= float(high):
                raise ConfigError(f"config key 'sdg.{key}' is {s[key]!r}; give a number or a "
                                  "(low, high) range with 0 <= low <= high")
        if cfg.data.name not in TRAIN_DATASETS:
            raise ConfigError(f"config key 'data.name' is {cfg.data.name!r}; this method trains "
                              f"on clear images ({TRAIN_DATASETS}); real hazy/clear pairs are "
                              "for evaluation entries (evals.<name>.data.name)")
        degrades = cfg.data.degrade if isinstance(cfg.data.degrade, tuple) else (cfg.data.degrade,)
        if any(spec.name != "none" for spec in degrades):
            raise ConfigError("config key 'data.degrade' must be {'name': 'none'}: the haze is "
                              "synthesised on the device from the teacher's depth")
        needs_depth = s.stage == "depth" or s.guidance == "true" or (
            s.stage == "dehaze" and not s.teacher_from)
        if needs_depth and cfg.data.name != "scenes":
            raise ConfigError(f"config key 'data.name' is {cfg.data.name!r}, which has no true "
                              "depth: the depth stage, the oracle guidance and a dehazing stage "
                              "without 'sdg.teacher_from' need the scenes' depth")
        if s.perceptual_weight > 0 and not s.vgg_from:
            raise ConfigError("config key 'sdg.perceptual_weight' is set but 'sdg.vgg_from' is "
                              "empty: the perceptual loss needs ImageNet VGG-16 weights")

    def __init__(self, cfg: ml_collections.ConfigDict):
        super().__init__(cfg)
        s = cfg.sdg
        self.stage, self.guidance = s.stage, s.guidance
        dtype = jnp.dtype(cfg.model.dtype)
        self.model = DepthDehaze(encoder=s.encoder, guidance=GUIDANCE[s.guidance],
                                 drop_path_rate=float(s.drop_path), dtype=dtype,
                                 remat=bool(cfg.model.remat))
        self.teacher_net = DepthDehaze(encoder=s.encoder, dtype=dtype)
        self.has_teacher = self.stage == "dehaze" and bool(s.teacher_from)
        self.vgg = VGG16Features(dtype=dtype) if s.perceptual_weight > 0 else None
        if self.stage == "depth":
            self.best_metric = "delta1"
            self.eval_keys = ("valid", "depth")
        else:
            self.best_metric = "psnr"
            self.eval_keys = ("valid", "image", "clean", "scale", "offset", "orig_size")

    # ------------------------------------------------------------------ state
    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        x = jnp.zeros((1, self.cfg.image_size, self.cfg.image_size, 3), jnp.float32)
        k_model, k_teacher, k_vgg = jax.random.split(rng, 3)
        if self.stage == "depth":
            return dict(self.model.init(k_model, x, method="estimate_depth"))
        variables = dict(self.model.init(k_model, x))
        if self.has_teacher:
            variables["teacher"] = dict(self.teacher_net.init(k_teacher, x, method="estimate_depth"))
        if self.vgg is not None:
            variables["vgg"] = dict(self.vgg.init(k_vgg, x))
        return variables

    def prepare_state(self, state, trainer):
        """The teacher (and the student's depth net) from ``sdg.teacher_from``, the VGG
        from ``sdg.vgg_from``; the optimiser state starts again."""
        s = self.cfg.sdg
        params, model_state = dict(state.params), dict(state.model_state)
        changed = False
        if self.has_teacher:
            teacher = self._load_teacher(s.teacher_from)
            model_state["teacher"] = teacher
            if self.guidance == "learned":
                params["depth"] = teacher["params"]["depth"]
                stats = dict(model_state.get("batch_stats", {}))
                stats["depth"] = teacher["batch_stats"]["depth"]
                model_state["batch_stats"] = stats
            changed = True
        if self.vgg is not None:
            model_state["vgg"] = self._load_vgg(s.vgg_from, model_state["vgg"])
            changed = True
        if not changed:
            return state
        return trainer.with_variables(state, params, model_state=model_state)

    def _load_teacher(self, path: str) -> dict[str, Any]:
        """The depth net of a depth run, or of a dehazing run with a learned depth net
        (a converted official model, say), as ``{"params", "batch_stats"}``."""
        other = workdir_lib.load_config(path)
        if other.method != self.name or not (
                other.sdg.stage == "depth" or other.sdg.guidance == "learned"):
            raise ValueError(f"config key 'sdg.teacher_from': {path} is neither a depth stage "
                             "nor a depth-guided dehazing run of this method")
        if other.sdg.encoder != self.cfg.sdg.encoder:
            raise ValueError(f"config key 'sdg.teacher_from': {path} has encoder "
                             f"{other.sdg.encoder!r}, this run {self.cfg.sdg.encoder!r}")
        _, variables, step = workdir_lib.restore_variables(path, "best")
        log.info("depth teacher from %s (%s stage, step %d)", path, other.sdg.stage, step)
        return {"params": {"depth": variables["params"]["depth"]},
                "batch_stats": {"depth": variables["batch_stats"]["depth"]}}

    @staticmethod
    def _load_vgg(path: str, current: dict[str, Any]) -> dict[str, Any]:
        from adverse_vision.convert import keys as key_rules  # pylint: disable=import-outside-toplevel
        from adverse_vision.convert import read_state_dict  # pylint: disable=import-outside-toplevel
        from adverse_vision.models.dnhl import TORCHVISION_VGG16_CONVS  # pylint: disable=import-outside-toplevel
        rules = tuple((rf"^features\.{i}\.", f"{name}/")
                      for name, i in TORCHVISION_VGG16_CONVS.items())
        state_dict = {k: v for k, v in read_state_dict(path).items()
                      if any(re.match(p, k) for p, _ in rules)}
        filled, _, _ = key_rules.convert_state_dict(state_dict, current, rules, strict=True,
                                                    name=f"sdg.vgg_from {path}")
        log.info("VGG-16 features from %s", path)
        return key_rules.unflatten(filled)

    # ------------------------------------------------------------------ data
    def make_pipeline(self, bundle, source, *, train, seed, data_cfg):
        return catalog.box_pipeline(bundle, source, train=train, seed=seed, data_cfg=data_cfg)

    # ------------------------------------------------------------------ pieces
    def true_inv_depth(self, batch) -> jax.Array:
        """The inverse depth ``min(1, depth_near / z)`` of the batch's true depth,
        (B, H, W, 1)."""
        z = jnp.maximum(batch["depth"].astype(jnp.float32), 1e-6)
        return jnp.minimum(1.0, float(self.cfg.sdg.depth_near) / z)[..., None]

    def teacher_inv_depth(self, model_state, clear01: jax.Array, batch) -> jax.Array:
        if self.has_teacher:
            return self.teacher_net.apply(model_state["teacher"], clear01, train=False,
                                          method="estimate_depth")
        return self.true_inv_depth(batch)

    def _student_variables(self, params, model_state):
        return {"params": params, "batch_stats": model_state.get("batch_stats", {})}

    # ------------------------------------------------------------------ training
    def loss_fn(self, params, model_state, batch, rng, step):
        del step
        clear = batch["clean"].astype(jnp.float32) / 255.0
        valid = batch["valid"]
        if self.stage == "depth":
            return self._depth_loss(params, model_state, clear, batch, valid)
        return self._dehaze_loss(params, model_state, clear, batch, valid, rng)

    def _depth_loss(self, params, model_state, clear, batch, valid):
        inv, updates = self.model.apply(self._student_variables(params, model_state), clear,
                                        train=True, method="estimate_depth",
                                        mutable=["batch_stats"])
        target = self.true_inv_depth(batch)
        l1 = _l1(inv, target, valid)
        (dy, dx), (ty, tx) = _gradients(inv), _gradients(target)
        edges = _l1(dy, ty, valid) + _l1(dx, tx, valid)
        loss = l1 + float(self.cfg.sdg.grad_weight) * edges
        return loss, ({**model_state, **updates}, {"depth_l1": l1, "depth_edges": edges})

    def _dehaze_loss(self, params, model_state, clear, batch, valid, rng):
        s = self.cfg.sdg
        k_a, k_b, k_drop = jax.random.split(rng, 3)
        n = clear.shape[0]
        teacher = jax.lax.stop_gradient(self.teacher_inv_depth(model_state, clear, batch))
        hazy = haze_ops.scatter(clear, 1.0 / teacher[..., 0], haze_ops.draw(k_a, n, s.A),
                                haze_ops.draw(k_b, n, s.beta))
        oracle = self.true_inv_depth(batch) if self.guidance == "true" else None
        out, updates = self.model.apply(
            self._student_variables(params, model_state), hazy, train=True, depth=oracle,
            mutable=["batch_stats"], rngs={"dropout": k_drop})
        dehazed = out["dehazed"]
        rec = (_l1 if s.rec_loss == "l1" else _mse)(dehazed, clear, valid)
        loss = float(s.rec_weight) * rec
        metrics = {"rec": rec}
        if self.guidance == "learned" and float(s.distill_weight) > 0:
            distill = _l1(out["inv_depth"], teacher, valid)
            loss = loss + float(s.distill_weight) * distill
            metrics["distill"] = distill
        if self.has_teacher and float(s.consistency_weight) > 0:
            again = self.teacher_net.apply(model_state["teacher"], jnp.clip(dehazed, 0.0, 1.0),
                                           train=False, method="estimate_depth")
            consistency = _l1(again, teacher, valid)
            loss = loss + float(s.consistency_weight) * consistency
            metrics["consistency"] = consistency
        if self.vgg is not None:
            ours, theirs = (self.vgg.apply(model_state["vgg"], x) for x in (dehazed, clear))
            perceptual = sum(_l1(a, jax.lax.stop_gradient(b), valid) for a, b in zip(ours, theirs))
            loss = loss + float(s.perceptual_weight) * perceptual
            metrics["perceptual"] = perceptual
        new_state = dict(model_state)
        if updates.get("batch_stats"):  # empty without a depth net (no guidance)
            new_state["batch_stats"] = updates["batch_stats"]
        return loss, (new_state, metrics)

    # ------------------------------------------------------------------ inference
    def run(self, variables, hazy01: jax.Array, depth: Optional[jax.Array] = None):
        """``{"dehazed": [0, 1] (B, H, W, 3), "inv_depth": (B, H, W, 1) or None}`` of hazy
        images in [0, 1] at any size."""
        student = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
        out = self.model.apply(student, hazy01, train=False, depth=depth)
        return {"dehazed": jnp.clip(out["dehazed"], 0.0, 1.0), "inv_depth": out["inv_depth"]}

    def predict(self, variables, batch) -> dict[str, jax.Array]:
        image = batch["image"].astype(jnp.float32) / 255.0
        student = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
        if self.stage == "depth":
            return {"inv_depth": self.model.apply(student, image, train=False,
                                                  method="estimate_depth")}
        oracle = self.true_inv_depth(batch) if self.guidance == "true" else None
        out = self.run(variables, image, oracle)
        if out["inv_depth"] is None:
            out.pop("inv_depth")
        return out

    def make_evaluator(self):
        if self.stage == "depth":
            return DepthEvaluator(float(self.cfg.sdg.depth_near))
        return DehazeEvaluator()

    def _real_pairs(self, bundle, entry) -> bool:
        return self.stage == "dehaze" and bundle.data_config(entry).name == "dehaze_pairs"

    def train_evaluation(self, trainer, variables, bundle, entry):
        """Real pairs (``dehaze_pairs``) at their native size, as ``evaluate`` scores
        them; anything else through the evaluation pipeline."""
        if not self._real_pairs(bundle, entry):
            return super().train_evaluation(trainer, variables, bundle, entry)
        metrics, _ = native_report(self, variables,
                                   bundle.source(bundle.cfg.evals[entry].split, entry))
        return metrics

    def report(self, trainer, variables, bundle, entry, options):
        """Real pairs (``dehaze_pairs``) are scored image by image at their native size;
        anything else through the evaluation pipeline."""
        if not self._real_pairs(bundle, entry):
            return super().report(trainer, variables, bundle, entry, options)
        return native_report(self, variables, bundle.source(bundle.cfg.evals[entry].split, entry))

    # ------------------------------------------------------------------ benchmark
    #: The image size of the speed figure of the paper's setting (VGA, batch 1).
    BENCH_SIZE = (480, 640)

    def bench_extra(self, bench, variables, batch, steps):
        """The whole network on one 480x640 image (the dehazing stage), in megapixels
        per second, with its device memory."""
        del batch
        if self.stage != "dehaze":
            return {}
        h, w = self.BENCH_SIZE
        # One image on one device: the variables come replicated over the mesh, and a
        # replicated program would compute the same image on every device.
        device = jax.local_devices()[0]
        variables = jax.device_put(jax.device_get(variables), device)
        x = jax.device_put(jnp.zeros((1, h, w, 3), jnp.float32), device)
        measured = bench.measure(xla_options.jit(lambda v, x: self.run(v, x)["dehazed"]),
                                 (variables, x), steps)
        return {"dehaze_vga_s": measured.seconds,
                "dehaze_vga_megapixels_per_s": h * w / measured.seconds / 1e6,
                "dehaze_vga_flops": measured.flops,
                "dehaze_vga_memory_gib": measured.memory_bytes / 2**30}

    @staticmethod
    def bench_lines(result):
        if "dehaze_vga_s" not in result:
            return []
        return [f"dehazing 480x640      {result['dehaze_vga_s'] * 1e3:9.1f} ms   "
                f"{result['dehaze_vga_megapixels_per_s']:8.3f} megapixels/s   "
                f"({result['dehaze_vga_flops'] / 1e9:.1f} GFLOP, "
                f"{result['dehaze_vga_memory_gib']:.2f} GiB)"]

    # ------------------------------------------------------------------ predict
    predict_inputs = ()

    def predict_fn(self, restore: bool):
        del restore
        return self.predict

    def official_contenders(self, checkout, batches):
        """The official PyTorch ``multi_Net`` of a checkout of
        DongLiangSXU/Depth-Guidance-dehazing, inference only
        (:mod:`adverse_vision.methods.depth_dehaze.official`)."""
        from adverse_vision.methods.depth_dehaze import official  # pylint: disable=import-outside-toplevel
        return official.contenders(self.cfg, checkout, batches)

    def prediction_images(self, outputs, i, to_original):
        images = {}
        if "dehazed" in outputs:
            images["_dehazed.png"] = to_original(outputs["dehazed"][i], value_range=(0.0, 1.0))
        if "inv_depth" in outputs:
            inv = np.asarray(outputs["inv_depth"][i], np.float32)
            images["_depth.png"] = to_original(colorize_depth(inv), value_range=(0.0, 1.0))
        return images


def colorize_depth(inv_depth: np.ndarray) -> np.ndarray:
    """(H, W, 1) inverse depth in (0, 1] -> (H, W, 3) colours in [0, 1]: near (1) warm,
    far (0) cool, on a log scale of the depth (1 / inverse depth), normalised per image."""
    z = np.log(1.0 / np.clip(inv_depth[..., 0], 1e-6, 1.0))
    span = z.max() - z.min()
    t = (z - z.min()) / span if span > 0 else np.zeros_like(z)
    stops = np.array([[0.99, 0.91, 0.15], [0.97, 0.45, 0.07], [0.73, 0.13, 0.33],
                      [0.33, 0.06, 0.47], [0.05, 0.03, 0.18]], np.float32)
    pos = t * (len(stops) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return stops[lo] * (1.0 - frac) + stops[lo + 1] * frac


class DehazeEvaluator:
    """PSNR / SSIM of the dehazed and hazy images against the clear ones, over each
    image's real (not letterbox) pixels."""

    def __init__(self):
        self.meter = DehazeMeter(official_protocol=False)

    def add(self, outputs, batch) -> None:
        dehazed = np.asarray(outputs["dehazed"], np.float32)
        for i in np.flatnonzero(np.asarray(batch["valid"])):
            rows, cols = _real_region(batch, i)
            self.meter.add(batch["clean"][i, rows, cols], dehazed[i, rows, cols],
                           batch["image"][i, rows, cols])

    def compute(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.meter.compute().items() if k != "images"}

    def table(self) -> str:
        return self.meter.table()


def _real_region(batch, i: int) -> tuple[slice, slice]:
    size = batch["clean"].shape[1]
    h, w = (int(v) for v in batch["orig_size"][i])
    scale = float(batch["scale"][i])
    x0, y0 = (int(round(float(v))) for v in batch["offset"][i])
    new_h, new_w = min(max(1, round(h * scale)), size), min(max(1, round(w * scale)), size)
    return slice(y0, y0 + new_h), slice(x0, x0 + new_w)


class DepthEvaluator:
    """The inverse depth against the true one: mean absolute error and ``delta1``, the
    share of pixels whose ratio to the truth is within 1.25 either way."""

    def __init__(self, depth_near: float):
        self.near = depth_near
        self.l1: list[float] = []
        self.delta1: list[float] = []

    def add(self, outputs, batch) -> None:
        inv = np.asarray(outputs["inv_depth"], np.float64)[..., 0]
        truth = np.minimum(1.0, self.near / np.maximum(np.asarray(batch["depth"], np.float64), 1e-6))
        for i in np.flatnonzero(np.asarray(batch["valid"])):
            ratio = np.maximum(inv[i] / truth[i], truth[i] / np.maximum(inv[i], 1e-9))
            self.l1.append(float(np.mean(np.abs(inv[i] - truth[i]))))
            self.delta1.append(float(np.mean(ratio < 1.25)))

    def compute(self) -> dict[str, float]:
        return {"l1": float(np.mean(self.l1)), "delta1": float(np.mean(self.delta1))}

    def table(self) -> str:
        return (f"inverse depth over {len(self.l1)} images: L1 {np.mean(self.l1):.4f}, "
                f"delta1 {np.mean(self.delta1):.4f}")


def native_report(method: DepthDehazeMethod, variables, source):
    """``(metrics, table)`` of every valid pair of ``source`` at its native size, and by
    the released protocol (both images resized to a multiple of 32) beside it."""
    from adverse_vision.metrics.dehaze import official_resize  # pylint: disable=import-outside-toplevel
    run = xla_options.jit(lambda v, x: method.run(v, x)["dehazed"])
    # Image by image on one device (replicated variables would run every image on each).
    variables = jax.device_put(jax.device_get(variables), jax.local_devices()[0])
    meter = DehazeMeter()
    for index in range(len(source)):
        record = source[index]
        if not bool(record["valid"]):
            continue
        clear, hazy = np.asarray(record["image"]), np.asarray(record["hazy"])
        dehazed = np.asarray(run(variables, hazy[None].astype(np.float32) / 255.0))[0]
        small_hazy = official_resize(hazy)
        official = np.asarray(run(variables, small_hazy[None].astype(np.float32) / 255.0))[0]
        meter.add(clear, dehazed, hazy, official=official, image_id=str(record["id"]))
    return {k: float(v) for k, v in meter.compute().items()}, meter.table()
