"""Depth-guided dehazing ("Image Dehazing via Self-supervised Depth Guidance", Pattern
Recognition 2024): a depth network, a learned mix and a transformer dehazer, NHWC
flax.linen.

:class:`DepthDehaze` is the official ``multi_Net``; it takes a hazy RGB image in
[0, 1] (the official test script feeds ``ToTensor()`` images, unnormalised)::

    inv_depth = DepthNet(hazy)                               (N, H, W, 1), in (0, 1]
    y         = s * [inv_depth x3] + (1 - s) * hazy,  s = sigmoid(w), w = -0.6 at start
    dehazed   = TfuseNet(y, hazy)                            (N, H, W, 3), tanh output

    model = DepthDehaze()                    # encoder="densenet169"; "tiny" for tests
    v = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    out = model.apply(v, hazy, train=False)  # {"dehazed": ..., "inv_depth": ...}
    out, upd = model.apply(v, hazy, train=True, mutable=["batch_stats"],
                           rngs={"dropout": key})   # drop-path needs "dropout"

The dehazed image is the tanh output as it is: the official network is trained and
scored against clear images in [0, 1] without rescaling, so its output lives in
[-1, 1] but is read as a [0, 1] image.

**Depth net** (:class:`DepthNet`, DenseDepth style): a DenseNet encoder
(:mod:`adverse_vision.models.densenet`, torchvision layout, final ``norm5`` + ReLU);
``midconv`` 1x1 C -> C (C = 1664 for DenseNet-169); four up-projections ``up1..up4``
(bilinear resize with ``align_corners=True`` to the skip's size, concat the skip,
3x3 ``conv1``, 3x3 ``conv2``, LeakyReLU 0.2 after ``conv2`` only) to C/2, C/4, C/8,
C/16 channels (832, 416, 208, 104), whose skips are the second transition's output
(/16), the first transition's output (/8), the pooled stem (/4) and the stem before
its pool (/2); ``finalconv`` 3x3 to one channel at /2; bilinear (align corners) to the
input size; values <= 1 set to 1 (PyTorch ``nn.Threshold(1, 1)``) and inverted. The
official up-projection resizes to twice its input's size, which equals the skip's size
whenever the official network runs at all (see below); resizing to the skip's size
extends it to the sizes where the two differ. Evaluated, ``conv1``'s part on the
resized map mixes the channels before the resize where that is less arithmetic
(:mod:`adverse_vision.ops.resized_conv`; all four up-projections of DenseNet-169).

**Tfuse dehazer** (:class:`TfuseNet`, 64 channels throughout, the official
``Tfuse_Net``). Stage 1 at /2: overlapping patch embeddings (7x7 stride-2 conv +
LayerNorm) of ``y`` (``patch_embed1``, queries) and of the hazy image
(``patch_embed2``, keys and values); two cross-attention blocks ``block1_{0,1}``:
``h = h + attn(norm1(q_tokens), norm2(h))``, ``h = h + mlp(norm3(h))``, where the
attention (1 head) reduces the key/value map by a 4x4 stride-4 conv ``sr`` +
LayerNorm ``norm`` and only the hazy stream is updated (the query tokens are those of
the patch embedding in both blocks); then ``norm1``. Stage 2 at /4: ``patch_embed3``
(3x3 stride 2 + LayerNorm), two self-attention blocks ``block2_{0,1}`` (2 heads,
reduction 2x2 stride 2), ``norm2``. The MLPs are Mix-FFNs: Linear 64 -> 128, 3x3
depthwise conv, exact GELU, Linear 128 -> 64. The blocks' and stages' LayerNorms
have epsilon 1e-6, those of the patch embeddings and of the key/value reductions
PyTorch's 1e-5; q and kv projections are biased. Drop-path (stochastic depth) rates
rise linearly from 0 to ``drop_path_rate`` (0.1) over the eight blocks of the
official four-stage configuration, of which the four used here have 0, 1/70, 2/70
and 3/70; it is active only in training. Decoder: ``deconv1``, ``deconv2``, each a
4x4 stride-2 transposed conv (padding 1) -> reflection pad of 1 on the left and top
only -> 2x2 average pool with stride 1 -> ReLU (from /4 to /1); then three 5x5 convs
``output_0`` (64), ``output_1`` (64), ``output_2`` (3) with no activation between
them, and tanh; the three are computed as one 13x13 convolution 64 -> 3 with exact
borders where that is less arithmetic (:mod:`adverse_vision.ops.conv_chain`).

**Sizes.** The official network runs only where its DenseNet's maps halve exactly,
i.e. where ``ceil(H / 2)`` and ``ceil(W / 2)`` are multiples of 16 (sides of 32 k or
32 k - 1; at 32 k - 1 its dehazed image has one row or column more than its input);
elsewhere an up-projection's concat fails, and the official test script resizes every
image to a multiple of 32 first. The Tfuse dehazer alone needs multiples of 4 (its
stride-2 embeddings round up, so other sizes give a larger output). Here every input
size works: :class:`DepthDehaze` reflection-pads the image at the bottom and right to
a multiple of 32, runs the network and crops the outputs back;
:class:`DepthNet` and :class:`TfuseNet` used alone pad the same way to 32 and to 4
(edge padding where the image is not larger than the padding). At multiples of 32
nothing is padded and the network is the official one.

**Guidance variants.** ``DepthDehaze(guidance="hazy")`` feeds the hazy image to the
mix instead of the depth (y = hazy: the "no depth guidance" ablation; the depth net is
not built and ``inv_depth`` is None); ``apply(v, hazy, depth=d)`` uses a given
inverted depth ``d`` (N, H, W, 1) instead of the depth net's (an "oracle" depth) and
returns it as ``inv_depth``. The parts run on their own through
``apply(v, hazy, method="estimate_depth")`` and ``apply(v, hazy, guide,
method="dehaze")``, or as modules of their own (``DepthNet``, ``Mix``, ``TfuseNet``
with ``params["depth"]``, ``params["mix"]``, ``params["dehazer"]``).

Initialisation follows the official modules: the transformer's Linear kernels
truncated normal (std 0.02) with zero biases, its convs normal with variance
``2 / fan_out`` (fan out per group) and zero biases, LayerNorms at 1 and 0; the
decoders' convs PyTorch's default; the DenseNet as torchvision.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adverse_vision.models.densenet import DenseNetEncoder, DenseNetLayout, resolve_layout
from adverse_vision.models.layers import (Conv, ConvParams, TorchConvTranspose, remat,
                                          torch_bias_init, torch_kernel_init)
from adverse_vision.models.togethernet import align_corners_matrix, resize_bilinear_align_corners
from adverse_vision.ops import tap_conv
from adverse_vision.ops.attention import attention
from adverse_vision.ops.conv_chain import conv_chain
from adverse_vision.ops.resized_conv import resized_conv, worth_mixing_first

Dtype = Any

__all__ = ["DepthDehaze", "DepthNet", "Mix", "TfuseNet", "UpProjection", "pad_to_multiple",
           "GUIDANCES", "MIX_INIT", "TFUSE_DIM"]

#: Initial value of the mix logit ``w`` (``multi_Net``'s ``Mix(m=-0.6)``).
MIX_INIT = -0.6
#: Channels of the Tfuse dehazer.
TFUSE_DIM = 64
#: What the mix blends with the hazy image: the estimated depth, or the hazy image itself.
GUIDANCES = ("depth", "hazy")
#: Slope of the up-projections' LeakyReLU.
UP_SLOPE = 0.2
#: Multiples the parts need: the DenseNet's /32 map, the dehazer's /4 map.
DEPTH_MULTIPLE = 32
TFUSE_MULTIPLE = 4
TFUSE_MIN_SIZE = 8
# Tfuse: attention heads and key/value reduction of the two stages; MLP width factor;
# the official drop-path schedule spans eight blocks (four stages of two); LayerNorm
# epsilons of the blocks and of the embeddings / reductions.
_HEADS = (1, 2)
_REDUCTION = (4, 2)
_MLP_RATIO = 2
_DROP_PATH_BLOCKS = 8
_LN_BLOCK_EPS = 1e-6
_LN_TORCH_EPS = 1e-5


# ----------------------------------------------------------------------------- padding


def pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
    """Pads an NHWC map at the bottom and right to multiples of ``multiple``: by
    reflection where the padding is smaller than the side, else by repeating the edge."""
    _, h, w, _ = x.shape
    for axis, side in ((1, h), (2, w)):
        extra = -side % multiple
        if extra:
            widths = [(0, 0)] * x.ndim
            widths[axis] = (0, extra)
            x = jnp.pad(x, widths, mode="reflect" if extra < side else "edge")
    return x


def _check_images(x: jax.Array, channels: int, who: str, what: str = "images") -> None:
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(f"{who}: expected {what} of shape (N, H, W, {channels}), got shape "
                         f"{tuple(x.shape)}")


# ----------------------------------------------------------------------------- depth net


def _torch_conv(features: int, kernel: int, fan_in: int, name: str, dtype: Dtype,
                param_dtype: Dtype) -> nn.Conv:
    """Biased conv, padding ``kernel // 2``, PyTorch's default initialisers."""
    p = kernel // 2
    return Conv(features, (kernel, kernel), padding=((p, p), (p, p)),
                   kernel_init=torch_kernel_init,
                   bias_init=torch_bias_init(fan_in * kernel * kernel),
                   dtype=dtype, param_dtype=param_dtype, name=name)


