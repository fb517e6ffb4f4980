"""TogetherNet: a YOLOX detector trained jointly with an image-restoration decoder.

TogetherNet (Wang et al., Computer Graphics Forum 2022) extends YOLOX with

* **DTFE** (dynamic transformer feature enhancement) on the stride-32 backbone map:
  one modulated deformable 3x3 convolution applied twice with the same weights,
  then ``C3TR``, a CSP block whose inner stack is a pre-LayerNorm transformer layer;
* three **self-calibrated convolution blocks** (``SCBottleneck``) in the PAFPN, on
  the upsampled stride-8 map and on the two stride-2 bottom-up maps, each right
  before its concat (the ``PAFPN.refine`` sites ``up3``, ``down4``, ``down5``);
* a **restoration decoder** from the backbone maps (dark5 after DTFE, dark4, dark3):
  three transposed 3x3 stride-2 convolutions with BatchNorm and SiLU and skip
  concats, align-corners bilinear x4 upsampling, reflection padding and a 7x7
  convolution to RGB followed by tanh.

Usage::

    model = TogetherNet(num_classes=5, size="s")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 640, 640, 3)), train=False)
    out = model.apply(variables, images, train=False)                  # detection only
    out = model.apply(variables, images, train=False, restore=True)    # + restored image
    out, updates = model.apply(variables, images, train=True, restore=True,
                               mutable=["batch_stats"], rngs={"dropout": key})

``out["heads"]`` is the YOLOX head output (three float32 NHWC maps, strides 8, 16,
32, channels ``[reg(4), obj(1), cls(C)]``) and ``out["restored"]`` the float32
(B, H, W, 3) restoration in [-1, 1], or None when ``restore`` is False. The decoder
is always built at initialisation, so the variables have the same structure
whatever ``restore`` is. In training mode the transformer MLP applies dropout
(rate ``dropout_rate``, 0.1 as in the reference), which needs a ``"dropout"`` rng;
set ``dropout_rate=0`` to train without one.

Every YOLOX size works: the channel counts that the reference code fixes for the
"s" model (512 for the DTFE, 128/128/256 for the SC blocks, 512-256-128-64 in the
decoder) are derived from the width multiplier here (``16, 4, 4, 8`` and
``16, 8, 4, 2`` times ``int(64 * width)``), which gives exactly the reference
numbers at "s".

Variable paths (reference state-dict key prefix -> flax path), in addition to the
YOLOX ones documented in ``adverse_vision.models.yolox``:

=========================================  =======================================
backbone.backbone.deconv.{p_conv,m_conv,    dtfe/deconv/{p_conv,m_conv,conv}
conv}
backbone.backbone.swt1.{conv1,conv2,conv3}  dtfe/swt1/{conv1,conv2,conv3}
backbone.backbone.swt1.m.linear             dtfe/swt1/m/linear
backbone.backbone.swt1.m.tr.{i}.{layernorm1,  dtfe/swt1/m/tr_{i}/{same names}
q,k,v,layernorm2,fc1,fc2}
... ma.in_proj_weight / in_proj_bias        ... ma/in_proj_kernel / in_proj_bias
... ma.out_proj                             ... ma/out_proj
backbone.sc{1,2,3}.{conv1_a,conv1_b,conv3}  neck/sc{1,2,3}/{same names}
backbone.sc{i}.k1.0                         neck/sc{i}/k1
backbone.sc{i}.scconv.k{2,3,4}.{1,0,0}      neck/sc{i}/scconv/k{2,3,4}
backbone.decoder.conv_{1,2,3}.0 / .1        decoder/conv_{1,2,3}/deconv / bn
backbone.decoder.conv_4.1                   decoder/conv_4
=========================================  =======================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adverse_vision.models.batch_norm import BatchNorm
from adverse_vision.models.layers import (
    Conv,
    ConvBNAct,
    NarrowConv,
    TorchConvTranspose,
    param_count,
    torch_bias_init,
    torch_kernel_init,
)
from adverse_vision.models.yolox import PAFPN, YOLOX, YOLOXSize
from adverse_vision.ops.attention import attention
from adverse_vision.ops.deform_conv import ModulatedDeformConv
from adverse_vision.ops.sparse_axis import matmul_along_axis

Dtype = Any

#: LayerNorm epsilon of the transformer layer (PyTorch default).
LN_EPSILON = 1e-5
#: BatchNorm constants of the restoration decoder (PyTorch defaults: eps 1e-5,
#: momentum 0.1, i.e. a flax running-average decay of 0.9).
DECODER_BN_EPSILON = 1e-5
DECODER_BN_MOMENTUM = 0.9
#: Negative slope of the LeakyReLU in the self-calibrated blocks.
SC_SLOPE = 0.2
#: Average-pooling factor of the self-calibration branch.
SC_POOLING = 4
#: Names of the SC blocks at the three ``PAFPN.refine`` sites.
SC_SITES = {"up3": "sc1", "down4": "sc2", "down5": "sc3"}


# --------------------------------------------------------------------------- resizing


def _align_corners_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weight of i1 for align-corners linear resizing.

    Mirrors PyTorch's computation in float32: ``scale = (in - 1) / (out - 1)``,
    ``src = scale * dst``, ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``,
    ``w1 = src - i0``.
    """
    if out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    else:
        scale = np.float32(0.0)
    src = np.arange(out_size, dtype=np.float32) * scale
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, w1


