"""YOLOX detector (CSPDarknet backbone, PAFPN neck, decoupled head), NHWC flax.linen.

The network follows the reference YOLOX architecture (Ge et al., 2021) at every
model size (nano, tiny, s, m, l, x) or at a custom ``(depth, width)`` pair::

    model = YOLOX(num_classes=80, size="s", dtype=jnp.bfloat16)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 640, 640, 3)), train=False)
    maps = model.apply(variables, images, train=False)       # list of 3 arrays
    maps, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])

``maps[l]`` has shape (B, H / s_l, W / s_l, 4 + 1 + C) for strides s = 8, 16, 32,
channels ``[reg(4), obj(1), cls(C)]``; reg is the raw (dx, dy, log w, log h), obj and
cls are logits. Outputs are float32 whatever the compute ``dtype``. The module
applies no input normalisation; inputs are whatever the calling method feeds
(the height and width must be multiples of 32).

The three stages are separate submodules (``backbone``, ``neck``, ``head``) and
separate methods (``features``, ``pyramid``, ``predict``), so a derived detector can
transform the backbone features before the neck (override ``features``), use a
neck with extra blocks (override ``make_neck``; the neck exposes ``refine`` hooks
at the points where such blocks go), or read intermediate maps::

    feats = model.apply(variables, x, train=False, method="features")  # dark3, dark4, dark5

Parameter paths and the reference PyTorch state-dict keys they correspond to
(``.weight`` of a conv is ``kernel`` here, transposed (O, I, kh, kw) -> (kh, kw, I, O);
BatchNorm ``weight``/``bias`` are ``scale``/``bias``; ``running_mean``/``running_var``
are ``mean``/``var`` in the ``batch_stats`` collection):

=====================================================  ==============================
reference key prefix                                   flax path
=====================================================  ==============================
backbone.backbone.stem.conv.{conv,bn}                  backbone/stem/conv/{conv,bn}
backbone.backbone.dark{2,3,4}.0 / .1                   backbone/dark{2,3,4}/conv / csp
backbone.backbone.dark5.0 / .1 / .2                    backbone/dark5/conv / spp / csp
... CSP layer ``.m.{i}``                               ... ``m_{i}``
... depthwise block ``.dconv`` / ``.pconv``            ... ``dconv`` / ``pconv``
backbone.{lateral_conv0, C3_p4, reduce_conv1, C3_p3,   neck/{same names}
bu_conv2, C3_n3, bu_conv1, C3_n4}
head.stems.{k}                                         head/stems_{k}
head.{cls,reg}_convs.{k}.{j}                           head/{cls,reg}_convs_{k}_{j}
head.{cls,reg,obj}_preds.{k}                           head/{cls,reg,obj}_preds_{k}
=====================================================  ==============================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adverse_vision.models.layers import (
    Conv,
    ConvBNAct,
    CSPLayer,
    Focus,
    SPPBottleneck,
    check_activation,
    conv_block,
    param_count,
    remat,
    torch_bias_init,
    torch_kernel_init,
    upsample_nearest,
)

Dtype = Any

#: Output strides of the three detection levels.
STRIDES = (8, 16, 32)
#: Names of the backbone maps fed to the neck, strides 8, 16, 32.
FEATURE_NAMES = ("dark3", "dark4", "dark5")
#: Neck / head channels at width 1.0, strides 8, 16, 32.
IN_CHANNELS = (256, 512, 1024)


@dataclasses.dataclass(frozen=True)
class YOLOXSize:
    """Depth and width multipliers of a YOLOX model, and whether convs are depthwise."""

    depth: float
    width: float
    depthwise: bool = False

    @property
    def channels(self) -> tuple[int, int, int]:
        """Neck output channels at strides 8, 16, 32."""
        return tuple(int(c * self.width) for c in IN_CHANNELS)

    @property
    def head_channels(self) -> int:
        return int(256 * self.width)


SIZES: dict[str, YOLOXSize] = {
    "nano": YOLOXSize(0.33, 0.25, depthwise=True),
    "tiny": YOLOXSize(0.33, 0.375),
    "s": YOLOXSize(0.33, 0.50),
    "m": YOLOXSize(0.67, 0.75),
    "l": YOLOXSize(1.0, 1.0),
    "x": YOLOXSize(1.33, 1.25),
}

SizeLike = str | YOLOXSize | Sequence[float]


def resolve_size(size: SizeLike, depthwise: bool | None = None) -> YOLOXSize:
    """Turns a size name, a ``YOLOXSize`` or a ``(depth, width[, depthwise])`` tuple into
    a ``YOLOXSize``. ``depthwise`` (when not None) overrides the size's own choice."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"size: unknown YOLOX size {size!r}; choose one of {tuple(SIZES)} "
                             "or give (depth, width)")
        spec = SIZES[size]
    elif isinstance(size, YOLOXSize):
        spec = size
    elif isinstance(size, (tuple, list)) and len(size) in (2, 3):
        try:
            depth, width = float(size[0]), float(size[1])
        except (TypeError, ValueError):
            raise ValueError(f"size: (depth, width) must be numbers, got {size!r}") from None
        spec = YOLOXSize(depth, width, bool(size[2]) if len(size) == 3 else False)
    else:
        raise ValueError(f"size: expected a name in {tuple(SIZES)}, a YOLOXSize or "
                         f"(depth, width), got {size!r}")
    if depthwise is not None:
        spec = dataclasses.replace(spec, depthwise=bool(depthwise))
    if not (spec.depth > 0 and math.isfinite(spec.depth)):
        raise ValueError(f"size: depth multiplier must be > 0, got {spec.depth}")
    if not (math.isfinite(spec.width) and int(64 * spec.width) >= 1):
        raise ValueError(f"size: width multiplier must be >= 1/64, got {spec.width}")
    return spec


