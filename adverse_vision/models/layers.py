"""Convolutional building blocks shared by the detector family (NHWC, flax.linen).

Every block takes ``dtype`` (computation dtype, e.g. ``jnp.bfloat16``) and
``param_dtype`` (storage dtype of the parameters, float32 by default). BatchNorm
statistics are always reduced and stored in float32.

Conventions follow the CSPDarknet/YOLOX family:

* ``ConvBNAct``: convolution without bias, BatchNorm (epsilon 1e-3, running
  average decay 0.97, i.e. PyTorch ``momentum=0.03``), activation. Padding is
  explicit ``kernel // 2`` on every side, as PyTorch does; ``'SAME'`` would pad
  differently for stride 2 on even inputs.
* Kernels are initialised like PyTorch's default ``Conv2d`` initialiser
  (uniform with bound ``1 / sqrt(fan_in)``), so training from scratch behaves
  like the reference implementation.

Parameter paths are stable; the names mirror the reference PyTorch modules
(``conv``/``bn`` inside a conv block, ``conv1``/``conv2``/``conv3``/``m_i`` inside
a CSP layer, ``dconv``/``pconv`` inside a depthwise block) so that imported
checkpoints map one to one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adverse_vision.models.batch_norm import BatchNorm
from adverse_vision.ops import max_pool as pooling
from adverse_vision.ops import tap_conv
from adverse_vision.ops.conv_transpose import conv_transpose
from adverse_vision.ops.narrow_conv import narrow_conv, resized_narrow_conv

Dtype = Any

#: flax's ``nn.Conv`` with :mod:`adverse_vision.ops.tap_conv`'s kernel gradient (on CPU;
#: ``lax.conv_general_dilated`` itself elsewhere): same parameters, names and values.
Conv = functools.partial(nn.Conv, conv_general_dilated=tap_conv.conv_general_dilated)

#: BatchNorm constants of the YOLOX family.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.97  # flax decay; PyTorch momentum 0.03

ACTIVATIONS = ("silu", "relu", "lrelu", "none")

# PyTorch's default Conv2d/Linear kernel initialiser: kaiming_uniform(a=sqrt(5)),
# i.e. uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)].
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default bias initialiser: uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)]."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def check_activation(name: str) -> str:
    """Returns ``name`` if it is a supported activation, else raises ValueError."""
    if name not in ACTIVATIONS:
        raise ValueError(f"act: unsupported activation {name!r}; choose one of {ACTIVATIONS}")
    return name


def activation(x: jax.Array, name: str) -> jax.Array:
    """Applies the named activation (``silu``, ``relu``, ``lrelu`` (slope 0.1), ``none``)."""
    if name == "silu":
        return nn.silu(x)
    if name == "relu":
        return nn.relu(x)
    if name == "lrelu":
        return nn.leaky_relu(x, negative_slope=0.1)
    if name == "none":
        return x
    check_activation(name)
    raise AssertionError("unreachable")


def remat(module: type[nn.Module], enabled: bool, static_argnums: tuple[int, ...] = (2,)):
    """``module`` with activation rematerialisation when ``enabled`` (``model.remat``).

    The wrapped module keeps its name and variables; in a gradient, its activations are
    recomputed in the backward pass instead of kept from the forward one (less memory,
    one more forward of the module). ``static_argnums`` counts ``self`` as 0: the default
    marks ``__call__(self, x, train)``'s ``train`` static."""
    return nn.remat(module, static_argnums=static_argnums) if enabled else module


def torch_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric explicit padding ``kernel_size // 2`` on both spatial axes."""
    p = kernel_size // 2
    return ((p, p), (p, p))


class ConvBNAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> activation.

    Attributes:
      features: output channels.
      kernel_size: square kernel size.
      strides: stride on both spatial axes.
      groups: feature groups (``groups == in_channels`` for a depthwise conv).
      depthwise: shortcut for ``groups = in_channels`` (the output channels
        must then be a multiple of the input channels).
      act: ``silu`` | ``relu`` | ``lrelu`` | ``none``.
    """

    features: int
    kernel_size: int = 1
    strides: int = 1
    groups: int = 1
    depthwise: bool = False
    act: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_activation(self.act)
        groups = x.shape[-1] if self.depthwise else self.groups
        x = Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=(self.strides, self.strides),
            padding=torch_padding(self.kernel_size),
            feature_group_count=groups,
            use_bias=False,
            kernel_init=torch_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        x = BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            use_fast_variance=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="bn",
        )(x)
        return activation(x, self.act)


class DWConv(nn.Module):
    """Depthwise ``kernel_size`` conv (``dconv``) then pointwise 1x1 conv (``pconv``)."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    act: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(act=self.act, dtype=self.dtype, param_dtype=self.param_dtype)
        x = ConvBNAct(x.shape[-1], self.kernel_size, self.strides, depthwise=True, name="dconv", **kw)(
            x, train
        )
        return ConvBNAct(self.features, 1, 1, name="pconv", **kw)(x, train)


