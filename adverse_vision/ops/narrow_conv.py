"""A stride-1 VALID convolution to few output channels, fast on XLA:CPU.

Restoration heads end with a large convolution to 3 (RGB) channels, for example
TogetherNet's 7x7 ``conv_4``. XLA:CPU runs such a convolution, and both of its
gradients, one to two orders of magnitude below its usual FLOP rate (at 160 px,
batch 16, 48 -> 3 channels: 1.6 s forward, 2.1 s forward and backward, where a
48 -> 48 3x3 convolution with three times the FLOPs takes 0.2 s). On CPU,
:func:`narrow_conv` computes the same convolution as

* forward: one matrix product to ``k*k*Cout`` channels, then the sum of the ``k*k``
  shifted slices (``y[p] = sum_t z[p + t, t]``). The product is ``k*k*Cout / Cin``
  times the input's size (830 MB for the dehazer's 13x13 64 -> 3 convolution at
  640x640), so it is formed a band of input rows at a time in a loop (all images' rows
  as one sequence), and summed over the kernel columns while the band is in the
  processor's caches; the result, ``k`` times the output's size, is then summed over
  the kernel rows. Bands of output rows, each product summed whole, had to read the
  ``k - 1`` rows they share twice and took the band from memory: that convolution at
  640x640 took 0.26 s so, 0.15 s now; the dehazing train step's device memory was 10.5
  GiB with the product whole, 7.99 GiB in bands;
* input gradient: an ordinary convolution of the output gradient (few input
  channels, which XLA:CPU runs well) with the flipped, transposed kernel;
* kernel gradient: per kernel row, one matrix product of the input rows with the
  output gradient stacked over the kernel columns, one kernel row at a time in a loop
  (each reads a copy of its input rows: all at once they took 1.4 GiB for that
  convolution).

Results equal ``lax.conv_general_dilated`` up to float32 summation order (relative
error ~1e-6). On other backends it is ``lax.conv_general_dilated`` itself.

:func:`resized_narrow_conv` is such a convolution of a resized map ``x = R f C^T`` (two
constant matrices along the rows and the columns: TogetherNet's bilinear x4 resize with
its reflection padding, before ``conv_4``), computed without forming ``x``. With
``R_i`` the rows ``i .. i + H`` of ``R`` and ``C_j`` the rows ``j .. j + W`` of ``C``,
``y = sum_ij R_i (f K_ij) C_j^T``: the channels are mixed first, at the small size
(``f K`` to ``kh*kw*Cout`` channels), then the columns and the rows are resized with the
kernel offsets stacked into each contraction. Its gradients, by automatic
differentiation, run at the small size too: the output gradient taken down once per
kernel offset, ``G[i, j] = R_i^T dy C_j``, then ``dK[i, j] = sum f^T G[i, j]`` and ``df =
sum_ij G[i, j] K[i, j]^T``. TogetherNet-s's ``conv_4`` (64 -> 3 channels) at 320 px,
batch 4: about 4 GFLOP forward and 5 backward, against 13 and 21 for the resize, then
the convolution of the 326x326 map (forward as above; backward the skinny
kernel-gradient products over the large map, the input gradient's convolution and the
transposed resize), and the large map is no longer kept for the backward pass. The same
arithmetic on every backend.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["narrow_conv", "resized_narrow_conv"]

_DIMS = ("NHWC", "HWIO", "NHWC")
#: The forward product's numbers per band of input rows (2**21, 8 MiB in float32): the
#: product to ``kh*kw*Cout`` channels is the size of the input times ``kh*kw*Cout / Cin``
#: (8x for a 13x13 kernel 64 -> 3), so it is formed a band of rows at a time, small
#: enough to be summed over the kernel columns while the processor's caches hold it
#: (2**20 to 2**23 measured: README, Benchmark).
BAND_ELEMENTS = 2 ** 21


def _check(x: jax.Array, kernel: jax.Array) -> None:
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"narrow_conv: need x (B, H, W, Cin) and kernel (kh, kw, Cin, Cout); "
                         f"got {x.shape} and {kernel.shape}")
    if x.shape[1] < kernel.shape[0] or x.shape[2] < kernel.shape[1]:
        raise ValueError(f"narrow_conv: input {x.shape[1]}x{x.shape[2]} is smaller than the "
                         f"{kernel.shape[0]}x{kernel.shape[1]} kernel")


def _forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Row by row of the input, all images' rows as one sequence: each row's product to
    ``kh*kw*Cout`` channels is summed over the kernel columns at once (to ``kh*Cout``
    channels), where that product is larger than the input a band of rows at a time in
    a loop (each band's product at most :data:`BAND_ELEMENTS` numbers); then those sums
    over the kernel rows."""
    kh, kw, cin, cout = kernel.shape
    b, hp, wp, _ = x.shape
    h, w = hp - kh + 1, wp - kw + 1
    taps = kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)
    total = b * hp
    rows = total  # a product no larger than the input is formed whole, in one pass
    if kh * kw * cout > cin:
        rows = min(total, max(1, BAND_ELEMENTS // (wp * kh * kw * cout)))
    count = -(-total // rows)
    flat = jnp.pad(x.reshape(total, wp, cin), ((0, count * rows - total), (0, 0), (0, 0)))

    def band(top):
        part = lax.dynamic_slice_in_dim(flat, top, rows, axis=0)
        z = jnp.einsum("rwc,ck->rwk", part, taps).reshape(rows, wp, kh, kw, cout)
        s = None
        for j in range(kw):  # s[r, q, i] = sum_j z[r, q + j, i, j]
            tap = z[:, j:j + w, :, j]
            s = tap if s is None else s + tap
        return s

    if count == 1:
        s = band(0)
    else:
        s = lax.map(band, jnp.arange(count) * rows).reshape(count * rows, w, kh, cout)
    s = s[:total].reshape(b, hp, w, kh, cout)
    y = None
    for i in range(kh):  # y[p, q] = sum_i s[p + i, q, i]
        tap = s[:, i:i + h, :, i]
        y = tap if y is None else y + tap
    return y


@jax.custom_vjp
def _narrow_conv_cpu(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _forward(x, kernel)


def _fwd(x, kernel):
    return _forward(x, kernel), (x, kernel)


def _input_gradient(dy: jax.Array, kernel: jax.Array) -> jax.Array:
    """The VALID convolution's input gradient: the output gradient (few channels)
    convolved with the flipped, transposed kernel."""
    kh, kw, _, _ = kernel.shape
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2).astype(dy.dtype)
    return lax.conv_general_dilated(dy, flipped, (1, 1), ((kh - 1, kh - 1), (kw - 1, kw - 1)),
                                    dimension_numbers=_DIMS)


def _bwd(res, dy):
    x, kernel = res
    kh, kw, _, _ = kernel.shape
    h, w = dy.shape[1], dy.shape[2]
    wp = x.shape[2]
    dx = _input_gradient(dy, kernel).astype(x.dtype)
    # channels-major layouts: each kernel row is one matrix product over (B, H, W)
    xt = x.transpose(3, 0, 1, 2)  # (Cin, B, Hp, Wp)
    dt = dy.transpose(3, 0, 1, 2)  # (Cout, B, H, W)
    cols = jnp.stack([jnp.pad(dt, ((0, 0), (0, 0), (0, 0), (j, wp - w - j)))
                      for j in range(kw)])  # (kw, Cout, B, H, Wp)
    # One kernel row at a time (a loop: each reads a copy of its input rows).
    dk = lax.map(lambda i: jnp.einsum("cbhw,jobhw->jco",
                                      lax.dynamic_slice_in_dim(xt, i, h, axis=2), cols),
                 jnp.arange(kh))  # (kh, kw, Cin, Cout)
    return dx, dk.astype(kernel.dtype)


_narrow_conv_cpu.defvjp(_fwd, _bwd)


def narrow_conv(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, (1, 1), "VALID")`` for NHWC ``x`` and an
    HWIO ``kernel``, computed on CPU in the form the module docstring describes.
    ``precision`` applies on the other backends."""
    _check(x, kernel)
    if jax.default_backend() == "cpu":
        return _narrow_conv_cpu(x, kernel)
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DIMS,
                                    precision=precision)


def resized_narrow_conv(f: jax.Array, kernel: jax.Array, rows: Any, cols: Any) -> jax.Array:
    """``narrow_conv(x, kernel)`` of ``x = rows @ f @ cols^T`` along the two spatial axes
    (``rows`` (Hp, h) and ``cols`` (Wp, w), NumPy constants; ``f`` NHWC (B, h, w, Cin)),
    in the factored form of the module docstring, on every backend; ordinary JAX
    operations, so every transformation applies."""
    rows, cols = np.asarray(rows, np.float32), np.asarray(cols, np.float32)
    if f.ndim != 4 or rows.ndim != 2 or cols.ndim != 2 \
            or (rows.shape[1], cols.shape[1]) != f.shape[1:3]:
        raise ValueError(f"resized_narrow_conv: need f (B, h, w, Cin) with rows (Hp, h) and "
                         f"cols (Wp, w); got {f.shape}, {rows.shape} and {cols.shape}")
    kh, kw = kernel.shape[:2]
    _check(jax.ShapeDtypeStruct((f.shape[0], rows.shape[0], cols.shape[0], f.shape[3]),
                                f.dtype), kernel)
    height, width = rows.shape[0] - kh + 1, cols.shape[0] - kw + 1
    # R_i = rows[i : i + H], C_j = cols[j : j + W], stacked over the kernel offsets
    row_windows = np.stack([rows[i:i + height] for i in range(kh)])  # (kh, H, h)
    col_windows = np.stack([cols[j:j + width] for j in range(kw)])  # (kw, W, w)
    highest = lax.Precision.HIGHEST
    # y = sum_ij R_i (f K_ij) C_j^T: the channels first, at the small size, then the
    # columns and the rows, each with its kernel offsets stacked into the contraction.
    z = jnp.einsum("buvc,ijco->biujvo", f, kernel.astype(f.dtype), precision=highest)
    u = jnp.einsum("biujvo,jqv->biuqo", z, jnp.asarray(col_windows, f.dtype),
                   precision=highest)  # (B, kh, h, W, Cout)
    return jnp.einsum("ipu,biuqo->bpqo", jnp.asarray(row_windows, f.dtype), u,
                      precision=highest)
