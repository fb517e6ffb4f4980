"""Tests for TogetherNet (adverse_vision.models.togethernet).

Agreement with the official network on official-layout weights is tested in
tests/convert/test_togethernet_convert.py; here: the PyTorch layer semantics the
port relies on (transposed conv, align-corners bilinear, nearest resize, floor
average pooling) against independent numpy/scipy statements, and the model at
several sizes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from adverse_vision.models.layers import param_count
from adverse_vision.models.togethernet import (
    SCBottleneck,
    TogetherNet,
    UpBlock,
    avg_pool_floor,
    decoder_param_count,
    resize_bilinear_align_corners,
    resize_nearest,
    togethernet_channels,
)
from adverse_vision.models.yolox import resolve_size
from tests.helpers import fill_variables, reference

TINY = (0.33, 0.125)  # custom depth / width: 8 base channels
NUM_CLASSES = 3


def _key(seed=0):
    return jax.random.key(seed, impl="unsafe_rbg")


_fill = fill_variables


# ----------------------------------------------------------------- PyTorch layer semantics


def _np_conv_transpose(x, w, b, stride=2, pad=1, out_pad=1):
    """PyTorch ConvTranspose2d by its definition: every input pixel scatters
    ``x[i, j] * w[:, :, ki, kj]`` to output ``(i * stride - pad + ki, j * stride - pad + kj)``.
    x (B, H, W, Ci) NHWC, w (Ci, Co, k, k) PyTorch layout."""
    bsz, h, wd, _ = x.shape
    k, co = w.shape[2], w.shape[1]
    ho = (h - 1) * stride - 2 * pad + k + out_pad
    wo = (wd - 1) * stride - 2 * pad + k + out_pad
    full = np.zeros((bsz, (h - 1) * stride + k + out_pad, (wd - 1) * stride + k + out_pad, co))
    for i in range(h):
        for j in range(wd):
            full[:, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
                "bc,cokl->bklo", x[:, i, j].astype(np.float64), w.astype(np.float64))
    return full[:, pad:pad + ho, pad:pad + wo] + b


@pytest.mark.parametrize("hw", [(3, 5), (4, 4), (1, 1)])
def test_up_block_is_pytorch_conv_transpose(hw):
    rng = np.random.default_rng(0)
    ci, co = 4, 6
    x = rng.normal(size=(2, *hw, ci)).astype(np.float32)
    w = rng.normal(size=(ci, co, 3, 3)).astype(np.float32)  # PyTorch (in, out, kh, kw)
    b = rng.normal(size=(co,)).astype(np.float32)
    variables = {
        "params": {"deconv": {"kernel": w.transpose(2, 3, 1, 0), "bias": b},
                   "bn": {"scale": np.ones(co, np.float32), "bias": np.zeros(co, np.float32)}},
        "batch_stats": {"bn": {"mean": np.zeros(co, np.float32),
                               "var": np.ones(co, np.float32)}},
    }
    shapes = jax.eval_shape(UpBlock(co).init, _key(), jnp.zeros_like(x))
    assert jax.tree_util.tree_map(lambda a: a.shape, shapes) == jax.tree_util.tree_map(
        lambda a: a.shape, variables)
    out = np.asarray(UpBlock(co).apply(variables, x))
    ref = _np_conv_transpose(x, w, b)
    assert out.shape == (2, 2 * hw[0], 2 * hw[1], co) == ref.shape
    ref = ref / np.sqrt(1 + 1e-5)  # BatchNorm(eps 1e-5) with identity statistics
    ref = ref / (1 + np.exp(-ref))  # SiLU
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw,out", [((5, 7), (20, 28)), ((2, 3), (8, 12)), ((1, 4), (4, 16))])
def test_bilinear_align_corners(hw, out):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, *hw, 2)).astype(np.float32)
    got = np.asarray(resize_bilinear_align_corners(jnp.asarray(x), *out))
    assert got.shape == (1, *out, 2)
    # scipy's zoom with grid_mode=False maps corner pixel centres onto each other:
    # source coordinate = dst * (in - 1) / (out - 1), PyTorch's align_corners=True rule.
    for c in range(2):
        ref = ndimage.zoom(x[0, :, :, c].astype(np.float64),
                           (out[0] / hw[0], out[1] / hw[1]), order=1, grid_mode=False,
                           mode="nearest")
        np.testing.assert_allclose(got[0, :, :, c], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[0, [0, 0, -1, -1], [0, -1, 0, -1]],
                                  x[0, [0, 0, -1, -1], [0, -1, 0, -1]])


def test_bilinear_then_reflection_pad():
    x = jax.random.normal(_key(), (2, 4, 5, 3))
    got = resize_bilinear_align_corners(x, 16, 20, reflect_pad=3)
    ref = jnp.pad(resize_bilinear_align_corners(x, 16, 20), ((0, 0), (3, 3), (3, 3), (0, 0)),
                  mode="reflect")
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match="reflection padding"):
        resize_bilinear_align_corners(x, 3, 20, reflect_pad=3)


def test_bilinear_align_corners_known_values():
    x = jnp.asarray([[0.0, 3.0]]).reshape(1, 1, 2, 1)
    got = np.asarray(resize_bilinear_align_corners(x, 1, 4))[0, 0, :, 0]
    np.testing.assert_allclose(got, [0.0, 1.0, 2.0, 3.0], atol=1e-6)


def test_nearest_resize_and_floor_pool():
    x = np.arange(2 * 10 * 10, dtype=np.float32).reshape(1, 10, 10, 2)
    pooled = np.asarray(avg_pool_floor(jnp.asarray(x), 4))
    assert pooled.shape == (1, 2, 2, 2)  # the last two rows/cols are dropped
    np.testing.assert_allclose(pooled[0, 1, 0], x[0, 4:8, 0:4].mean(axis=(0, 1)))
    # PyTorch nearest: src = floor(dst * in / out)
    up = np.asarray(resize_nearest(jnp.asarray(pooled), 10, 10))
    idx = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(up[0], pooled[0][idx][:, idx])
    up = np.asarray(resize_nearest(jnp.asarray(pooled), 3, 5))
    np.testing.assert_array_equal(up[0], pooled[0][[0, 0, 1]][:, [0, 0, 0, 1, 1]])
    # A map smaller than the pooling factor is pooled whole.
    small = np.asarray(avg_pool_floor(jnp.asarray(x[:, :2, :3]), 4))
    np.testing.assert_allclose(small[0, 0, 0], x[0, :2, :3].mean(axis=(0, 1)))


def test_sc_bottleneck_against_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 9, 6, 4)).astype(np.float32)
    block = SCBottleneck()
    v = _fill(jax.eval_shape(block.init, _key(), jnp.asarray(x)), seed=3)
    got = np.asarray(block.apply(v, jnp.asarray(x)))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v["params"])

    def conv(z, m):  # symmetric padding k // 2, biased
        k = m["kernel"]
        pad = k.shape[0] // 2
        zp = np.pad(z, ((pad, pad), (pad, pad), (0, 0)))
        out = np.zeros(z.shape[:2] + (k.shape[-1],))
        for i in range(k.shape[0]):
            for j in range(k.shape[1]):
                out += zp[i:i + z.shape[0], j:j + z.shape[1]] @ k[i, j]
        return out + m["bias"]

    lrelu = lambda z: np.where(z > 0, z, 0.2 * z)
    z = x[0].astype(np.float64)
    a = lrelu(conv(lrelu(conv(z, p["conv1_a"])), p["k1"]))
    b = lrelu(conv(z, p["conv1_b"]))
    pooled = b[:8, :4].reshape(2, 4, 1, 4, 2).mean(axis=(1, 3))  # 9x6 -> 2x1 (floor)
    coarse = conv(pooled, p["scconv"]["k2"])
    up = coarse[np.floor(np.arange(9) * np.float32(2 / 9)).astype(int)][:, [0] * 6]
    gate = 1 / (1 + np.exp(-(b + up)))
    b = lrelu(conv(conv(b, p["scconv"]["k3"]) * gate, p["scconv"]["k4"]))
    ref = lrelu(conv(np.concatenate([a, b], -1), p["conv3"]) + z)
    np.testing.assert_allclose(got[0], ref, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- the network


@pytest.fixture(scope="module")
def tiny():
    model = TogetherNet(NUM_CLASSES, size=TINY)
    x = jax.random.uniform(_key(1), (2, 64, 64, 3), minval=-1.0, maxval=1.0)
    variables = _fill(jax.eval_shape(lambda: model.init(_key(), x[:1], train=False)))
    run = jax.jit(lambda v, x: model.apply(v, x, train=False, restore=True))
    return model, variables, x, run(variables, x)


def test_tiny_model_outputs(tiny):
    _, variables, _, out = tiny
    assert set(out) == {"heads", "restored"}
    assert [h.shape for h in out["heads"]] == [(2, 8, 8, 8), (2, 4, 4, 8), (2, 2, 2, 8)]
    assert out["restored"].shape == (2, 64, 64, 3) and out["restored"].dtype == jnp.float32
    r = np.asarray(out["restored"])
    assert np.isfinite(r).all() and np.abs(r).max() <= 1.0 and r.std() > 1e-3
    for h in out["heads"]:
        assert h.dtype == jnp.float32 and np.isfinite(np.asarray(h)).all()
    # The two images give different outputs (nothing collapsed to a constant).
    assert np.abs(np.asarray(out["heads"][0][0] - out["heads"][0][1])).max() > 1e-3
    # The decoder exists in the variables even though init ran without restore.
    ch = togethernet_channels(resolve_size(TINY))
    assert variables["params"]["decoder"]["conv_3"]["deconv"]["kernel"].shape == (
        3, 3, ch["decoder"][2], 2 * ch["decoder"][1])
    assert variables["params"]["dtfe"]["deconv"]["conv"]["kernel"].shape == (
        3, 3, ch["dtfe"], ch["dtfe"])
    assert variables["params"]["neck"]["sc3"]["conv3"]["kernel"].shape[-1] == ch["sc3"]


def test_restore_false_skips_decoder(tiny):
    model, variables, x, out = tiny
    det = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert det["restored"] is None
    for a, b in zip(det["heads"], out["heads"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # The DTFE and the SC blocks are in the detection path: changing them changes the heads.
    for path in (("dtfe", "swt1", "m", "tr_0", "fc2"), ("neck", "sc1", "conv3")):
        params = jax.tree_util.tree_map(lambda a: a, variables["params"])
        node = params
        for p in path:
            node = node[p]
        node["kernel"] = node["kernel"] * 2.0
        other = model.apply({**variables, "params": params}, x, train=False)
        change = max(float(np.abs(np.asarray(a - b)).max())
                     for a, b in zip(other["heads"], det["heads"]))
        assert change > 1e-3, path


def test_train_mode(tiny):
    model, variables, x, _ = tiny
    step = jax.jit(lambda v, x, k: model.apply(v, x, train=True, restore=True,
                                               mutable=["batch_stats"], rngs={"dropout": k}))
    out, updates = step(variables, x, _key(5))
    assert out["restored"].shape == (2, 64, 64, 3)
    stats = updates["batch_stats"]
    assert set(stats) == set(variables["batch_stats"])
    dec_mean = np.asarray(stats["decoder"]["conv_1"]["bn"]["mean"])
    assert np.abs(dec_mean).max() > 0  # moved away from the initial zeros (decay 0.9)
    # Dropout needs an rng in training mode, unless it is switched off.
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, x, train=True, mutable=["batch_stats"])
    no_drop = TogetherNet(NUM_CLASSES, size=TINY, dropout_rate=0.0)
    shapes = jax.eval_shape(lambda v, x: no_drop.apply(v, x, train=True,
                                                      mutable=["batch_stats"]), variables, x)
    assert shapes[0]["restored"] is None


@pytest.mark.parametrize("size", ["nano", "tiny", "m"])
def test_sizes_build(size):
    model = TogetherNet(4, size=size)
    x = jnp.zeros((1, 128, 96, 3))
    shapes = jax.eval_shape(lambda: model.init(_key(), x, train=False))
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False, restore=True), shapes)
    assert [h.shape for h in out["heads"]] == [(1, 16, 12, 9), (1, 8, 6, 9), (1, 4, 3, 9)]
    assert out["restored"].shape == (1, 128, 96, 3)
    spec = resolve_size(size)
    ch = togethernet_channels(spec)
    params = shapes["params"]
    assert params["dtfe"]["swt1"]["conv3"]["conv"]["kernel"].shape[-1] == ch["dtfe"]
    assert params["neck"]["sc1"]["conv3"]["kernel"].shape[-1] == ch["sc1"]
    assert ("dconv" in params["neck"]["bu_conv2"]) == spec.depthwise


def test_bfloat16_compute_gives_float32_outputs():
    model = TogetherNet(2, size=TINY, dtype=jnp.bfloat16)
    x = jnp.zeros((1, 64, 64, 3))
    shapes = jax.eval_shape(lambda: model.init(_key(), x, train=False))
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False, restore=True), shapes)
    assert all(h.dtype == jnp.float32 for h in out["heads"])
    assert out["restored"].dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))


def test_param_count_s():
    model = TogetherNet(5, size="s")
    shapes = jax.eval_shape(lambda: model.init(_key(), jnp.zeros((1, 64, 64, 3)), train=False))
    total, decoder = param_count(shapes), decoder_param_count(shapes)
    print(f"\nTogetherNet-s, 5 classes: {total:,} parameters, {total - decoder:,} without the "
          f"decoder ({decoder:,} in it)")
    assert total == 16_011_260 and decoder == 1_927_683


def test_param_count_s_is_the_official_count():
    # The official network's count: every state-dict entry but the BatchNorm buffers.
    with np.load(reference("togethernet_s_seed0.npz")) as z:
        official = sum(z[k].size for k in z.files if k[:2] in ("q/", "f/")
                       and not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    shapes = jax.eval_shape(lambda: TogetherNet(5, size="s").init(
        _key(), jnp.zeros((1, 64, 64, 3)), train=False))
    assert official == param_count(shapes) == 16_011_260
