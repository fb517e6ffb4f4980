import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.ops.boxes import anchor_grid
from adverse_vision.ops.simota import simota_assign

IMG = 128
GRID, STRIDES = (np.asarray(x) for x in anchor_grid(IMG))
A = GRID.shape[0]


# ---------------------------------------------------------------- reference
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _iou_np(gt, pred):
    out = np.zeros((len(gt), len(pred)), np.float32)
    for i, g in enumerate(gt):
        iw = np.clip(np.minimum(g[2], pred[:, 2]) - np.maximum(g[0], pred[:, 0]), 0, None)
        ih = np.clip(np.minimum(g[3], pred[:, 3]) - np.maximum(g[1], pred[:, 1]), 0, None)
        inter = iw * ih
        union = (g[2] - g[0]) * (g[3] - g[1]) + (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]) - inter
        out[i] = inter / union
    return out


def reference_simota(pred_boxes, obj, cls, grid, strides, gt_boxes, gt_classes, gt_mask, radius=2.5, stats=None):
    """Plain loop version of YOLOX's get_assignments / dynamic_k_matching."""
    a_all = len(pred_boxes)
    fg = np.zeros(a_all, bool)
    matched = np.zeros(a_all, np.int64)
    miou = np.zeros(a_all, np.float32)
    keep = np.nonzero(gt_mask)[0]
    if len(keep) == 0:
        return fg, matched, miou, 0
    gts, gcls = gt_boxes[keep].astype(np.float32), gt_classes[keep]
    n_gt, n_cls = len(gts), cls.shape[1]
    xc = (grid[:, 0] + 0.5) * strides
    yc = (grid[:, 1] + 0.5) * strides
    in_box = np.zeros((n_gt, a_all), bool)
    in_ctr = np.zeros((n_gt, a_all), bool)
    for g in range(n_gt):
        x1, y1, x2, y2 = gts[g]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        for a in range(a_all):
            in_box[g, a] = min(xc[a] - x1, x2 - xc[a], yc[a] - y1, y2 - yc[a]) > 0
            r = radius * strides[a]
            in_ctr[g, a] = min(xc[a] - (cx - r), (cx + r) - xc[a], yc[a] - (cy - r), (cy + r) - yc[a]) > 0
    cand = (in_box | in_ctr).any(0)
    cidx = np.nonzero(cand)[0]
    both = (in_box & in_ctr)[:, cidx]
    ious = _iou_np(gts, pred_boxes[cidx])
    p = np.sqrt(_sigmoid(cls[cidx].astype(np.float32)) * _sigmoid(obj[cidx].astype(np.float32))[:, None])
    cost = np.zeros((n_gt, len(cidx)), np.float32)
    for g in range(n_gt):
        onehot = np.eye(n_cls, dtype=np.float32)[gcls[g]]
        with np.errstate(divide="ignore"):
            bce = -(onehot * np.maximum(np.log(p), -100) + (1 - onehot) * np.maximum(np.log(1 - p), -100))
        cost[g] = bce.sum(-1) + np.float32(3.0) * -np.log(ious[g] + np.float32(1e-8)) + np.float32(1e5) * (~both[g])
    n_k = min(10, len(cidx))
    matching = np.zeros_like(cost, np.int64)
    for g in range(n_gt):
        k = max(int(np.sort(ious[g])[::-1][:n_k].sum()), 1)
        matching[g, np.argsort(cost[g], kind="stable")[:k]] = 1
    if stats is not None:
        stats["conflicts"] = stats.get("conflicts", 0) + int((matching.sum(0) > 1).sum())
        stats["max_k"] = max(stats.get("max_k", 0), int(matching.sum(1).max()))
    for j in range(len(cidx)):
        if matching[:, j].sum() > 1:
            best = int(np.argmin(cost[:, j]))
            matching[:, j] = 0
            matching[best, j] = 1
    n_conflict_free = matching.sum(0) > 0
    for j in np.nonzero(n_conflict_free)[0]:
        g = int(np.argmax(matching[:, j]))
        fg[cidx[j]] = True
        matched[cidx[j]] = keep[g]
        miou[cidx[j]] = ious[g, j]
    return fg, matched, miou, int(fg.sum())


