"""Convolutions in sequence computed as one: the same values and gradients as the
sequence, borders included; when it composes; bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.models.depth_dehaze import TfuseNet
from adverse_vision.ops.conv_chain import (compose_biases, compose_kernels, conv_chain,
                                           sequential, worth_composing)

# (kernel sizes, channels from the input to the last output, batch, height, width)
CASES = [
    ((5, 5, 5), (64, 64, 64, 3), 1, 44, 52),   # the dehazer's output convolutions
    ((3, 5), (8, 16, 2), 2, 23, 31),
    ((1, 3, 5, 3), (4, 6, 5, 3, 2), 2, 40, 37),
]


def _arrays(sizes, channels, batch, h, w, seed=0, with_bias=True):
    rng = np.random.default_rng(seed)
    kernels = [jnp.asarray(rng.normal(0, (k * k * channels[i]) ** -0.5,
                                      (k, k, channels[i], channels[i + 1])), jnp.float32)
               for i, k in enumerate(sizes)]
    biases = [jnp.asarray(rng.normal(0, 1, (channels[i + 1],)), jnp.float32)
              if with_bias and i != 1 else None for i in range(len(sizes))]
    x = jnp.asarray(rng.uniform(-1, 1, (batch, h, w, channels[0])), jnp.float32)
    return x, kernels, biases


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))


@pytest.mark.parametrize("sizes,channels,batch,h,w", CASES)
def test_composed_equals_the_sequence_borders_included(sizes, channels, batch, h, w):
    x, kernels, biases = _arrays(sizes, channels, batch, h, w)
    want = jax.jit(sequential)(x, kernels, biases)
    got = jax.jit(lambda *a: conv_chain(*a, compose=True))(x, kernels, biases)
    assert got.shape == want.shape == (batch, h, w, channels[-1])
    # Measured: 1e-7 to 1e-6 (float32 summation order); every border row and column too.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.abs(want).max()))


def test_without_the_strips_the_border_differs():
    """The composed kernel alone is right inside and wrong within the border (the
    sequence reads zeros there), so the strips are what makes the border exact."""
    sizes, channels = (5, 5, 5), (6, 6, 6, 3)
    x, kernels, biases = _arrays(sizes, channels, 1, 40, 40)
    want = sequential(x, kernels, biases)
    alone = sequential(x, [compose_kernels(kernels)], [compose_biases(kernels, biases)])
    border = 4
    inside = (slice(None), slice(border, -border), slice(border, -border))
    np.testing.assert_allclose(alone[inside], want[inside], atol=1e-4)
    assert float(jnp.abs(alone[:, :border] - want[:, :border]).max()) > 1e-2
    assert float(jnp.abs(alone[:, :, -border:] - want[:, :, -border:]).max()) > 1e-2


@pytest.mark.parametrize("sizes,channels,batch,h,w", CASES[:2])
def test_gradients_equal_the_sequence_s(sizes, channels, batch, h, w):
    x, kernels, biases = _arrays(sizes, channels, batch, h, w, with_bias=True)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(batch, h, w, channels[-1])),
                          jnp.float32)

    def loss(fn):
        return jax.jit(jax.grad(lambda x, k, b: jnp.sum(fn(x, k, b) * weights),
                                argnums=(0, 1, 2)))

    want = loss(sequential)(x, kernels, biases)
    got = loss(lambda *a: conv_chain(*a, compose=True))(x, kernels, biases)
    for i, (g, r) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
        assert _rel(r, g) < 1e-5, i  # measured: below 2e-6


def test_bfloat16_maps_stay_bfloat16_and_close():
    x, kernels, biases = _arrays((5, 5, 5), (16, 16, 16, 3), 1, 48, 48)
    want = sequential(x, kernels, biases)
    got = conv_chain(x.astype(jnp.bfloat16), kernels, biases, compose=True)
    assert got.dtype == jnp.bfloat16
    assert _rel(want, got.astype(jnp.float32)) < 3e-2


def test_it_composes_where_that_is_less_arithmetic():
    def kernels(channels, size=5):
        return [jnp.zeros((size, size, a, b)) for a, b in zip(channels, channels[1:])]

    dehazer = kernels((64, 64, 64, 3))
    assert worth_composing(640, 640, dehazer) and worth_composing(256, 256, dehazer)
    assert not worth_composing(32, 640, dehazer)         # sides under 4 strips of 10
    assert not worth_composing(640, 640, kernels((16, 16, 16, 3)))  # 8k against 14k
    assert not worth_composing(640, 640, kernels((64, 64, 64, 64)))
    assert not worth_composing(640, 640, dehazer[:1])


def test_the_dehazer_runs_its_output_convolutions_as_one():
    model = TfuseNet()
    y = jnp.zeros((1, 64, 96, 3))
    variables = jax.eval_shape(lambda k: model.init(k, y, y), jax.random.key(0))
    text = jax.jit(model.apply).lower(variables, y, y).as_text()
    assert "13x13x64x3xf32" in text
    assert "5x5x64x64xf32" in text  # the strips' (and the composition's) own


@pytest.mark.parametrize("build,match", [
    (lambda: (jnp.zeros((8, 8, 2)), [jnp.zeros((3, 3, 2, 2))], [None]), "NHWC map"),
    (lambda: (jnp.zeros((1, 8, 8, 2)), [jnp.zeros((3, 3, 2, 2))], []), "one bias"),
    (lambda: (jnp.zeros((1, 8, 8, 2)), [jnp.zeros((2, 2, 2, 2))], [None]),
     "odd square window"),
    (lambda: (jnp.zeros((1, 8, 8, 2)), [jnp.zeros((3, 3, 2, 4)), jnp.zeros((3, 3, 3, 1))],
              [None, None]), "kernel 1 reads 3 channels, its input has 4"),
    (lambda: (jnp.zeros((1, 8, 8, 2)), [jnp.zeros((3, 3, 2, 4))], [jnp.zeros((2,))]),
     r"bias 0 must have shape \(4,\)"),
])
def test_bad_input_is_one_readable_error(build, match):
    with pytest.raises(ValueError, match=match):
        conv_chain(*build())


def test_a_map_narrower_than_the_strip_is_refused_when_composing_is_forced():
    x, kernels, biases = _arrays((5, 5, 5), (2, 2, 2, 1), 1, 9, 30)
    with pytest.raises(ValueError, match=r"9x30 map is narrower than the border strip \(10\)"):
        conv_chain(x, kernels, biases, compose=True)
    assert conv_chain(x, kernels, biases).shape == (1, 9, 30, 1)  # the sequence