def align_corners_matrix(in_size: int, out_size: int, reflect_pad: int = 0) -> np.ndarray:
    """(out_size + 2 reflect_pad, in_size) float32 matrix of align-corners linear
    resizing along one axis, followed by reflection padding of ``reflect_pad``."""
    i0, i1, w1 = _align_corners_taps(in_size, out_size)
    m = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), 1 - w1)
    np.add.at(m, (rows, i1), w1)
    if reflect_pad:
        m = m[np.pad(rows, reflect_pad, mode="reflect")]
    return m


def resize_bilinear_align_corners(x: jax.Array, height: int, width: int,
                                  reflect_pad: int = 0) -> jax.Array:
    """Bilinear resize of an NHWC map with ``align_corners=True`` semantics, then
    (optionally) reflection padding by ``reflect_pad`` on every side.

    Equal to PyTorch's ``F.interpolate(x, size=(height, width), mode="bilinear",
    align_corners=True)`` (then ``nn.ReflectionPad2d(reflect_pad)``): the corner pixels
    of input and output coincide and every output pixel is the bilinear blend of its
    two nearest input rows and columns. Computed as one constant matrix per axis
    (:func:`adverse_vision.ops.sparse_axis.matmul_along_axis`: gathers of its nonzeros
    when evaluated, the dense product under differentiation).
    """
    _, h, w, _ = x.shape
    if reflect_pad >= min(height, width):
        raise ValueError(f"resize_bilinear_align_corners: reflection padding {reflect_pad} "
                         f"needs an output larger than {height}x{width}")
    x = matmul_along_axis(align_corners_matrix(h, height, reflect_pad), x, axis=1)
    return matmul_along_axis(align_corners_matrix(w, width, reflect_pad), x, axis=2)


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """PyTorch ``mode="nearest"`` source indices: ``min(floor(dst * in / out), in - 1)``."""
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def resize_nearest(x: jax.Array, height: int, width: int) -> jax.Array:
    """Nearest resize of an NHWC map, as PyTorch's ``F.interpolate(x, size)`` default."""
    _, h, w, _ = x.shape
    return x[:, _nearest_indices(h, height)][:, :, _nearest_indices(w, width)]


def avg_pool_floor(x: jax.Array, factor: int) -> jax.Array:
    """Non-overlapping ``factor x factor`` average pooling, incomplete windows dropped
    (PyTorch ``AvgPool2d(factor, factor)``). A side shorter than ``factor`` is pooled
    whole (where the reference layer would fail on an empty output)."""
    b, h, w, c = x.shape
    fh, fw = min(factor, h), min(factor, w)
    ho, wo = h // fh, w // fw
    x = x[:, : ho * fh, : wo * fw]
    return x.reshape(b, ho, fh, wo, fw, c).mean(axis=(2, 4))


# --------------------------------------------------------------------------- SC blocks


def _conv(features, kernel_size, dtype, param_dtype, name, fan_in):
    """Biased conv with PyTorch's default initialisers and symmetric ``k // 2`` padding."""
    p = kernel_size // 2
    return Conv(
        features, (kernel_size, kernel_size), padding=((p, p), (p, p)), use_bias=True,
        kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in * kernel_size ** 2),
        dtype=dtype, param_dtype=param_dtype, name=name,
    )


def _lrelu(x):
    return nn.leaky_relu(x, negative_slope=SC_SLOPE)


