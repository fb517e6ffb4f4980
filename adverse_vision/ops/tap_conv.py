"""A 2-D convolution with two CPU forms: a depthwise convolution as a sum of shifted
taps, and a 1x1 kernel's gradient as one matrix product.

**Depthwise convolutions** (one input channel per output channel: ``feature_group_count``
equal to the input channels, HWIO kernel ``(kh, kw, 1, C)``) are, on CPU, the sum over
the ``kh * kw`` taps of the strided, shifted input times that tap's per-channel weights:
elementwise work that XLA fuses into one pass, where XLA:CPU's grouped convolution is
slow. The MixFFN depthwise 3x3 of the depth-guided dehazer (128 channels at 320x320,
batch 1) took 0.43 s forward and 1.21 s with both gradients through XLA,
0.011 s and 0.32 s as taps; 128 channels at 128x128, batch 8: 0.64 / 1.50 s against
0.031 / 0.44 s; a stride-2 3x3 over 64 channels at 80x80, batch 8 (YOLOX-nano): 0.028 /
0.164 s against 0.002 / 0.038 s (2-core x86 CPU). Plain ``jax.numpy`` operations, so
every transform passes through; lower-precision inputs are summed in float32. Results
equal XLA's up to float32 summation order. Its backward pass needs more memory than
XLA's (the dehazing train step at 256x256, batch 8: 8.68 GiB against 7.27 GiB with
XLA's grouped convolution). It runs on CPU whatever the context; elsewhere XLA's
convolution.

**The kernel gradient of a 1x1 convolution.**

The kernel gradient of a convolution is itself a convolution, over the batch and the
image. Written per kernel row ``i`` as one matrix product of the channel-major input
rows with the output gradient stacked over the kernel columns (``dK[i, :] = X_i^T [dY
shifted by j]``), it is a single matrix product for a 1x1 kernel, and there it beats
XLA:CPU's own gradient: a 1x1 convolution 256 -> 64 at 46x46, batch 64, 0.046 s against
0.079 s; 128 -> 64 at 80x80, batch 8, 0.008 s against 0.016 s (2-core x86 CPU, programs
compiled with :mod:`adverse_vision.xla_options`). For 3x3 kernels XLA's own gradient is
the faster one (DN-HL's 3x3 160 -> 256 convolution at 46x46, batch 64: 0.35 s against
0.75 s by rows), so they keep it (see ``_rows_win``). (The row form was first written
for 3x3 kernels too, when XLA:CPU passed convolutions to YNNPACK, whose kernel gradients
took 1.33 s for that convolution.)

:func:`conv_general_dilated` has ``lax.conv_general_dilated``'s signature, so a flax
``nn.Conv(conv_general_dilated=...)`` takes it (see ``models.layers.Conv``). Inside
:func:`kernel_gradients_by_rows` (the trainer's train step enters it), on CPU, for NHWC
inputs and HWIO kernels without input dilation or feature groups, its forward pass and
its input gradient are XLA's own; only the kernel gradient is computed by rows where
that form wins. The form is a ``jax.custom_vjp``, which forward-mode differentiation
(``jax.jvp``, ``jax.jacfwd``) cannot pass through; outside the context, and so in any
user code, the convolution is ``lax.conv_general_dilated`` (a depthwise one the taps
above) and every transform works.
So it is for the shapes where XLA's gradient wins (decided at trace time from the
kernel and output shapes), on other backends and for other layouts. Results equal
XLA's up to float32 summation order.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv_general_dilated", "depthwise_taps", "kernel_gradients_by_rows"]

_BY_ROWS = contextvars.ContextVar("kernel_gradients_by_rows", default=False)


@contextlib.contextmanager
def kernel_gradients_by_rows(enabled: bool = True):
    """Convolutions traced inside take the row form of the kernel gradient (on CPU,
    where it wins): for reverse-mode code only, such as a train step."""
    token = _BY_ROWS.set(bool(enabled))
    try:
        yield
    finally:
        _BY_ROWS.reset(token)


_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def _pairs(padding: Union[str, Sequence[tuple[int, int]]], lhs_shape, rhs_shape, strides,
           rhs_dilation) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        window = [(k - 1) * d + 1 for k, d in zip(rhs_shape[:2], rhs_dilation)]
        return tuple(lax.padtype_to_pads(lhs_shape[1:3], window, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _tap_conv(x, kernel, strides, padding, dilation, precision):
    return lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation,
                                    dimension_numbers=_NHWC, precision=precision)


def _fwd(x, kernel, strides, padding, dilation, precision):
    return _tap_conv(x, kernel, strides, padding, dilation, precision), (x, kernel)


def _kernel_grad_rows(x, dy, kernel_shape, padding, dilation, precision):
    """Stride 1: per kernel row ``i``, one matrix product of the channel-major input rows
    from ``i*d`` with the output gradient stacked over the kernel columns, each shifted
    by ``j*d``: ``(Cin, M) @ (M, kw*Cout)``, M = B * Ho * Wp."""
    kh, kw = kernel_shape[:2]
    dh, dw = dilation
    ho, wo = dy.shape[1], dy.shape[2]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0))).transpose(3, 0, 1, 2)
    wp = xp.shape[3]  # = wo + (kw - 1) * dw
    dyt = dy.astype(x.dtype).transpose(3, 0, 1, 2)  # (Cout, B, Ho, Wo)
    cols = jnp.stack([jnp.pad(dyt, ((0, 0), (0, 0), (0, 0), (j * dw, wp - wo - j * dw)))
                      for j in range(kw)])  # (kw, Cout, B, Ho, Wp)
    return jnp.stack([jnp.einsum("cbhw,jobhw->jco", xp[:, :, i * dh:i * dh + ho], cols,
                                 precision=precision)
                      for i in range(kh)])  # (kh, kw, Cin, Cout)


def _bwd(strides, padding, dilation, precision, res, dy):
    """XLA's input gradient; the kernel gradient by rows (only shapes where
    :func:`_rows_win` holds reach this rule)."""
    x, kernel = res
    (dx,) = jax.vjp(lambda x: lax.conv_general_dilated(
        x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=_NHWC,
        precision=precision), x)[1](dy)
    dk = _kernel_grad_rows(x, dy, kernel.shape, padding, dilation, precision)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


#: Outputs (B * Ho * Wo) below which XLA's own kernel gradient runs: the row form's
#: gain there is a few milliseconds, and its extra operations cost compile time (the
#: test suite's small models compiled half again as long with it everywhere).
MIN_OUTPUTS = 32768


def _rows_win(kernel_shape, strides, outputs: int) -> bool:
    """Where the row form beat XLA's kernel gradient on a 2-core CPU, measured per shape
    (``outputs`` = B * Ho * Wo): stride 1, at least :data:`MIN_OUTPUTS` outputs and a
    1x1 kernel (1.7-2x). 3x3 kernels lost (0.4-0.65x at 32-256 input channels)."""
    kh, kw = kernel_shape[:2]
    return tuple(strides) == (1, 1) and outputs >= MIN_OUTPUTS and kh == kw == 1


_tap_conv.defvjp(_fwd, _bwd)


def depthwise_taps(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                   padding: Sequence[tuple[int, int]], dilation: Sequence[int] = (1, 1)
                   ) -> jax.Array:
    """A depthwise convolution of NHWC ``x`` with HWIO ``kernel`` ``(kh, kw, 1, C)`` as
    the sum of its ``kh * kw`` shifted, strided taps (see the module docstring); the
    result in ``x``'s dtype, summed in float32 at least."""
    kh, kw = kernel.shape[:2]
    (sh, sw), (dh, dw) = strides, dilation
    acc = jnp.promote_types(jnp.promote_types(x.dtype, kernel.dtype), jnp.float32)
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0))).astype(acc)
    ho = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
    w = kernel[:, :, 0, :].astype(acc)
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = lax.slice(xp, (0, i * dh, j * dw, 0),
                            (xp.shape[0], i * dh + (ho - 1) * sh + 1,
                             j * dw + (wo - 1) * sw + 1, xp.shape[3]),
                            (1, sh, sw, 1)) * w[i, j]
            out = tap if out is None else out + tap
    return out.astype(x.dtype)


