"""A constant matrix applied along one axis of an array, evaluated from its nonzeros.

Bilinear resizing and reflection padding are such matrices, with at most two nonzeros
per output row. As a dense product (``einsum("Oi,...i...->...O...")``) they cost the
full ``out x in`` multiply-adds per position: 10.6 GFLOP to resize a 160x160x64 map
to 646x646, where blending two rows, then two columns, per output takes 0.1 GFLOP.
Evaluated outside differentiation (inference, evaluation), it gathers each output's
nonzero taps and blends them (0.12 s -> 0.02 s for that resize on a 2-core CPU).
Under differentiation it is the dense product, forward and backward, where the
gathers did not pay: autodiff of the gathers would scatter-add, slow on the CPU, and
gathers of the transposed matrix's taps, 10x faster than its dense product alone,
made a whole training step that used them (forward, backward or both) 0-4 % slower,
within the noise of a step. Where the matrix is wide and the product large (the
resize of kernel-offset products in :mod:`adverse_vision.ops.resized_conv`, whose
dense product costs as much as the convolution it replaces) ``sparse_gradient=True``
keeps the gathers under differentiation: forward from the matrix's nonzeros, backward
from its transpose's.
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


def _dense(matrix: np.ndarray, x: jax.Array, axis: int) -> jax.Array:
    """``matrix @ x`` along ``axis`` as one dense product, at full float32 precision."""
    out = jnp.einsum("oi,...i->...o", jnp.asarray(matrix, x.dtype), jnp.moveaxis(x, axis, -1),
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(out, -1, axis)


def matmul_along_axis(matrix: np.ndarray, x: jax.Array, axis: int,
                      sparse_gradient: bool = False) -> jax.Array:
    """``matrix @ x`` along ``axis`` of ``x`` (``matrix`` is ``(out, x.shape[axis])``,
    a NumPy constant): equal to the dense product to float32 rounding; evaluated from
    the matrix's nonzeros, differentiated as the dense product, or with
    ``sparse_gradient`` from the nonzeros of the matrix and of its transpose."""
    matrix = np.asarray(matrix, np.float32)
    axis = axis % x.ndim
    if matrix.ndim != 2 or matrix.shape[1] != x.shape[axis]:
        raise ValueError(f"matmul_along_axis: a {matrix.shape} matrix does not apply to "
                         f"axis {axis} of shape {x.shape}")
    forward = matrix_taps(matrix)

    @jax.custom_vjp
    def apply(v):
        return _blend(*forward, v, axis)

    def apply_fwd(v):  # under differentiation: the dense product unless sparse_gradient
        return (_blend(*forward, v, axis) if sparse_gradient else _dense(matrix, v, axis)), None

    def apply_bwd(_, g):  # the transpose's taps only where a backward pass is built
        if sparse_gradient:
            return (_blend(*matrix_taps(matrix.T), g, axis),)
        return (_dense(matrix.T, g, axis),)

    apply.defvjp(apply_fwd, apply_bwd)
    return apply(x)


__all__ = ["matmul_along_axis", "matrix_taps"]
