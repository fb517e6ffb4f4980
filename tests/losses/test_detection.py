import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.losses.detection import focal_objectness, yolox_loss
from adverse_vision.ops.boxes import anchor_grid
from adverse_vision.ops.simota import simota_assign

IMG, C = 64, 3
GRID, STRIDES = (np.asarray(x) for x in anchor_grid(IMG))
A = GRID.shape[0]
_assign = jax.jit(simota_assign)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _bce_logits(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def _raw_for_box(box, idx):
    """Raw regression that makes anchor ``idx`` predict xyxy ``box`` exactly."""
    s = STRIDES[idx]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = box[2] - box[0], box[3] - box[1]
    return np.stack([cx / s - GRID[idx, 0], cy / s - GRID[idx, 1], np.log(w / s), np.log(h / s)], -1)


def _problem(seed, b=2, m=4):
    rng = np.random.default_rng(seed)
    heads = rng.normal(0, 0.5, (b, A, 5 + C)).astype(np.float32)
    heads[..., 2:4] += 0.7
    gt = np.zeros((b, m, 4), np.float32)
    gt[0, :2] = [[8, 8, 40, 36], [30, 20, 60, 62]]
    gt[1, :1] = [[4, 10, 28, 30]]
    classes = np.zeros((b, m), np.int32)
    classes[0, :2] = [1, 2]
    classes[1, 0] = 0
    mask = np.zeros((b, m), bool)
    mask[0, :2] = True
    mask[1, :1] = True
    # some anchors near the objects predict jittered GT boxes
    for i in range(b):
        for j in np.nonzero(mask[i])[0]:
            idx = rng.choice(A, 12, replace=False)
            heads[i, idx, :4] = _raw_for_box(gt[i, j] + rng.normal(0, 2, 4), idx)
    return heads, gt, classes, mask


def _decode_np(heads):
    s = STRIDES[:, None]
    cxy = (heads[..., :2] + GRID) * s
    wh = np.exp(heads[..., 2:4]) * s
    return np.concatenate([cxy - wh / 2, cxy + wh / 2], -1)


def _iou_np(a, b):
    lt = np.maximum(a[..., :2], b[..., :2])
    rb = np.minimum(a[..., 2:], b[..., 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    union = area(a) + area(b) - inter
    enc = np.prod(np.maximum(a[..., 2:], b[..., 2:]) - np.minimum(a[..., :2], b[..., :2]), -1)
    return inter / union, inter / union - (enc - union) / enc


def reference_loss(heads, gt, classes, mask, variant, use_l1=False, iou_type="iou"):
    """numpy loss given the SimOTA assignment (SimOTA itself is tested separately)."""
    heads = heads.astype(np.float64)
    boxes = _decode_np(heads)
    tot = {"iou": 0.0, "obj": 0.0, "cls": 0.0, "l1": 0.0}
    num_fg = 0
    for i in range(len(heads)):
        asg = _assign(boxes[i].astype(np.float32), heads[i, :, 4].astype(np.float32),
                            heads[i, :, 5:].astype(np.float32), GRID, STRIDES, gt[i], classes[i], mask[i])
        fg = np.asarray(asg.fg_mask)
        mg = np.asarray(asg.matched_gt)[fg]
        miou = np.asarray(asg.matched_iou)[fg]
        num_fg += fg.sum()
        tgt = gt[i, mg].astype(np.float64)
        iou, giou = _iou_np(boxes[i, fg], tgt)
        tot["iou"] += (1 - iou**2).sum() if iou_type == "iou" else (1 - np.clip(giou, -1, 1)).sum()
        obj = heads[i, :, 4]
        t = fg.astype(np.float64)
        if variant == "yolox":
            tot["obj"] += _bce_logits(obj, t).sum()
        else:
            p = _sigmoid(obj)
            tot["obj"] += -(t * 0.75 * (1 - p) ** 2 * np.log(p + 1e-5) + (1 - t) * 0.25 * p**2 * np.log(1 - p + 1e-5)).sum()
        onehot = np.eye(C)[classes[i, mg]] * miou[:, None]
        tot["cls"] += _bce_logits(heads[i, fg, 5:], onehot).sum()
        if use_l1:
            s = STRIDES[fg]
            cx, cy = (tgt[:, 0] + tgt[:, 2]) / 2, (tgt[:, 1] + tgt[:, 3]) / 2
            w, h = tgt[:, 2] - tgt[:, 0], tgt[:, 3] - tgt[:, 1]
            l1t = np.stack([cx / s - GRID[fg, 0], cy / s - GRID[fg, 1], np.log(w / s + 1e-8), np.log(h / s + 1e-8)], -1)
            tot["l1"] += np.abs(heads[i, fg, :4] - l1t).sum()
    norm = max(num_fg, 1)
    out = {k: v / norm for k, v in tot.items()}
    out["iou"] *= 5.0
    out["num_fg"] = num_fg
    return sum(out[k] for k in ("iou", "obj", "cls", "l1")), out


@pytest.fixture(scope="module")
def loss_jit():
    return jax.jit(
        yolox_loss, static_argnames=("num_classes", "variant", "use_l1", "iou_type")
    )


def _call(fn, heads, gt, classes, mask, **kw):
    kw = {"variant": "yolox", "use_l1": False, "iou_type": "iou", **kw}  # one cache key per setting
    return fn(jnp.asarray(heads), GRID, STRIDES, gt, classes, mask, num_classes=C, **kw)


@pytest.mark.parametrize(
    "variant,use_l1,iou_type",
    [("yolox", False, "iou"), ("yolox", True, "giou"), ("togethernet", False, "iou")],
)
def test_matches_numpy_reference(loss_jit, variant, use_l1, iou_type):
    heads, gt, classes, mask = _problem(0)
    total, comps = _call(loss_jit, heads, gt, classes, mask, variant=variant, use_l1=use_l1, iou_type=iou_type)
    ref_total, ref = reference_loss(heads, gt, classes, mask, variant, use_l1, iou_type)
    assert ref["num_fg"] > 3
    assert float(comps["num_fg"]) == ref["num_fg"]
    for k in ("iou", "obj", "cls", "l1"):
        np.testing.assert_allclose(float(comps[k]), ref[k], rtol=2e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(float(total), ref_total, rtol=2e-5)
    assert (float(comps["l1"]) > 0) == use_l1
    assert total.dtype == jnp.float32


def test_perfect_prediction_has_zero_iou_loss(loss_jit):
    # same shapes as _problem (B=2, M=4) so the compiled loss is reused
    gt = np.zeros((2, 4, 4), np.float32)
    gt[:, 0] = [16.0, 8.0, 48.0, 40.0]
    classes = np.full((2, 4), 2, np.int32)
    mask = np.zeros((2, 4), bool)
    mask[:, 0] = True
    heads = np.zeros((2, A, 5 + C), np.float32)
    heads[:, :, :4] = _raw_for_box(gt[0, 0], np.arange(A))  # every anchor predicts the GT
    _, comps = _call(loss_jit, heads, gt, classes, mask)
    assert float(comps["num_fg"]) >= 2
    assert float(comps["iou"]) < 1e-5
    heads[:, :, 0] += 0.3  # shift every prediction: now the IoU loss is clearly positive
    _, comps2 = _call(loss_jit, heads, gt, classes, mask)
    assert float(comps2["iou"]) > 0.05


def test_gradient_finite_and_nonzero():
    heads, gt, classes, mask = _problem(1)
    for variant in ("yolox", "togethernet"):
        g = jax.jit(jax.grad(lambda h: yolox_loss(h, GRID, STRIDES, gt, classes, mask, C, variant=variant, use_l1=True)[0]))(
            jnp.asarray(heads)
        )
        g = np.asarray(g)
        assert np.all(np.isfinite(g))
        assert np.abs(g[..., :4]).sum() > 0 and np.abs(g[..., 5:]).sum() > 0
        assert np.all(g[..., 4] != 0)  # objectness gets a gradient on every anchor


def test_padded_gts_do_not_change_loss(loss_jit):
    heads, gt, classes, mask = _problem(2)
    total, comps = _call(loss_jit, heads, gt, classes, mask, variant="togethernet")
    rng = np.random.default_rng(0)
    # more slots, padded with garbage (including a copy of a real box), shuffled order
    gt2 = np.concatenate([gt, rng.uniform(-20, 80, (2, 3, 4)).astype(np.float32)], 1)
    gt2[0, 4] = gt[0, 0]
    cls2 = np.concatenate([classes, rng.integers(-2, 7, (2, 3)).astype(np.int32)], 1)
    mask2 = np.concatenate([mask, np.zeros((2, 3), bool)], 1)
    perm = np.array([5, 0, 4, 1, 6, 2, 3])
    total2, comps2 = _call(loss_jit, heads, gt2[:, perm], cls2[:, perm], mask2[:, perm], variant="togethernet")
    np.testing.assert_allclose(float(total2), float(total), rtol=1e-6)
    for k in comps:
        np.testing.assert_allclose(float(comps2[k]), float(comps[k]), rtol=1e-6, atol=1e-7)


def test_no_gt_gives_only_objectness(loss_jit):
    heads, gt, classes, _ = _problem(3)
    mask = np.zeros_like(classes, bool)
    for variant in ("yolox", "togethernet"):
        total, comps = _call(loss_jit, heads, gt, classes, mask, variant=variant)
        assert float(comps["num_fg"]) == 0
        for k in ("iou", "cls", "l1"):
            assert float(comps[k]) == 0.0
        obj = heads[..., 4].astype(np.float64)
        if variant == "yolox":
            ref = _bce_logits(obj, 0.0).sum()
        else:
            p = _sigmoid(obj)
            ref = -(0.25 * p**2 * np.log(1 - p + 1e-5)).sum()
        np.testing.assert_allclose(float(comps["obj"]), ref, rtol=1e-5)
        np.testing.assert_allclose(float(total), ref, rtol=1e-5)


def test_focal_objectness_formula():
    x = np.array([-6.0, -1.0, 0.0, 0.5, 3.0, 8.0], np.float32)
    t = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0], np.float32)
    p = _sigmoid(x.astype(np.float64))
    ref = np.where(t == 1, -0.75 * (1 - p) ** 2 * np.log(p + 1e-5), -0.25 * p**2 * np.log(1 - p + 1e-5))
    np.testing.assert_allclose(focal_objectness(x, t), ref, rtol=1e-5)


def test_image_mask_and_traced_l1(loss_jit):
    heads, gt, classes, mask = _problem(4)
    # a masked-out image contributes nothing: same as the batch without it
    t_masked, c_masked = _call(loss_jit, heads, gt, classes, mask, image_mask=np.array([True, False]))
    t_one, c_one = reference_loss(heads[:1], gt[:1], classes[:1], mask[:1], "yolox")
    np.testing.assert_allclose(float(t_masked), t_one, rtol=2e-5)
    assert float(c_masked["num_fg"]) == c_one["num_fg"] > 0
    # use_l1 as a traced weight: 1 gives the L1 term, 0 removes it
    traced = jax.jit(lambda h, w: yolox_loss(h, GRID, STRIDES, gt, classes, mask, C, use_l1=w))
    t_ref, c_ref = reference_loss(heads, gt, classes, mask, "yolox", use_l1=True)
    t_w, c_w = traced(jnp.asarray(heads), jnp.float32(1.0))
    np.testing.assert_allclose(float(t_w), t_ref, rtol=2e-5)
    t_0, c_0 = traced(jnp.asarray(heads), jnp.float32(0.0))
    assert float(c_0["l1"]) == 0.0 and c_ref["l1"] > 0
    np.testing.assert_allclose(float(t_0), t_ref - c_ref["l1"], rtol=2e-5)


def test_bad_input():
    heads, gt, classes, mask = _problem(5)
    with pytest.raises(ValueError, match="variant"):
        yolox_loss(heads, GRID, STRIDES, gt, classes, mask, C, variant="yolo")
    with pytest.raises(ValueError, match="heads_flat"):
        yolox_loss(heads, GRID, STRIDES, gt, classes, mask, C + 1)
    with pytest.raises(ValueError, match="gt_mask"):
        yolox_loss(heads, GRID, STRIDES, gt, classes, mask[:, :2], C)
    with pytest.raises(ValueError, match="image_mask"):
        yolox_loss(heads, GRID, STRIDES, gt, classes, mask, C, image_mask=np.ones(3, bool))


@pytest.mark.parametrize("variant,iou_type", [("togethernet", "iou"), ("yolox", "giou")])
def test_huge_regression_on_negative_anchors_keeps_gradients_finite(variant, iou_type):
    """An anchor far from every object that predicts an absurd width (log w = 95, whose
    exp overflows float32) changes neither the loss nor the other gradients, and
    leaves no NaN in any gradient."""
    heads, gt, classes, mask = _problem(0)
    far = A - 1  # bottom-right anchor at the coarsest level: no object near it
    assert not np.any(_assign(*(jnp.asarray(x) for x in (
        _decode_np(heads[0]), heads[0, :, 4], heads[0, :, 5:])), GRID, STRIDES,
        gt[0], classes[0], mask[0]).fg_mask[far])

    def loss(h):
        return yolox_loss(h, GRID, STRIDES, gt, classes, mask, C, variant=variant,
                          use_l1=True, iou_type=iou_type)[0]

    wild = heads.copy()
    wild[:, far, 2:4] = 95.0
    value, grads = jax.value_and_grad(loss)(jnp.asarray(wild))
    ref_value, ref_grads = jax.value_and_grad(loss)(jnp.asarray(heads))
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grads)))
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-5)
    keep = np.ones(A, bool)
    keep[far] = False
    np.testing.assert_allclose(np.asarray(grads)[:, keep], np.asarray(ref_grads)[:, keep],
                               rtol=1e-4, atol=1e-7)