class SCConv(nn.Module):
    """Self-calibrated convolution (Liu et al., CVPR 2020), as used by TogetherNet.

    ``out = k4(k3(x) * sigmoid(x + up(k2(avgpool_r(x)))))`` with LeakyReLU(0.2)
    after ``k4``; ``k2``, ``k3``, ``k4`` are biased 3x3 convs and ``up`` is nearest
    resizing back to the input size.
    """

    pooling_r: int = SC_POOLING
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, fan_in=c)
        _, h, w, _ = x.shape
        coarse = _conv(c, 3, name="k2", **kw)(avg_pool_floor(x, self.pooling_r))
        gate = nn.sigmoid(x + resize_nearest(coarse, h, w))
        out = _conv(c, 3, name="k3", **kw)(x) * gate
        return _lrelu(_conv(c, 3, name="k4", **kw)(out))


class SCBottleneck(nn.Module):
    """Self-calibrated residual block without normalisation (TogetherNet neck).

    Two half-width branches from biased 1x1 convs with LeakyReLU(0.2): ``conv1_a``
    then ``k1`` (3x3 + LeakyReLU), and ``conv1_b`` then ``scconv`` (``SCConv``);
    concat, biased 1x1 ``conv3``, add the input, LeakyReLU(0.2). The output has the
    input's channel count, which must be even.
    """

    pooling_r: int = SC_POOLING
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c % 2:
            raise ValueError(f"SCBottleneck: input channels must be even, got {c}")
        half = c // 2
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        a = _lrelu(_conv(half, 1, name="conv1_a", fan_in=c, **kw)(x))
        a = _lrelu(_conv(half, 3, name="k1", fan_in=half, **kw)(a))
        b = _lrelu(_conv(half, 1, name="conv1_b", fan_in=c, **kw)(x))
        b = SCConv(self.pooling_r, name="scconv", **kw)(b)
        out = _conv(c, 1, name="conv3", fan_in=c, **kw)(jnp.concatenate([a, b], axis=-1))
        return _lrelu(out + x)


class SCPAFPN(PAFPN):
    """PAFPN with an ``SCBottleneck`` at each ``refine`` site (``sc1``, ``sc2``, ``sc3``)."""

    def refine(self, site: str, x: jax.Array, train: bool) -> jax.Array:
        del train
        return SCBottleneck(dtype=self.dtype, param_dtype=self.param_dtype,
                            name=SC_SITES[site])(x)


# --------------------------------------------------------------------------- DTFE