class DarkStage(nn.Module):
    """One backbone stage: 3x3 stride-2 conv (``conv``), optional SPP (``spp``), CSP (``csp``)."""

    features: int
    n: int
    shortcut: bool = True
    spp: bool = False
    depthwise: bool = False
    act: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(act=self.act, dtype=self.dtype, param_dtype=self.param_dtype)
        x = conv_block(self.features, 3, 2, depthwise=self.depthwise, name="conv", **kw)(x, train)
        if self.spp:
            x = SPPBottleneck(self.features, name="spp", **kw)(x, train)
        return CSPLayer(
            self.features, self.n, self.shortcut, depthwise=self.depthwise, name="csp", **kw
        )(x, train)


class CSPDarknet(nn.Module):
    """CSPDarknet backbone. Returns ``(dark3, dark4, dark5)`` at strides 8, 16, 32 with
    ``(4, 8, 16) * int(64 * width)`` channels."""

    depth: float = 1.0
    width: float = 1.0
    depthwise: bool = False
    act: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False  # recompute each stage's activations in the backward pass

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
        kw = dict(act=self.act, dtype=self.dtype, param_dtype=self.param_dtype)
        base = int(self.width * 64)
        n = max(round(self.depth * 3), 1)
        x = Focus(base, 3, name="stem", **kw)(x, train)
        stage = remat(DarkStage, self.remat)
        x = stage(base * 2, n, depthwise=self.depthwise, name="dark2", **kw)(x, train)
        c3 = stage(base * 4, n * 3, depthwise=self.depthwise, name="dark3", **kw)(x, train)
        c4 = stage(base * 8, n * 3, depthwise=self.depthwise, name="dark4", **kw)(c3, train)
        c5 = stage(
            base * 16, n, shortcut=False, spp=True, depthwise=self.depthwise, name="dark5", **kw
        )(c4, train)
        return c3, c4, c5


