"""A stride-1 VALID convolution to few output channels, fast on XLA:CPU.

Restoration heads end with a large convolution to 3 (RGB) channels, for example
TogetherNet's 7x7 ``conv_4``. XLA:CPU runs such a convolution, and both of its
gradients, one to two orders of magnitude below its usual FLOP rate (at 160 px,
batch 16, 48 -> 3 channels: 1.6 s forward, 2.1 s forward and backward, where a
48 -> 48 3x3 convolution with three times the FLOPs takes 0.2 s). On CPU,
:func:`narrow_conv` computes the same convolution as

* forward: one matrix product to ``k*k*Cout`` channels, then the sum of the ``k*k``
  shifted slices (``y[p] = sum_t z[p + t, t]``);
* input gradient: an ordinary convolution of the output gradient (few input
  channels, which XLA:CPU runs well) with the flipped, transposed kernel;
* kernel gradient: per kernel row, one matrix product of the input rows with the
  output gradient stacked over the kernel columns.

Results equal ``lax.conv_general_dilated`` up to float32 summation order (relative
error ~1e-6). On other backends it is ``lax.conv_general_dilated`` itself.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["narrow_conv"]

_DIMS = ("NHWC", "HWIO", "NHWC")


def _check(x: jax.Array, kernel: jax.Array) -> None:
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"narrow_conv: need x (B, H, W, Cin) and kernel (kh, kw, Cin, Cout); "
                         f"got {x.shape} and {kernel.shape}")
    if x.shape[1] < kernel.shape[0] or x.shape[2] < kernel.shape[1]:
        raise ValueError(f"narrow_conv: input {x.shape[1]}x{x.shape[2]} is smaller than the "
                         f"{kernel.shape[0]}x{kernel.shape[1]} kernel")


def _forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    kh, kw, cin, cout = kernel.shape
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    taps = kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)
    z = jnp.einsum("bhwc,ck->bhwk", x, taps).reshape(*x.shape[:3], kh * kw, cout)
    y = None
    for i in range(kh):
        for j in range(kw):
            part = z[:, i:i + h, j:j + w, i * kw + j]
            y = part if y is None else y + part
    return y


@jax.custom_vjp
def _narrow_conv_cpu(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _forward(x, kernel)


def _fwd(x, kernel):
    return _forward(x, kernel), (x, kernel)


def _bwd(res, dy):
    x, kernel = res
    kh, kw, _, _ = kernel.shape
    h, w = dy.shape[1], dy.shape[2]
    wp = x.shape[2]
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2).astype(dy.dtype)
    dx = lax.conv_general_dilated(dy, flipped, (1, 1), ((kh - 1, kh - 1), (kw - 1, kw - 1)),
                                  dimension_numbers=_DIMS).astype(x.dtype)
    # channels-major layouts: each kernel row is one matrix product over (B, H, W)
    xt = x.transpose(3, 0, 1, 2)  # (Cin, B, Hp, Wp)
    dt = dy.transpose(3, 0, 1, 2)  # (Cout, B, H, W)
    cols = jnp.stack([jnp.pad(dt, ((0, 0), (0, 0), (0, 0), (j, wp - w - j)))
                      for j in range(kw)])  # (kw, Cout, B, H, Wp)
    dk = jnp.stack([jnp.einsum("cbhw,jobhw->jco", xt[:, :, i:i + h], cols)
                    for i in range(kh)])  # (kh, kw, Cin, Cout)
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
