"""A constant matrix applied along one axis of an array, from its nonzeros only.

Bilinear resizing and reflection padding are such matrices, with at most two nonzeros
per output row. As a dense product (``einsum("Oi,...i...->...O...")``) they cost the
full ``out x in`` multiply-adds per position: 10.6 GFLOP to resize a 160x160x64 map
to 646x646, where blending two rows, then two columns, per output takes 0.1 GFLOP. Here the forward pass gathers each
output's nonzero taps and blends them, and the backward pass does the same with the
transposed matrix's taps (a gather, never a scatter-add, which is slow on the CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def matrix_taps(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(index, weight)``, each ``(rows, taps)``: row ``o`` of ``matrix`` is
    ``sum_k weight[o, k] * e[index[o, k]]`` (``taps`` the most nonzeros of any row;
    unused taps have weight 0 and index 0)."""
    matrix = np.asarray(matrix, np.float32)
    nonzero = matrix != 0
    taps = max(1, int(nonzero.sum(axis=1).max(initial=0)))
    index = np.zeros((matrix.shape[0], taps), np.int32)
    weight = np.zeros((matrix.shape[0], taps), np.float32)
    for row in range(matrix.shape[0]):
        (cols,) = np.nonzero(nonzero[row])
        index[row, : len(cols)] = cols
        weight[row, : len(cols)] = matrix[row, cols]
    return index, weight


def _blend(index: np.ndarray, weight: np.ndarray, x: jax.Array, axis: int) -> jax.Array:
    """``sum_k weight[:, k] * take(x, index[:, k], axis)``, accumulated in float32."""
    shape = [1] * x.ndim
    shape[axis] = -1
    out = None
    for k in range(index.shape[1]):
        term = (jnp.take(x, jnp.asarray(index[:, k]), axis=axis).astype(jnp.float32)
                * jnp.asarray(weight[:, k]).reshape(shape))
        out = term if out is None else out + term
    return out.astype(x.dtype)


def matmul_along_axis(matrix: np.ndarray, x: jax.Array, axis: int) -> jax.Array:
    """``matrix @ x`` along ``axis`` of ``x`` (``matrix`` is ``(out, x.shape[axis])``,
    a NumPy constant): equal to the dense product to float32 rounding, its gradient
    too, at the cost of the matrix's nonzeros."""
    matrix = np.asarray(matrix, np.float32)
    axis = axis % x.ndim
    if matrix.ndim != 2 or matrix.shape[1] != x.shape[axis]:
        raise ValueError(f"matmul_along_axis: a {matrix.shape} matrix does not apply to "
                         f"axis {axis} of shape {x.shape}")
    forward, backward = matrix_taps(matrix), matrix_taps(matrix.T)

    @jax.custom_vjp
    def apply(v):
        return _blend(*forward, v, axis)

    def apply_fwd(v):
        return apply(v), None

    def apply_bwd(_, g):
        return (_blend(*backward, g, axis),)

    apply.defvjp(apply_fwd, apply_bwd)
    return apply(x)


__all__ = ["matmul_along_axis", "matrix_taps"]
