"""Modulated deformable convolution (DCNv2) with TogetherNet's sampling conventions.

TogetherNet's DTFE block (official repository ``yz-wang/TogetherNet``,
``nets/deform_conv_v2.py`` class ``DeformConv2D``, used in ``nets/darknet.py`` as
``deconv`` and applied twice with the same weights after ``dark5``) implements the
deformable convolution in plain PyTorch with a gather, not with the CUDA kernels of
torchvision/mmcv. Its conventions differ from those libraries in several details;
this module reproduces them, so that weights imported from the official network give
the same outputs. In the notation below ``k`` is the kernel size, ``N = k * k`` the
number of taps, ``n = r * k + t`` the tap in row ``r`` and column ``t`` of the kernel,
and ``(i, j)`` an output position.

Offsets
  ``(B, Ho, Wo, 2N)``. Channels ``[0, N)`` are ROW (vertical, H) offsets of taps
  ``0..N-1``; channels ``[N, 2N)`` are COLUMN (horizontal, W) offsets of the same
  taps. (torchvision and mmcv interleave ``(dy, dx)`` per tap instead.) In the
  official module they come from a 3x3 convolution of the unpadded input with
  padding 1, stride ``stride`` and a bias (``p_conv``).
Mask
  ``(B, Ho, Wo, N)``, channel ``n`` modulates tap ``n``; the official module takes
  ``sigmoid`` of a second 3x3 conv with bias (``m_conv``). ``None`` gives DCNv1.
Sample positions
  The input is zero padded by ``padding`` on every side (``Hp = H + 2 * padding``,
  ``Wp`` likewise) and all positions are in padded coordinates:
  ``row = (stride * i + 1) + (r - 1) + offset_row``, ``col`` likewise. (The official
  base grid starts at 1, the kernel centre for ``k = 3``; this function uses the
  centre ``(k - 1) // 2``, identical for ``k = 3``.) The official module takes the
  output size from its offset conv (3x3, padding 1); this function takes it from
  ``padding`` as a convolution does; both agree when ``padding = (k - 1) // 2``.
Bilinear sampling, per axis (rows shown; columns are the same with ``Wp``)
  ``q0 = floor(row)`` (from the UNCLAMPED position), ``q1 = q0 + 1``; both are then
  clamped to ``[0, Hp - 1]``, and so is the position itself: ``rc = clip(row, 0,
  Hp - 1)``. The weights use the clamped corners and the clamped position:
  ``w0 = 1 + (q0 - rc)``, ``w1 = 1 - (q1 - rc)``. Inside the map these are the
  usual ``1 - frac`` and ``frac``. Outside it, and exactly on the last row, both
  corners collapse onto the border row and BOTH weights are 1, so the border value is
  counted twice. With ``padding >= 1`` the border row is zero padding and the
  doubling is invisible (out-of-map samples read 0); with ``padding = 0`` it shows.
  (Clamping the position itself changes no value, since two coinciding corners
  always get weights summing to 2, but it keeps far-away samples free of
  cancellation between huge weights.)
  The four corner weights are ``lt = w0r * w0c``, ``rb = w1r * w1c``,
  ``lb = w0r * w1c``, ``rt = w1r * w0c`` and the sample is
  ``lt * x[q0r, q0c] + rb * x[q1r, q1c] + lb * x[q0r, q1c] + rt * x[q1r, q0c]``
  (summed in that order), then multiplied by the mask.
Convolution
  The official code lays the ``N`` samples of each output position out as a
  ``k x k`` cell of a ``(k Ho, k Wo)`` map and applies a ``k x k`` convolution of
  stride ``k`` without bias: output ``= sum_{n, c} sample[n, c] * W[r, t, c, :]``,
  computed here as one contraction with the HWIO kernel reshaped to ``(N * Cin,
  Cout)``.

Gradients: the floor is not differentiated (as in the official ``p.detach().floor()``);
gradients reach the offsets through the clamped position in the weights, so they are
zero for samples outside the padded map. The position clamp passes its gradient on
the closed interval like ``torch.clamp``; at integer positions the offset gradient is
therefore the one-sided derivative towards larger positions, as in the official code.
The official module also scales by ``lr_ratio = 0.1`` every gradient leaving
``p_conv`` and ``m_conv`` (weights, biases and the input) through a backward hook;
``ModulatedDeformConv`` does the same.

Sampling geometry (positions, corner weights) is computed in float32 (float64 when
the offsets are float64) whatever the computation dtype; the interpolated samples are
cast to the computation dtype for the final contraction.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from adverse_vision.models.layers import torch_bias_init, torch_kernel_init

__all__ = ["ModulatedDeformConv", "deform_conv2d", "scale_gradient"]

Dtype = Any


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"deform_conv2d: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _axis_terms(pos: jax.Array, size: int):
    """Clamped corner indices and weights along one axis (official conventions)."""
    hi = size - 1
    q0 = jnp.floor(lax.stop_gradient(pos))
    q1 = jnp.clip(q0 + 1, 0, hi)
    q0 = jnp.clip(q0, 0, hi)
    # clamp whose gradient passes on the closed interval [0, hi], as torch.clamp does
    # (jnp.clip would halve it exactly on the bounds, e.g. for zero offsets at the border)
    pc = jnp.where((pos >= 0) & (pos <= hi), pos, jnp.clip(pos, 0, hi))
    w0 = 1 + (q0 - pc)
    w1 = 1 - (q1 - pc)
    return q0.astype(jnp.int32), q1.astype(jnp.int32), w0, w1


def deform_conv2d(
    x: jax.Array,
    offsets: jax.Array,
    mask: jax.Array | None,
    kernel: jax.Array,
    *,
    stride: int = 1,
    padding: int = 1,
    dtype: Dtype | None = None,
    precision: Any = None,
) -> jax.Array:
    """Deformable (``mask=None``) or modulated deformable convolution, NHWC.

    Args:
      x: ``(B, H, W, Cin)`` input.
      offsets: ``(B, Ho, Wo, 2 * k * k)`` sampling offsets in pixels: channels
        ``[0, k*k)`` row offsets, ``[k*k, 2*k*k)`` column offsets, tap ``n = r * k + t``
        (the official TogetherNet order, see the module docstring).
      mask: ``(B, Ho, Wo, k * k)`` modulation, already passed through the sigmoid, or
        ``None`` (no modulation, DCNv1).
      kernel: ``(k, k, Cin, Cout)`` HWIO kernel of the convolution (no bias).
      stride: stride of the sampling grid.
      padding: zero padding of ``x`` on every side.
      dtype: computation dtype of the final contraction and of the output; default
        the promoted dtype of ``x`` and ``kernel``.
      precision: ``lax.Precision`` of the final contraction.

    Returns:
      ``(B, Ho, Wo, Cout)`` with ``Ho = (H + 2 * padding - k) // stride + 1`` (and Wo
      likewise).

    Raises:
      ValueError: on inconsistent shapes or invalid ``stride``/``padding``.
    """
    stride = _check_int("stride", stride, 1)
    padding = _check_int("padding", padding, 0)
    x = jnp.asarray(x)
    offsets = jnp.asarray(offsets)
    kernel = jnp.asarray(kernel)
    if x.ndim != 4:
        raise ValueError(f"deform_conv2d: x must be (B, H, W, Cin), got shape {x.shape}")
    if (
        kernel.ndim != 4
        or kernel.shape[0] != kernel.shape[1]
        or kernel.shape[0] % 2 == 0
        or kernel.shape[2] != x.shape[3]
    ):
        raise ValueError(
            f"deform_conv2d: kernel must be (k, k, Cin, Cout) HWIO with odd k and Cin = "
            f"{x.shape[3]}, got shape {kernel.shape}"
        )
    b, h, w, cin = x.shape
    k = kernel.shape[0]
    cout = kernel.shape[3]
    taps = k * k
    hp, wp = h + 2 * padding, w + 2 * padding
    ho, wo = (hp - k) // stride + 1, (wp - k) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"deform_conv2d: input {h}x{w} with padding {padding} is smaller than the {k}x{k} kernel"
        )
    want = (b, ho, wo, 2 * taps)
    if offsets.shape != want:
        raise ValueError(
            f"deform_conv2d: offsets must have shape (B, Ho, Wo, 2*k*k) = {want} for x {x.shape}, "
            f"kernel {kernel.shape}, stride {stride}, padding {padding}; got {offsets.shape}"
        )
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != want[:3] + (taps,):
            raise ValueError(
                f"deform_conv2d: mask must have shape (B, Ho, Wo, k*k) = {want[:3] + (taps,)}, "
                f"got {mask.shape}"
            )
    if not jnp.issubdtype(offsets.dtype, jnp.floating):
        raise ValueError(f"deform_conv2d: offsets must be floating point, got {offsets.dtype}")
    if dtype is None:
        dtype = jnp.result_type(x.dtype, kernel.dtype)

    geo = jnp.promote_types(offsets.dtype, jnp.float32)
    offsets = offsets.astype(geo)
    centre = (k - 1) // 2
    tap_r = jnp.repeat(jnp.arange(k) - centre, k).astype(geo)  # row of tap n = r*k + t
    tap_c = jnp.tile(jnp.arange(k) - centre, k).astype(geo)
    base_r = (jnp.arange(ho) * stride + centre).astype(geo)[:, None, None] + tap_r  # (Ho, 1, N)
    base_c = (jnp.arange(wo) * stride + centre).astype(geo)[None, :, None] + tap_c  # (1, Wo, N)
    pos_r = base_r + offsets[..., :taps]  # (B, Ho, Wo, N)
    pos_c = base_c + offsets[..., taps:]
    r0, r1, wr0, wr1 = _axis_terms(pos_r, hp)
    c0, c1, wc0, wc1 = _axis_terms(pos_c, wp)

    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    flat = xp.reshape(b, hp * wp, cin)

    def corner(rows, cols):
        # One gather table per image (a batched gather), so that a batch-sharded map is
        # sampled on its own device rather than merged into one global table.
        idx = (rows * wp + cols).reshape(b, ho * wo * taps)
        picked = jax.vmap(lambda table, i: jnp.take(table, i, axis=0, mode="clip"))(flat, idx)
        return picked.reshape(b, ho, wo, taps, cin)

    g = lambda a, c: (a * c)[..., None]
    samples = (
        g(wr0, wc0) * corner(r0, c0)
        + g(wr1, wc1) * corner(r1, c1)
        + g(wr0, wc1) * corner(r0, c1)
        + g(wr1, wc0) * corner(r1, c0)
    )
    if mask is not None:
        samples = samples * mask.astype(samples.dtype)[..., None]
    samples = samples.astype(dtype).reshape(b, ho, wo, taps * cin)
    weights = kernel.astype(dtype).reshape(taps * cin, cout)
    return jnp.einsum("bhwk,ko->bhwo", samples, weights, precision=precision)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_gradient(x: jax.Array, factor: float) -> jax.Array:
    """Identity whose gradient is multiplied by ``factor``."""
    return x


def _scale_gradient_fwd(x, factor):
    return x, None


def _scale_gradient_bwd(factor, _, ct):
    return (jax.tree_util.tree_map(lambda c: c * jnp.asarray(factor, c.dtype), ct),)


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


class _DeformKernel(nn.Module):
    """Holds the deformable convolution's ``kernel`` (and optional ``bias``)."""

    features: int
    kernel_size: int
    in_features: int
    use_bias: bool
    param_dtype: Dtype

    @nn.compact
    def __call__(self):
        k = self.kernel_size
        kernel = self.param(
            "kernel", torch_kernel_init, (k, k, self.in_features, self.features), self.param_dtype
        )
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias", torch_bias_init(self.in_features * k * k), (self.features,), self.param_dtype
            )
        return kernel, bias


