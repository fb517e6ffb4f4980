"""max_pool: flax's max pool, one axis at a time on CPU; the same values and the same
gradient, ties included."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.models import densenet, dnhl
from adverse_vision.models.layers import SPPBottleneck
from adverse_vision.ops import max_pool as mp

CASES = [  # window, strides, padding: the models' pools and awkward ones
    ((5, 5), (1, 1), ((2, 2), (2, 2))),      # SPP: slices
    ((9, 9), (1, 1), ((4, 4), (4, 4))),      # SPP: reduce_window per axis
    ((13, 13), (1, 1), ((6, 6), (6, 6))),
    ((2, 2), (2, 2), "VALID"),               # VGG
    ((3, 3), (2, 2), ((1, 1), (1, 1))),      # DenseNet's stem, DeepLab
    ((3, 3), (1, 1), ((1, 1), (1, 1))),      # DeepLab's last blocks
    ((3, 7), (2, 3), "SAME"),                # both forms in one pool, odd sizes
    ((1, 2), (1, 1), ((0, 1), (2, 0))),      # lopsided padding
]


def _tied(shape, seed=0):
    """Few distinct values, so that most windows hold their maximum more than once."""
    return jnp.asarray(np.random.default_rng(seed).integers(0, 3, shape), jnp.float32)


@pytest.mark.parametrize("window, strides, padding", CASES)
def test_values_and_gradient_equal_flax_with_ties(window, strides, padding):
    x = _tied((2, 11, 13, 3))

    def loss(pool, x):
        y = pool(x, window, strides, padding)
        weights = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), jnp.float32)
        return jnp.sum(y * weights), y

    (_, want), dx_want = jax.value_and_grad(lambda x: loss(nn.max_pool, x), has_aux=True)(x)
    (_, got), dx_got = jax.value_and_grad(lambda x: loss(mp.max_pool, x), has_aux=True)(x)
    np.testing.assert_array_equal(got, want)
    # The gradient of each window goes to the same sample (a wrong choice among ties
    # moves a whole weight, about 1); only the order of summing one sample's differs.
    np.testing.assert_allclose(dx_got, dx_want, atol=1e-5)


def test_forward_mode_and_bfloat16():
    x = jax.random.normal(jax.random.key(0), (2, 10, 10, 4))
    t = jax.random.normal(jax.random.key(1), x.shape)
    args = ((9, 9), (1, 1), ((4, 4), (4, 4)))
    want = jax.jvp(lambda x: nn.max_pool(x, *args), (x,), (t,))
    got = jax.jvp(lambda x: mp.max_pool(x, *args), (x,), (t,))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    xb = x.astype(jnp.bfloat16)
    for args in [((5, 5), (1, 1), ((2, 2), (2, 2))), ((2, 2), (2, 2), "VALID")]:
        got = mp.max_pool(xb, *args)
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(got, nn.max_pool(xb, *args))


def test_nan_propagates_like_lax_max():
    x = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(1, 6, 6, 2)
    x = x.at[0, 2, 3, 1].set(jnp.nan)
    for args in [((3, 3), (1, 1), ((1, 1), (1, 1))), ((7, 7), (1, 1), ((3, 3), (3, 3)))]:
        np.testing.assert_array_equal(mp.max_pool(x, *args), nn.max_pool(x, *args))


def test_bad_shapes_name_what_is_wrong():
    with pytest.raises(ValueError, match="NHWC"):
        mp.max_pool(jnp.zeros((4, 4, 3)), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="longer than axis"):
        mp.max_pool(jnp.zeros((1, 3, 3, 1)), (5, 5), (1, 1))


def _area_windows(hlo: str) -> list[str]:
    """The select-and-scatter windows (max pool gradients) that span both image axes."""
    windows = re.findall(r"select_and_scatter.*?window_dimensions = array<i64: ([\d, ]+)>", hlo)
    return [w for w in windows if sum(int(d) > 1 for d in w.split(",")) > 1]


@pytest.mark.parametrize("model", ["spp", "vgg", "deeplab", "densenet"])
def test_the_models_pools_take_this_form(model):
    """Every max pool of the networks is this one: their gradient programs hold no
    select-and-scatter over a whole window (flax's pool gives one per pool)."""
    if model == "spp":
        net, x = SPPBottleneck(16), jnp.ones((1, 16, 16, 16))
    elif model == "vgg":
        net = dnhl.VGG16Classifier(3, width=1 / 16, fc_features=8, head="avg")
        x = jnp.ones((1, 32, 32, 3))
    elif model == "deeplab":
        net = dnhl.DeepLabLargeFOV(3, width=1 / 16, fc_features=8, dilation=2)
        x = jnp.ones((1, 33, 33, 3))
    else:
        net, x = densenet.DenseNetEncoder("tiny"), jnp.ones((1, 32, 32, 3))
    variables = net.init(jax.random.key(0), x)

    def gradient_program():  # a new function each time: traced again
        return jax.jit(jax.grad(lambda x: sum(
            jnp.sum(y) for y in jax.tree.leaves(net.apply(variables, x))))).lower(x).as_text()

    assert not _area_windows(gradient_program())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mp, "max_pool", nn.max_pool)
        assert _area_windows(gradient_program())
