"""DenseNet encoders (Huang et al., CVPR 2017) in torchvision's layout, NHWC flax.linen.

:class:`DenseNetEncoder` is torchvision's ``densenet*().features``::

    conv0 7x7 stride 2 (no bias) -> norm0 -> ReLU -> max pool 3x3 stride 2 (pad 1)
    denseblock1 -> transition1 -> denseblock2 -> transition2
      -> denseblock3 -> transition3 -> denseblock4 -> norm5 -> ReLU

A dense layer is ``norm1 -> ReLU -> conv1`` (1x1 to ``bn_size * growth``, no bias)
``-> norm2 -> ReLU -> conv2`` (3x3 to ``growth``, no bias), its output concatenated
to its input; a transition is ``norm -> ReLU -> conv`` (1x1 to half the channels, no
bias) ``-> 2x2 average pool stride 2`` (odd sides lose their last row or column, as
PyTorch's pooling does). BatchNorm has PyTorch's constants (epsilon 1e-5, momentum
0.1). The encoder returns the maps a U-Net style decoder reads
(:class:`EncoderMaps`): the stem before and after the max pool, the two first
transition outputs and the final map after ``norm5`` and its ReLU (the trailing ReLU
is the one torchvision's classifier applies, kept here as DenseDepth does).

Layouts (:data:`LAYOUTS`, or any :class:`DenseNetLayout`):

============  ==============  ======  ========  =======  =========  ===========
name          blocks          growth  features  bn_size  final ch.  parameters
============  ==============  ======  ========  =======  =========  ===========
densenet169   (6, 12, 32, 32)  32     64        4        1664       12,484,480
densenet121   (6, 12, 24, 16)  32     64        4        1024        6,953,856
tiny          (2, 2, 2, 2)     8      16        4        32          (tests)
============  ==============  ======  ========  =======  =========  ===========

Parameter names follow torchvision (``conv0``, ``norm0``, ``denseblock{i}/
denselayer{j}/{norm1,conv1,norm2,conv2}``, ``transition{i}/{norm,conv}``, ``norm5``),
so an ImageNet checkpoint's ``features.*`` tensors map one to one. Kernels start as
torchvision's (He normal, fan-in), BatchNorm at scale 1 and bias 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from adverse_vision.models.batch_norm import BatchNorm
from adverse_vision.models.layers import Conv, remat
from adverse_vision.ops import max_pool as pooling

Dtype = Any

__all__ = ["LAYOUTS", "DenseNetEncoder", "DenseNetLayout", "EncoderMaps", "resolve_layout"]

#: BatchNorm constants of torchvision's DenseNet (PyTorch defaults): epsilon 1e-5,
#: momentum 0.1, i.e. a flax running-average decay of 0.9.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

# torchvision initialises DenseNet convolutions with kaiming_normal_ (fan in, ReLU gain).
_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


@dataclasses.dataclass(frozen=True)
class DenseNetLayout:
    """The shape of a DenseNet: layers per dense block (four blocks), channels each
    dense layer adds (``growth``), channels of the stem (``init_features``) and the
    bottleneck width factor (``bn_size``: the 1x1 conv has ``bn_size * growth``)."""

    blocks: tuple[int, ...] = (6, 12, 32, 32)
    growth: int = 32
    init_features: int = 64
    bn_size: int = 4

    def __post_init__(self):
        blocks = tuple(self.blocks)
        object.__setattr__(self, "blocks", blocks)
        if len(blocks) != 4 or not all(isinstance(b, int) and b >= 1 for b in blocks):
            raise ValueError(f"DenseNetLayout.blocks: expected four positive layer counts, "
                             f"got {blocks!r}")
        for name in ("growth", "init_features", "bn_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DenseNetLayout.{name}: expected a positive integer, "
                                 f"got {value!r}")

    def channels(self) -> tuple[int, ...]:
        """Channels of ``(stem, transition1, transition2, transition3, final)``."""
        c = self.init_features
        out = [c]
        for i, n in enumerate(self.blocks):
            c += n * self.growth
            if i < len(self.blocks) - 1:
                c //= 2
            out.append(c)
        return tuple(out)

    @property
    def num_features(self) -> int:
        """Channels of the final map (1664 for DenseNet-169)."""
        return self.channels()[-1]


#: Named layouts: torchvision's DenseNet-169 and DenseNet-121, and a narrow one for tests.
LAYOUTS: dict[str, DenseNetLayout] = {
    "densenet169": DenseNetLayout((6, 12, 32, 32), 32, 64, 4),
    "densenet121": DenseNetLayout((6, 12, 24, 16), 32, 64, 4),
    "tiny": DenseNetLayout((2, 2, 2, 2), 8, 16, 4),
}


def resolve_layout(layout: Union[str, DenseNetLayout]) -> DenseNetLayout:
    """A :class:`DenseNetLayout` from itself or a name of :data:`LAYOUTS`."""
    if isinstance(layout, DenseNetLayout):
        return layout
    if isinstance(layout, str) and layout in LAYOUTS:
        return LAYOUTS[layout]
    raise ValueError(f"DenseNet layout {layout!r}: expected one of {tuple(LAYOUTS)} or a "
                     "DenseNetLayout")


class EncoderMaps(NamedTuple):
    """The encoder's maps, from fine to coarse: ``stem`` (after ``relu0``, /2),
    ``pooled`` (after ``pool0``, /4), ``transition1`` (/8), ``transition2`` (/16) and
    ``final`` (after ``norm5`` and ReLU, /32)."""

    stem: jax.Array
    pooled: jax.Array
    transition1: jax.Array
    transition2: jax.Array
    final: jax.Array


def _bn(train: bool, name: str, dtype: Dtype, param_dtype: Dtype) -> BatchNorm:
    return BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                        use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name)


def _conv(features: int, kernel: int, name: str, dtype: Dtype, param_dtype: Dtype,
          stride: int = 1) -> nn.Conv:
    p = kernel // 2
    return Conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                   use_bias=False, kernel_init=_kernel_init, dtype=dtype,
                   param_dtype=param_dtype, name=name)


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (``bn_size * growth``), BN-ReLU-conv3x3 (``growth``), concatenated
    to the input."""

    growth: int
    bn_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = nn.relu(_bn(train, "norm1", **kw)(x))
        y = _conv(self.bn_size * self.growth, 1, "conv1", **kw)(y)
        y = nn.relu(_bn(train, "norm2", **kw)(y))
        y = _conv(self.growth, 3, "conv2", **kw)(y)
        return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class DenseBlock(nn.Module):
    """``layers`` dense layers ``denselayer1 .. denselayer{layers}``."""

    layers: int
    growth: int
    bn_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for j in range(1, self.layers + 1):
            x = DenseLayer(self.growth, self.bn_size, dtype=self.dtype,
                           param_dtype=self.param_dtype, name=f"denselayer{j}")(x, train)
        return x