# ---------------------------------------------------------------- problems
def random_problem(rng, m=6, n_cls=4):
    n_valid = int(rng.integers(0, m + 1))
    wh = rng.uniform(6, 70, (m, 2))
    xy = rng.uniform(0, IMG - wh)
    gt = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    mask = np.zeros(m, bool)
    mask[rng.permutation(m)[:n_valid]] = True
    gt = np.where(mask[:, None], gt, rng.uniform(-50, 200, (m, 4))).astype(np.float32)  # garbage padding
    classes = np.where(mask, rng.integers(0, n_cls, m), rng.integers(-3, 9, m)).astype(np.int32)
    # predictions: jittered copies of random GTs so that IoUs are meaningful
    src = gt[rng.integers(0, m, A)]
    jitter = rng.normal(0, 6, (A, 4))
    pred = src + jitter
    pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 2)
    obj = rng.normal(0, 2, A).astype(np.float32)
    cls = rng.normal(0, 2, (A, n_cls)).astype(np.float32)
    return pred.astype(np.float32), obj, cls, gt, classes, mask


@pytest.fixture(scope="module")
def assign_jit():
    return jax.jit(simota_assign)


def _check_equal(out, ref):
    fg, matched, miou, nfg = ref
    np.testing.assert_array_equal(np.asarray(out.fg_mask), fg)
    np.testing.assert_array_equal(np.asarray(out.matched_gt)[fg], matched[fg])
    np.testing.assert_allclose(np.asarray(out.matched_iou), miou, rtol=1e-5, atol=1e-6)
    assert int(out.num_fg) == nfg


def test_random_problems_match_reference(assign_jit):
    rng = np.random.default_rng(0)
    stats = {}
    for _ in range(12):
        pred, obj, cls, gt, gcls, mask = random_problem(rng)
        out = assign_jit(pred, obj, cls, GRID, STRIDES, gt, gcls, mask)
        ref = reference_simota(pred, obj, cls, GRID, STRIDES, gt, gcls, mask, stats=stats)
        _check_equal(out, ref)
        assert not np.any(~mask[np.asarray(out.matched_gt)[ref[0]]]), "a padded GT matched"
    # the problems must exercise conflicts and dynamic k > 1
    assert stats["conflicts"] > 0 and stats["max_k"] > 1, stats


def test_one_gt_dynamic_k_picks_cheapest(assign_jit):
    gt = np.array([[16.0, 16.0, 48.0, 48.0]], np.float32)
    # 5 anchors (inside the box at stride 8) predict a box of IoU exactly 0.5:
    # sum of the top-10 IoUs is 2.5 -> k = 2; the rest predict far-away boxes.
    pred = np.tile(np.array([[100.0, 100.0, 110.0, 110.0]], np.float32), (A, 1))
    inside = [2 * 16 + 2, 2 * 16 + 3, 3 * 16 + 2, 3 * 16 + 4, 4 * 16 + 5]  # cells (x, y) in the box
    for i in inside:
        assert 16 < (GRID[i, 0] + 0.5) * 8 < 48 and 16 < (GRID[i, 1] + 0.5) * 8 < 48
    pred[inside] = [16.0, 16.0, 48.0, 32.0]
    obj = np.zeros(A, np.float32)
    obj[inside] = [0.0, 1.0, 3.0, 2.0, -1.0]  # higher objectness -> lower class cost
    cls = np.full((A, 2), -5.0, np.float32)
    cls[:, 1] = 4.0
    out = assign_jit(pred, obj, cls, GRID, STRIDES, gt, np.array([1]), np.array([True]))
    fg = np.asarray(out.fg_mask)
    assert int(out.num_fg) == 2
    np.testing.assert_array_equal(np.nonzero(fg)[0], sorted([inside[2], inside[3]]))
    np.testing.assert_allclose(np.asarray(out.matched_iou)[fg], 0.5)
    np.testing.assert_array_equal(np.asarray(out.matched_gt)[fg], 0)