class MultiheadAttention(nn.Module):
    """Multi-head attention with PyTorch ``nn.MultiheadAttention`` parameters.

    ``in_proj_kernel`` (C, 3C) and ``in_proj_bias`` (3C) project query, key and value
    (in that order of column blocks); ``out_proj`` is a biased Dense. Queries are
    scaled by ``1 / sqrt(C / num_heads)``; the logits and softmax run in float32.
    Inputs are (B, L, C).
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        c = q.shape[-1]
        if c % self.num_heads:
            raise ValueError(f"MultiheadAttention: {c} channels are not divisible by "
                             f"{self.num_heads} heads")
        head = c // self.num_heads
        w = self.param("in_proj_kernel", nn.initializers.xavier_uniform(), (c, 3 * c),
                       self.param_dtype)
        bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * c,), self.param_dtype)
        w, bias = w.astype(self.dtype), bias.astype(self.dtype)

        def project(x, i):
            y = x @ w[:, i * c:(i + 1) * c] + bias[i * c:(i + 1) * c]
            return y.reshape(*y.shape[:-1], self.num_heads, head)

        qh, kh, vh = project(q, 0), project(k, 1), project(v, 2)
        qh = qh * jnp.asarray(1.0 / math.sqrt(head), qh.dtype)
        out = attention(qh, kh, vh, self.dtype).reshape(*q.shape[:-1], c)
        return nn.Dense(c, kernel_init=torch_kernel_init, bias_init=nn.initializers.zeros,
                        dtype=self.dtype, param_dtype=self.param_dtype, name="out_proj")(out)


def _linear(features, fan_in, use_bias, dtype, param_dtype, name):
    return nn.Dense(features, use_bias=use_bias, kernel_init=torch_kernel_init,
                    bias_init=torch_bias_init(fan_in), dtype=dtype, param_dtype=param_dtype,
                    name=name)


class TransformerLayer(nn.Module):
    """Pre-LayerNorm transformer layer on (B, L, C) tokens.

    ``x = x + ma(q(n), k(n), v(n))`` with ``n = layernorm1(x)`` and bias-free
    ``q``/``k``/``v`` projections in front of the attention's own projections;
    then ``x = x + drop(fc2(drop(relu(fc1(layernorm2(x))))))`` with bias-free
    ``fc1`` (C -> 4C) and ``fc2`` (4C -> C).
    """

    num_heads: int = 4
    mlp_ratio: int = 4
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = dict(epsilon=LN_EPSILON, **kw)
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        n = nn.LayerNorm(name="layernorm1", **norm)(x)
        q = _linear(c, c, False, name="q", **kw)(n)
        k = _linear(c, c, False, name="k", **kw)(n)
        v = _linear(c, c, False, name="v", **kw)(n)
        x = MultiheadAttention(self.num_heads, name="ma", **kw)(q, k, v) + x
        n = nn.LayerNorm(name="layernorm2", **norm)(x)
        h = drop(nn.relu(_linear(self.mlp_ratio * c, c, False, name="fc1", **kw)(n)))
        return drop(_linear(c, self.mlp_ratio * c, False, name="fc2", **kw)(h)) + x


class TransformerBlock(nn.Module):
    """Tokens of an NHWC map (row-major), learned position term ``p + linear(p)``,
    then ``num_layers`` ``TransformerLayer`` (``tr_i``); back to NHWC."""

    num_heads: int = 4
    num_layers: int = 1
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        p = x.reshape(b, h * w, c)
        p = p + _linear(c, c, True, name="linear", **kw)(p)
        for i in range(self.num_layers):
            p = TransformerLayer(self.num_heads, dropout_rate=self.dropout_rate,
                                 name=f"tr_{i}", **kw)(p, train)
        return p.reshape(b, h, w, c)


class C3TR(nn.Module):
    """CSP block with a transformer inner stack: ``conv1`` (1x1 to half width) ->
    ``m`` (``TransformerBlock``), bypass ``conv2`` (1x1), concat, ``conv3`` (1x1).
    The conv blocks are YOLOX ``ConvBNAct`` with SiLU."""

    features: int
    num_heads: int = 4
    num_layers: int = 1
    expansion: float = 0.5
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        hidden = int(self.features * self.expansion)
        main = ConvBNAct(hidden, 1, 1, name="conv1", **kw)(x, train)
        bypass = ConvBNAct(hidden, 1, 1, name="conv2", **kw)(x, train)
        main = TransformerBlock(self.num_heads, self.num_layers, self.dropout_rate,
                                name="m", **kw)(main, train)
        y = jnp.concatenate([main, bypass], axis=-1)
        return ConvBNAct(self.features, 1, 1, name="conv3", **kw)(y, train)


def _deform_conv(features: int, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Module:
    """The shared modulated deformable 3x3 conv (no bias), passing the dtypes when the
    op module takes them."""
    fields = {f.name for f in dataclasses.fields(ModulatedDeformConv)}
    extra = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if k in fields}
    return ModulatedDeformConv(features, kernel_size=3, stride=1, padding=1, use_bias=False,
                               name=name, **extra)


class DTFE(nn.Module):
    """Dynamic transformer feature enhancement of the stride-32 map: the deformable
    conv ``deconv`` applied twice with shared weights, then ``swt1`` (``C3TR``)."""

    features: int
    num_heads: int = 4
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        deconv = _deform_conv(self.features, self.dtype, self.param_dtype, "deconv")
        x = deconv(deconv(x))
        return C3TR(self.features, self.num_heads, dropout_rate=self.dropout_rate,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="swt1")(x, train)


# --------------------------------------------------------------------------- decoder


class UpBlock(nn.Module):
    """``deconv`` (PyTorch ``ConvTranspose2d(k=3, stride=2, padding=1,
    output_padding=1)``, biased: exactly doubles H and W; sub-pixel form) -> ``bn`` ->
    SiLU."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = TorchConvTranspose(self.features, 3, stride=2, padding=1, output_padding=1,
                               dtype=self.dtype, param_dtype=self.param_dtype, name="deconv")(x)
        x = BatchNorm(use_running_average=not train, momentum=DECODER_BN_MOMENTUM,
                         epsilon=DECODER_BN_EPSILON, use_fast_variance=False, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="bn")(x)
        return nn.silu(x)


