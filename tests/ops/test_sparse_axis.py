"""matmul_along_axis against the dense product: values, gradients (first and second
order), low precision, and the matrices TogetherNet's resize builds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.models.togethernet import align_corners_matrix
from adverse_vision.ops.sparse_axis import matmul_along_axis, matrix_taps


def _dense(matrix, x, axis):
    moved = jnp.moveaxis(x, axis, -1)
    out = jnp.einsum("...i,oi->...o", moved, jnp.asarray(matrix),
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(out, -1, axis)


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_taps_rebuild_the_matrix():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(9, 6)) * (rng.uniform(size=(9, 6)) < 0.3)
    matrix[4] = 0.0  # a row without a nonzero
    index, weight = matrix_taps(matrix)
    rebuilt = np.zeros_like(matrix)
    for row in range(matrix.shape[0]):
        np.add.at(rebuilt[row], index[row], weight[row])
    np.testing.assert_allclose(rebuilt, matrix.astype(np.float32), rtol=1e-7)


@pytest.mark.parametrize("matrix_args,shape,axis", [
    ((7, 23, 3), (2, 7, 5, 4), 1),     # upsample with reflection padding, rows
    ((9, 11, 0), (2, 3, 9, 4), 2),     # upsample, columns
    ((12, 5, 0), (3, 12, 2), 1),       # downsample
    ((1, 4, 0), (2, 1, 3, 2), 1),      # a single input row
])
@pytest.mark.parametrize("sparse_gradient", [False, True])
def test_values_and_gradients_equal_the_dense_product(matrix_args, shape, axis,
                                                      sparse_gradient):
    matrix = align_corners_matrix(*matrix_args)
    x = jax.random.normal(jax.random.key(0), shape)

    def ours(v):
        return matmul_along_axis(matrix, v, axis, sparse_gradient=sparse_gradient)

    out = jax.jit(ours)(x)
    ref = _dense(matrix, x, axis)
    assert out.shape == ref.shape and _rel(out, ref) < 1e-6
    g = jax.random.normal(jax.random.key(1), ref.shape)
    grad = jax.grad(lambda v: jnp.vdot(ours(v), g))(x)
    ref_grad = jax.grad(lambda v: jnp.vdot(_dense(matrix, v, axis), g))(x)
    assert _rel(grad, ref_grad) < 1e-6
    # Second order through the custom backward pass.
    hvp = jax.grad(lambda v: jnp.sum(jax.grad(lambda u: jnp.sum(jnp.sin(ours(u))))(v) ** 2))(x)
    ref_hvp = jax.grad(lambda v: jnp.sum(jax.grad(
        lambda u: jnp.sum(jnp.sin(_dense(matrix, u, axis))))(v) ** 2))(x)
    assert _rel(hvp, ref_hvp) < 1e-5


def test_bfloat16_keeps_its_dtype_and_blends_in_float32():
    matrix = align_corners_matrix(6, 21, 3)
    x = jax.random.normal(jax.random.key(0), (2, 6, 4, 3)).astype(jnp.bfloat16)
    out = matmul_along_axis(matrix, x, 1)
    assert out.dtype == jnp.bfloat16
    ref = _dense(matrix, x.astype(jnp.float32), 1)  # rounded once, to bfloat16:
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2.0 ** -8, atol=1e-6)
    grad = jax.grad(lambda v: jnp.sum(matmul_along_axis(matrix, v, 1).astype(jnp.float32)))(x)
    assert grad.dtype == jnp.bfloat16


def test_a_matrix_of_the_wrong_width_is_named():
    with pytest.raises(ValueError, match=r"a \(5, 4\) matrix does not apply to axis 1 of "
                                         r"shape \(2, 3, 4\)"):
        matmul_along_axis(np.ones((5, 4)), jnp.zeros((2, 3, 4)), 1)


def test_evaluation_gathers_and_differentiation_multiplies():
    """Outside differentiation the map is gathers, no matrix product; under jax.grad the
    dense product, forward and backward."""
    matrix = align_corners_matrix(5, 17, 2)
    x = jnp.ones((1, 5, 3, 2))

    def primitives(jaxpr):
        names = set()
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for param in eqn.params.values():  # the jaxprs inside jit, custom_vjp, ...
                for inner in (param if isinstance(param, (list, tuple)) else [param]):
                    inner = getattr(inner, "jaxpr", inner)
                    if hasattr(inner, "eqns"):
                        names |= primitives(inner)
        return names

    evaluated = primitives(jax.make_jaxpr(lambda v: matmul_along_axis(matrix, v, 1))(x).jaxpr)
    assert "gather" in evaluated and "dot_general" not in evaluated, evaluated
    differentiated = primitives(jax.make_jaxpr(jax.grad(
        lambda v: jnp.sum(matmul_along_axis(matrix, v, 1) ** 2)))(x).jaxpr)
    assert "dot_general" in differentiated and "gather" not in differentiated, differentiated
    # with sparse_gradient, gathers both ways
    sparse = primitives(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(
        matmul_along_axis(matrix, v, 1, sparse_gradient=True) ** 2)))(x).jaxpr)
    assert "gather" in sparse and "dot_general" not in sparse, sparse
