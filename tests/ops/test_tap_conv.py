"""tap_conv: lax.conv_general_dilated with, on CPU, depthwise convolutions as taps and the
kernel gradient per kernel row."""

from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from adverse_vision.models.layers import Conv
from adverse_vision.ops import tap_conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _grads(conv, x, w, **kw):
    def loss(x, w):
        return jnp.sum(jnp.sin(conv(x, w, dimension_numbers=NHWC, **kw)))
    return jax.value_and_grad(loss, (0, 1))(x, w)


@pytest.mark.parametrize("k, cin, strides, padding, dilation", [
    (1, 24, (1, 1), "VALID", (1, 1)),         # the row form: one matrix product
    (1, 64, (1, 1), ((1, 0), (0, 2)), (1, 1)),  # padded 1x1: the row form
    (3, 64, (1, 1), "SAME", (1, 1)),          # 3x3: XLA's gradient
    (3, 64, (1, 1), ((2, 2), (2, 2)), (2, 2)),  # dilated (BDLF's dense blocks)
    (4, 3, (1, 1), "VALID", (1, 1)),           # XLA's gradient
    (1, 64, (2, 2), ((0, 0), (0, 0)), (1, 1)),  # stride 2: XLA's gradient
])
def test_values_and_both_gradients_equal_lax(k, cin, strides, padding, dilation):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (256, 11, 13, cin))
    w = jax.random.normal(kw, (k, k, cin, 7)) / k
    args = dict(window_strides=strides, padding=padding, rhs_dilation=dilation)
    (want, (dx, dw)) = _grads(lax.conv_general_dilated, x, w, **args)
    with tap_conv.kernel_gradients_by_rows():
        (got, (gx, gw)) = _grads(tap_conv.conv_general_dilated, x, w, **args)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(gx, dx, rtol=1e-5, atol=1e-5)
    # float32 sums over 36,608 outputs in another order
    np.testing.assert_allclose(gw, dw, rtol=1e-4, atol=1e-5 * float(np.abs(dw).max()))
    uses_rows = tap_conv._rows_win(w.shape, strides, 256 * 11 * 13)  # pylint: disable=protected-access
    assert uses_rows == (strides == (1, 1) and k == 1)


@pytest.mark.parametrize("k, padding, dilation", [
    (3, ((1, 1), (1, 1)), (1, 1)), (3, ((2, 2), (2, 2)), (2, 2)), (3, ((2, 1), (0, 3)), (1, 1)),
    (4, ((0, 0), (0, 0)), (1, 1))])
def test_row_form_of_larger_kernels_equals_xla(k, padding, dilation):
    """The row form is written for any kernel size (only 1x1 kernels take it now, where
    it is faster); its kernel gradient equals XLA's for larger ones too."""
    kx, kd = jax.random.split(jax.random.key(5))
    x = jax.random.normal(kx, (16, 11, 13, 24))
    w = jnp.zeros((k, k, 24, 7))
    y, vjp = jax.vjp(lambda w: lax.conv_general_dilated(
        x, w, (1, 1), padding, rhs_dilation=dilation, dimension_numbers=NHWC), w)
    dy = jax.random.normal(kd, y.shape)
    got = tap_conv._kernel_grad_rows(x, dy, w.shape, padding, dilation, None)  # pylint: disable=protected-access
    want = vjp(dy)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_small_problems_keep_xla_gradient():
    assert not tap_conv._rows_win((1, 1, 512, 512), (1, 1), 400)  # pylint: disable=protected-access
    assert tap_conv._rows_win((1, 1, 512, 512), (1, 1), tap_conv.MIN_OUTPUTS)  # pylint: disable=protected-access


def test_the_row_form_is_what_runs_on_cpu():
    """The kernel gradient's program differs from XLA's own where the row form wins (a
    stack of per-row matrix products, no convolution for the kernel gradient)."""
    x = jnp.ones((512, 8, 8, 64))
    w = jnp.ones((1, 1, 64, 8))

    def kernel_grad(conv):
        return jax.make_jaxpr(jax.grad(lambda w: jnp.sum(conv(
            x, w, (1, 1), "SAME", dimension_numbers=NHWC)), 0))(w)

    with tap_conv.kernel_gradients_by_rows():
        ours = str(kernel_grad(tap_conv.conv_general_dilated))
    assert "dot_general" in ours and str(kernel_grad(lax.conv_general_dilated)).count(
        "dot_general") == 0
    # outside the context: XLA's convolution, so forward-mode differentiation works
    assert str(kernel_grad(tap_conv.conv_general_dilated)).count("dot_general") == 0
    _, tangent = jax.jvp(lambda w: tap_conv.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=NHWC), (w,), (w,))
    assert tangent.shape == (512, 8, 8, 8)


