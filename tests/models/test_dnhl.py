"""Tests for the DN-HL networks (adverse_vision.models.dnhl)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.models.dnhl import (
    CAFFE_BGR_MEAN,
    DeepLabLargeFOV,
    Denoiser,
    VGG16Classifier,
    caffe_to_rgb,
    denoiser_crop,
    param_count,
    rgb_to_caffe,
    upsample_logits,
)
from tests.helpers import fill_variables

SMALL = 0.25  # denoiser width for CPU tests: 16 / 32 / 8 / 64 channels
VGG_WIDTH = 1 / 16  # 4, 8, 16, 32, 32 channels

DENOISER_PARAMS = 1_033_443
VGG16_PARAMS = 138_357_544
DEEPLAB_PARAMS = 20_505_429


def _key(seed=0):
    return jax.random.key(seed, impl="unsafe_rbg")


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def _shapes(model, x):
    return jax.eval_shape(lambda: model.init(_key(), x, train=False))


def _finite(tree):
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(tree))


# ------------------------------------------------------------------ denoiser


@pytest.mark.parametrize("form,size", [("default", 64), ("official", 68)])
def test_denoiser_param_count(form, size):
    shapes = _shapes(Denoiser(form=form), jnp.zeros((1, size, size, 3)))
    n = param_count(shapes)
    assert n == DENOISER_PARAMS
    assert abs(n - 1.03e6) / 1.03e6 < 0.02
    assert set(shapes["params"]) == {
        "conv0", "conv1", "conv1_bn", "residual_1", "conv2", "conv2_bn", "residual_2",
        "upsample_r2", "conv3", "conv3_bn", "residual_3", "upsample_r3", "concat_reduction"}
    assert set(shapes["params"]["residual_3"]) == {
        f"{p}branch2{t}" for p in ("", "bn_") for t in "abc"}
    assert shapes["params"]["residual_3"]["branch2a"]["kernel"].shape == (1, 1, 256, 64)
    assert "bias" not in shapes["params"]["residual_3"]["branch2b"]
    assert shapes["params"]["upsample_r3"]["kernel"].shape == (4, 4, 64, 256)
    assert shapes["params"]["concat_reduction"]["kernel"].shape == (3, 3, 128, 3)
    assert "batch_stats" in shapes


@pytest.mark.parametrize("form,hw,out", [
    ("default", (32, 32), (32, 32)),
    ("default", (36, 44), (36, 44)),
    ("official", (36, 36), (30, 30)),
    ("official", (40, 48), (34, 42)),
])
def test_denoiser_shapes(form, hw, out):
    model = Denoiser(form=form, width=SMALL, dtype=jnp.bfloat16)
    x = jnp.zeros((2, *hw, 3))
    shapes = _shapes(model, x)
    y = jax.eval_shape(lambda v: model.apply(v, x, train=False), shapes)
    assert y.shape == (2, *out, 3)
    assert y.dtype == jnp.float32
    assert model.crop == denoiser_crop(form) == (hw[0] - out[0]) // 2


@pytest.mark.parametrize("form,shape", [
    ("default", (1, 30, 32, 3)),
    ("default", (1, 32, 34, 3)),
    ("official", (1, 32, 34, 3)),
    ("official", (1, 36, 38, 3)),
    ("official", (1, 4, 4, 3)),
    ("default", (32, 32, 3)),
    ("default", (1, 32, 32, 1)),
])
def test_denoiser_bad_input(form, shape):
    model = Denoiser(form=form, width=SMALL)
    with pytest.raises(ValueError, match=r"Denoiser input.*shape"):
        _shapes(model, jnp.zeros(shape))


def test_denoiser_bad_attributes():
    with pytest.raises(ValueError, match="form"):
        _shapes(Denoiser(form="caffe"), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="form"):
        denoiser_crop("caffe")
    with pytest.raises(ValueError, match="width"):
        _shapes(Denoiser(width=0.0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("form", ["default", "official"])
def test_untrained_denoiser_is_identity(form):
    model = Denoiser(form=form, width=SMALL)
    x = _images((2, 36, 36, 3))

    def run(x):
        variables = model.init(_key(), x, train=False)
        y_train, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return variables["params"]["concat_reduction"], model.apply(variables, x), y_train

    last, y_eval, y_train = jax.jit(run)(x)
    assert not np.any(last["kernel"]) and not np.any(last["bias"])
    c = denoiser_crop(form)
    target = np.asarray(x)[:, c:36 - c, c:36 - c]
    np.testing.assert_array_equal(y_eval, target)
    np.testing.assert_array_equal(y_train, target)


def test_caffe_colour_conversion_round_trips():
    x = _images((2, 5, 7, 3))
    y = rgb_to_caffe(x)
    np.testing.assert_allclose(caffe_to_rgb(y), x, atol=1e-6)
    red = jnp.asarray([[1.0, 0.0, 0.0]])
    b, g, r = CAFFE_BGR_MEAN
    np.testing.assert_allclose(rgb_to_caffe(red), [[-b, -g, 255.0 - r]], rtol=1e-6)
    np.testing.assert_allclose(caffe_to_rgb(jnp.asarray([[-b, -g, 255.0 - r]])), red, atol=1e-6)


def test_official_form_adds_residual_in_caffe_units():
    """output = caffe_to_rgb(crop(rgb_to_caffe(x)) + residual), residual = concat_reduction."""
    model = Denoiser(form="official", width=SMALL)
    x = _images((1, 36, 36, 3), seed=1)
    variables = fill_variables(_shapes(model, x))
    y, state = jax.jit(lambda v: model.apply(v, x, train=False, capture_intermediates=True,
                                             mutable=["intermediates"]))(variables)
    (residual,) = state["intermediates"]["concat_reduction"]["__call__"]
    assert residual.shape == (1, 30, 30, 3)
    assert float(jnp.abs(residual).max()) > 0
    expected = caffe_to_rgb(rgb_to_caffe(x)[:, 3:-3, 3:-3] + residual)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_upsampling_is_a_caffe_deconvolution():
    """upsample_r2 is the transpose of a 4x4 stride-2 conv padded by 1 (Caffe's Deconvolution)."""
    model = Denoiser(width=SMALL)
    x = _images((1, 32, 32, 3), seed=2)
    variables = fill_variables(_shapes(model, x))
    _, state = jax.jit(lambda v: model.apply(v, x, train=False, capture_intermediates=True,
                                             mutable=["intermediates"]))(variables)
    inter = state["intermediates"]
    (e2,) = inter["residual_2"]["__call__"]
    (up,) = inter["upsample_r2"]["__call__"]
    p = variables["params"]["upsample_r2"]
    kernel = jnp.asarray(p["kernel"])  # (4, 4, out, in): the forward conv maps out -> in

    def conv(z):
        return jax.lax.conv_general_dilated(z, kernel, (2, 2), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    _, vjp = jax.vjp(conv, jnp.zeros(up.shape))
    np.testing.assert_allclose(up, vjp(e2)[0] + p["bias"], rtol=1e-5, atol=1e-5)


def test_denoiser_forward_backward():
    model = Denoiser(width=SMALL)
    x = _images((2, 32, 32, 3), seed=3)
    variables = fill_variables(_shapes(model, x))

    def loss(params):
        y, upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])
        return jnp.mean((y - 0.5) ** 2), upd

    (value, upd), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert np.isfinite(float(value))
    assert _finite(grads)
    for name in ("conv0", "concat_reduction", "upsample_r2"):
        assert float(jnp.abs(grads[name]["kernel"]).max()) > 0, name
    old = variables["batch_stats"]["conv1_bn"]["mean"]
    assert not np.allclose(upd["batch_stats"]["conv1_bn"]["mean"], old)