class ModulatedDeformConv(nn.Module):
    """TogetherNet's ``DeformConv2D`` (``nets/deform_conv_v2.py``) as a Flax module.

    Parameters mirror the official attribute names, so a state_dict maps one to one
    (PyTorch OIHW kernels transposed to HWIO):

    * ``p_conv``: 3x3 conv, stride ``stride``, padding 1, ``2 k^2`` outputs with bias ->
      offsets (official order: row offsets then column offsets). Official init: kernel
      all 0, bias PyTorch's default uniform(+-1/sqrt(9 Cin)).
    * ``m_conv`` (only when ``modulation``): same geometry, ``k^2`` outputs with bias,
      sigmoid -> mask. Official init: kernel all 0.5, default bias.
    * ``conv``: ``kernel`` ``(k, k, Cin, features)`` of the deformable convolution,
      no bias by default (official ``bias=None``); PyTorch's default kernel init.

    The offset and modulation convs see the unpadded input and always run in float32
    (at least), since offsets need sub-pixel precision. Gradients leaving them are
    multiplied by ``lr_ratio`` (official backward hook, 0.1), which scales their
    parameter updates and their contribution to the input gradient.

    ``padding`` must be ``(kernel_size - 1) // 2``: the offset conv keeps the input
    size (divided by the stride), and the deformable convolution must match it.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    use_bias: bool = False
    modulation: bool = True
    lr_ratio: float = 0.1
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"ModulatedDeformConv: kernel_size must be a positive odd int, got {k!r}")
        if self.padding != (k - 1) // 2:
            raise ValueError(
                f"ModulatedDeformConv: padding must be (kernel_size - 1) // 2 = {(k - 1) // 2} so that "
                f"the offset map matches the output; got padding {self.padding}"
            )
        if x.ndim != 4:
            raise ValueError(f"ModulatedDeformConv: x must be (B, H, W, C), got shape {x.shape}")
        cin = x.shape[-1]
        taps = k * k
        side_dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)
        side = {
            "kernel_size": (3, 3),
            "strides": (self.stride, self.stride),
            "padding": ((1, 1), (1, 1)),
            "use_bias": True,
            "bias_init": torch_bias_init(9 * cin),
            "dtype": side_dtype,
            "param_dtype": self.param_dtype,
        }
        offsets = nn.Conv(2 * taps, kernel_init=nn.initializers.zeros, name="p_conv", **side)(x)
        offsets = scale_gradient(offsets, self.lr_ratio)
        mask = None
        if self.modulation:
            logits = nn.Conv(
                taps, kernel_init=nn.initializers.constant(0.5), name="m_conv", **side
            )(x)
            mask = jax.nn.sigmoid(scale_gradient(logits, self.lr_ratio))
        kernel, bias = _DeformKernel(
            self.features, k, cin, self.use_bias, self.param_dtype, name="conv"
        )()
        y = deform_conv2d(
            x,
            offsets,
            mask,
            kernel,
            stride=self.stride,
            padding=self.padding,
            dtype=self.dtype,
            precision=self.precision,
        )
        if bias is not None:
            y = y + bias.astype(y.dtype)
        return y
