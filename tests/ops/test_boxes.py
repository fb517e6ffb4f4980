import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.ops import boxes as B


def _np_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union
    return out


def _rand_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def test_conversions_roundtrip():
    xyxy = np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 2.0]], np.float32)
    c = B.xyxy_to_cxcywh(xyxy)
    np.testing.assert_allclose(c, [[30, 50, 40, 60], [0.5, 1.0, 1.0, 2.0]])
    np.testing.assert_allclose(B.cxcywh_to_xyxy(c), xyxy)
    assert B.cxcywh_to_xyxy(jnp.asarray(c, jnp.bfloat16)).dtype == jnp.float32
    np.testing.assert_allclose(B.box_area(xyxy), [2400.0, 2.0])
    np.testing.assert_allclose(B.box_area(np.array([5.0, 5.0, 1.0, 9.0])), 0.0)


def test_iou_pairwise_and_aligned():
    rng = np.random.default_rng(0)
    a, b = _rand_boxes(rng, 7), _rand_boxes(rng, 5)
    ref = _np_iou(a, b)
    np.testing.assert_allclose(B.iou(a, b), ref, rtol=1e-5, atol=1e-6)
    # batched leading axes
    got = B.iou(np.stack([a, a]), np.stack([b, b]))
    assert got.shape == (2, 7, 5)
    np.testing.assert_allclose(got[1], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(B.iou_aligned(a[:5], b), np.diag(ref[:5]), rtol=1e-5, atol=1e-6)
    # hand values
    x = np.array([0.0, 0.0, 2.0, 2.0], np.float32)
    y = np.array([1.0, 1.0, 3.0, 3.0], np.float32)
    np.testing.assert_allclose(B.iou_aligned(x, y), 1.0 / 7.0, rtol=1e-6)
    np.testing.assert_allclose(B.iou_aligned(x, x), 1.0)


def test_giou():
    x = np.array([0.0, 0.0, 2.0, 2.0], np.float32)
    y = np.array([1.0, 1.0, 3.0, 3.0], np.float32)
    # enclosing box 3x3 = 9, union 7 -> 1/7 - 2/9
    np.testing.assert_allclose(B.giou_aligned(x, y), 1 / 7 - 2 / 9, rtol=1e-6)
    far = np.array([10.0, 0.0, 12.0, 2.0], np.float32)
    # no overlap: union 8, enclosing 24 -> -(16/24)
    np.testing.assert_allclose(B.giou_aligned(x, far), -16 / 24, rtol=1e-6)
    np.testing.assert_allclose(B.giou_aligned(x, x), 1.0)


def test_anchor_grid_order():
    grid, strides = B.anchor_grid(64, (8, 16, 32))
    assert grid.shape == (64 + 16 + 4, 2) and strides.shape == (84,)
    assert grid.dtype == jnp.float32
    np.testing.assert_array_equal(strides[:64], 8)
    np.testing.assert_array_equal(strides[64:80], 16)
    np.testing.assert_array_equal(strides[80:], 32)
    # row-major: x runs fastest
    np.testing.assert_array_equal(grid[:3], [[0, 0], [1, 0], [2, 0]])
    np.testing.assert_array_equal(grid[8], [0, 1])
    np.testing.assert_array_equal(grid[64 + 5], [1, 1])
    g2, s2 = B.anchor_grid((32, 64), (16, 32))
    assert g2.shape == (2 * 4 + 1 * 2, 2)
    np.testing.assert_array_equal(g2[4], [0, 1])
    with pytest.raises(ValueError, match="divisible"):
        B.anchor_grid(40, (8, 16, 32))


def test_flatten_heads_matches_grid_and_decode():
    b, c = 2, 3
    rng = np.random.default_rng(1)
    heads = [rng.normal(size=(b, 64 // s, 64 // s, 5 + c)).astype(np.float32) for s in (8, 16, 32)]
    flat = B.flatten_heads([jnp.asarray(h) for h in heads])
    assert flat.shape == (b, 84, 5 + c)
    grid, strides = B.anchor_grid(64)
    # anchor at level 1 (stride 16), row y=2, column x=3
    idx = 64 + 2 * 4 + 3
    np.testing.assert_array_equal(flat[1, idx], heads[1][1, 2, 3])
    np.testing.assert_array_equal(grid[idx], [3, 2])
    boxes, obj, cls = jax.jit(B.decode)(flat, grid, strides)
    r = heads[1][1, 2, 3]
    cx, cy = (r[0] + 3) * 16, (r[1] + 2) * 16
    w, h = np.exp(r[2]) * 16, np.exp(r[3]) * 16
    np.testing.assert_allclose(boxes[1, idx], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-5)
    np.testing.assert_allclose(obj[1, idx], r[4])
    np.testing.assert_allclose(cls[1, idx], r[5:])
    assert boxes.dtype == jnp.float32
    with pytest.raises(ValueError, match="head 1"):
        B.flatten_heads([jnp.zeros((2, 8, 8, 8)), jnp.zeros((2, 4, 4, 7))])
    with pytest.raises(ValueError, match="grid"):
        B.decode(flat, grid[:10], strides)