# ------------------------------------------------------------------ VGG-16


def test_vgg16_param_count_and_names():
    shapes = _shapes(VGG16Classifier(1000), jnp.zeros((1, 224, 224, 3)))
    assert param_count(shapes) == VGG16_PARAMS
    names = [f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
    assert set(shapes["params"]) == set(names + ["fc6", "fc7", "fc8"])
    assert shapes["params"]["fc6"]["kernel"].shape == (7 * 7 * 512, 4096)


def test_vgg16_bad_input():
    with pytest.raises(ValueError, match=r"224x224.*\(1, 64, 64, 3\)"):
        _shapes(VGG16Classifier(10, width=VGG_WIDTH), jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="head"):
        _shapes(VGG16Classifier(10, width=VGG_WIDTH, head="max"), jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="at least 32"):
        _shapes(VGG16Classifier(10, width=VGG_WIDTH, head="avg"), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="num_classes"):
        _shapes(VGG16Classifier(0, head="avg"), jnp.zeros((1, 32, 32, 3)))


def test_vgg16_small_forward_backward():
    model = VGG16Classifier(5, width=VGG_WIDTH, fc_features=32, head="avg")
    x = _images((2, 40, 32, 3), seed=4)
    params = fill_variables(_shapes(model, x))["params"]
    labels = jnp.asarray([1, 3])

    def loss(p, rng):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": rng})
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1)), logits

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (value, logits), grads = step(params, _key(1))
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    assert np.isfinite(float(value)) and _finite(grads)
    assert float(jnp.abs(grads["conv1_1"]["kernel"]).max()) > 0
    (_, logits2), _ = step(params, _key(2))
    assert not np.allclose(logits, logits2)  # dropout differs between rngs
    no_drop = model.copy(dropout_rate=0.0)

    @jax.jit
    def evaluate(p):
        v = {"params": p}
        return (model.apply(v, x, train=False), model.apply(v, x),
                no_drop.apply(v, x, train=True))

    eval_logits, default_logits, no_drop_logits = evaluate(params)
    np.testing.assert_array_equal(eval_logits, default_logits)
    np.testing.assert_allclose(no_drop_logits, eval_logits, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ DeepLab-LargeFOV


def test_deeplab_param_count_and_names():
    shapes = _shapes(DeepLabLargeFOV(), jnp.zeros((1, 64, 64, 3)))
    assert param_count(shapes) == DEEPLAB_PARAMS
    assert abs(DEEPLAB_PARAMS - 20.5e6) / 20.5e6 < 0.01
    params = shapes["params"]
    assert params["fc6"]["kernel"].shape == (3, 3, 512, 1024)
    assert params["fc8"]["kernel"].shape == (1, 1, 1024, 21)
    assert {"conv1_1", "conv5_3", "fc7"} <= set(params)


@pytest.mark.parametrize("size", [64, 50, 33])
def test_deeplab_output_stride_8(size):
    model = DeepLabLargeFOV(7, width=VGG_WIDTH, fc_features=16, dtype=jnp.bfloat16)
    x = jnp.zeros((2, size, size + 8, 3))
    shapes = _shapes(model, x)
    y = jax.eval_shape(lambda v: model.apply(v, x), shapes)
    assert y.shape == (2, math.ceil(size / 8), math.ceil((size + 8) / 8), 7)
    assert y.dtype == jnp.float32


def test_deeplab_fc6_dilation():
    """An impulse on the stride-8 map moves the logits exactly at offsets {-12, 0, 12}."""
    model = DeepLabLargeFOV(3, width=VGG_WIDTH, fc_features=16)
    variables = fill_variables(_shapes(model, jnp.zeros((1, 32, 32, 3))))
    channels = variables["params"]["fc6"]["kernel"].shape[2]
    feats = _images((1, 26, 26, channels), seed=5)
    impulse = jnp.zeros_like(feats).at[0, 13, 13].set(1.0)

    def predict(f):
        return model.apply(variables, f, method="predict")

    _, tangent = jax.jvp(predict, (feats,), (impulse,))
    moved = np.argwhere(np.abs(np.asarray(tangent[0])).max(-1) > 0)
    expected = [[i, j] for i in (1, 13, 25) for j in (1, 13, 25)]
    assert sorted(moved.tolist()) == expected


def test_deeplab_small_forward_backward():
    model = DeepLabLargeFOV(4, width=VGG_WIDTH, fc_features=16)
    x = _images((2, 48, 40, 3), seed=6)
    labels = jnp.asarray(np.random.default_rng(0).integers(0, 4, size=(2, 48, 40)))
    params = fill_variables(_shapes(model, x))["params"]

    def loss(p):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": _key(3)})
        full = upsample_logits(logits, 48, 40)
        logp = jax.nn.log_softmax(full)
        return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1)), full

    (value, full), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert full.shape == (2, 48, 40, 4)
    assert np.isfinite(float(value)) and _finite(grads)
    assert float(jnp.abs(grads["conv1_1"]["kernel"]).max()) > 0


def test_upsample_logits():
    logits = jnp.asarray([0.0, 1.0]).reshape(1, 1, 2, 1) * jnp.ones((1, 2, 2, 1))
    out = upsample_logits(logits, 4, 4)
    assert out.shape == (1, 4, 4, 1) and out.dtype == jnp.float32
    np.testing.assert_allclose(out[0, 0, :, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    x = _images((2, 5, 6, 3), seed=7)
    np.testing.assert_allclose(upsample_logits(x, 40, 48),
                               jax.image.resize(x, (2, 40, 48, 3), "bilinear"), atol=1e-6)
    with pytest.raises(ValueError, match="height"):
        upsample_logits(x, 0, 48)
    with pytest.raises(ValueError, match="upsample_logits"):
        upsample_logits(x[0], 40, 48)
