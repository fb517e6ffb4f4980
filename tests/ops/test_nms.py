import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.ops.nms import batched_nms, postprocess


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _iou1(box, others):
    iw = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = iw * ih
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area(box) + area(others) - inter)


def reference_nms(boxes, scores, classes, thr):
    """Textbook greedy class-wise NMS; returns kept indices in decreasing score."""
    order = list(np.argsort(-scores, kind="stable"))
    kept = []
    while order:
        i = order.pop(0)
        kept.append(i)
        if order:
            rest = np.array(order)
            ious = _iou1(boxes[i], boxes[rest])
            same = classes[rest] == classes[i]
            order = [j for j, o, s in zip(rest, ious, same) if not (s and o > thr)]
    return kept


def reference_postprocess(boxes, obj, cls, conf, thr, k, pre):
    prob = _sigmoid(cls)
    score = _sigmoid(obj) * prob.max(-1)
    cid = prob.argmax(-1)
    top = np.argsort(-score, kind="stable")[:pre]
    top = top[score[top] >= conf]
    kept = reference_nms(boxes[top], score[top], cid[top], thr)
    idx = top[kept][:k]
    return boxes[idx], score[idx], cid[idx]


def _rand_boxes(rng, n, size=64.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(4, 24, (n, 2))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def _clustered_boxes(rng, n, n_objects=12):
    base = _rand_boxes(rng, n_objects)
    out = base[rng.integers(0, n_objects, n)] + rng.normal(0, 1.5, (n, 4))
    out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 1)
    return out.astype(np.float32)


def test_batched_nms_matches_reference():
    rng = np.random.default_rng(0)
    fn = jax.jit(functools.partial(batched_nms, iou_threshold=0.5))
    total_suppressed = 0
    for _ in range(5):
        n = 120
        boxes = _rand_boxes(rng, n, size=24.0)
        scores = rng.uniform(size=n).astype(np.float32)
        classes = rng.integers(0, 3, n).astype(np.int32)
        keep = np.asarray(fn(boxes, scores, classes))
        ref = np.zeros(n, bool)
        ref[reference_nms(boxes, scores, classes, 0.5)] = True
        np.testing.assert_array_equal(keep, ref)
        total_suppressed += int((~ref).sum())
    assert total_suppressed > 50  # the problems really overlap


def test_batched_nms_classwise_and_valid():
    nms = jax.jit(batched_nms, static_argnames=("iou_threshold", "class_agnostic"))
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # same class: box 1 is suppressed by box 0; box 2 has another class and survives
    keep = nms(boxes, scores, np.array([0, 0, 1, 0]), iou_threshold=0.5)
    np.testing.assert_array_equal(keep, [True, False, True, True])
    # class-agnostic: box 2 is suppressed too
    keep = nms(boxes, scores, np.array([0, 0, 1, 0]), iou_threshold=0.5, class_agnostic=True)
    np.testing.assert_array_equal(keep, [True, False, False, True])
    # an invalid box neither survives nor suppresses
    keep = nms(boxes, scores, np.zeros(4, int), iou_threshold=0.5, valid=np.array([False, True, True, True]))
    np.testing.assert_array_equal(keep, [False, True, False, True])
    # batched leading axis, unsorted input
    kb = nms(np.stack([boxes, boxes]), np.stack([scores, scores[::-1]]), np.zeros((2, 4), int), iou_threshold=0.5)
    np.testing.assert_array_equal(kb, [[True, False, False, True], [False, False, True, True]])


@pytest.fixture(scope="module")
def post_fn():
    return jax.jit(
        functools.partial(
            postprocess, conf_threshold=0.05, iou_threshold=0.65, max_detections=100, pre_nms_topk=150
        )
    )


def test_postprocess_matches_reference(post_fn):
    rng = np.random.default_rng(1)
    b, a, c = 3, 200, 4
    boxes = np.stack([_clustered_boxes(rng, a) for _ in range(b)])
    obj = rng.normal(-2, 2, (b, a)).astype(np.float32)
    cls = rng.normal(-1, 2, (b, a, c)).astype(np.float32)
    det = post_fn(jnp.asarray(boxes), jnp.asarray(obj), jnp.asarray(cls))
    assert det.boxes.shape == (b, 100, 4) and det.classes.dtype == jnp.int32
    n_kept = []
    for i in range(b):
        rb, rs, rc = reference_postprocess(boxes[i], obj[i], cls[i], 0.05, 0.65, 100, 150)
        n = len(rb)
        n_kept.append(n)
        assert int(det.valid[i].sum()) == n
        np.testing.assert_array_equal(det.valid[i, :n], True)
        np.testing.assert_allclose(det.boxes[i, :n], rb, rtol=1e-6)
        np.testing.assert_allclose(det.scores[i, :n], rs, rtol=1e-5)
        np.testing.assert_array_equal(det.classes[i, :n], rc)
    assert max(n_kept) < 100 and not bool(det.valid[:, max(n_kept):].any())


def test_postprocess_pads_when_few(post_fn):
    a, c = 200, 3
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (a, 1))
    boxes[1] = [1, 0, 11, 10]  # IoU 0.818 with box 0, same class -> suppressed
    boxes[2] = [0, 0, 10, 10]  # identical to box 0, other class -> kept
    boxes[3] = [40, 40, 60, 60]
    obj = np.full(a, -20.0, np.float32)
    obj[:4] = [3.0, 2.0, 1.0, 0.5]
    cls = np.full((a, c), -20.0, np.float32)
    cls[:4] = -20.0
    cls[[0, 1, 3], 0] = 5.0
    cls[2, 2] = 5.0
    det = post_fn(boxes[None], obj[None], cls[None])
    np.testing.assert_array_equal(det.valid[0, :4], [True, True, True, False])
    assert not bool(det.valid[0, 3:].any())
    np.testing.assert_array_equal(det.classes[0, :3], [0, 2, 0])
    np.testing.assert_allclose(det.boxes[0, :3], boxes[[0, 2, 3]])
    p5 = _sigmoid(5.0)
    np.testing.assert_allclose(det.scores[0, :3], _sigmoid(np.array([3.0, 1.0, 0.5])) * p5, rtol=1e-6)
    np.testing.assert_array_equal(det.scores[0, 3:], 0.0)
    np.testing.assert_array_equal(det.boxes[0, 3:], 0.0)


def test_postprocess_k_larger_than_candidates():
    rng = np.random.default_rng(2)
    boxes = _rand_boxes(rng, 10)[None]
    det = postprocess(boxes, np.zeros((1, 10)), np.zeros((1, 10, 2)), max_detections=16, pre_nms_topk=1000)
    assert det.boxes.shape == (1, 16, 4)
    assert not bool(det.valid[0, 10:].any())
    with pytest.raises(ValueError, match="obj_logits"):
        postprocess(boxes, np.zeros((1, 9)), np.zeros((1, 10, 2)))