def test_one_gt_exact_predictions_k3(assign_jit):
    gt = np.array([[16.0, 16.0, 48.0, 48.0]], np.float32)
    pred = np.tile(np.array([[100.0, 100.0, 110.0, 110.0]], np.float32), (A, 1))
    exact = [2 * 16 + 2, 3 * 16 + 3, 5 * 16 + 5]
    pred[exact] = gt[0]
    obj = np.zeros(A, np.float32)
    cls = np.zeros((A, 3), np.float32)
    out = assign_jit(pred, obj, cls, GRID, STRIDES, gt, np.array([0]), np.array([True]))
    np.testing.assert_array_equal(np.nonzero(np.asarray(out.fg_mask))[0], exact)
    np.testing.assert_allclose(np.asarray(out.matched_iou)[exact], 1.0)
    _check_equal(out, reference_simota(pred, obj, cls, GRID, STRIDES, gt, np.array([0]), np.array([True])))


def test_tiny_gt_without_anchor_inside_still_matches(assign_jit):
    # 2x2 box between anchor centres: no in-box anchor, only centre-prior candidates
    gt = np.array([[1.0, 1.0, 3.0, 3.0], [0, 0, 0, 0]], np.float32)
    rng = np.random.default_rng(3)
    pred, obj, cls, *_ = random_problem(rng)
    out = assign_jit(pred, obj, cls, GRID, STRIDES, gt, np.array([2, 0]), np.array([True, False]))
    assert int(out.num_fg) >= 1
    np.testing.assert_array_equal(np.asarray(out.matched_gt)[np.asarray(out.fg_mask)], 0)
    _check_equal(out, reference_simota(pred, obj, cls, GRID, STRIDES, gt, np.array([2, 0]), np.array([True, False])))


def test_all_padding_matches_nothing(assign_jit):
    rng = np.random.default_rng(4)
    pred, obj, cls, gt, gcls, _ = random_problem(rng)
    out = assign_jit(pred, obj, cls, GRID, STRIDES, gt, gcls, np.zeros(len(gt), bool))
    assert int(out.num_fg) == 0 and not np.any(np.asarray(out.fg_mask))
    assert not np.any(np.asarray(out.matched_iou))


def test_padding_invariance(assign_jit):
    rng = np.random.default_rng(5)
    pred, obj, cls, gt, gcls, mask = random_problem(rng, m=4)
    mask[:] = [True, True, True, False]
    base = assign_jit(pred, obj, cls, GRID, STRIDES, gt[:3], gcls[:3], mask[:3])
    # append padded garbage identical to a real GT: still no effect
    gt2 = np.concatenate([gt[:3], gt[:3]], 0)
    out = assign_jit(pred, obj, cls, GRID, STRIDES, gt2, np.concatenate([gcls[:3]] * 2), np.array([1, 1, 1, 0, 0, 0], bool))
    np.testing.assert_array_equal(out.fg_mask, base.fg_mask)
    np.testing.assert_array_equal(out.matched_gt, base.matched_gt)
    np.testing.assert_array_equal(out.matched_iou, base.matched_iou)


def test_jit_vmap_batch():
    rng = np.random.default_rng(7)
    probs = [random_problem(rng) for _ in range(4)]
    stack = [np.stack([p[i] for p in probs]) for i in range(6)]
    fn = jax.jit(
        jax.vmap(
            functools.partial(simota_assign, center_radius=2.5, topk=10),
            in_axes=(0, 0, 0, None, None, 0, 0, 0),
        )
    )
    out = fn(stack[0], stack[1], stack[2], GRID, STRIDES, stack[3], stack[4], stack[5])
    assert out.fg_mask.shape == (4, A) and out.num_fg.shape == (4,)
    for i, p in enumerate(probs):
        ref = reference_simota(p[0], p[1], p[2], GRID, STRIDES, p[3], p[4], p[5])
        _check_equal(jax.tree_util.tree_map(lambda x: x[i], out), ref)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="gt_mask"):
        simota_assign(
            jnp.zeros((A, 4)), jnp.zeros((A,)), jnp.zeros((A, 2)), GRID, STRIDES,
            jnp.zeros((3, 4)), jnp.zeros((3,), jnp.int32), jnp.zeros((2,), bool),
        )
