"""Tests for the YOLOX detector and its building blocks (adverse_vision.models.{layers,yolox})."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.models import layers
from adverse_vision.models.yolox import (
    SIZES,
    YOLOX,
    YOLOXHead,
    YOLOXSize,
    param_count,
    resolve_size,
)
from tests.helpers import fill_variables

NUM_CLASSES = 3
TINY = (0.33, 0.125)  # custom depth / width: 8 base channels
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


def _key(seed=0):
    # The counter-based rbg generator compiles far faster on CPU than threefry
    # for many small initialisers; initialisation semantics are unchanged.
    return jax.random.key(seed, impl="unsafe_rbg")


def _stages(mdl, x, train):
    """Runs the three stages through the public stage methods."""
    feats = mdl.features(x, train)
    pyr = mdl.pyramid(feats, train)
    return feats, pyr, mdl.predict(pyr, train)


_fill = fill_variables


@pytest.fixture(scope="module")
def model():
    return YOLOX(NUM_CLASSES, TINY)


@pytest.fixture(scope="module")
def variables(model):
    x = jnp.zeros((1, 64, 64, 3))
    return _fill(jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False)))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return {s: jnp.asarray(rng.normal(size=(2, s, s, 3)), jnp.float32) for s in (64, 96)}


@pytest.fixture(scope="module")
def eval_forward(model):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


@pytest.fixture(scope="module")
def eval_64(model, variables, images):
    """Eval mode at 64x64: ``__call__`` and the stage methods (one compilation)."""

    def fn(v, x):
        return (model.apply(v, x, train=False),
                model.apply(v, x, False, mutable=["batch_stats"], method=_stages))

    return jax.device_get(jax.jit(fn)(variables, images[64]))


@pytest.fixture(scope="module")
def eval_stages(eval_64):
    return eval_64[1]


@pytest.fixture(scope="module")
def train_stages(model, variables, images):
    fn = jax.jit(lambda v, x: model.apply(v, x, True, mutable=["batch_stats"], method=_stages))
    return jax.device_get(fn(variables, images[64]))


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "name, millions",
    [("nano", 0.91), ("tiny", 5.06), ("s", 9.0), ("m", 25.3), ("l", 54.2), ("x", 99.1)],
)
def test_param_counts_match_model_zoo(name, millions):
    model = YOLOX(80, name)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    count = param_count(shapes)
    assert abs(count / 1e6 - millions) / millions < 0.01, (name, count)
    # Running statistics are buffers, not parameters.
    assert count < param_count(shapes["params"]) + param_count(shapes["batch_stats"])


def test_nano_is_depthwise_and_runs_shapes():
    model = YOLOX(80, "nano")
    x = jnp.zeros((1, 64, 64, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    p = shapes["params"]
    dconv = p["backbone"]["dark2"]["conv"]["dconv"]["conv"]["kernel"]
    assert dconv.shape == (3, 3, 1, 16)  # depthwise over 16 channels
    assert p["head"]["cls_convs_0_1"]["pconv"]["conv"]["kernel"].shape == (1, 1, 64, 64)
    # The Focus stem stays a dense conv.
    assert p["backbone"]["stem"]["conv"]["conv"]["kernel"].shape == (3, 3, 12, 16)
    outs = jax.eval_shape(lambda v: model.apply(v, x, train=False), shapes)
    assert [o.shape for o in outs] == [(1, 8, 8, 85), (1, 4, 4, 85), (1, 2, 2, 85)]


def test_resolve_size():
    assert resolve_size("s") == YOLOXSize(0.33, 0.5, False)
    assert resolve_size("nano").depthwise
    assert not resolve_size("nano", depthwise=False).depthwise
    assert resolve_size((0.33, 0.125)) == YOLOXSize(0.33, 0.125)
    assert resolve_size("m").channels == (192, 384, 768)
    assert SIZES["x"].head_channels == 320
    with pytest.raises(ValueError, match="unknown YOLOX size"):
        resolve_size("huge")
    with pytest.raises(ValueError, match="width"):
        resolve_size((0.33, 0.001))
    with pytest.raises(ValueError, match="depth"):
        resolve_size((0.0, 0.5))


def test_bad_configuration_and_input_raise_clear_errors():
    x = jnp.zeros((1, 64, 64, 3))
    with pytest.raises(ValueError, match="num_classes"):
        jax.eval_shape(lambda: YOLOX(0, TINY).init(_key(), x))
    with pytest.raises(ValueError, match="act"):
        jax.eval_shape(lambda: YOLOX(3, TINY, act="gelu").init(_key(), x))
    with pytest.raises(ValueError, match="multiples of 32"):
        jax.eval_shape(lambda: YOLOX(3, TINY).init(jax.random.key(0), jnp.zeros((1, 48, 64, 3))))


# --------------------------------------------------------------------------- blocks


def test_space_to_depth_matches_focus_order():
    x = np.arange(2 * 4 * 6 * 2, dtype=np.float32).reshape(2, 4, 6, 2)
    expected = np.zeros((2, 2, 3, 8), np.float32)
    for i in range(2):
        for j in range(3):
            # top-left, bottom-left, top-right, bottom-right of each 2x2 cell
            cells = [x[:, 2 * i, 2 * j], x[:, 2 * i + 1, 2 * j],
                     x[:, 2 * i, 2 * j + 1], x[:, 2 * i + 1, 2 * j + 1]]
            expected[:, i, j] = np.concatenate(cells, axis=-1)
    np.testing.assert_array_equal(np.asarray(layers.space_to_depth(jnp.asarray(x))), expected)
    with pytest.raises(ValueError, match="even"):
        layers.space_to_depth(jnp.zeros((1, 3, 4, 1)))


def test_focus_feeds_space_to_depth_to_its_conv():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 4, 3)), jnp.float32)
    focus = layers.Focus(12, 3, act="none")
    v = focus.init(_key(), x)
    kernel = np.zeros((3, 3, 12, 12), np.float32)
    kernel[1, 1] = np.eye(12)  # centre tap = identity: conv output = its input
    v["params"]["conv"]["conv"]["kernel"] = jnp.asarray(kernel)
    out = focus.apply(v, x, train=False)
    expected = layers.space_to_depth(x) / np.sqrt(1.0 + 1e-3)  # BN eval, fresh stats
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_conv_padding_is_pytorch_style_for_stride_two():
    # A 3x3 stride-2 conv on an even map pads one pixel on every side (PyTorch),
    # not (0, 1) as 'SAME' would: a single hot pixel at (2, 2) reaches only output (1, 1).
    block = layers.ConvBNAct(1, 3, 2, act="none")
    x = jnp.zeros((1, 4, 4, 1)).at[0, 2, 2, 0].set(1.0)
    v = block.init(_key(), x)
    v["params"]["conv"]["kernel"] = jnp.ones((3, 3, 1, 1))
    out = np.asarray(block.apply(v, x, train=False))[0, :, :, 0] * np.sqrt(1 + 1e-3)
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.0, 1.0]], atol=1e-6)


def test_batchnorm_momentum_epsilon_and_modes():
    block = layers.ConvBNAct(4, 1, 1, act="none")
    x = jnp.asarray(np.random.default_rng(2).normal(2.0, 3.0, size=(2, 5, 5, 3)), jnp.float32)
    v = block.init(_key(), x)
    kernel = np.asarray(v["params"]["conv"]["kernel"])[0, 0]
    y = np.asarray(x).reshape(-1, 3) @ kernel  # conv output, (N, 4)

    out, upd = block.apply(v, x, train=True, mutable=["batch_stats"])
    stats = upd["batch_stats"]["bn"]
    np.testing.assert_allclose(stats["mean"], 0.03 * y.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.97 + 0.03 * y.var(0), rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(out).reshape(-1, 4), (y - y.mean(0)) / np.sqrt(y.var(0) + 1e-3), rtol=1e-3, atol=1e-4
    )
    assert stats["mean"].dtype == jnp.float32

    out, upd = block.apply(v, x, train=False, mutable=["batch_stats"])
    np.testing.assert_array_equal(upd["batch_stats"]["bn"]["mean"], np.zeros(4))
    np.testing.assert_allclose(np.asarray(out).reshape(-1, 4), y / np.sqrt(1 + 1e-3), rtol=1e-4, atol=1e-5)


def test_activations():
    x = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(layers.activation(x, "lrelu"), [-0.2, 0.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(layers.activation(x, "silu"), x * jax.nn.sigmoid(x), rtol=1e-6)
    np.testing.assert_allclose(layers.activation(x, "relu"), [0.0, 0.0, 3.0])
    with pytest.raises(ValueError, match="unsupported activation"):
        layers.activation(x, "gelu")


def _max_pool_reference(x, k):
    """Stride-1 max pool that ignores out-of-image positions (numpy, NHWC)."""
    h, w = x.shape[1:3]
    r = k // 2
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = x[:, max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].max(axis=(1, 2))
    return out


def test_spp_pools_like_pytorch():
    # All-negative inputs: a zero-padded pool would leak zeros in at the borders.
    spp = layers.SPPBottleneck(4, act="none")
    x = -1.0 - np.random.default_rng(3).uniform(size=(1, 7, 7, 4)).astype(np.float32)
    v = spp.init(_key(), jnp.asarray(x))
    assert v["params"]["conv1"]["conv"]["kernel"].shape == (1, 1, 4, 2)
    assert v["params"]["conv2"]["conv"]["kernel"].shape == (1, 1, 8, 4)
    k1 = np.zeros((1, 1, 4, 2), np.float32)
    k1[0, 0, :2, :2] = np.eye(2)  # keep input channels 0 and 1
    k2 = np.zeros((1, 1, 8, 4), np.float32)
    for out_c, in_c in enumerate((0, 2, 4, 6)):  # channel 0 of [x, pool5, pool9, pool13]
        k2[0, 0, in_c, out_c] = 1.0
    v["params"]["conv1"]["conv"]["kernel"] = jnp.asarray(k1)
    v["params"]["conv2"]["conv"]["kernel"] = jnp.asarray(k2)
    out = np.asarray(spp.apply(v, jnp.asarray(x), train=False)) * (1 + 1e-3)  # two BN evals
    base = x[..., :1]
    expected = np.concatenate([base] + [_max_pool_reference(base, k) for k in (5, 9, 13)], -1)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


# --------------------------------------------------------------------------- model


def test_parameter_tree_names(variables):
    p = variables["params"]
    assert set(p) == {"backbone", "neck", "head"}
    assert set(p["backbone"]) == {"stem", "dark2", "dark3", "dark4", "dark5"}
    assert set(p["backbone"]["dark5"]) == {"conv", "spp", "csp"}
    assert set(p["backbone"]["dark3"]["csp"]) == {"conv1", "conv2", "conv3", "m_0", "m_1", "m_2"}
    assert set(p["neck"]) == {"lateral_conv0", "C3_p4", "reduce_conv1", "C3_p3",
                              "bu_conv2", "C3_n3", "bu_conv1", "C3_n4"}
    assert "cls_convs_2_1" in p["head"] and "obj_preds_0" in p["head"]
    assert p["backbone"]["stem"]["conv"]["conv"]["kernel"].shape == (3, 3, 12, 8)
    assert p["backbone"]["dark5"]["spp"]["conv2"]["conv"]["kernel"].shape == (1, 1, 256, 128)
    assert p["head"]["cls_preds_1"]["kernel"].shape == (1, 1, 32, NUM_CLASSES)


def test_head_init():
    head = YOLOXHead(NUM_CLASSES, 0.125)
    feats = [jnp.zeros((1, 4, 4, 32)), jnp.zeros((1, 2, 2, 64))]  # two levels suffice here
    v = head.init(_key(), feats)
    p = v["params"]
    assert PRIOR_BIAS == pytest.approx(-4.59512, abs=1e-5)
    assert "stems_2" not in p
    for k in range(2):
        np.testing.assert_allclose(p[f"cls_preds_{k}"]["bias"], np.full(NUM_CLASSES, PRIOR_BIAS), rtol=1e-6)
        np.testing.assert_allclose(p[f"obj_preds_{k}"]["bias"], [PRIOR_BIAS], rtol=1e-6)
        reg = np.asarray(p[f"reg_preds_{k}"]["bias"])
        assert reg.shape == (4,) and np.all(np.abs(reg) <= 1 / np.sqrt(32)) and np.ptp(reg) > 0
        kernel = np.asarray(p[f"stems_{k}"]["conv"]["kernel"])  # PyTorch default init bound
        assert np.abs(kernel).max() <= 1 / np.sqrt(kernel.shape[2]) and kernel.std() > 0
        np.testing.assert_array_equal(p[f"stems_{k}"]["bn"]["scale"], np.ones(32))
    # Zero features: every position predicts exactly the bias.
    outs = head.apply(v, feats)
    np.testing.assert_allclose(np.asarray(outs[0])[0, 0, 0, 4:], np.full(1 + NUM_CLASSES, PRIOR_BIAS),
                               rtol=1e-5)
    v2 = YOLOXHead(2, 0.125, prior_prob=0.5).init(_key(), feats[1:])
    np.testing.assert_allclose(v2["params"]["cls_preds_0"]["bias"], [0.0, 0.0], atol=1e-7)


@pytest.mark.parametrize("size", [64, 96])
def test_output_shapes_and_values(variables, images, eval_forward, eval_64, size):
    outs = eval_64[0] if size == 64 else eval_forward(variables, images[size])
    assert isinstance(outs, list) and len(outs) == 3
    c = 4 + 1 + NUM_CLASSES
    assert [o.shape for o in outs] == [(2, size // s, size // s, c) for s in (8, 16, 32)]
    for o in outs:
        o = np.asarray(o)
        assert o.dtype == np.float32 and np.all(np.isfinite(o))
        assert o.std(axis=(1, 2)).min() > 2e-4  # varies over positions, per image and channel
        assert not np.allclose(o[0], o[1])  # and over images


def test_stage_methods_compose_to_call(variables, eval_64):
    call_outs, ((feats, pyr, outs), updates) = eval_64
    assert [f.shape for f in feats] == [(2, 8, 8, 32), (2, 4, 4, 64), (2, 2, 2, 128)]
    assert [p.shape for p in pyr] == [(2, 8, 8, 32), (2, 4, 4, 64), (2, 2, 2, 128)]
    for a, b in zip(outs, call_outs, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # Eval mode leaves the running statistics alone.
    old = jax.tree_util.tree_leaves(variables["batch_stats"])
    for a, b in zip(old, jax.tree_util.tree_leaves(updates["batch_stats"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_batch_stats_update_in_train_mode(variables, images, eval_stages, train_stages):
    (_, _, outs), updates = train_stages
    old = jax.tree_util.tree_leaves(variables["batch_stats"])
    new = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert len(old) == len(new) > 100
    assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True))
    assert all(b.dtype == np.float32 for b in new)
    # Running statistics move 3% of the way towards the batch statistics of the
    # stem conv output (recomputed here in numpy: space-to-depth, pad 1, 3x3 conv).
    x = np.asarray(images[64])
    s2d = np.concatenate([x[:, ::2, ::2], x[:, 1::2, ::2], x[:, ::2, 1::2], x[:, 1::2, 1::2]], -1)
    s2d = np.pad(s2d, ((0, 0), (1, 1), (1, 1), (0, 0)))
    kernel = variables["params"]["backbone"]["stem"]["conv"]["conv"]["kernel"]
    y = sum(np.einsum("bhwc,cd->bhwd", s2d[:, i:i + 32, j:j + 32], kernel[i, j])
            for i in range(3) for j in range(3)).reshape(-1, kernel.shape[-1])
    stem = updates["batch_stats"]["backbone"]["stem"]["conv"]["bn"]
    np.testing.assert_allclose(stem["mean"], 0.03 * y.mean(0), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(stem["var"], 0.97 + 0.03 * y.var(0), rtol=1e-3)
    # Batch statistics instead of running ones: outputs differ from eval mode.
    (_, _, outs_eval), _ = eval_stages
    for a, b in zip(outs, outs_eval, strict=True):
        assert np.all(np.isfinite(a)) and not np.allclose(a, b, atol=1e-2)


def test_bfloat16_compute(variables, images, eval_stages):
    model16 = YOLOX(NUM_CLASSES, TINY, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(lambda: model16.init(jax.random.key(0), images[64], train=False))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype("float32")}

    def fn(v, x):
        return (model16.apply(v, x, False, method=_stages),
                model16.apply(v, x, train=True, mutable=["batch_stats"]))

    (feats16, pyr16, outs16), (train_outs, updates) = jax.jit(fn)(variables, images[64])
    (_, pyr32, outs32), _ = eval_stages
    assert all(f.dtype == jnp.bfloat16 for f in feats16 + pyr16)  # really computed in bf16
    assert all(o.dtype == jnp.float32 for o in outs16 + train_outs)
    for o in outs16:  # the 1x1 predictions run in float32: values are not bf16-rounded
        o = np.asarray(o)
        assert not np.array_equal(o, o.astype(jnp.bfloat16).astype(np.float32))
    # bf16 rounding (<= 0.4% per op) over ~40 layers: about 1% here.
    for a, b in zip(pyr16 + tuple(outs16), pyr32 + tuple(outs32), strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b)
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.03

    # A bf16 training forward keeps float32 running statistics and updates them.
    assert all(bool(jnp.isfinite(o).all()) for o in train_outs)
    new = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert all(s.dtype == jnp.float32 and bool(jnp.isfinite(s).all()) for s in new)
    old = jax.tree_util.tree_leaves(variables["batch_stats"])
    assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True))
