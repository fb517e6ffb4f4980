"""A convolution of a resized map, with the channels mixed before the resize.

A map ``x`` (B, h, w, Cin) resized by constant matrices along its two spatial axes,
``X = rows @ x @ cols^T`` (``rows`` (Hp, h), ``cols`` (Wp, w); a convolution's zero
padding is zero rows of the matrices), then convolved with a ``(kh, kw, Cin, Cout)``
kernel (stride 1, valid) is

    y = sum_ij R_i (x K_ij) C_j^T,    R_i = rows[i : i + H],  C_j = cols[j : j + W]

(``H = Hp - kh + 1``, ``W = Wp - kw + 1``): each kernel offset's channel product taken
at the small size, then resized with the matrices' windows at that offset. Where the
resize enlarges the map and the convolution mixes many channels this is far less
arithmetic. The depth network's up-projections resize 2x (bilinear, align corners)
then convolve 3x3 from 208-1664 channels to half as many: the channel products cost a
quarter of the convolution's multiply-adds, and the resize then blends the ``kh kw
Cout`` products through the matrices' nonzeros (two per row for bilinear) instead of
``Cin`` channels. Both resizes are one constant matrix each, the windows side by side
(``[C_0 .. C_kw-1]`` over the offsets' products stacked along the width, then ``[R_0 ..
R_kh-1]`` along the height), applied from their nonzeros forward and backward
(:func:`adverse_vision.ops.sparse_axis.matmul_along_axis` with ``sparse_gradient``).
The result equals resize-then-convolve up to float32 summation order, values and
gradients (each resize is a ``jax.custom_vjp``, which forward-mode differentiation
does not pass, as with the resize alone). The up-projections use it where they are
evaluated only: in the dehazing train step (256x256, batch 8, 2-core CPU) this form's
backward pass made the step 3 % slower, where 640x640 inference was 9-13 % faster.

:func:`worth_mixing_first` compares the multiply-adds of the two forms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from adverse_vision.ops.sparse_axis import matmul_along_axis

__all__ = ["resized_conv", "worth_mixing_first"]

#: Mixing the channels first pays when it needs at most this share of the
#: multiply-adds of resize-then-convolve (the up-projections': 0.25-0.26 at 640x640).
MAX_SHARE = 0.5


def _matrices(rows: np.ndarray, cols: np.ndarray, kh: int, kw: int) -> tuple[np.ndarray, np.ndarray]:
    """``[R_0 .. R_kh-1]`` (H, kh h) and ``[C_0 .. C_kw-1]`` (W, kw w)."""
    height, width = rows.shape[0] - kh + 1, cols.shape[0] - kw + 1
    return (np.concatenate([rows[i:i + height] for i in range(kh)], axis=1),
            np.concatenate([cols[j:j + width] for j in range(kw)], axis=1))


def _check(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], rows: np.ndarray,
           cols: np.ndarray) -> None:
    if len(x_shape) != 4 or len(kernel_shape) != 4 or rows.ndim != 2 or cols.ndim != 2:
        raise ValueError(f"resized_conv: need x (B, h, w, Cin), kernel (kh, kw, Cin, Cout) and "
                         f"two matrices; got {x_shape}, {kernel_shape}, {rows.shape}, {cols.shape}")
    kh, kw, cin, _ = kernel_shape
    if (rows.shape[1], cols.shape[1]) != tuple(x_shape[1:3]) or cin != x_shape[3]:
        raise ValueError(f"resized_conv: rows {rows.shape} and cols {cols.shape} must take "
                         f"x's {x_shape[1:3]}, and the kernel's {cin} input channels its "
                         f"{x_shape[3]}")
    if rows.shape[0] < kh or cols.shape[0] < kw:
        raise ValueError(f"resized_conv: a {kh}x{kw} kernel does not fit the resized "
                         f"{rows.shape[0]}x{cols.shape[0]} map")


def worth_mixing_first(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], rows,
                       cols) -> bool:
    """Whether :func:`resized_conv` needs at most ``MAX_SHARE`` of the multiply-adds of
    resizing ``x`` (from the matrices' nonzeros) and then convolving it."""
    rows, cols = np.asarray(rows, np.float32), np.asarray(cols, np.float32)
    _check(tuple(x_shape), tuple(kernel_shape), rows, cols)
    _, h, w, cin = x_shape
    kh, kw, _, cout = kernel_shape
    height, width = rows.shape[0] - kh + 1, cols.shape[0] - kw + 1
    row_matrix, col_matrix = _matrices(rows, cols, kh, kw)
    plain = (np.count_nonzero(cols) * h + np.count_nonzero(rows) * cols.shape[0]) * cin \
        + height * width * kh * kw * cin * cout
    first = h * w * kh * kw * cin * cout \
        + (np.count_nonzero(col_matrix) * kh * h + np.count_nonzero(row_matrix) * width) * cout
    return first <= MAX_SHARE * plain


def resized_conv(x: jax.Array, kernel: jax.Array, rows, cols, precision=None) -> jax.Array:
    """The valid stride-1 convolution of ``rows @ x @ cols^T`` (along x's two spatial
    axes) with ``kernel``, computed with the channels mixed first (module docstring).

    Args:
      x: (B, h, w, Cin).
      kernel: (kh, kw, Cin, Cout), in x's dtype for the product.
      rows, cols: NumPy constants (Hp, h) and (Wp, w).
      precision: of the channel product (``jnp.einsum``'s).

    Returns:
      (B, Hp - kh + 1, Wp - kw + 1, Cout) in x's dtype.
    """
    rows, cols = np.asarray(rows, np.float32), np.asarray(cols, np.float32)
    _check(x.shape, kernel.shape, rows, cols)
    b, h, w, _ = x.shape
    kh, kw, _, cout = kernel.shape
    row_matrix, col_matrix = _matrices(rows, cols, kh, kw)
    # (B, kh, h, kw, w, Cout): the offsets' products, the column offset beside the width
    z = jnp.einsum("buvc,ijco->biujvo", x, kernel.astype(x.dtype), precision=precision)
    u = matmul_along_axis(col_matrix, z.reshape(b, kh, h, kw * w, cout), axis=3,
                          sparse_gradient=True)  # (B, kh, h, W, Cout)
    return matmul_along_axis(row_matrix, u.reshape(b, kh * h, col_matrix.shape[0], cout),
                             axis=1, sparse_gradient=True)