class UpProjection(nn.Module):
    """Bilinear (align corners) resize to the skip's size, concat ``[x, skip]``, 3x3
    ``conv1``, 3x3 ``conv2``, LeakyReLU(0.2).

    Evaluated (inference, evaluation), ``conv1`` is the sum of its convolutions of the
    resized ``x`` and of the skip (its kernel split along the input channels), the
    first with ``x``'s channels mixed at the small size and then resized
    (:mod:`adverse_vision.ops.resized_conv`) where that is less arithmetic (the
    up-projections of the full-size network); differentiated, resize, concatenate and
    convolve, whose backward pass was the faster one (see :func:`_mixed_first_conv1`)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        (_, h, w, cx), (height, width) = x.shape, skip.shape[1:3]
        kernel, bias = ConvParams(self.features, 3, cx + skip.shape[-1],
                                  param_dtype=self.param_dtype, name="conv1")()
        x, skip, kernel, bias = nn.dtypes.promote_dtype(x, skip, kernel, bias, dtype=self.dtype)
        # align-corners resize, then conv1's zero padding as a zero row on each side
        rows = np.pad(align_corners_matrix(h, height), ((1, 1), (0, 0)))
        cols = np.pad(align_corners_matrix(w, width), ((1, 1), (0, 0)))
        if worth_mixing_first(x.shape, (3, 3, cx, self.features), rows, cols):
            y = _mixed_first_conv1(x, skip, kernel, rows, cols)
        else:
            y = _resized_conv1(x, skip, kernel)
        y = y + bias
        y = _torch_conv(self.features, 3, self.features, "conv2", **kw)(y)
        return nn.leaky_relu(y, negative_slope=UP_SLOPE)


def _resized_conv1(x: jax.Array, skip: jax.Array, kernel: jax.Array) -> jax.Array:
    """An up-projection's ``conv1`` as the official network computes it: ``x`` resized
    to the skip's size, concatenated with it, convolved."""
    resized = resize_bilinear_align_corners(x, skip.shape[1], skip.shape[2])
    return _conv_same(jnp.concatenate([resized, skip], axis=-1), kernel)


