"""Stride-1 convolutions with nothing between them, computed as one.

Convolutions applied one after another, with no activation between them, are one
linear map: kernels of sizes ``k_1 .. k_n`` compose into one kernel of size
``sum(k_i - 1) + 1`` from the first one's input channels to the last one's output
channels (``C[s] = sum_{a + b = s} A[a] @ B[b]`` for two of them), and the biases into
one bias. Where the last convolution has few output channels this is far less
arithmetic: the depth-guided dehazer ends with three 5x5 convolutions 64 -> 64 -> 64 ->
3, 209k multiply-adds per pixel, which compose into one 13x13 convolution 64 -> 3, 32k
(at 640x640: 172 GFLOP -> 27). The same on every backend.

The two differ only near the border, where each convolution of the sequence reads its
input's zero padding: an output within ``B = sum_{i >= 2} p_i`` pixels of the border
(``p_i = k_i // 2``; 4 for the dehazer) reads intermediate maps outside the image,
which the sequence sets to zero and the composed kernel does not. Those border rows and
columns are computed by the convolutions one after another, on four strips of the input
``B + sum p_i`` wide, each padded on its outer side only (so every convolution of the
sequence shrinks it by ``p_i`` and the last leaves exactly ``B``), and written over the
composed result. Everywhere the result equals the sequence up to float32 summation
order (relative error ~1e-6); gradients, by automatic differentiation, likewise.

The composed convolution, to few output channels, is
:func:`adverse_vision.ops.narrow_conv.narrow_conv` of the zero-padded input (on CPU one
matrix product and shifted sums, where XLA's own convolution runs such a kernel slowly;
elsewhere XLA's convolution). The dehazer's three convolutions alone, in programs
compiled with :mod:`adverse_vision.xla_options` on a 2-core x86 CPU, best of 3, forward /
with every gradient: 640x640 batch 1, one after another 0.65 / 3.01 s, composed 0.35 /
0.82 s (with XLA's convolution for the composed one the forward pass took 0.67 s
against 0.75 s); 256x256 batch 8, 0.80 / 2.21 s against 0.53 / 1.18 s; borders
included. On CPU that convolution is a ``jax.custom_vjp``, which forward-mode
differentiation does not pass (as the dehazer's attention in chunks); ``compose=False``
runs the sequence.

:func:`conv_chain` composes when that is worth it (:func:`worth_composing`) and else
runs the sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from adverse_vision.ops.narrow_conv import narrow_conv

__all__ = ["compose_biases", "compose_kernels", "conv_chain", "sequential", "worth_composing"]

_DIMS = ("NHWC", "HWIO", "NHWC")
#: Composing pays when it needs at most this share of the sequence's multiply-adds per
#: pixel: the composed convolution has few output channels, where XLA runs below its
#: usual rate (the dehazer's: 6.4x fewer multiply-adds, 3.2-4x faster).
MAX_COMPOSED_SHARE = 1 / 3
#: Composing pays when each side of the image is at least this many border strips wide.
MIN_SIDE_IN_STRIPS = 4


def _check(x: jax.Array, kernels: Sequence[jax.Array], biases: Sequence[Optional[jax.Array]]
           ) -> None:
    if x.ndim != 4:
        raise ValueError(f"conv_chain: expected an NHWC map, got shape {tuple(x.shape)}")
    if not kernels or len(kernels) != len(biases):
        raise ValueError(f"conv_chain: one bias (or None) per kernel needed, got "
                         f"{len(kernels)} kernels and {len(biases)} biases")
    channels = x.shape[-1]
    for i, (k, b) in enumerate(zip(kernels, biases)):
        if k.ndim != 4 or k.shape[0] != k.shape[1] or k.shape[0] % 2 != 1:
            raise ValueError(f"conv_chain: kernel {i} must be HWIO with an odd square "
                             f"window, got shape {tuple(k.shape)}")
        if k.shape[2] != channels:
            raise ValueError(f"conv_chain: kernel {i} reads {k.shape[2]} channels, its "
                             f"input has {channels}")
        if b is not None and b.shape != (k.shape[3],):
            raise ValueError(f"conv_chain: bias {i} must have shape ({k.shape[3]},), got "
                             f"{tuple(b.shape)}")
        channels = k.shape[3]


def _widths(kernels: Sequence[jax.Array]) -> tuple[int, int]:
    """(the border the strips recompute, ``sum_{i >= 2} p_i``; the padding of the
    composed convolution, ``sum p_i``): their sum is a strip's width."""
    halves = [k.shape[0] // 2 for k in kernels]
    return sum(halves[1:]), sum(halves)


def sequential(x: jax.Array, kernels: Sequence[jax.Array],
               biases: Sequence[Optional[jax.Array]],
               sides: tuple[tuple[bool, bool], tuple[bool, bool]] = ((True, True), (True, True))
               ) -> jax.Array:
    """The convolutions one after another, each zero padded by ``k // 2`` on the sides
    that ``sides`` (``((top, bottom), (left, right))``) marks, VALID on the others; the
    kernels and biases cast to ``x``'s dtype."""
    for k, b in zip(kernels, biases):
        p = k.shape[0] // 2
        padding = [(p if first else 0, p if last else 0) for first, last in sides]
        x = lax.conv_general_dilated(x, k.astype(x.dtype), (1, 1), padding,
                                     dimension_numbers=_DIMS)
        if b is not None:
            x = x + b.astype(x.dtype)
    return x


def _compose_pair(a: jax.Array, b: jax.Array) -> jax.Array:
    """The kernel of ``conv(conv(x, a), b)``: ``C[s] = sum_u a[u] @ b[s - u]``, the full
    2-D convolution of the two kernels over their windows, contracting a's outputs with
    b's inputs; computed as one convolution whose batch is b's output channels."""
    ka = a.shape[0]
    lhs = jnp.transpose(b, (3, 0, 1, 2))                  # (O, kb, kb, M)
    rhs = jnp.transpose(a[::-1, ::-1], (0, 1, 3, 2))      # (ka, ka, M, I)
    c = lax.conv_general_dilated(lhs, rhs, (1, 1), [(ka - 1, ka - 1)] * 2,
                                 dimension_numbers=_DIMS, precision=lax.Precision.HIGHEST)
    return jnp.transpose(c, (1, 2, 3, 0))                 # (K, K, I, O)


def compose_kernels(kernels: Sequence[jax.Array]) -> jax.Array:
    """One HWIO kernel equal to the stride-1 convolutions ``kernels`` in sequence
    (ignoring padding), composed from the last one backwards (whose outputs are few)
    in float32."""
    composed = kernels[-1].astype(jnp.float32)
    for k in reversed(kernels[:-1]):
        composed = _compose_pair(k.astype(jnp.float32), composed)
    return composed


def compose_biases(kernels: Sequence[jax.Array], biases: Sequence[Optional[jax.Array]]
                   ) -> jax.Array:
    """The composed convolution's bias: each bias carried through the later kernels
    (summed over their windows, as on a constant map), in float32."""
    total = jnp.zeros((kernels[0].shape[2],), jnp.float32)
    for k, b in zip(kernels, biases):
        total = jnp.einsum("hwio,i->o", k.astype(jnp.float32), total,
                           precision=lax.Precision.HIGHEST)
        if b is not None:
            total = total + b.astype(jnp.float32)
    return total


def worth_composing(height: int, width: int, kernels: Sequence[jax.Array]) -> bool:
    """Whether :func:`conv_chain` composes ``kernels`` for a ``height`` x ``width`` map:
    more than one kernel, the composed one needing at most :data:`MAX_COMPOSED_SHARE`
    of the sequence's multiply-adds per pixel, and both sides at least
    :data:`MIN_SIDE_IN_STRIPS` border strips wide."""
    if len(kernels) < 2:
        return False
    sequence = sum(k.shape[0] * k.shape[1] * k.shape[2] * k.shape[3] for k in kernels)
    size = sum(k.shape[0] - 1 for k in kernels) + 1
    composed = size * size * kernels[0].shape[2] * kernels[-1].shape[3]
    return (composed <= MAX_COMPOSED_SHARE * sequence
            and min(height, width) >= MIN_SIDE_IN_STRIPS * sum(_widths(kernels)))


def conv_chain(x: jax.Array, kernels: Sequence[jax.Array],
               biases: Sequence[Optional[jax.Array]], compose: Optional[bool] = None
               ) -> jax.Array:
    """The stride-1 convolutions ``kernels`` (HWIO, odd square windows, each zero padded
    by ``k // 2``) with ``biases`` (or None), one after another, of the NHWC map ``x``,
    in ``x``'s dtype. ``compose``: as one convolution with exact borders (see the
    module docstring); None: when :func:`worth_composing`."""
    _check(x, kernels, biases)
    _, h, w, _ = x.shape
    if compose is None:
        compose = worth_composing(h, w, kernels)
    if not compose or len(kernels) < 2:
        return sequential(x, kernels, biases)
    border, reach = _widths(kernels)
    strip = border + reach
    if min(h, w) < strip:
        raise ValueError(f"conv_chain: a {h}x{w} map is narrower than the border strip "
                         f"({strip}) of the composed convolution")
    padded = jnp.pad(x, ((0, 0), (reach, reach), (reach, reach), (0, 0)))
    y = narrow_conv(padded, compose_kernels(kernels).astype(x.dtype))
    y = y + compose_biases(kernels, biases).astype(x.dtype)
    top = sequential(x[:, :strip], kernels, biases, ((True, False), (True, True)))
    bottom = sequential(x[:, h - strip:], kernels, biases, ((False, True), (True, True)))
    left = sequential(x[:, :, :strip], kernels, biases, ((True, True), (True, False)))
    right = sequential(x[:, :, w - strip:], kernels, biases, ((True, True), (False, True)))
    y = y.at[:, :border].set(top).at[:, h - border:].set(bottom)
    return y.at[:, :, :border].set(left).at[:, :, w - border:].set(right)
