"""space_to_batch: phase images, and dilated convolutions as undilated ones over them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from adverse_vision.ops.space_to_batch import batch_to_space, divides, space_to_batch

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("rate", [2, 3])
def test_phase_layout_and_round_trip(rate):
    x = jnp.arange(2 * 6 * 12 * 3, dtype=jnp.float32).reshape(2, 6, 12, 3)
    phases = space_to_batch(x, rate)
    assert phases.shape == (2 * rate * rate, 6 // rate, 12 // rate, 3)
    for p in range(rate):
        for q in range(rate):
            for n in range(2):  # each image's phases next to each other
                np.testing.assert_array_equal(phases[(n * rate + p) * rate + q],
                                              x[n, p::rate, q::rate])
    np.testing.assert_array_equal(batch_to_space(phases, rate), x)


@pytest.mark.parametrize("rate, k", [(2, 3), (3, 3), (2, 5)])
def test_dilated_stack_equals_undilated_over_phases_with_gradients(rate, k):
    """Two dilated convolutions with a ReLU and a dense concatenation between them, as in
    BDLF's blocks: values and all gradients equal over phase images."""
    x = jax.random.normal(jax.random.key(0), (2, 12, 18, 4))
    w1 = jax.random.normal(jax.random.key(1), (k, k, 4, 5))
    w2 = jax.random.normal(jax.random.key(2), (k, k, 9, 3))

    def stack(x, w1, w2, dilation):
        pad = ((dilation * (k // 2),) * 2,) * 2
        conv = lambda a, w: lax.conv_general_dilated(  # noqa: E731
            a, w, (1, 1), pad, rhs_dilation=(dilation, dilation), dimension_numbers=NHWC)
        dense = jnp.concatenate([x, jax.nn.relu(conv(x, w1))], -1)
        return conv(dense, w2)

    def dilated(x, w1, w2):
        return jnp.sum(jnp.sin(stack(x, w1, w2, rate)))

    def phased(x, w1, w2):
        return jnp.sum(jnp.sin(batch_to_space(stack(space_to_batch(x, rate), w1, w2, 1), rate)))

    np.testing.assert_allclose(stack(x, w1, w2, rate),
                               batch_to_space(stack(space_to_batch(x, rate), w1, w2, 1), rate),
                               rtol=1e-5, atol=1e-4)
    for a, b in zip(jax.grad(dilated, (0, 1, 2))(x, w1, w2), jax.grad(phased, (0, 1, 2))(x, w1, w2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_sizes_the_rate_does_not_divide_are_refused():
    assert divides(2, 6, 8) and not divides(2, 7, 8) and not divides(2, 6, 9)
    with pytest.raises(ValueError, match="rate 2 does not divide the image size 7x8"):
        space_to_batch(jnp.zeros((1, 7, 8, 1)), 2)
    with pytest.raises(ValueError, match="batch 6 is not a multiple of 4 phases"):
        batch_to_space(jnp.zeros((6, 3, 4, 1)), 2)