def _mixed_first_conv1(x: jax.Array, skip: jax.Array, kernel: jax.Array, rows: np.ndarray,
                       cols: np.ndarray) -> jax.Array:
    """:func:`_resized_conv1` with ``x``'s part computed by ``resized_conv`` (``rows``,
    ``cols``: the resize with conv1's zero padding), differentiated as
    :func:`_resized_conv1`: with the mixed form's own backward pass the dehazing train
    step (256x256, batch 8) was 3 % slower, where inference at 640x640 was 9 % faster."""
    cx = x.shape[-1]

    @jax.custom_vjp
    def conv1(x, skip, kernel):
        return resized_conv(x, kernel[:, :, :cx], rows, cols) + _conv_same(skip, kernel[:, :, cx:])

    def conv1_fwd(x, skip, kernel):
        return jax.vjp(_resized_conv1, x, skip, kernel)  # (value, its backward pass)

    def conv1_bwd(backward, g):
        return backward(g)

    conv1.defvjp(conv1_fwd, conv1_bwd)
    return conv1(x, skip, kernel)


def _conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 convolution zero padded to keep the size, as ``Conv`` computes it."""
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    return tap_conv.conv_general_dilated(x, kernel, (1, 1), ((ph, ph), (pw, pw)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))


class DepthNet(nn.Module):
    """The depth network (see the module docstring): RGB (N, H, W, 3) in [0, 1] ->
    inverted depth (N, H, W, 1) in (0, 1], float32; with ``invert=False`` the depth
    before the clamp at 1 and the inversion. In training the clamp passes the gradient
    of ``1 / depth`` through (its value is unchanged).

    Attributes:
      encoder: DenseNet layout, a name of ``densenet.LAYOUTS`` or a ``DenseNetLayout``.
      remat: recompute the encoder's dense blocks in the backward pass.
    """

    encoder: Union[str, DenseNetLayout] = "densenet169"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, invert: bool = True) -> jax.Array:
        _check_images(x, 3, "DepthNet")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = resolve_layout(self.encoder).num_features
        _, h, w, _ = x.shape
        maps = DenseNetEncoder(self.encoder, remat=self.remat, name="encoder", **kw)(
            pad_to_multiple(x, DEPTH_MULTIPLE), train)
        y = _torch_conv(c, 1, c, "midconv", **kw)(maps.final)
        skips = (maps.transition2, maps.transition1, maps.pooled, maps.stem)
        for i, skip in enumerate(skips, start=1):
            y = UpProjection(c // 2 ** i, name=f"up{i}", **kw)(y, skip)
        y = _torch_conv(1, 3, c // 16, "finalconv", **kw)(y)
        y = resize_bilinear_align_corners(y, 2 * y.shape[1], 2 * y.shape[2])
        depth = y[:, :h, :w].astype(jnp.float32)
        if not invert:
            return depth
        clamped = jnp.where(depth > 1.0, depth, 1.0)
        if train:
            # The clamp's value with the gradient of 1 / depth (a straight-through
            # estimator): where a fresh network's depth is below 1 the clamp alone would
            # pass no gradient at all, and it would never learn.
            depth = jnp.maximum(depth, 1e-3)
            clamped = depth + jax.lax.stop_gradient(clamped - depth)
        return 1.0 / clamped


# ----------------------------------------------------------------------------- mix


class Mix(nn.Module):
    """``s * guide + (1 - s) * hazy`` with ``s = sigmoid(w)``, ``w`` a learned scalar
    (parameter ``w`` of shape (1,), as the official one). A one-channel ``guide`` is
    repeated over the three colour channels."""

    init_value: float = MIX_INIT
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, guide: jax.Array, hazy: jax.Array) -> jax.Array:
        w = self.param("w", nn.initializers.constant(self.init_value), (1,), self.param_dtype)
        s = jax.nn.sigmoid(w.astype(jnp.float32)).astype(self.dtype)
        guide = jnp.broadcast_to(guide.astype(self.dtype), hazy.shape)
        return s * guide + (1 - s) * hazy.astype(self.dtype)


# ----------------------------------------------------------------------------- Tfuse


_dense_init = nn.initializers.truncated_normal(stddev=0.02)


def _dense(features: int, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.Dense:
    return nn.Dense(features, kernel_init=_dense_init, bias_init=nn.initializers.zeros,
                    dtype=dtype, param_dtype=param_dtype, name=name)


def _fan_out_conv(features: int, kernel: int, stride: int, padding: int, name: str,
                  dtype: Dtype, param_dtype: Dtype, groups: int = 1) -> nn.Conv:
    """Biased conv initialised as the official transformer's: normal with variance
    ``2 / (kernel^2 * features / groups)``, zero bias."""
    std = math.sqrt(2.0 / (kernel * kernel * features // groups))
    return Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((padding, padding), (padding, padding)),
                   feature_group_count=groups, kernel_init=nn.initializers.normal(std),
                   bias_init=nn.initializers.zeros, dtype=dtype, param_dtype=param_dtype,
                   name=name)


def _layer_norm(name: str, epsilon: float, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)


class DropPath(nn.Module):
    """Stochastic depth: in training, zeroes a sample's branch with probability
    ``rate`` and scales the kept ones by ``1 / (1 - rate)`` (needs a ``"dropout"`` rng)."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep,
                                    (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: ``proj`` (k x k conv, stride s, padding k // 2) and
    LayerNorm ``norm`` (epsilon 1e-5); NHWC map in, NHWC map out."""

    features: int
    kernel: int
    stride: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = _fan_out_conv(self.features, self.kernel, self.stride, self.kernel // 2, "proj",
                          **kw)(x)
        return _layer_norm("norm", _LN_TORCH_EPS, **kw)(x)


class MixFFN(nn.Module):
    """``fc1`` (C -> ``ratio`` C), 3x3 depthwise ``dwconv``, exact GELU, ``fc2`` (back to C)."""

    ratio: int = _MLP_RATIO
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        hidden = self.ratio * c
        x = _dense(hidden, "fc1", **kw)(x)
        x = _fan_out_conv(hidden, 3, 1, 1, "dwconv", groups=hidden, **kw)(x)
        x = nn.gelu(x, approximate=False)
        return _dense(c, "fc2", **kw)(x)


class ReducedAttention(nn.Module):
    """Attention of query map ``x`` over key/value map ``y`` (both NHWC, C channels),
    whose keys and values come from ``y`` reduced by a ``reduction`` x ``reduction``
    stride-``reduction`` conv ``sr`` and LayerNorm ``norm`` (epsilon 1e-5); biased
    ``q``, ``kv`` (keys then values) and ``proj``; logits scaled by head_dim^-1/2."""

    num_heads: int
    reduction: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, h, w, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"ReducedAttention: {c} channels are not divisible by "
                             f"{self.num_heads} heads")
        head = c // self.num_heads
        if self.reduction > 1:
            r = self.reduction
            y = _fan_out_conv(c, r, r, 0, "sr", **kw)(y)
            y = _layer_norm("norm", _LN_TORCH_EPS, **kw)(y)
        q = _dense(c, "q", **kw)(x).reshape(b, h * w, self.num_heads, head)
        kv = _dense(2 * c, "kv", **kw)(y).reshape(b, -1, 2, self.num_heads, head)
        k, v = kv[:, :, 0], kv[:, :, 1]
        q = q * jnp.asarray(head ** -0.5, q.dtype)
        out = attention(q, k, v, self.dtype).reshape(b, h, w, c)
        return _dense(c, "proj", **kw)(out)


class CrossBlock(nn.Module):
    """Stage-1 block: ``h = h + attn(norm1(q), norm2(h))``, ``h = h + mlp(norm3(h))``
    (drop-path on both branches); ``q`` is not updated."""

    num_heads: int
    reduction: int
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, q: jax.Array, h: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = DropPath(self.drop_path)
        a = ReducedAttention(self.num_heads, self.reduction, name="attn", **kw)(
            _layer_norm("norm1", _LN_BLOCK_EPS, **kw)(q),
            _layer_norm("norm2", _LN_BLOCK_EPS, **kw)(h))
        h = h + drop(a, train)
        return h + drop(MixFFN(name="mlp", **kw)(_layer_norm("norm3", _LN_BLOCK_EPS, **kw)(h)),
                        train)


class SelfBlock(nn.Module):
    """Stage-2 block: ``x = x + attn(norm1(x), norm1(x))``, ``x = x + mlp(norm2(x))``."""

    num_heads: int
    reduction: int
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = DropPath(self.drop_path)
        n = _layer_norm("norm1", _LN_BLOCK_EPS, **kw)(x)
        x = x + drop(ReducedAttention(self.num_heads, self.reduction, name="attn", **kw)(n, n),
                     train)
        return x + drop(MixFFN(name="mlp", **kw)(_layer_norm("norm2", _LN_BLOCK_EPS, **kw)(x)),
                        train)


class UpDeconv(nn.Module):
    """4x4 stride-2 transposed conv (padding 1, doubles the size) ``deconv``, reflection
    pad of one row on top and one column on the left, 2x2 average pool with stride 1,
    ReLU."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = TorchConvTranspose(self.features, 4, stride=2, padding=1, dtype=self.dtype,
                               param_dtype=self.param_dtype, name="deconv")(x)
        x = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)), mode="reflect")
        x = nn.avg_pool(x, (2, 2), strides=(1, 1), padding="VALID")
        return nn.relu(x)