class PAFPN(nn.Module):
    """YOLOX path-aggregation neck.

    Top-down: ``lateral_conv0`` (1x1) on dark5, nearest x2, concat dark4, ``C3_p4``;
    ``reduce_conv1`` (1x1), nearest x2, concat dark3, ``C3_p3`` -> P3 out.
    Bottom-up: ``bu_conv2`` (3x3 s2), concat the reduced /16 map, ``C3_n3`` -> P4 out;
    ``bu_conv1`` (3x3 s2), concat the lateral /32 map, ``C3_n4`` -> P5 out.
    CSP layers have ``round(3 * depth)`` bottlenecks and no shortcut.

    ``refine(site, x, train)`` is applied at three points, each right before a
    concat: ``"up3"`` (the upsampled /8 map), ``"down4"`` (after ``bu_conv2``) and
    ``"down5"`` (after ``bu_conv1``). It is the identity here; a derived neck
    overrides it to insert blocks (it may create submodules there).
    """

    depth: float = 1.0
    width: float = 1.0
    depthwise: bool = False
    act: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def refine(self, site: str, x: jax.Array, train: bool) -> jax.Array:
        del site, train
        return x

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], train: bool = False):
        kw = dict(act=self.act, dtype=self.dtype, param_dtype=self.param_dtype)
        c3, c4, c5 = features
        ch3, ch4, ch5 = (int(c * self.width) for c in IN_CHANNELS)
        n = round(3 * self.depth)

        def csp(features, name):
            return CSPLayer(features, n, False, depthwise=self.depthwise, name=name, **kw)

        lat5 = ConvBNAct(ch4, 1, 1, name="lateral_conv0", **kw)(c5, train)  # /32
        x = jnp.concatenate([upsample_nearest(lat5), c4], axis=-1)
        x = csp(ch4, "C3_p4")(x, train)  # /16
        red4 = ConvBNAct(ch3, 1, 1, name="reduce_conv1", **kw)(x, train)  # /16
        x = self.refine("up3", upsample_nearest(red4), train)
        p3 = csp(ch3, "C3_p3")(jnp.concatenate([x, c3], axis=-1), train)  # /8

        x = conv_block(ch3, 3, 2, depthwise=self.depthwise, name="bu_conv2", **kw)(p3, train)
        x = self.refine("down4", x, train)
        p4 = csp(ch4, "C3_n3")(jnp.concatenate([x, red4], axis=-1), train)  # /16

        x = conv_block(ch4, 3, 2, depthwise=self.depthwise, name="bu_conv1", **kw)(p4, train)
        x = self.refine("down5", x, train)
        p5 = csp(ch5, "C3_n4")(jnp.concatenate([x, lat5], axis=-1), train)  # /32
        return p3, p4, p5


class YOLOXHead(nn.Module):
    """Decoupled YOLOX head, one set of weights per level.

    Per level k: ``stems_k`` (1x1 to ``int(256 * width)``); cls branch
    ``cls_convs_k_0``, ``cls_convs_k_1`` (3x3) -> ``cls_preds_k`` (1x1, C, biased);
    reg branch ``reg_convs_k_0``, ``reg_convs_k_1`` -> ``reg_preds_k`` (4) and
    ``obj_preds_k`` (1). cls and obj biases start at ``-log((1 - p) / p)`` with
    ``p = prior_prob``. The branches run in ``dtype``, the 1x1 predictions in
    float32. Returns float32 maps ``(B, H, W, 4 + 1 + C)`` ordered ``[reg, obj, cls]``.
    """

    num_classes: int
    width: float = 1.0
    depthwise: bool = False
    act: str = "silu"
    prior_prob: float = 0.01
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], train: bool = False) -> list[jax.Array]:
        kw = dict(act=self.act, dtype=self.dtype, param_dtype=self.param_dtype)
        hidden = int(256 * self.width)
        prior_bias = -math.log((1.0 - self.prior_prob) / self.prior_prob)

        # The three 1x1 prediction convs are cheap and run in float32, so logits and
        # box offsets carry no bf16 rounding into the losses and the decoding.
        def pred(features, name, bias_init):
            return Conv(
                features, (1, 1), use_bias=True, kernel_init=torch_kernel_init,
                bias_init=bias_init, dtype=jnp.float32, param_dtype=self.param_dtype, name=name,
            )

        outputs = []
        for k, x in enumerate(features):
            x = ConvBNAct(hidden, 1, 1, name=f"stems_{k}", **kw)(x, train)
            cls_feat, reg_feat = x, x
            for j in range(2):
                cls_feat = conv_block(hidden, 3, 1, depthwise=self.depthwise,
                                      name=f"cls_convs_{k}_{j}", **kw)(cls_feat, train)
            for j in range(2):
                reg_feat = conv_block(hidden, 3, 1, depthwise=self.depthwise,
                                      name=f"reg_convs_{k}_{j}", **kw)(reg_feat, train)
            cls_feat = cls_feat.astype(jnp.float32)
            reg_feat = reg_feat.astype(jnp.float32)
            cls_out = pred(self.num_classes, f"cls_preds_{k}",
                           nn.initializers.constant(prior_bias))(cls_feat)
            reg_out = pred(4, f"reg_preds_{k}", torch_bias_init(hidden))(reg_feat)
            obj_out = pred(1, f"obj_preds_{k}", nn.initializers.constant(prior_bias))(reg_feat)
            outputs.append(jnp.concatenate([reg_out, obj_out, cls_out], axis=-1))
        return outputs