def test_shapes_where_xla_wins_are_plain_lax_inside_the_context():
    """The decision is taken at trace time from the output shape: a convolution the row
    form would not win stays XLA's own convolution, not a custom_vjp around it."""
    def forward(x, w, strides, padding="SAME", dilation=(1, 1)):
        with tap_conv.kernel_gradients_by_rows():
            return str(jax.make_jaxpr(lambda x, w: tap_conv.conv_general_dilated(
                x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC))(x, w))
    w1 = jnp.ones((1, 1, 64, 8))
    assert "custom_vjp" in forward(jnp.ones((512, 8, 8, 64)), w1, (1, 1))
    assert "custom_vjp" not in forward(jnp.ones((512, 8, 8, 64)), w1, (2, 2))   # stride 2
    assert "custom_vjp" not in forward(jnp.ones((4, 8, 8, 64)), w1, (1, 1))     # 256 outputs
    assert "custom_vjp" not in forward(jnp.ones((512, 8, 8, 64)), jnp.ones((3, 3, 64, 8)), (1, 1))
    # the output shape counts padding: VALID 1x1 on 8x8 (512 * 64 = 32,768) wins; padded
    # 1x1 outputs grow, cropped ones (negative padding) of 6x6 (18,432) do not
    assert "custom_vjp" in forward(jnp.ones((512, 8, 8, 64)), w1, (1, 1), "VALID")
    assert "custom_vjp" not in forward(jnp.ones((512, 8, 8, 64)), w1, (1, 1), ((-1, -1), (-1, -1)))


def test_other_layouts_and_groups_are_lax_itself():
    x = jax.random.normal(jax.random.key(1), (2, 4, 9, 9))
    w = jax.random.normal(jax.random.key(2), (6, 2, 3, 3))
    for kw in (dict(), dict(feature_group_count=2)):
        args = (x, w if kw else w[:, :2].repeat(2, 1), (1, 1), "SAME")
        np.testing.assert_array_equal(tap_conv.conv_general_dilated(*args, **kw),
                                      lax.conv_general_dilated(*args, **kw))


def test_conv_layer_keeps_flax_parameters_and_values():
    x = jax.random.normal(jax.random.key(3), (328, 10, 10, 64))
    ours, plain = Conv(8, (3, 3), name="c"), nn.Conv(8, (3, 3), name="c")
    v = plain.init(jax.random.key(4), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(4), x)) == jax.tree.map(jnp.shape, v)
    np.testing.assert_allclose(ours.apply(v, x), plain.apply(v, x), rtol=1e-6)
    with tap_conv.kernel_gradients_by_rows():
        g_ours = jax.grad(lambda v: jnp.sum(ours.apply(v, x) ** 2))(v)
    g_plain = jax.grad(lambda v: jnp.sum(plain.apply(v, x) ** 2))(v)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max())), g_ours, g_plain)


# --------------------------------------------------------------------------- depthwise

@pytest.mark.parametrize("k, strides, padding, dilation", [
    (3, (1, 1), ((1, 1), (1, 1)), (1, 1)),    # the dehazer's MixFFN
    (3, (2, 2), "SAME", (1, 1)),              # YOLOX-nano's stride-2 depthwise
    (5, (1, 2), ((2, 1), (0, 3)), (1, 1)),    # uneven strides and padding
    (3, (1, 1), "VALID", (2, 3)),             # dilated
    (4, (3, 3), ((0, 0), (0, 0)), (1, 1)),     # a stride longer than the taps reach
])
def test_depthwise_values_and_gradients_equal_lax(k, strides, padding, dilation):
    kx, kw = jax.random.split(jax.random.key(7))
    x = jax.random.normal(kx, (3, 17, 19, 12))
    w = jax.random.normal(kw, (k, k, 1, 12)) / k
    args = dict(window_strides=strides, padding=padding, rhs_dilation=dilation,
                feature_group_count=12)
    (want, (dx, dw)) = _grads(lax.conv_general_dilated, x, w, **args)
    (got, (gx, gw)) = _grads(tap_conv.conv_general_dilated, x, w, **args)
    np.testing.assert_allclose(got, want, rtol=1e-4)  # a sum over all outputs
    np.testing.assert_allclose(gx, dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, dw, rtol=1e-4, atol=1e-5 * float(np.abs(dw).max()))
    # forward mode passes through too (no custom rule)
    _, tangent = jax.jvp(lambda x: tap_conv.conv_general_dilated(x, w, dimension_numbers=NHWC,
                                                                  **args), (x,), (x,))
    np.testing.assert_allclose(tangent, lax.conv_general_dilated(
        x, w, dimension_numbers=NHWC, **args), rtol=1e-5, atol=1e-5)


def _ops(fn, *args) -> str:
    """The program's jaxpr as text (its primitives, nested ones included)."""
    return str(jax.make_jaxpr(fn)(*args))


def test_depthwise_runs_as_taps_on_cpu_and_grouped_convs_stay_lax():
    x = jnp.ones((2, 9, 9, 8))

    def conv(w, groups):
        return lambda x: tap_conv.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=groups)

    assert "conv_general_dilated" not in _ops(conv(jnp.ones((3, 3, 1, 8)), 8), x)
    # two input channels per group, or two outputs per channel: XLA's convolution
    assert "conv_general_dilated" in _ops(conv(jnp.ones((3, 3, 2, 4)), 4), x)
    assert "conv_general_dilated" in _ops(conv(jnp.ones((3, 3, 1, 16)), 8), x)
    with mock.patch.object(jax, "default_backend", return_value="gpu"):
        assert "conv_general_dilated" in _ops(conv(jnp.ones((3, 3, 1, 8)), 8), x)


def test_depthwise_in_bfloat16_sums_in_float32():
    kx, kw = jax.random.split(jax.random.key(8))
    x = jax.random.normal(kx, (2, 16, 16, 8)).astype(jnp.bfloat16)
    w = jax.random.normal(kw, (7, 7, 1, 8)).astype(jnp.bfloat16)
    got = tap_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                        feature_group_count=8)
    want = lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), (1, 1),
                                     "SAME", dimension_numbers=NHWC, feature_group_count=8)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=1e-2, atol=1e-2)