class TfuseNet(nn.Module):
    """The Tfuse dehazer (see the module docstring): ``(y, hazy)`` (N, H, W, 3) ->
    dehazed (N, H, W, 3) float32, tanh output.

    Attributes:
      dim: channels (64 in the official network; smaller for tests, even).
      drop_path_rate: the last rate of the official drop-path schedule (0.1); 0 trains
        without a ``"dropout"`` rng.
    """

    dim: int = TFUSE_DIM
    drop_path_rate: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False  # recompute the attention blocks in the backward pass

    @nn.compact
    def __call__(self, y: jax.Array, hazy: jax.Array, train: bool = False) -> jax.Array:
        _check_images(y, 3, "TfuseNet", "guided images y")
        _check_images(hazy, 3, "TfuseNet", "hazy images")
        if y.shape != hazy.shape:
            raise ValueError(f"TfuseNet: y and the hazy image differ in shape: "
                             f"{tuple(y.shape)} vs {tuple(hazy.shape)}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = self.dim
        _, h, w, _ = hazy.shape
        rates = [self.drop_path_rate * i / (_DROP_PATH_BLOCKS - 1)
                 for i in range(_DROP_PATH_BLOCKS)]
        y = pad_to_multiple(y.astype(self.dtype), TFUSE_MULTIPLE)
        hazy = pad_to_multiple(hazy.astype(self.dtype), TFUSE_MULTIPLE)
        if min(hazy.shape[1:3]) < TFUSE_MIN_SIZE:  # the /4 map must survive the reductions
            raise ValueError(f"TfuseNet: images of at least {TFUSE_MIN_SIZE}x{TFUSE_MIN_SIZE} "
                             f"pixels needed, got {h}x{w}")
        cross = remat(CrossBlock, self.remat, static_argnums=(3,))
        self_block = remat(SelfBlock, self.remat)
        q = PatchEmbed(c, 7, 2, name="patch_embed1", **kw)(y)
        t = PatchEmbed(c, 7, 2, name="patch_embed2", **kw)(hazy)
        for i in range(2):
            t = cross(_HEADS[0], _REDUCTION[0], rates[i], name=f"block1_{i}", **kw)(
                q, t, train)
        t = _layer_norm("norm1", _LN_BLOCK_EPS, **kw)(t)
        t = PatchEmbed(c, 3, 2, name="patch_embed3", **kw)(t)
        for i in range(2):
            t = self_block(_HEADS[1], _REDUCTION[1], rates[2 + i], name=f"block2_{i}", **kw)(
                t, train)
        t = _layer_norm("norm2", _LN_BLOCK_EPS, **kw)(t)
        t = UpDeconv(c, name="deconv1", **kw)(t)
        t = UpDeconv(c, name="deconv2", **kw)(t)
        # The three output convolutions have nothing between them: one 13x13 convolution
        # 64 -> 3 where that is less arithmetic (ops/conv_chain.py), borders exact.
        kernels, biases = zip(*(ConvParams(f, 5, c, name=f"output_{i}",
                                           param_dtype=self.param_dtype)()
                                for i, f in enumerate((c, c, 3))))
        with jax.named_scope("output"):
            t = conv_chain(t, kernels, biases)
        return jnp.tanh(t[:, :h, :w].astype(jnp.float32))


# ----------------------------------------------------------------------------- network


class DepthDehaze(nn.Module):
    """The whole network (the official ``multi_Net``; see the module docstring).

    Attributes:
      encoder: DenseNet layout of the depth net ("densenet169", "densenet121", "tiny"
        or a ``DenseNetLayout``).
      guidance: "depth" (the method) or "hazy" (the mix gets the hazy image: no depth
        guidance, no depth net).
      tfuse_dim, drop_path_rate: of the dehazer (:class:`TfuseNet`).
      remat: recompute the depth net's dense blocks and the dehazer's attention blocks
        in the backward pass.

    ``__call__(hazy, train=False, depth=None)`` -> ``{"dehazed": (N, H, W, 3),
    "inv_depth": (N, H, W, 1) or None}``, float32; ``depth`` (N, H, W, 1) replaces the
    depth net's inverted depth. Inputs are padded to multiples of 32 and the outputs
    cropped back.
    """

    encoder: Union[str, DenseNetLayout] = "densenet169"
    guidance: str = "depth"
    tfuse_dim: int = TFUSE_DIM
    drop_path_rate: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self):
        if self.guidance not in GUIDANCES:
            raise ValueError(f"DepthDehaze.guidance: expected one of {GUIDANCES}, got "
                             f"{self.guidance!r}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.guidance == "depth":
            self.depth = DepthNet(self.encoder, remat=self.remat, **kw)
        self.mix = Mix(**kw)
        self.dehazer = TfuseNet(self.tfuse_dim, self.drop_path_rate, remat=self.remat, **kw)

    def estimate_depth(self, hazy: jax.Array, train: bool = False) -> jax.Array:
        """The depth net's inverted depth (N, H, W, 1) in (0, 1]."""
        if self.guidance != "depth":
            raise ValueError("DepthDehaze.estimate_depth: the model is built with "
                             "guidance='hazy' and has no depth net")
        _check_images(hazy, 3, "DepthDehaze")
        return self.depth(hazy, train)

    def dehaze(self, hazy: jax.Array, guide: jax.Array, train: bool = False) -> jax.Array:
        """Mix ``guide`` (N, H, W, 1 or 3) into the hazy image and dehaze: (N, H, W, 3)."""
        _check_images(hazy, 3, "DepthDehaze")
        if guide.ndim != 4 or guide.shape[:3] != hazy.shape[:3] or guide.shape[-1] not in (1, 3):
            raise ValueError(f"DepthDehaze: expected a guide of shape {tuple(hazy.shape[:3])} "
                             f"+ (1,) or (3,) for hazy images {tuple(hazy.shape)}, got shape "
                             f"{tuple(guide.shape)}")
        _, h, w, _ = hazy.shape
        hazy = pad_to_multiple(hazy, DEPTH_MULTIPLE)
        y = self.mix(pad_to_multiple(guide, DEPTH_MULTIPLE), hazy)
        return self.dehazer(y, hazy, train)[:, :h, :w]

    def __call__(self, hazy: jax.Array, train: bool = False,
                 depth: Optional[jax.Array] = None) -> dict[str, Optional[jax.Array]]:
        _check_images(hazy, 3, "DepthDehaze")
        if depth is not None:
            if self.guidance != "depth":
                raise ValueError("DepthDehaze: a depth map was given to a model built with "
                                 "guidance='hazy'")
            if depth.shape != hazy.shape[:3] + (1,):
                raise ValueError(f"DepthDehaze: expected a depth map of shape "
                                 f"{tuple(hazy.shape[:3]) + (1,)}, got {tuple(depth.shape)}")
        _, h, w, _ = hazy.shape
        # Padded once, so that the depth net and the dehazer see the same image.
        hazy = pad_to_multiple(hazy, DEPTH_MULTIPLE)
        if self.guidance == "hazy":
            return {"dehazed": self.dehaze(hazy, hazy, train)[:, :h, :w], "inv_depth": None}
        # The depth net runs at initialisation in any case, so that its variables exist.
        if depth is None or self.is_initializing():
            inv_depth = self.depth(hazy, train)
        if depth is not None:
            inv_depth = pad_to_multiple(depth.astype(jnp.float32), DEPTH_MULTIPLE)
        return {"dehazed": self.dehaze(hazy, inv_depth, train)[:, :h, :w],
                "inv_depth": inv_depth[:, :h, :w]}