class YOLOX(nn.Module):
    """The full detector: ``backbone`` (CSPDarknet), ``neck`` (PAFPN), ``head`` (YOLOXHead).

    Attributes:
      num_classes: number of object classes C.
      size: a name in ``SIZES``, a ``YOLOXSize`` or ``(depth, width)``.
      depthwise: overrides the size's depthwise choice when not None.
      act: activation of every conv block.
      dtype: computation dtype; parameters are ``param_dtype``, outputs float32.
      prior_prob: initial foreground probability of the cls/obj biases.
      remat: recompute the backbone stages' activations in the backward pass
        (``model.remat``: less memory for one more backbone forward).
    """

    num_classes: int
    size: SizeLike = "s"
    depthwise: bool | None = None
    act: str = "silu"
    prior_prob: float = 0.01
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    strides = STRIDES  # class constant, not a module field

    @property
    def spec(self) -> YOLOXSize:
        """The resolved ``YOLOXSize`` of this model."""
        return resolve_size(self.size, self.depthwise)

    def _common(self) -> dict:
        return dict(act=self.act, dtype=self.dtype, param_dtype=self.param_dtype)

    def make_backbone(self, spec: YOLOXSize) -> nn.Module:
        return CSPDarknet(spec.depth, spec.width, spec.depthwise, remat=self.remat,
                          **self._common())

    def make_neck(self, spec: YOLOXSize) -> nn.Module:
        return PAFPN(spec.depth, spec.width, spec.depthwise, **self._common())

    def make_head(self, spec: YOLOXSize) -> nn.Module:
        return YOLOXHead(self.num_classes, spec.width, spec.depthwise,
                         prior_prob=self.prior_prob, **self._common())

    def setup(self):
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) \
                or self.num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {self.num_classes!r}")
        if not 0.0 < self.prior_prob < 1.0:
            raise ValueError(f"prior_prob: expected a value in (0, 1), got {self.prior_prob}")
        check_activation(self.act)
        spec = self.spec
        self.backbone = self.make_backbone(spec)
        self.neck = self.make_neck(spec)
        self.head = self.make_head(spec)

    def features(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        """Backbone maps ``(dark3, dark4, dark5)`` (strides 8, 16, 32), in ``dtype``."""
        if x.ndim != 4 or x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(f"YOLOX input: expected (B, H, W, C) with H and W multiples of 32, "
                             f"got shape {tuple(x.shape)}")
        return self.backbone(x.astype(self.dtype), train)

    def pyramid(self, features: Sequence[jax.Array], train: bool = False) -> tuple[jax.Array, ...]:
        """Neck outputs at strides 8, 16, 32 with ``spec.channels`` channels."""
        return self.neck(features, train)

    def predict(self, pyramid: Sequence[jax.Array], train: bool = False) -> list[jax.Array]:
        """Raw float32 head maps ``[reg4, obj1, clsC]`` per level."""
        return self.head(pyramid, train)

    def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
        return self.predict(self.pyramid(self.features(x, train), train), train)


__all__ = [
    "FEATURE_NAMES",
    "IN_CHANNELS",
    "PAFPN",
    "SIZES",
    "STRIDES",
    "YOLOX",
    "CSPDarknet",
    "DarkStage",
    "YOLOXHead",
    "YOLOXSize",
    "param_count",
    "resolve_size",
]
