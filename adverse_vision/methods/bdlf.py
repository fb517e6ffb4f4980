"""BDLF: infrared-visible fusion trained as a bi-level problem (Liu et al., IJCAI 2023).

The upper level is the fusion network theta (:class:`adverse_vision.models.bdlf.FusionNet`);
the lower levels are the networks that learn from its output, one per branch of
``cfg.bdlf.branches``:

``critic``
    the 1x1 pixel critic omega_d; lower loss ``f_d = 0.5 (E D(u) - E D(M))``
    (Wasserstein, real = the saliency-weighted target ``M = s IR + (1 - s) Y_vis``,
    fake = the fused luminance ``u``); upper loss ``F_d = |u - M|_1 + 1.1 (1 -
    SSIM(u, M)) + 0.5 (-E D(u))`` (``bdlf.ssim_weight``, ``bdlf.fusion_adv_weight``).
``detection``
    the project's YOLOX omega_s on the fused colour image
    (:func:`adverse_vision.ops.color.fused_color`, ImageNet-normalised); lower loss the
    detection loss, upper loss the detection loss plus ``0.01 (-E D(u))``
    (``bdlf.task_adv_weight``; the critic term only when there is a critic branch).
``segmentation``
    a DeepLab-LargeFOV segmenter omega_g on the fused colour image, per-pixel
    cross-entropy (label 255 ignored), upper loss plus the same critic term.

Each iteration (one jitted step) every lower-level network takes a step on its own
loss at the current theta (its gradient stops at the fused image). Every
``bdlf.upper_every`` iterations the fusion network takes a step on the aggregated
first-order hypergradient: per branch ``G_k = grad_theta F_k - (<grad_omega F_k,
grad_omega f_k> / |grad_omega f_k|^2) grad_theta f_k``, with ``F_k`` on the upper
batch (drawn from the held-out part of the training split, ``batch["upper/..."]``)
and ``f_k`` on the lower batch, combined by ``bdlf.aggregation``. The fusion network
runs once on each batch: :func:`adverse_vision.bilevel.value_and_hypergradient` takes
the hypergradient at the fused images ``(u_up, u_low)`` and one VJP through the
fusion network carries it to theta (the chain rule makes this the same ``G_k``;
:func:`adverse_vision.bilevel.aggregate_through` pulls back the weighted sum once, or
each branch for the gradient-norm rule). The trainer compiles two programs, the
iteration with the hypergradient and the one without, and picks one on the host
(:meth:`BDLFMethod.step_variant`), so the hypergradient costs nothing on the other
iterations.

Differences from the official code, on purpose: each branch keeps its own
hypergradient until the weighted sum (the official code's aliasing collapses the
update to ``0.5 (G_d + G_s)``); the correction term is not multiplied by the
learning rate; ``grad_theta f_k`` is the gradient of the branch's own lower loss
(the official critic branch differentiates the generator loss there); the fused
colour image is min-max normalised per image (``bdlf.minmax="batch"`` gives the
official whole-batch normalisation).

Baselines by ``bdlf.mode``, trained with the same task networks and steps:
``fusion_loss`` (theta steps every iteration on the fusion loss alone: no critic,
no hypergradient), ``visible`` and ``infrared`` (no fusion: the task networks see
the visible image, or the infrared image repeated to three channels).

Evaluation: the fusion metrics (:mod:`adverse_vision.metrics.fusion`) of the fused
luminance against the infrared image and the visible luminance, as 8-bit grey
images, over the real (non-letterbox) pixels of each image (images whose real part
is under ``metrics.fusion.MIN_SIZE`` pixels on a side are left out and counted); VOC
mAP@0.5 of the detector and mIoU of the segmenter on the fused colour images. In the ``visible`` and
``infrared`` modes the "fused" image scored is that input itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from adverse_vision import bilevel, methods, optim
from adverse_vision import workdir as workdir_lib
from adverse_vision import xla_options
from adverse_vision.config import ConfigError, check_choice, check_ranges
from adverse_vision.data import catalog, held_out
from adverse_vision.losses.cross_entropy import IGNORE_LABEL, pixel_cross_entropy
from adverse_vision.losses.fusion import critic_loss, fusion_loss, generator_loss
from adverse_vision.methods.detection import (
    DetectionEvaluator,
    DetectionMethod,
    check_yolox,
    normalize_images,
    yolox_defaults,
)
from adverse_vision.metrics.fusion import FUSION_METRICS, MIN_SIZE, FusionMeter
from adverse_vision.metrics.segmentation import SegmentationMeter
from adverse_vision.models.bdlf import FusionNet, PixelCritic
from adverse_vision.models.dnhl import DeepLabLargeFOV, upsample_logits
from adverse_vision.ops.color import LUMA_WEIGHTS, fused_color, luminance
from adverse_vision.timing import Measured

log = logging.getLogger("adverse_vision.bdlf")

UPPER_PREFIX = held_out.UPPER_PREFIX
MODES = ("bilevel", "fusion_loss", "visible", "infrared")
BRANCHES = ("critic", "detection", "segmentation")
# BDLF: the fusion network and the critic under the project's names or the official
# training checkpoint's (``Network_IJCAI``: enhance_net, discriminator, denoise_net).
BDLF_RULES: tuple[tuple[str, str], ...] = (
    (r"^(fusion|enhance_net)\.", "fusion/"),
    (r"^(critic|discriminator)\.net\.(\d+)\.", r"critic/net_\2/"),
)
#: The official checkpoint's FCOS detector, which the project replaces by its own task networks.
BDLF_IGNORED: tuple[str, ...] = (r"^denoise_net\.",)

#: Parameter group of each branch's network.
GROUPS = {"critic": "critic", "detection": "detector", "segmentation": "segmenter"}


def defaults() -> ml_collections.ConfigDict:
    """BDLF's keys: the ``bdlf`` group and the ``model`` keys of its YOLOX detector."""
    c = yolox_defaults()
    b = c.bdlf = ml_collections.ConfigDict()
    b.mode = "bilevel"  # bilevel | fusion_loss (theta on the fusion loss alone) | visible | infrared
    b.branches = ("critic", "detection")  # lower levels; add "segmentation" with masks
    b.aggregation = "random"  # random (softmax of N(0, 1) per hyper-step) | gradnorm | fixed
    b.aggregation_weights = ()  # fixed: one weight per branch, in branch order
    b.upper_every = 10  # the fusion network steps every this many iterations
    b.upper_fraction = 0.1  # training samples held out for the upper level
    b.hyper_eps = 1e-8  # relative: eps |grad_theta f|^2 is added to |grad_omega f|^2
    b.fusion_width = 1.0  # channel multiplier of the fusion network
    b.critic_width = 1.0
    b.seg_classes = ("background", "person", "bicycle", "car", "motorbike", "bus")
    b.seg_width = 1.0  # DeepLab-LargeFOV segmenter of the segmentation branch
    b.seg_fc = 0  # fc6/fc7 features (0: 1024)
    b.seg_dropout = 0.5
    b.ssim_weight = 1.1  # fusion loss |u - M|_1 + w (1 - SSIM(u, M))
    b.fusion_adv_weight = 0.5  # generator weight in the critic branch's upper loss
    b.task_adv_weight = 0.01  # generator weight in the task branches' upper losses
    b.minmax = "image"  # fused colour normalisation: image | batch (official) | none
    b.fusion_optimizer = "sgd"  # sgd | adam, for the fusion network (theta)
    b.fusion_lr = 1e-4
    b.fusion_weight_decay = 1e-3
    b.fusion_from = ""  # a "bdlf" workdir whose fusion network starts this run
    b.detector_from = ""  # a "detection" (YOLOX) workdir whose detector starts this run's
    b.eval_images = 0  # validation images scored by the fusion metrics (0: all)
    return c


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first unusable ``bdlf`` (or detector) key."""
    b = cfg.bdlf
    check_choice(cfg, "bdlf.mode", MODES)
    check_choice(cfg, "bdlf.aggregation", bilevel.AGGREGATIONS)
    check_choice(cfg, "bdlf.minmax", ("image", "batch", "none"))
    check_choice(cfg, "bdlf.fusion_optimizer", ("sgd", "adam"))
    branches = tuple(b.branches)
    unknown = [x for x in branches if x not in BRANCHES]
    if unknown or len(set(branches)) != len(branches):
        raise ConfigError(f"config key 'bdlf.branches' is {branches!r}; use distinct names from "
                          f"{BRANCHES}")
    if not any(x in branches for x in ("detection", "segmentation")) and b.mode in ("visible", "infrared"):
        raise ConfigError(f"config key 'bdlf.branches' is {branches!r}: mode {b.mode!r} trains a "
                          "task network, add 'detection' or 'segmentation'")
    if b.mode == "bilevel" and not branches:
        raise ConfigError("config key 'bdlf.branches' is empty: the bi-level mode needs a lower level")
    if b.aggregation == "fixed" and len(tuple(b.aggregation_weights)) != len(branches):
        raise ConfigError(f"config key 'bdlf.aggregation_weights' has {len(tuple(b.aggregation_weights))} "
                          f"weights for {len(branches)} branches {branches}")
    check_ranges(cfg, (("bdlf.upper_every", 1, None, True), ("bdlf.upper_fraction", 0.0, 1.0, False),
                       ("bdlf.hyper_eps", 0.0, None, True), ("bdlf.fusion_lr", 0.0, None, False),
                       ("bdlf.fusion_weight_decay", 0.0, None, True),
                       ("bdlf.fusion_width", 0.0, None, False), ("bdlf.critic_width", 0.0, None, False),
                       ("bdlf.seg_width", 0.0, None, False), ("bdlf.eval_images", 0, None, True)))
    if not float(b.upper_fraction) < 1.0:
        raise ConfigError(f"config key 'bdlf.upper_fraction' must be in (0, 1), got {b.upper_fraction!r}")
    if "segmentation" in branches and len(tuple(b.seg_classes)) < 2:
        raise ConfigError("config key 'bdlf.seg_classes' needs at least two class names")
    if "detection" in branches:
        check_yolox(cfg)


def _dtype(cfg):
    return jnp.dtype(cfg.model.dtype)


class _Entries(Mapping):
    """The entries of ``batch`` under ``prefix`` (named without it); with an empty
    prefix, those under no upper-level prefix. Values are read from ``batch`` when
    asked for."""

    def __init__(self, batch: Mapping[str, Any], prefix: str):
        self._batch, self._prefix = batch, prefix
        self._names = [k[len(prefix):] for k in batch
                       if (k.startswith(prefix) if prefix else not k.startswith(UPPER_PREFIX))]

    def __getitem__(self, key: str) -> Any:
        if key not in self._names:
            raise KeyError(key)
        return self._batch[self._prefix + key]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@methods.register("bdlf")
class BDLFMethod(methods.Method):
    """BDLF as a trainer method (see the module docstring)."""

    #: data.name -> source: the scenes (with their thermal image and masks), M3FD,
    #: MFNet, folders of infrared/visible pairs.
    datasets = {"scenes": catalog.scenes, "m3fd": catalog.m3fd, "mfnet": catalog.mfnet,
                "fusion_folder": catalog.fusion_folder}
    eval_keys = ("boxes", "classes", "box_mask", "difficult", "valid", "scale", "offset",
                 "orig_size", "image", "thermal", "mask")
    converters = {"bdlfusion": methods.Converter(
        "adverse_vision.models.bdlf:BDLFusion", BDLF_RULES, ignored=BDLF_IGNORED,
        takes_classes=False,  # called with the infrared and the visible luminance image
        example_inputs=lambda side: (np.zeros((1, side, side, 1), np.float32),) * 2)}
    predict_inputs = ("thermal",)
    #: Our side against the official code: the fusion network alone (``own_contenders``).
    contender_tasks = ("fusion train step", "fusion inference")

    @classmethod
    def defaults(cls) -> ml_collections.ConfigDict:
        return defaults()

    @classmethod
    def check_config(cls, cfg: ml_collections.ConfigDict) -> None:
        super().check_config(cfg)
        check_config(cfg)

    def __init__(self, cfg: ml_collections.ConfigDict):
        super().__init__(cfg)
        b = cfg.bdlf
        self.mode = b.mode
        self.fuses = self.mode in ("bilevel", "fusion_loss")
        branches = tuple(b.branches)
        if not self.fuses:
            branches = tuple(x for x in branches if x != "critic")
        if self.mode == "fusion_loss":
            branches = tuple(x for x in branches if x != "critic")
        self.branches = branches
        self.upper_every = int(b.upper_every) if self.mode == "bilevel" else 1
        dtype = _dtype(cfg)
        self.fusion = FusionNet(width=float(b.fusion_width), dtype=dtype,
                                remat=bool(cfg.model.remat))
        self.critic = PixelCritic(width=float(b.critic_width), dtype=dtype)
        self.det = DetectionMethod(cfg) if "detection" in branches else None
        self.seg_classes = tuple(b.seg_classes)
        self.segmenter = DeepLabLargeFOV(
            num_classes=len(self.seg_classes), width=float(b.seg_width),
            fc_features=int(b.seg_fc) or 1024, dropout_rate=float(b.seg_dropout),
            dtype=dtype) if "segmentation" in branches else None
        if self.det is not None:
            self.best_metric = "mAP"
        elif self.segmenter is not None:
            self.best_metric = "miou"
        else:
            self.best_metric = "Qabf"

    # ------------------------------------------------------------------ state
    @property
    def groups(self) -> tuple[str, ...]:
        """The parameter groups of the run, upper level first."""
        return (("fusion",) if self.fuses else ()) + tuple(GROUPS[b] for b in self.branches)

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        s = self.cfg.image_size
        keys = dict(zip(("fusion", "critic", "detector", "segmenter"), jax.random.split(rng, 4)))
        params, stats = {}, {}
        gray = jnp.zeros((1, s, s, 1), jnp.float32)
        rgb = jnp.zeros((1, s, s, 3), jnp.float32)
        for group in self.groups:
            if group == "fusion":
                v = self.fusion.init(keys[group], gray, gray)
            elif group == "critic":
                v = self.critic.init(keys[group], gray, train=False)
            elif group == "detector":
                v = self.det.init_variables(keys[group])
            else:
                v = self.segmenter.init({"params": keys[group]}, rgb, train=False)
            v = dict(v)
            params[group] = v.pop("params")
            if "batch_stats" in v:
                stats[group] = v["batch_stats"]
        return {"params": params, "batch_stats": stats}

    def make_optimizer(self) -> tuple[optax.GradientTransformation, optax.Schedule]:
        """The lower-level networks on ``cfg.optimizer``; the fusion network on its own
        optimiser (``bdlf.fusion_*``), stepping every ``upper_every`` iterations."""
        b = self.cfg.bdlf
        lower_tx, schedule = optim.make_optimizer(self.cfg)
        if b.fusion_optimizer == "adam":
            fusion_tx = optax.adamw(b.fusion_lr, weight_decay=b.fusion_weight_decay,
                                    mask=optim.decay_mask)
        else:  # weight decay added to the gradient, as torch.optim.SGD does
            fusion_tx = optax.chain(optax.add_decayed_weights(b.fusion_weight_decay), optax.sgd(b.fusion_lr))
        k = self.upper_every
        if k > 1:
            fusion_tx = optax.conditionally_mask(fusion_tx, lambda count: count % k == 0)

        def labels(params):
            return {g: jax.tree.map(lambda _, g=g: "fusion" if g == "fusion" else "lower", p)
                    for g, p in params.items()}

        return optax.multi_transform({"fusion": fusion_tx, "lower": lower_tx}, labels), schedule

    def prepare_state(self, state, trainer):
        """Starts the fusion network from ``bdlf.fusion_from`` (a BDLF workdir) and the
        detector from ``bdlf.detector_from`` (a YOLOX detection workdir: a pretrained
        detector, as the paper's) when set."""
        if self.cfg.bdlf.fusion_from:
            state = self._fusion_from(state, trainer, self.cfg.bdlf.fusion_from)
        if self.cfg.bdlf.detector_from:
            state = self._detector_from(state, trainer, self.cfg.bdlf.detector_from)
        return state

    def _fusion_from(self, state, trainer, src):
        if not self.fuses:
            raise ValueError(f"config key 'bdlf.fusion_from' is set but mode {self.mode!r} has no "
                             "fusion network")
        other = workdir_lib.load_config(src)
        if other.method != "bdlf" or float(other.bdlf.fusion_width) != float(self.cfg.bdlf.fusion_width):
            raise ValueError(f"config key 'bdlf.fusion_from': {src} is not a BDLF run with "
                             f"bdlf.fusion_width={self.cfg.bdlf.fusion_width}")
        _, variables, step = workdir_lib.restore_variables(src, "best")
        if "fusion" not in variables["params"]:
            raise ValueError(f"config key 'bdlf.fusion_from': {src} has no fusion network")
        params = dict(state.params)
        params["fusion"] = variables["params"]["fusion"]
        log.info("fusion network from %s (step %d)", src, step)
        return trainer.with_variables(state, params)

    def _detector_from(self, state, trainer, src):
        """The detector's parameters and BatchNorm statistics from the best checkpoint of
        a detection run of the same YOLOX (size and classes)."""
        key = "config key 'bdlf.detector_from'"
        if self.det is None:
            raise ValueError(f"{key} is set but bdlf.branches {tuple(self.branches)} has no "
                             "detection branch")
        other = workdir_lib.load_config(src)
        if other.method != "detection":
            raise ValueError(f"{key}: {src} is a {other.method!r} run, not a 'detection' (YOLOX) run")
        _, variables, step = workdir_lib.restore_variables(src, "best")
        mine = {"params": state.params["detector"],
                "batch_stats": state.model_state.get("batch_stats", {}).get("detector", {})}
        theirs = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
        try:
            workdir_lib.check_fit(theirs, mine, "it")
        except ValueError as e:
            raise ValueError(f"{key}: the detector of {src} (model.size={other.model.size!r}, "
                             f"{len(other.data.class_names)} classes) is not this run's "
                             f"(model.size={self.cfg.model.size!r}, "
                             f"{len(self.cfg.data.class_names)} classes): {e}") from None
        params = dict(state.params)
        params["detector"] = theirs["params"]
        model_state = dict(state.model_state)
        model_state["batch_stats"] = {**model_state.get("batch_stats", {}),
                                      "detector": theirs["batch_stats"]}
        log.info("detector from %s (step %d)", src, step)
        return trainer.with_variables(state, params, model_state=model_state)

    # ------------------------------------------------------------------ data
    def make_pipeline(self, bundle, source, *, train, seed, data_cfg):
        """Box batches with the saliency-weighted fusion target's weights."""
        return catalog.box_pipeline(bundle, source, train=train, seed=seed, data_cfg=data_cfg,
                                    saliency=True)

    def train_iterator(self, bundle):
        """Bi-level runs pair each batch with a batch of the held-out part of the training
        split (``batch["upper/<key>"]``), drawn anew every ``bdlf.upper_every`` batches."""
        if self.mode != "bilevel":
            return super().train_iterator(bundle)
        lower, upper = bundle.held_out_split(float(self.cfg.bdlf.upper_fraction))
        seed = int(self.cfg.seed)
        return held_out.PairedIterator(
            iter(bundle.pipeline("train", True, source=lower, seed=seed)),
            iter(bundle.pipeline("train", True, source=upper, seed=seed + 1)),
            int(self.cfg.bdlf.upper_every))

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _sources(batch):
        vis = batch["image"].astype(jnp.float32) / 255.0
        ir = batch["thermal"].astype(jnp.float32) / 255.0
        y = luminance(vis)
        return vis, ir, y

    def _target(self, batch):
        _, ir, y = self._sources(batch)
        s = batch["saliency"].astype(jnp.float32)
        return s * ir + (1.0 - s) * y

    def _fuse(self, theta, batch):
        _, ir, y = self._sources(batch)
        return self.fusion.apply({"params": theta}, ir, y)

    def _task_image(self, fused, batch):
        """RGB in [0, 1] that the task networks see."""
        vis, ir, _ = self._sources(batch)
        if self.mode == "visible":
            return vis
        if self.mode == "infrared":
            return jnp.repeat(ir, 3, axis=-1)
        return fused_color(fused, vis, self.cfg.bdlf.minmax)

    def _single(self, fused, batch):
        """The one-channel image scored by the fusion metrics."""
        if self.mode == "visible":
            return self._sources(batch)[2]
        if self.mode == "infrared":
            return self._sources(batch)[1]
        return fused

    def _critic(self, omega, stats, x):
        out, upd = self.critic.apply({"params": omega, "batch_stats": stats}, x, train=True,
                                     mutable=["batch_stats"])
        return out, upd["batch_stats"]

    def _branch_loss(self, branch, omega, stats, fused, batch, rng, step):
        """(loss, (new stats, metrics)) of one lower level on ``fused``."""
        if branch == "critic":
            d_fake, stats = self._critic(omega, stats, fused)
            d_real, stats = self._critic(omega, stats, self._target(batch))
            loss = critic_loss(d_fake, d_real, batch["valid"])
            return loss, (stats, {"critic": loss})
        image = self._task_image(fused, batch)
        if branch == "detection":
            heads, upd = self.det.model.apply({"params": omega, "batch_stats": stats},
                                              normalize01(image), train=True, mutable=["batch_stats"])
            loss, parts = self.det.detection_loss(heads, batch, step)
            return loss, (upd["batch_stats"], {"det": loss, **{f"det_{k}": v for k, v in parts.items()}})
        logits = self.segmenter.apply({"params": omega}, image, train=True, rngs={"dropout": rng})
        loss = pixel_cross_entropy(logits, batch["mask"], batch["valid"])
        return loss, (stats, {"seg": loss})

    def _upper_loss(self, branch, fused, omega, params, stats, batch, rng, step):
        """F_k on the upper batch's fused image (BatchNorm in training mode, its
        statistics discarded)."""
        adv = 0.0
        if "critic" in self.branches:
            critic_params = omega if branch == "critic" else jax.lax.stop_gradient(params["critic"])
            d_fake, _ = self._critic(critic_params, stats.get("critic", {}), fused)
            adv = generator_loss(d_fake, batch["valid"])
        if branch == "critic":
            loss, _ = fusion_loss(fused, self._target(batch), batch["valid"], self.cfg.bdlf.ssim_weight)
            return loss + self.cfg.bdlf.fusion_adv_weight * adv
        task, _ = self._branch_loss(branch, omega, stats.get(GROUPS[branch], {}), fused, batch, rng, step)
        return task + self.cfg.bdlf.task_adv_weight * adv

    def _lower_loss(self, branch, fused, omega, stats, batch, rng, step):
        """f_k on the lower batch's fused image."""
        loss, _ = self._branch_loss(branch, omega, stats.get(GROUPS[branch], {}), fused, batch, rng, step)
        return loss

    # ------------------------------------------------------------------ training
    def step_variant(self, step: int) -> bool:
        """Whether iteration ``step`` takes the fusion network's step (the trainer
        compiles one program per value)."""
        return self.mode == "bilevel" and step % self.upper_every == 0

    def grads_fn(self, params, model_state, batch, rng, step, variant: Optional[bool] = None):
        """``(loss, grads, model_state, metrics)`` of one iteration (see the module
        docstring). ``variant``: :meth:`step_variant` of the iteration, known on the
        host; None decides from the traced ``step`` with a ``lax.cond`` (correct, but
        XLA:CPU runs a conditional's branches many times slower)."""
        # Views, not copies: an entry is read only where it is used, so the trainer sends
        # the upper-level batch to the devices only for the steps that read it.
        lower, upper = _Entries(batch, ""), _Entries(batch, UPPER_PREFIX)
        stats = model_state.get("batch_stats", {})
        theta = params.get("fusion")
        rngs = dict(zip(self.branches + ("aggregate", "upper"), jax.random.split(rng, len(self.branches) + 2)))
        metrics: dict[str, jax.Array] = {}

        def lower_levels(theta, omegas):
            fused = self._fuse(theta, lower) if self.fuses else None
            total = jnp.zeros((), jnp.float32)
            new_stats = dict(stats)
            parts: dict[str, jax.Array] = {}
            if self.mode == "fusion_loss":
                total, fparts = fusion_loss(fused, self._target(lower), lower["valid"],
                                            self.cfg.bdlf.ssim_weight)
                parts.update(fusion=total, fusion_l1=fparts["l1"], fusion_ssim=fparts["ssim"])
            task_input = jax.lax.stop_gradient(fused) if fused is not None else None
            for branch in self.branches:
                group = GROUPS[branch]
                loss, (st, m) = self._branch_loss(branch, omegas[group], stats.get(group, {}),
                                                  task_input, lower, rngs[branch], step)
                total = total + loss
                parts.update(m)
                if st:
                    new_stats[group] = st
            return total, (new_stats, parts)

        omegas = {g: params[g] for g in self.groups if g != "fusion"}
        argnums = (0, 1) if self.mode == "fusion_loss" else 1
        (loss, (new_stats, parts)), grads = jax.value_and_grad(lower_levels, argnums=argnums, has_aux=True)(
            theta, omegas)
        metrics.update(parts)
        if self.mode == "fusion_loss":
            g_theta, g_omegas = grads
        else:
            g_theta, g_omegas = None, grads
        out = dict(g_omegas)
        if self.mode == "bilevel":
            g_theta, hyper_metrics = self._hyper_step(params, stats, lower, upper, rngs, step, variant)
            metrics.update(hyper_metrics)
        if self.fuses:
            out["fusion"] = g_theta
        model_state = dict(model_state, batch_stats=new_stats)
        return loss, out, model_state, metrics

    def _hyper_step(self, params, stats, lower, upper, rngs, step, variant):
        """The aggregated hypergradient on iterations ``step % upper_every == 0``, else zeros."""
        theta = params["fusion"]
        b = self.cfg.bdlf
        # Relative regulariser of the correction (bilevel.correction_coefficient); the node
        # sits at the fused images, so it is weighed against |grad_u f|^2 there.
        eps = float(b.hyper_eps)

        def compute(_):
            # The node sits at the fused images: theta's hypergradient is the chain rule
            # through the fusion network (one VJP) of the hypergradient at (u_up, u_low),
            # identical to taking it at theta, with the fusion network run once per batch.
            fused, pullback = jax.vjp(lambda t: (self._fuse(t, upper), self._fuse(t, lower)), theta)
            cotangents, values = [], []
            for branch in self.branches:
                group = GROUPS[branch]

                def upper_loss(u, w, branch=branch):
                    return self._upper_loss(branch, u[0], w, params, stats, upper, rngs["upper"], step)

                def lower_loss(u, w, branch=branch):
                    return self._lower_loss(branch, u[1], w, stats, lower, rngs[branch], step)

                value, g = bilevel.value_and_hypergradient(upper_loss, lower_loss, fused,
                                                           params[group], eps)
                cotangents.append(g)
                values.append(value)
            total, w = bilevel.aggregate_through(
                lambda c: pullback(c)[0], cotangents, b.aggregation, key=rngs["aggregate"],
                weights=tuple(b.aggregation_weights) or None)
            return total, (w, jnp.stack(values), bilevel.tree_norm(total))

        def skip(_):
            k = len(self.branches)
            return (jax.tree.map(jnp.zeros_like, theta),
                    (jnp.zeros((k,), jnp.float32), jnp.zeros((k,), jnp.float32), jnp.zeros((), jnp.float32)))

        if variant is None:
            total, (w, values, norm) = jax.lax.cond(step % self.upper_every == 0, compute, skip, None)
        else:
            total, (w, values, norm) = (compute if variant else skip)(None)
        metrics = {"hyper_norm": norm}
        for i, branch in enumerate(self.branches):
            metrics[f"weight_{branch}"] = w[i]
            metrics[f"upper_{branch}"] = values[i]
        return total, metrics

    # ------------------------------------------------------------------ prediction
    def predict(self, variables, batch) -> dict[str, jax.Array]:
        params = variables["params"]
        stats = {k: v for k, v in variables.items() if k != "params"}.get("batch_stats", {})
        fused = self.fusion.apply({"params": params["fusion"]}, *self._sources(batch)[1:]) \
            if self.fuses else None
        out = {"fused": jnp.clip(self._single(fused, batch), 0.0, 1.0)}
        image = self._task_image(fused, batch)
        out["fused_rgb"] = image
        if self.det is not None:
            heads = self.det.model.apply({"params": params["detector"],
                                          "batch_stats": stats.get("detector", {})},
                                         normalize01(image), train=False)
            out.update(self.det.detect(heads))
        if self.segmenter is not None:
            logits = self.segmenter.apply({"params": params["segmenter"]}, image, train=False)
            logits = upsample_logits(logits, image.shape[1], image.shape[2])
            out["segmentation"] = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return out

    @property
    def detects(self) -> bool:
        return self.det is not None

    def predict_fn(self, restore: bool):
        """:meth:`predict`: the fused images are written with or without a detector."""
        del restore
        return self.predict

    def prediction_images(self, outputs, i, to_original):
        """The fused luminance (8-bit grey) and colour image, the segmenter's class
        indices; detections are drawn on the fused colour image (what the detector saw)."""
        if "fused" not in outputs:
            return {}
        rgb = to_original(outputs["fused_rgb"][i], value_range=(0.0, 1.0))
        images = {"_fused.png": to_original(outputs["fused"][i], value_range=(0.0, 1.0))[..., 0],
                  "_fused_rgb.png": rgb, "canvas": rgb}
        if "segmentation" in outputs:
            images["_labels.png"] = to_original(outputs["segmentation"][i][..., None],
                                                nearest=True)[..., 0]
        return images

    def official_contenders(self, checkout, batches):
        """The official fusion network and loss of a checkout of LiuZhu-CV/BDLFusion
        (:mod:`adverse_vision.methods.bdlf_official`)."""
        from adverse_vision.methods import bdlf_official  # pylint: disable=import-outside-toplevel
        return bdlf_official.contenders(self.cfg, checkout, batches, self.contender_tasks)

    def own_contenders(self, trainers, batches):
        """The run's fusion network alone, as the official side times its own."""
        from adverse_vision.methods import bdlf_official  # pylint: disable=import-outside-toplevel
        return bdlf_official.own(self, trainers, batches)

    def make_evaluator(self) -> BDLFEvaluator:
        return BDLFEvaluator(self)

    # ------------------------------------------------------------------ benchmark
    def bench_train(self, bench, trainer, state, batch, steps):
        """Bi-level runs: the iteration with the hypergradient, the one without, their
        average over ``upper_every`` iterations (time and FLOPs; memory: the larger),
        and a plain step of the same networks with the fusion network on the fusion
        loss alone (mode "fusion_loss"), all at the same batch size. Each variant is
        compiled once and keeps its program whatever the state's step."""
        if self.mode != "bilevel":
            return super().bench_train(bench, trainer, state, batch, steps)
        k = self.upper_every
        hyper = bench.measure_train_step(trainer.train_step, state, batch, steps, step=0)
        lower = hyper
        if k > 1:
            lower = bench.measure_train_step(trainer.train_step, trainer.init_state(), batch,
                                             steps, step=1)
        plain_cfg = self.cfg.copy_and_resolve_references()
        plain_cfg.bdlf.mode = "fusion_loss"
        plain_trainer, plain_state, plain_batch = bench.setup(plain_cfg)
        plain = bench.measure_train_step(plain_trainer.train_step, plain_state, plain_batch,
                                         steps)
        mean = Measured((hyper.seconds + (k - 1) * lower.seconds) / k, hyper.compile_s,
                        (hyper.flops + (k - 1) * lower.flops) / k,
                        max(hyper.memory_bytes, lower.memory_bytes),
                        (hyper.collective_bytes + (k - 1) * lower.collective_bytes) // k)
        return mean, {
            "bilevel_hyper_step_s": hyper.seconds, "bilevel_lower_step_s": lower.seconds,
            "bilevel_hyper_flops_per_step": hyper.flops,
            "bilevel_lower_flops_per_step": lower.flops,
            "bilevel_mean_flops_per_step": mean.flops,
            "bilevel_hyper_memory_bytes": hyper.memory_bytes,
            "bilevel_lower_memory_bytes": lower.memory_bytes,
            "plain_fusion_memory_bytes": plain.memory_bytes,
            "bilevel_mean_step_s": mean.seconds, "plain_fusion_step_s": plain.seconds,
            "hyper_over_plain": hyper.seconds / plain.seconds,
            "mean_over_plain": mean.seconds / plain.seconds}

    def bench_extra(self, bench, variables, batch, steps):
        """The fusion network alone on the inference batch, in megapixels per second."""
        if not self.fuses:
            return {}
        theta = {"params": variables["params"]["fusion"]}
        _, ir, y = self._sources(batch)
        fusion = bench.measure(xla_options.jit(self.fusion.apply), (theta, ir, y), steps)
        pixels = ir.shape[0] * ir.shape[1] * ir.shape[2]
        return {"fusion_batch_s": fusion.seconds,
                "fusion_megapixels_per_s": pixels / fusion.seconds / 1e6,
                "fusion_flops_per_pixel": fusion.flops / pixels}

    @staticmethod
    def bench_lines(result):
        r, lines = result, []
        if "fusion_megapixels_per_s" in r:
            lines.append(f"fusion network alone  {r['fusion_batch_s'] * 1e3:9.1f} ms   "
                         f"{r['fusion_megapixels_per_s']:8.2f} megapixels/s   "
                         f"({r['fusion_flops_per_pixel'] / 1e3:.0f} kFLOP per pixel)")
        if "bilevel_hyper_step_s" in r:
            lines += [
                f"bi-level step, hyper  {r['bilevel_hyper_step_s'] * 1e3:9.1f} ms   "
                f"(critic, task networks and the fusion network's hypergradient; "
                f"{r['bilevel_hyper_memory_bytes'] / 2**30:.2f} GiB)",
                f"bi-level step, lower  {r['bilevel_lower_step_s'] * 1e3:9.1f} ms   "
                f"(critic and task networks only; "
                f"{r['bilevel_lower_memory_bytes'] / 2**30:.2f} GiB)",
                f"bi-level mean step    {r['bilevel_mean_step_s'] * 1e3:9.1f} ms   "
                f"(over one fusion period)",
                f"plain fusion step     {r['plain_fusion_step_s'] * 1e3:9.1f} ms   "
                f"(fusion loss alone, same networks; "
                f"{r['plain_fusion_memory_bytes'] / 2**30:.2f} GiB)",
                f"hypergradient overhead  hyper step {r['hyper_over_plain']:.2f}x, "
                f"mean step {r['mean_over_plain']:.2f}x the plain step",
            ]
        return lines


def normalize01(image: jax.Array) -> jax.Array:
    """[0, 1] RGB -> the ImageNet-normalised input of the project's YOLOX."""
    return normalize_images(image * 255.0)




def _windows(batch: dict[str, np.ndarray]) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of each image's real pixels inside its letterbox."""
    out = []
    size = batch["image"].shape[1:3]
    for scale, (dx, dy), (h, w) in zip(batch["scale"], batch["offset"], batch["orig_size"]):
        y0, x0 = round(float(dy)), round(float(dx))
        y1 = min(size[0], y0 + round(float(h) * float(scale)))
        x1 = min(size[1], x0 + round(float(w) * float(scale)))
        out.append((y0, y1, x0, x1))
    return out


class BDLFEvaluator:
    """Fusion metrics, detection mAP and segmentation mIoU of one evaluation pass."""

    def __init__(self, method: BDLFMethod):
        self.fusion = FusionMeter()
        self.limit = int(method.cfg.bdlf.eval_images)
        self.too_small = 0  # images whose real pixels are under MIN_SIZE on a side
        self.det = DetectionEvaluator(method.cfg.data.class_names) if method.det is not None else None
        self.seg = SegmentationMeter(len(method.seg_classes), ignore_label=IGNORE_LABEL) \
            if method.segmenter is not None else None

    def add(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        valid = np.asarray(batch["valid"], bool)
        # Scored as 8-bit grey images, as fusion results are saved and evaluated.
        vis_y = np.round(np.asarray(batch["image"], np.float64) @ np.asarray(LUMA_WEIGHTS))
        ir = np.asarray(batch["thermal"], np.float64)[..., 0]
        fused = np.round(np.clip(np.asarray(outputs["fused"], np.float64)[..., 0], 0.0, 1.0) * 255.0)
        for i, (y0, y1, x0, x1) in enumerate(_windows(batch)):
            if not valid[i] or (self.limit and self.fusion.count >= self.limit):
                continue
            if min(y1 - y0, x1 - x0) < MIN_SIZE:  # too small for VIF's four scales
                self.too_small += 1
                continue
            window = (slice(None), slice(y0, y1), slice(x0, x1))
            self.fusion.add(fused[i:i + 1][window], ir[i:i + 1][window], vis_y[i:i + 1][window])
        if self.det is not None:
            self.det.add(outputs, batch)
        if self.seg is not None:
            self.seg.add(np.asarray(outputs["segmentation"]), np.asarray(batch["mask"]), valid)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.fusion.count:
            out.update(self.fusion.compute())
        if self.det is not None:
            out.update(self.det.compute())
        if self.seg is not None:
            seg = self.seg.compute()
            out.update({"miou": float(seg["miou"])})
        return out

    def table(self) -> str:
        """The fusion metrics (mean over images), the detector's per-class AP table and
        the segmenter's mIoU."""
        metrics = self.compute()
        names = [k for k in FUSION_METRICS if k in metrics]
        lines = []
        if names:
            lines.append(f"fusion metrics over {self.fusion.count} images (0-255 grey):")
            lines.append(" ".join(f"{k:>8}" for k in names))
            lines.append(" ".join(f"{metrics[k]:>8.4f}" for k in names))
        if self.det is not None:
            lines.append(self.det.table())
        if self.seg is not None:
            lines.append(f"mIoU {metrics['miou']:.4f}")
        return "\n".join(lines)


__all__ = ["BDLFEvaluator", "BDLFMethod", "check_config", "defaults", "normalize01"]


