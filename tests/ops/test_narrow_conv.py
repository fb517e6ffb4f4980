"""narrow_conv against lax.conv_general_dilated: values and both gradients."""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from adverse_vision.models.togethernet import align_corners_matrix
from adverse_vision.ops import narrow_conv as narrow_conv_module
from adverse_vision.ops.narrow_conv import narrow_conv, resized_narrow_conv


def _conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("shape,kernel_shape,band_elements", [
    ((2, 13, 11, 5), (7, 7, 5, 3), None),
    ((1, 9, 12, 4), (3, 5, 4, 1), None),
    ((3, 4, 4, 2), (1, 1, 2, 3), None),
    ((2, 6, 7, 32), (3, 3, 32, 3), 1),  # a product no larger than the input: whole
    # bands of 7 input rows (7 x 21 x 3 x 3 x 2 numbers each): the two images' 60 rows
    # in 9 bands, some holding rows of both images, the last one part padding
    ((2, 30, 21, 5), (3, 3, 5, 2), 7 * 21 * 3 * 3 * 2),
    ((2, 30, 21, 5), (3, 3, 5, 2), 1),  # one row per band
])
def test_values_and_gradients(shape, kernel_shape, band_elements, monkeypatch):
    if band_elements is not None:
        monkeypatch.setattr(narrow_conv_module, "BAND_ELEMENTS", band_elements)
    kx, kk, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape)
    kernel = jax.random.normal(kk, kernel_shape)
    out = jax.jit(narrow_conv)(x, kernel)
    ref = _conv(x, kernel)
    assert out.shape == ref.shape
    assert _rel(out, ref) < 1e-5
    # a non-uniform output gradient, so that every tap and phase is exercised
    cot = jax.random.normal(kc, ref.shape)

    def grads(fn):
        return jax.jit(jax.grad(lambda x, k: jnp.sum(fn(x, k) * cot), argnums=(0, 1)))(x, kernel)

    for got, want in zip(grads(narrow_conv), grads(_conv)):
        assert got.shape == want.shape
        assert _rel(got, want) < 1e-5


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="narrow_conv"):
        narrow_conv(jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 5, 3)))
    with pytest.raises(ValueError, match="smaller than"):
        narrow_conv(jnp.zeros((1, 4, 8, 4)), jnp.zeros((7, 7, 4, 3)))


@pytest.mark.parametrize("small, kernel_shape", [
    ((2, 5, 6, 4), (7, 7, 4, 3)),  # TogetherNet's conv_4 after a x4 resize padded by 3
    ((1, 4, 3, 2), (3, 5, 2, 1)),
])
def test_resized_values_and_gradients_equal_the_plain_composition(small, kernel_shape):
    """The factored form equals the plain convolution of the resized map: values, both
    gradients and a forward-mode derivative."""
    kh, kw = kernel_shape[:2]
    rows = align_corners_matrix(small[1], 4 * small[1], 3)
    cols = align_corners_matrix(small[2], 4 * small[2], 3)
    kx, kk, kc = jax.random.split(jax.random.key(1), 3)
    f = jax.random.normal(kx, small)
    kernel = jax.random.normal(kk, kernel_shape)

    def plain(f, kernel):
        x = jnp.einsum("pu,buvc->bpvc", rows, f, precision=lax.Precision.HIGHEST)
        x = jnp.einsum("qv,bpvc->bpqc", cols, x, precision=lax.Precision.HIGHEST)
        return _conv(x, kernel)

    def ours(f, kernel):
        return resized_narrow_conv(f, kernel, rows, cols)

    ref = plain(f, kernel)
    assert ref.shape == (small[0], 4 * small[1] + 7 - kh, 4 * small[2] + 7 - kw,
                         kernel_shape[3])
    assert _rel(jax.jit(ours)(f, kernel), ref) < 1e-5
    cot = jax.random.normal(kc, ref.shape)

    def grads(fn):
        return jax.jit(jax.grad(lambda f, k: jnp.sum(fn(f, k) * cot), argnums=(0, 1)))(f, kernel)

    for got, want in zip(grads(ours), grads(plain)):
        assert got.shape == want.shape and _rel(got, want) < 1e-5
    tangent = jax.random.normal(kc, kernel.shape)  # forward mode passes through too
    _, got = jax.jvp(lambda k: ours(f, k), (kernel,), (tangent,))
    _, want = jax.jvp(lambda k: plain(f, k), (kernel,), (tangent,))
    assert _rel(got, want) < 1e-5
    with pytest.raises(ValueError, match="resized_narrow_conv: need f"):
        resized_narrow_conv(f, kernel, rows[:, :-1], cols)