def conv_block(
    features: int,
    kernel_size: int,
    strides: int = 1,
    *,
    depthwise: bool = False,
    act: str = "silu",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Module:
    """A ``DWConv`` when ``depthwise`` else a plain ``ConvBNAct`` (as the YOLOX nets choose)."""
    cls = DWConv if depthwise else ConvBNAct
    return cls(
        features, kernel_size, strides, act=act, dtype=dtype, param_dtype=param_dtype, name=name
    )


def space_to_depth(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H/2, W/2, 4C) in the YOLOX Focus order.

    The four channel blocks are, in order (rows first index): even rows/even
    columns, odd rows/even columns, even rows/odd columns, odd rows/odd columns
    (top-left, bottom-left, top-right, bottom-right of each 2x2 cell).
    """
    if x.ndim != 4 or x.shape[1] % 2 or x.shape[2] % 2:
        raise ValueError(f"space_to_depth: expected (B, H, W, C) with even H and W, got shape {x.shape}")
    return jnp.concatenate(
        [x[:, ::2, ::2], x[:, 1::2, ::2], x[:, ::2, 1::2], x[:, 1::2, 1::2]], axis=-1
    )


class Focus(nn.Module):
    """Space-to-depth (``space_to_depth``) followed by a ``ConvBNAct`` named ``conv``."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    act: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = space_to_depth(x)
        return ConvBNAct(
            self.features,
            self.kernel_size,
            self.strides,
            act=self.act,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x, train)


class Bottleneck(nn.Module):
    """1x1 conv to ``features * expansion`` (``conv1``), 3x3 conv (``conv2``), optional residual.

    The residual is added when ``shortcut`` is set and input and output channels agree.
    """

    features: int
    shortcut: bool = True
    expansion: float = 0.5
    depthwise: bool = False
    act: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(act=self.act, dtype=self.dtype, param_dtype=self.param_dtype)
        hidden = int(self.features * self.expansion)
        y = ConvBNAct(hidden, 1, 1, name="conv1", **kw)(x, train)
        y = conv_block(self.features, 3, 1, depthwise=self.depthwise, name="conv2", **kw)(y, train)
        if self.shortcut and x.shape[-1] == self.features:
            y = y + x
        return y


class CSPLayer(nn.Module):
    """CSP bottleneck with three convolutions (YOLOv5's C3).

    ``conv1`` (1x1) -> ``n`` bottlenecks ``m_0 .. m_{n-1}`` (expansion 1.0);
    ``conv2`` (1x1) as the bypass; concat [main, bypass] -> ``conv3`` (1x1).
    Hidden width is ``int(features * expansion)``.
    """

    features: int
    n: int = 1
    shortcut: bool = True
    expansion: float = 0.5
    depthwise: bool = False
    act: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(act=self.act, dtype=self.dtype, param_dtype=self.param_dtype)
        hidden = int(self.features * self.expansion)
        main = ConvBNAct(hidden, 1, 1, name="conv1", **kw)(x, train)
        bypass = ConvBNAct(hidden, 1, 1, name="conv2", **kw)(x, train)
        for i in range(self.n):
            main = Bottleneck(
                hidden, self.shortcut, 1.0, self.depthwise, name=f"m_{i}", **kw
            )(main, train)
        y = jnp.concatenate([main, bypass], axis=-1)
        return ConvBNAct(self.features, 1, 1, name="conv3", **kw)(y, train)


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: 1x1 to half the input channels (``conv1``), max pools
    (stride 1, same size) of each kernel size, concat [x, pools...], 1x1 (``conv2``)."""

    features: int
    kernel_sizes: Sequence[int] = (5, 9, 13)
    act: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(act=self.act, dtype=self.dtype, param_dtype=self.param_dtype)
        x = ConvBNAct(x.shape[-1] // 2, 1, 1, name="conv1", **kw)(x, train)
        pooled = [x]
        for k in self.kernel_sizes:
            if k % 2 != 1:
                raise ValueError(f"SPPBottleneck.kernel_sizes: pool sizes must be odd, got {k}")
            # Padding k // 2 with -inf and stride 1, as PyTorch MaxPool2d.
            pooled.append(pooling.max_pool(x, (k, k), (1, 1), torch_padding(k)))
        x = jnp.concatenate(pooled, axis=-1)
        return ConvBNAct(self.features, 1, 1, name="conv2", **kw)(x, train)


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling of an NHWC map by an integer factor."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class TorchConvTranspose(nn.Module):
    """PyTorch ``ConvTranspose2d(k, stride, padding, output_padding)``, biased, in the
    sub-pixel form of :func:`adverse_vision.ops.conv_transpose.conv_transpose`.

    Parameters ``kernel`` ``(k, k, out, in)`` and ``bias``, laid out and initialised as
    ``nn.ConvTranspose(transpose_kernel=True)`` with PyTorch's default initialisers.
    """

    features: int
    kernel_size: int
    stride: int
    padding: int
    output_padding: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cout = self.kernel_size, self.features
        kernel = self.param("kernel", torch_kernel_init, (k, k, cout, x.shape[-1]),
                            self.param_dtype)
        bias = self.param("bias", torch_bias_init(cout * k * k), (cout,), self.param_dtype)
        y = conv_transpose(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                           self.padding, self.output_padding)
        return y + bias.astype(self.dtype)


class ConvParams(nn.Module):
    """The parameters of a biased convolution computed elsewhere (e.g. several at once
    by :func:`adverse_vision.ops.conv_chain.conv_chain`): ``kernel`` ``(k, k, in,
    out)`` and ``bias``, laid out, named and initialised as ``nn.Conv`` with
    PyTorch's default initialisers. Called without input; returns ``(kernel, bias)``."""

    features: int
    kernel_size: int
    in_features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        k, cin = self.kernel_size, self.in_features
        kernel = self.param("kernel", torch_kernel_init, (k, k, cin, self.features),
                            self.param_dtype)
        bias = self.param("bias", torch_bias_init(cin * k * k), (self.features,),
                          self.param_dtype)
        return kernel, bias


class NarrowConv(nn.Module):
    """Biased stride-1 convolution to few channels (an RGB output layer), zero padded
    by ``padding``, through :func:`adverse_vision.ops.narrow_conv.narrow_conv` (fast on
    CPU). Parameters ``kernel``, ``bias`` as ``nn.Conv``."""

    features: int
    kernel_size: int
    padding: int = 0
    kernel_init: Callable[..., jax.Array] = torch_kernel_init
    bias_init: Callable[..., jax.Array] | None = None  # None: PyTorch's default
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, resize: tuple[Any, Any] | None = None) -> jax.Array:
        """``resize``: ``(rows, cols)``, constant matrices that resize ``x`` first
        (:func:`adverse_vision.ops.narrow_conv.resized_narrow_conv`)."""
        k, cin = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (k, k, cin, self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init or torch_bias_init(cin * k * k),
                          (self.features,), self.param_dtype)
        x = x.astype(self.dtype)
        if resize is not None:
            if self.padding:
                raise ValueError("NarrowConv: padding and resize together are not supported")
            y = resized_narrow_conv(x, kernel.astype(self.dtype), *resize)
            return y + bias.astype(self.dtype)
        if self.padding:
            p = self.padding
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        return narrow_conv(x, kernel.astype(self.dtype)) + bias.astype(self.dtype)


def param_count(variables: Any) -> int:
    """Number of trainable scalars: the leaves under ``"params"`` when present.

    Works on concrete arrays and on the ``jax.ShapeDtypeStruct`` tree that
    ``jax.eval_shape(model.init, ...)`` returns. BatchNorm running statistics
    (the ``"batch_stats"`` collection) are not counted, as PyTorch does not count
    buffers.
    """
    if hasattr(variables, "keys") and "params" in variables:
        variables = variables["params"]
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables)))
