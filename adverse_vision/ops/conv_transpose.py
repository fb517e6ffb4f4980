"""PyTorch-semantics transposed convolution in sub-pixel form.

``conv_transpose(x, kernel, stride, padding, output_padding)`` equals PyTorch's
``ConvTranspose2d(stride=s, padding=p, output_padding=op)`` (and flax's
``nn.ConvTranspose(transpose_kernel=True)`` padded by ``k - 1 - p`` before and
``k - 1 - p + op`` after): output size ``(H - 1) s - 2p + k + op``, kernel stored
``(kh, kw, out, in)`` (PyTorch's ``(in, out, kh, kw)`` transposed by (2, 3, 1, 0)).

The dilated form convolves an input with ``s - 1`` zeros between samples, so most of
its multiplications are by zero, and XLA:CPU runs its gradients slowly. Here each
output phase ``a`` (``o = s m + a``) is a small convolution of the undilated input:
output ``o`` receives ``x[i] W[k]`` for ``o = s i - p + k``, i.e. input ``m + d`` with
``d = (a + p - k) / s`` for the taps ``k = a + p (mod s)``. All phases share one
``D x D`` window (``D`` = the range of ``d``), so the whole operation is one ordinary
convolution to ``s * s * out`` channels followed by a depth-to-space shuffle. Each phase
is computed as its own convolution over only the offsets it reads (for a 4x4 stride-2
kernel, 2x2 of the 3x3 shared window; for a 3x3 one, 1x1, 1x2, 2x1 and 2x2), which
skips the zero taps of the shared window: 4/9 and 9/16 of its multiplications.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from adverse_vision.ops import tap_conv

__all__ = ["conv_transpose", "phase_taps"]


def phase_taps(kernel_size: int, stride: int, padding: int) -> tuple[np.ndarray, int]:
    """(T, d_min): ``T[d - d_min, a, k] = 1`` where output phase ``a`` reads input
    offset ``d`` through kernel tap ``k``."""
    entries = [(a, k, (a + padding - k) // stride) for a in range(stride)
               for k in range(kernel_size) if (a + padding - k) % stride == 0]
    offsets = [d for _, _, d in entries]
    lo, hi = min(offsets), max(offsets)
    taps = np.zeros((hi - lo + 1, stride, kernel_size), np.float32)
    for a, k, d in entries:
        taps[d - lo, a, k] = 1.0
    return taps, lo


def _pad_or_crop(x: jax.Array, axis: int, before: int, after: int) -> jax.Array:
    if before < 0:
        x = lax.slice_in_dim(x, -before, x.shape[axis], axis=axis)
        before = 0
    if after < 0:
        x = lax.slice_in_dim(x, 0, x.shape[axis] + after, axis=axis)
        after = 0
    pads = [(0, 0)] * x.ndim
    pads[axis] = (before, after)
    return jnp.pad(x, pads)


def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int, padding: int,
                   output_padding: int = 0) -> jax.Array:
    """Transposed convolution of NHWC ``x`` with a square ``(k, k, out, in)`` kernel,
    PyTorch semantics (see the module docstring)."""
    k, k2, cout, cin = kernel.shape
    if k != k2 or x.ndim != 4 or x.shape[-1] != cin:
        raise ValueError(f"conv_transpose: need x (B, H, W, {cin}) and a square (k, k, out, in) "
                         f"kernel; got {x.shape} and {kernel.shape}")
    if not (stride >= 1 and 0 <= padding and 0 <= output_padding < stride):
        raise ValueError(f"conv_transpose: bad stride {stride}, padding {padding} or "
                         f"output_padding {output_padding}")
    b, h, w, _ = x.shape
    out_h = (h - 1) * stride - 2 * padding + k + output_padding
    out_w = (w - 1) * stride - 2 * padding + k + output_padding
    if out_h < 1 or out_w < 1:
        raise ValueError(f"conv_transpose: input {h}x{w} gives an empty output")
    taps, lo = phase_taps(k, stride, padding)
    window = taps.shape[0]
    rows, cols = -(-out_h // stride), -(-out_w // stride)  # outputs per phase
    x = _pad_or_crop(x, 1, -lo, rows - 1 + window + lo - h)
    x = _pad_or_crop(x, 2, -lo, cols - 1 + window + lo - w)
    t = jnp.asarray(taps, kernel.dtype)
    phases = jnp.einsum("yak,xbl,kloi->yxabio", t, t, kernel, precision=lax.Precision.HIGHEST)
    phases = phases.astype(x.dtype)
    spans = [_span(taps[:, a]) for a in range(stride)]  # offsets each phase reads
    out = []
    for a, (r0, r1) in enumerate(spans):
        for c, (c0, c1) in enumerate(spans):
            part = x[:, r0:r1 - 1 + rows, c0:c1 - 1 + cols]
            out.append(tap_conv.conv_general_dilated(
                part, phases[r0:r1, c0:c1, a, c], (1, 1), "VALID",
                dimension_numbers=("NHWC", "HWIO", "NHWC")))
    y = jnp.stack(out, axis=3).reshape(b, rows, cols, stride, stride, cout)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(b, rows * stride, cols * stride, cout)
    return y[:, :out_h, :out_w]


def _span(phase_taps_: np.ndarray) -> tuple[int, int]:
    """``[first, last + 1)`` of the window offsets one output phase reads."""
    used = np.flatnonzero(phase_taps_.any(axis=1))
    return int(used[0]), int(used[-1]) + 1