class RestorationDecoder(nn.Module):
    """Restores the clean image from ``(dark3, dark4, dark5)`` (strides 8, 16, 32).

    ``conv_1`` up dark5 to dark4's width, concat dark4; ``conv_2`` up to dark3's
    width, concat dark3; ``conv_3`` up to ``channels`` (half of dark3's width), now
    at stride 4; bilinear x4 (align corners); reflection pad 3; ``conv_4`` (7x7,
    biased) to 3 channels; tanh. Returns float32 (B, H, W, 3).
    """

    channels: int
    out_channels: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], train: bool = False) -> jax.Array:
        c3, c4, c5 = features
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = UpBlock(c4.shape[-1], name="conv_1", **kw)(c5, train)
        x = UpBlock(c3.shape[-1], name="conv_2", **kw)(jnp.concatenate([x, c4], -1), train)
        x = UpBlock(self.channels, name="conv_3", **kw)(jnp.concatenate([x, c3], -1), train)
        _, h, w, _ = x.shape
        # The resize (with its reflection padding) is two constant matrices, applied
        # inside conv_4, which never forms the resized map (ops/narrow_conv.py).
        resize = (align_corners_matrix(h, 4 * h, 3), align_corners_matrix(w, 4 * w, 3))
        x = NarrowConv(self.out_channels, 7, name="conv_4", **kw)(x, resize=resize)
        return jnp.tanh(x.astype(jnp.float32))


# --------------------------------------------------------------------------- network


def togethernet_channels(spec: YOLOXSize) -> dict[str, int]:
    """Channel counts of the TogetherNet additions for a YOLOX size (the reference
    "s" values are dtfe 512, sc 128/128/256, decoder 256/128/64)."""
    base = int(64 * spec.width)
    return {"dtfe": 16 * base, "sc1": 4 * base, "sc2": 4 * base, "sc3": 8 * base,
            "decoder": (8 * base, 4 * base, 2 * base)}


class TogetherNet(YOLOX):
    """YOLOX with DTFE, self-calibrated neck blocks and a restoration decoder.

    Attributes (besides those of ``YOLOX``):
      num_heads: attention heads of the DTFE transformer layer (4).
      dropout_rate: dropout of the transformer MLP in training mode (0.1).

    ``__call__(x, train, restore=False)`` returns ``{"heads": [...], "restored":
    array or None}``; see the module docstring.
    """

    num_heads: int = 4
    dropout_rate: float = 0.1

    def make_neck(self, spec: YOLOXSize) -> nn.Module:
        return SCPAFPN(spec.depth, spec.width, spec.depthwise, **self._common())

    def setup(self):
        super().setup()
        spec = self.spec
        ch = togethernet_channels(spec)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.dtfe = DTFE(ch["dtfe"], self.num_heads, self.dropout_rate, **kw)
        self.decoder = RestorationDecoder(ch["decoder"][2], **kw)

    def features(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        """Backbone maps ``(dark3, dark4, dark5)``, dark5 after the DTFE."""
        c3, c4, c5 = super().features(x, train)
        return c3, c4, self.dtfe(c5, train)

    def restoration(self, features: Sequence[jax.Array], train: bool = False) -> jax.Array:
        """The decoder's float32 (B, H, W, 3) image in [-1, 1] from ``features``."""
        return self.decoder(features, train)

    def __call__(self, x: jax.Array, train: bool = False, restore: bool = False) -> dict:
        feats = self.features(x, train)
        heads = self.predict(self.pyramid(feats, train), train)
        restored = None
        # The decoder is always run at initialisation so that its variables exist.
        if restore or self.is_initializing():
            restored = self.restoration(feats, train)
        return {"heads": heads, "restored": restored if restore else None}


def decoder_param_count(variables: Any) -> int:
    """Trainable scalars of the restoration decoder alone (``params/decoder``)."""
    params = variables.get("params", variables)
    return param_count(params.get("decoder", {}))


__all__ = [
    "C3TR",
    "DTFE",
    "SCPAFPN",
    "MultiheadAttention",
    "RestorationDecoder",
    "SCBottleneck",
    "SCConv",
    "TogetherNet",
    "TransformerBlock",
    "TransformerLayer",
    "UpBlock",
    "align_corners_matrix",
    "avg_pool_floor",
    "decoder_param_count",
    "resize_bilinear_align_corners",
    "resize_nearest",
    "togethernet_channels",
]