class Transition(nn.Module):
    """BN-ReLU-conv1x1 to ``features``, then 2x2 average pooling with stride 2."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = nn.relu(_bn(train, "norm", **kw)(x))
        y = _conv(self.features, 1, "conv", **kw)(y)
        return nn.avg_pool(y, (2, 2), strides=(2, 2), padding="VALID")


class DenseNetEncoder(nn.Module):
    """torchvision's DenseNet ``features`` (see the module docstring).

    Attributes:
      layout: a name of :data:`LAYOUTS` or a :class:`DenseNetLayout`.
      remat: recompute each dense block's activations in the backward pass.

    ``__call__(x, train)`` takes (N, H, W, C) images and returns :class:`EncoderMaps`.
    H and W must be at least 32 (the /32 map must not be empty).
    """

    layout: Union[str, DenseNetLayout] = "densenet169"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> EncoderMaps:
        spec = resolve_layout(self.layout)
        if x.ndim != 4 or min(x.shape[1:3]) < 32:
            raise ValueError(f"DenseNetEncoder: expected (N, H, W, C) images of at least "
                             f"32x32 pixels, got shape {tuple(x.shape)}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = _conv(spec.init_features, 7, "conv0", stride=2, **kw)(x.astype(self.dtype))
        stem = nn.relu(_bn(train, "norm0", **kw)(x))
        # PyTorch's max pool pads with -inf, as flax's does.
        x = pooled = pooling.max_pool(stem, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        channels = spec.channels()
        transitions = []
        for i, layers in enumerate(spec.blocks, start=1):
            x = remat(DenseBlock, self.remat)(layers, spec.growth, spec.bn_size,
                                              name=f"denseblock{i}", **kw)(x, train)
            if i < len(spec.blocks):
                x = Transition(channels[i], name=f"transition{i}", **kw)(x, train)
                transitions.append(x)
        final = nn.relu(_bn(train, "norm5", **kw)(x))
        return EncoderMaps(stem, pooled, transitions[0], transitions[1], final)