def _is_depthwise(lhs, rhs, feature_group_count) -> bool:
    """One input channel per output channel (of an NHWC / HWIO convolution)."""
    return (feature_group_count > 1 and lhs.shape[3] == feature_group_count == rhs.shape[3]
            and rhs.shape[2] == 1)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Union[str, Sequence[tuple[int, int]]],
                         lhs_dilation: Optional[Sequence[int]] = None,
                         rhs_dilation: Optional[Sequence[int]] = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_general_dilated``; on CPU a depthwise convolution as
    :func:`depthwise_taps`, and the kernel gradient per row inside
    :func:`kernel_gradients_by_rows` (see the module docstring for when)."""
    plain = functools.partial(
        lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
    # The CPU forms: NHWC inputs, HWIO kernels, no input dilation or batch groups.
    if (jax.default_backend() != "cpu" or lhs.ndim != 4 or batch_group_count != 1
            or preferred_element_type is not None
            or any(d != 1 for d in (lhs_dilation or (1, 1)))
            or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != _NHWC):
        return plain()
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
    pads = _pairs(padding, lhs.shape, rhs.shape, strides, dilation)
    if _is_depthwise(lhs, rhs, feature_group_count):
        return depthwise_taps(lhs, rhs, strides, pads, dilation)
    if not _BY_ROWS.get() or feature_group_count != 1:
        return plain()
    out_hw = [(n + lo + hi - (k - 1) * d - 1) // s + 1 for n, (lo, hi), k, d, s
              in zip(lhs.shape[1:3], pads, rhs.shape[:2], dilation, strides)]
    if not _rows_win(rhs.shape, strides, lhs.shape[0] * out_hw[0] * out_hw[1]):
        return plain()
    return _tap_conv(lhs, rhs, strides, pads, dilation, precision)
