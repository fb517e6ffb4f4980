"""A convolution of a resized map with the channels mixed first: the values and
gradients of resize-then-convolve; when it is chosen; the up-projection that uses it;
bad input."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from adverse_vision.models.depth_dehaze import UpProjection, _torch_conv
from adverse_vision.models.togethernet import align_corners_matrix, resize_bilinear_align_corners
from adverse_vision.ops.resized_conv import resized_conv, worth_mixing_first

_DIMS = ("NHWC", "HWIO", "NHWC")


def _padded(in_size, out_size, pad):
    return np.pad(align_corners_matrix(in_size, out_size), ((pad, pad), (0, 0)))


def _plain(x, kernel, rows, cols):
    big = jnp.einsum("pu,buvc->bpvc", jnp.asarray(rows), x, precision=lax.Precision.HIGHEST)
    big = jnp.einsum("qv,bpvc->bpqc", jnp.asarray(cols), big, precision=lax.Precision.HIGHEST)
    return lax.conv_general_dilated(big, kernel, (1, 1), "VALID", dimension_numbers=_DIMS,
                                    precision=lax.Precision.HIGHEST)


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _case(kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "upsample 3x3":  # an up-projection's conv1 on the resized map
        x_shape, kernel_shape = (2, 7, 9, 12), (3, 3, 12, 5)
        rows, cols = _padded(7, 14, 1), _padded(9, 18, 1)
    elif kind == "odd sizes 3x5":
        x_shape, kernel_shape = (1, 5, 6, 4), (3, 5, 4, 3)
        rows, cols = _padded(5, 11, 1), _padded(6, 13, 2)
    else:  # arbitrary dense matrices, 1x1 kernel
        x_shape, kernel_shape = (2, 4, 3, 6), (1, 1, 6, 2)
        rows, cols = rng.normal(size=(5, 4)), rng.normal(size=(7, 3))
    x = jnp.asarray(rng.uniform(-1, 1, x_shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(0, 0.3, kernel_shape), jnp.float32)
    return x, kernel, np.asarray(rows, np.float32), np.asarray(cols, np.float32)


KINDS = ["upsample 3x3", "odd sizes 3x5", "dense 1x1"]


@pytest.mark.parametrize("kind", KINDS)
def test_values_equal_resize_then_convolve(kind):
    x, kernel, rows, cols = _case(kind)
    got = jax.jit(lambda x, k: resized_conv(x, k, rows, cols))(x, kernel)
    want = _plain(x, kernel, rows, cols)
    assert got.shape == want.shape
    assert _rel(got, want) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_equal_resize_then_convolve(kind):
    x, kernel, rows, cols = _case(kind)
    cot = jnp.asarray(np.random.default_rng(1).normal(size=_plain(x, kernel, rows, cols).shape),
                      jnp.float32)

    def grads(fn):
        return jax.jit(jax.grad(lambda x, k: jnp.sum(fn(x, k, rows, cols) * cot),
                                argnums=(0, 1)))(x, kernel)

    for got, want in zip(grads(resized_conv), grads(_plain)):
        assert _rel(got, want) < 1e-5


def test_mixing_first_is_chosen_for_the_up_projections_only():
    # the full-size depth network's first and last up-projections at 640x640 input
    assert worth_mixing_first((1, 20, 20, 1664), (3, 3, 1664, 832),
                              _padded(20, 40, 1), _padded(20, 40, 1))
    assert worth_mixing_first((1, 160, 160, 208), (3, 3, 208, 104),
                              _padded(160, 320, 1), _padded(160, 320, 1))
    # no enlargement: the channel products would be resized for nothing
    assert not worth_mixing_first((1, 20, 20, 64), (3, 3, 64, 64),
                                  _padded(20, 20, 1), _padded(20, 20, 1))
    # few input channels, many output channels: resizing the input is cheaper
    assert not worth_mixing_first((1, 20, 20, 3), (3, 3, 3, 64),
                                  _padded(20, 40, 1), _padded(20, 40, 1))


def _up_reference(variables, x, skip):
    """The up-projection written as the official network computes it."""
    p = variables["params"]
    y = jnp.concatenate([resize_bilinear_align_corners(x, skip.shape[1], skip.shape[2]), skip], -1)
    for name in ("conv1", "conv2"):
        y = lax.conv_general_dilated(y, p[name]["kernel"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=_DIMS,
                                     precision=lax.Precision.HIGHEST) + p[name]["bias"]
    return jnp.where(y > 0, y, 0.2 * y)


@pytest.mark.parametrize("channels,mixes_first", [(48, True), (4, False)])
def test_up_projection_equals_resize_concat_convolve(channels, mixes_first):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 6, 5, channels)), jnp.float32)
    skip = jnp.asarray(rng.uniform(-1, 1, (2, 12, 10, 8)), jnp.float32)
    module = UpProjection(channels // 2)
    variables = module.init(jax.random.key(0), x, skip)
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes == {"conv1": {"kernel": (3, 3, channels + 8, channels // 2),
                                "bias": (channels // 2,)},
                      "conv2": {"kernel": (3, 3, channels // 2, channels // 2),
                                "bias": (channels // 2,)}}
    assert worth_mixing_first(x.shape, (3, 3, channels, channels // 2),
                              _padded(6, 12, 1), _padded(5, 10, 1)) == mixes_first
    got = jax.jit(module.apply)(variables, x, skip)
    assert _rel(got, _up_reference(variables, x, skip)) < 1e-5
    # mixing first, the evaluated program never holds x resized to the skip's size
    text = jax.jit(module.apply).lower(variables, x, skip).as_text()
    assert (f"2x12x10x{channels}x" not in text) == mixes_first
    # differentiated (as resize, concatenate, convolve), the same gradients
    cot = jnp.asarray(rng.normal(size=got.shape), jnp.float32)

    def grads(fn):
        return jax.jit(jax.grad(lambda v, x, skip: jnp.sum(fn(v, x, skip) * cot),
                                argnums=(0, 1, 2)))(variables, x, skip)

    for a, b in zip(jax.tree.leaves(grads(module.apply)), jax.tree.leaves(grads(_up_reference))):
        assert _rel(a, b) < 1e-5


def test_up_projection_initialises_as_two_convs():
    """conv1's parameters, made apart from the convolution, start where ``Conv`` with
    PyTorch's initialisers starts them (same names, same random streams)."""

    class TwoConvs(nn.Module):
        @nn.compact
        def __call__(self, x, skip):
            y = jnp.concatenate([x, skip], -1)
            for name in ("conv1", "conv2"):
                y = _torch_conv(24, 3, y.shape[-1], name, jnp.float32, jnp.float32)(y)
            return y

    x, skip = jnp.ones((1, 6, 5, 48)), jnp.ones((1, 12, 10, 8))
    want = TwoConvs().init(jax.random.key(3), jnp.ones((1, 12, 10, 48)), skip)["params"]
    got = UpProjection(24).init(jax.random.key(3), x, skip)["params"]
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("x_shape,kernel_shape,rows,cols,message", [
    ((2, 4, 4), (3, 3, 4, 2), (6, 4), (6, 4), "need x"),
    ((1, 4, 4, 3), (3, 3, 4, 2), (6, 4), (6, 4), "input channels"),
    ((1, 4, 4, 3), (3, 3, 3, 2), (6, 5), (6, 4), "must take"),
    ((1, 4, 4, 3), (3, 3, 3, 2), (2, 4), (6, 4), "does not fit"),
])
def test_bad_input_is_one_readable_error(x_shape, kernel_shape, rows, cols, message):
    with pytest.raises(ValueError, match=message):
        resized_conv(jnp.zeros(x_shape), jnp.zeros(kernel_shape), np.ones(rows), np.ones(cols))
