"""Tests of adverse_vision.metrics.detection (VOC mAP and COCO AP)."""

import time

import numpy as np
import pytest

from adverse_vision.metrics.detection import (
    COCOEvaluator,
    VOCEvaluator,
    box_iou,
    coco_map,
    official_tool,
    voc_ap,
    voc_map,
)


# ---------------------------------------------------------------------------
# An independent, loop-based reference in the structure of the classic
# voc_eval.py: per class, a dict image -> {bbox, difficult, det flags}, all
# detections of the class sorted by score, matched one by one.
# ---------------------------------------------------------------------------

def _ref_ap(rec, prec, use_07):
    if use_07:
        ap = 0.0
        for k in range(11):
            t = k / 10.0
            ps = [p for r, p in zip(rec, prec) if r >= t]
            ap += (max(ps) if ps else 0.0) / 11.0
        return ap
    mrec = [0.0] + list(rec) + [1.0]
    mpre = [0.0] + list(prec) + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


def _ref_iou(bb, g, off):
    ixmin, iymin = max(bb[0], g[0]), max(bb[1], g[1])
    ixmax, iymax = min(bb[2], g[2]), min(bb[3], g[3])
    iw = max(ixmax - ixmin + off, 0.0)
    ih = max(iymax - iymin + off, 0.0)
    inters = iw * ih
    uni = ((bb[2] - bb[0] + off) * (bb[3] - bb[1] + off)
           + (g[2] - g[0] + off) * (g[3] - g[1] + off) - inters)
    return inters / uni if uni > 0 else 0.0


def _ref_voc_eval(images, classname, thr, off, use_07, strict):
    """images: list of (image_id, dets [(box, score, cls)], gts [(box, cls, difficult)])."""
    class_recs = {}
    npos = 0
    for image_id, _, gts in images:
        r = [g for g in gts if g[1] == classname]
        difficult = [bool(g[2]) for g in r]
        npos += sum(1 for d in difficult if not d)
        class_recs[image_id] = {"bbox": [list(g[0]) for g in r], "difficult": difficult,
                                "det": [False] * len(r)}
    image_ids, confidence, bbs = [], [], []
    for image_id, dets, _ in images:
        for box, score, cls in dets:
            if cls == classname:
                image_ids.append(image_id)
                confidence.append(score)
                bbs.append(list(box))
    order = sorted(range(len(confidence)), key=lambda i: -confidence[i])  # stable
    nd = len(order)
    tp = [0.0] * nd
    fp = [0.0] * nd
    for d, i in enumerate(order):
        rr = class_recs[image_ids[i]]
        bb = bbs[i]
        ovmax, jmax = -np.inf, -1
        for j, g in enumerate(rr["bbox"]):
            ov = _ref_iou(bb, g, off)
            if ov > ovmax:
                ovmax, jmax = ov, j
        ok = (ovmax > thr) if strict else (ovmax >= thr)
        if ok:
            if not rr["difficult"][jmax]:
                if not rr["det"][jmax]:
                    tp[d] = 1.0
                    rr["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    if npos == 0:
        return float("nan")
    ctp, cfp, rec, prec = 0.0, 0.0, [], []
    for d in range(nd):
        ctp += tp[d]
        cfp += fp[d]
        rec.append(ctp / npos)
        prec.append(ctp / max(ctp + cfp, np.finfo(np.float64).eps))
    return _ref_ap(rec, prec, use_07)


def _random_problem(rng, n_images, num_classes, integer):
    images = []
    for i in range(n_images):
        n = int(rng.integers(0, 7))
        xy = rng.uniform(0, 200, size=(n, 2))
        wh = rng.uniform(8, 80, size=(n, 2))
        gt_boxes = np.concatenate([xy, xy + wh], axis=1)
        if integer:
            gt_boxes = np.round(gt_boxes)
        gt_cls = rng.integers(0, num_classes, size=n)
        gt_diff = rng.random(n) < 0.2
        dets = []
        for j in range(n):
            for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 (duplicate) detections
                w = gt_boxes[j, 2] - gt_boxes[j, 0]
                h = gt_boxes[j, 3] - gt_boxes[j, 1]
                noise = rng.normal(0, 0.15, size=4) * np.array([w, h, w, h])
                box = gt_boxes[j] + noise
                box[2:] = np.maximum(box[2:], box[:2] + 1)
                cls = gt_cls[j] if rng.random() < 0.85 else rng.integers(0, num_classes)
                dets.append((box, cls))
        for _ in range(int(rng.integers(0, 5))):  # background false positives
            xy0 = rng.uniform(0, 200, size=2)
            wh0 = rng.uniform(5, 60, size=2)
            dets.append((np.concatenate([xy0, xy0 + wh0]), rng.integers(0, num_classes)))
        k = len(dets)
        det_boxes = np.array([d[0] for d in dets]).reshape(k, 4)
        if integer:
            det_boxes = np.round(det_boxes)
        det_cls = np.array([d[1] for d in dets], dtype=np.int64)
        det_scores = np.round(rng.random(k), 2)  # two decimals: plenty of ties
        images.append((f"img{i}", det_boxes, det_scores, det_cls, gt_boxes, gt_cls, gt_diff))
    return images


def _as_ref(images):
    out = []
    for image_id, db, ds, dc, gb, gc, gd in images:
        out.append((image_id, [(db[k], float(ds[k]), int(dc[k])) for k in range(len(ds))],
                    [(gb[k], int(gc[k]), bool(gd[k])) for k in range(len(gc))]))
    return out


# ---------------------------------------------------------------------------
# Elementary functions
# ---------------------------------------------------------------------------

def test_box_iou_offsets():
    a = np.array([[0.0, 0.0, 9.0, 9.0]])
    b = np.array([[5.0, 0.0, 14.0, 9.0], [20.0, 20.0, 30.0, 30.0]])
    np.testing.assert_allclose(box_iou(a, b, 0.0), [[36.0 / 126.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(box_iou(a, b, 1.0), [[50.0 / 150.0, 0.0]], atol=1e-12)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 2)


def test_voc_ap_hand_curve():
    # 2 GT; ranked TP, FP, TP -> rec (.5, .5, 1), prec (1, .5, 2/3)
    rec = np.array([0.5, 0.5, 1.0])
    prec = np.array([1.0, 0.5, 2.0 / 3.0])
    assert voc_ap(rec, prec) == pytest.approx(0.5 * 1.0 + 0.5 * 2.0 / 3.0, abs=1e-12)
    # 11-point: t = 0..0.5 -> 1 (6 points), t = 0.6..1 -> 2/3 (5 points)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(28.0 / 33.0, abs=1e-12)
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_voc_ap_11_point_uses_exact_tenths():
    # recall exactly 0.3 must count for the t = 0.3 point
    rec = np.array([0.1, 0.2, 0.3])
    prec = np.array([1.0, 1.0, 1.0])
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(4.0 / 11.0, abs=1e-12)


# ---------------------------------------------------------------------------
# Hand-computed VOC cases
# ---------------------------------------------------------------------------

def _single(ev, image_id, det_boxes, det_scores, det_classes, gt_boxes, gt_classes, gt_diff=None):
    ev.add(image_id, np.array(det_boxes, float).reshape(-1, 4), np.array(det_scores, float),
           np.array(det_classes, int), np.array(gt_boxes, float).reshape(-1, 4),
           np.array(gt_classes, int), None if gt_diff is None else np.array(gt_diff, bool))


def test_perfect_detection_ap_one():
    ev = VOCEvaluator(1)
    _single(ev, 0, [[10, 10, 50, 60]], [0.3], [0], [[10, 10, 50, 60]], [0])
    r = ev.compute()
    assert r["AP"][0] == 1.0 and r["mAP"] == 1.0
    assert r["num_tp"][0] == 1 and r["num_fp"][0] == 0


def test_tp_then_fp_and_fp_then_tp():
    g1, g2 = [0, 0, 10, 10], [100, 100, 120, 130]
    far = [300, 300, 320, 320]
    # one GT; TP (0.9) then FP (0.8): precision envelope 1 up to recall 1
    ev = VOCEvaluator(1)
    _single(ev, 0, [g1, far], [0.9, 0.8], [0, 0], [g1], [0])
    assert ev.compute()["AP"][0] == pytest.approx(1.0)
    # FP ranked first: rec (0, 1), prec (0, 1/2) -> AP 1/2
    ev = VOCEvaluator(1)
    _single(ev, 0, [g1, far], [0.8, 0.9], [0, 0], [g1], [0])
    assert ev.compute()["AP"][0] == pytest.approx(0.5, abs=1e-12)
    # two GT, TP/FP/TP over two images
    ev = VOCEvaluator(1, use_07_metric=False)
    ev07 = VOCEvaluator(1, use_07_metric=True)
    for e in (ev, ev07):
        _single(e, "a", [g1, far], [0.9, 0.8], [0, 0], [g1], [0])
        _single(e, "b", [g2], [0.7], [0], [g2], [0])
    assert ev.compute()["AP"][0] == pytest.approx(5.0 / 6.0, abs=1e-12)
    assert ev07.compute()["AP"][0] == pytest.approx(28.0 / 33.0, abs=1e-12)
    # the threshold can be changed at compute time (all matches here are exact boxes)
    assert ev.compute(iou_threshold=0.99)["AP"][0] == pytest.approx(5.0 / 6.0, abs=1e-12)


def test_duplicate_is_false_positive():
    g1, g2 = [0, 0, 10, 10], [100, 100, 120, 130]
    ev = VOCEvaluator(1)
    # ranked: g1 (TP), g1 again (duplicate -> FP), g2 (TP)
    _single(ev, 0, [g1, [0, 0, 10, 11], g2], [0.9, 0.8, 0.7], [0, 0, 0], [g1, g2], [0, 0])
    r = ev.compute()
    assert r["num_tp"][0] == 2 and r["num_fp"][0] == 1
    assert r["AP"][0] == pytest.approx(5.0 / 6.0, abs=1e-12)


def test_no_reassignment_to_second_best_gt():
    # the detection's best box is already taken; VOC does not fall back to the other box
    g1, g2 = [0, 0, 10, 10], [2, 0, 12, 10]
    ev = VOCEvaluator(1, pixel_offset=0.0)
    _single(ev, 0, [g1, [0.5, 0, 10.5, 10]], [0.9, 0.8], [0, 0], [g1, g2], [0, 0])
    r = ev.compute()
    assert r["num_tp"][0] == 1 and r["num_fp"][0] == 1
    assert r["AP"][0] == pytest.approx(0.5, abs=1e-12)


def test_iou_tie_goes_to_first_gt():
    # the detection overlaps both boxes with IoU 1/3; the first (difficult) one wins,
    # so the detection is ignored rather than a TP on the second box
    ev = VOCEvaluator(1, iou_threshold=0.3, pixel_offset=0.0)
    _single(ev, 0, [[5, 0, 15, 10]], [0.9], [0], [[0, 0, 10, 10], [10, 0, 20, 10]], [0, 0],
            [True, False])
    r = ev.compute()
    assert r["num_tp"][0] == 0 and r["num_fp"][0] == 0 and r["AP"][0] == 0.0


def test_difficult_ignored():
    g, gd = [0, 0, 10, 10], [50, 50, 70, 70]
    ev = VOCEvaluator(1)
    # the detection on the difficult box (ranked first) is neither TP nor FP, and
    # the difficult box does not count in recall
    _single(ev, 0, [gd, g], [0.95, 0.9], [0, 0], [g, gd], [0, 0], [False, True])
    r = ev.compute()
    assert r["AP"][0] == pytest.approx(1.0)
    assert r["num_gt"][0] == 1 and r["num_difficult"][0] == 1
    assert r["num_tp"][0] == 1 and r["num_fp"][0] == 0
    # only the difficult box is found: AP 0 but no false positive either
    ev = VOCEvaluator(1)
    _single(ev, 0, [gd], [0.95], [0], [g, gd], [0, 0], [False, True])
    r = ev.compute()
    assert r["AP"][0] == 0.0 and r["num_fp"][0] == 0 and r["recall"][0] == 0.0


def test_class_without_gt_is_nan_and_excluded():
    g = [0, 0, 10, 10]
    ev = VOCEvaluator(4, class_names=["a", "b", "c", "d"])
    # class 0: AP 1; class 1: GT but no detections -> 0; class 2: detections, no GT;
    # class 3: only a difficult GT
    _single(ev, 0, [g, g, [40, 40, 60, 60]], [0.9, 0.8, 0.7], [0, 2, 3],
            [g, [20, 20, 30, 30], [40, 40, 60, 60]], [0, 1, 3], [False, False, True])
    r = ev.compute()
    assert r["AP"][0] == 1.0 and r["AP"][1] == 0.0
    assert np.isnan(r["AP"][2]) and np.isnan(r["AP"][3])
    assert r["mAP"] == pytest.approx(0.5)
    text = ev.table(r)
    assert "50.00" in text and "100.00" in text and "mAP (2 classes)" in text
    assert all(name in text for name in "abcd")
    # nothing at all
    assert np.isnan(VOCEvaluator(2).compute()["mAP"])


def test_threshold_comparison_and_offset():
    # IoU exactly 0.5 (continuous): area 50 inside area 100
    for off, gt, det in ((0.0, [0, 0, 10, 10], [0, 0, 10, 5]), (1.0, [0, 0, 9, 9], [0, 0, 9, 4])):
        ev = VOCEvaluator(1, pixel_offset=off)
        ev_strict = VOCEvaluator(1, pixel_offset=off, iou_strict=True)
        for e in (ev, ev_strict):
            _single(e, 0, [det], [0.9], [0], [gt], [0])
        assert ev.compute()["AP"][0] == 1.0
        assert ev_strict.compute()["AP"][0] == 0.0
    # [0,0,9,9] vs [5,0,14,9]: 0.2857 continuous, 1/3 with +1 pixels
    for off, expect in ((0.0, 0.0), (1.0, 1.0)):
        ev = VOCEvaluator(1, iou_threshold=1.0 / 3.0, pixel_offset=off)
        _single(ev, 0, [[5, 0, 14, 9]], [0.9], [0], [[0, 0, 9, 9]], [0])
        assert ev.compute()["AP"][0] == expect


def test_truncate_det_boxes():
    ev = VOCEvaluator(1, iou_threshold=1.0, truncate_det_boxes=True)
    _single(ev, 0, [[3.7, 4.2, 20.9, 30.5]], [0.9], [0], [[3, 4, 20, 30]], [0])
    assert ev.compute()["AP"][0] == 1.0


def test_tied_scores_keep_add_order():
    g = [0, 0, 10, 10]
    far = [100, 100, 110, 110]
    ev = VOCEvaluator(1)
    _single(ev, "x", [far], [0.5], [0], [g], [0])   # FP first in add order
    _single(ev, "y", [g], [0.5], [0], [g], [0])     # TP, same score
    # order FP, TP: rec (0, .5) prec (0, .5); the "x" GT is missed
    assert ev.compute()["AP"][0] == pytest.approx(0.25, abs=1e-12)


# ---------------------------------------------------------------------------
# Against the independent reference on random problems
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed,integer,off,use_07,strict,thr", [
    (0, True, 1.0, False, False, 0.5),
    (1, True, 1.0, True, False, 0.5),
    (2, False, 0.0, False, True, 0.5),
    (3, False, 0.0, True, False, 0.7),
    (4, True, 1.0, False, True, 0.3),
])
def test_matches_reference_voc_eval(seed, integer, off, use_07, strict, thr):
    rng = np.random.default_rng(seed)
    num_classes = 4
    images = _random_problem(rng, 40, num_classes, integer)
    ev = VOCEvaluator(num_classes, iou_threshold=thr, use_07_metric=use_07, pixel_offset=off,
                      iou_strict=strict)
    for image in images:
        ev.add(*image)
    r = ev.compute()
    ref_images = _as_ref(images)
    ref = np.array([_ref_voc_eval(ref_images, c, thr, off, use_07, strict)
                    for c in range(num_classes)])
    np.testing.assert_allclose(r["AP"], ref, atol=1e-9, rtol=0, equal_nan=True)
    assert r["mAP"] == pytest.approx(np.nanmean(ref), abs=1e-9)
    assert 0.0 < r["mAP"] < 1.0  # a non-trivial problem


def test_batch_api_matches_per_image_and_letterbox_mapping():
    rng = np.random.default_rng(7)
    images = _random_problem(rng, 6, 3, integer=True)
    ev_ref = VOCEvaluator(3)
    for image in images:
        ev_ref.add(*image)
    ref = ev_ref.compute()

    b, k, m = len(images), 12, 8
    scale = rng.uniform(0.5, 2.0, size=b)
    offset = rng.uniform(0, 40, size=(b, 2))
    det_boxes = np.zeros((b, k, 4))
    det_scores = np.zeros((b, k))
    det_classes = np.full((b, k), -1)
    det_valid = np.zeros((b, k), bool)
    gt_boxes = np.zeros((b, m, 4))
    gt_classes = np.full((b, m), -1)
    gt_mask = np.zeros((b, m), bool)
    gt_difficult = np.zeros((b, m), bool)
    shift = lambda i: np.concatenate([offset[i], offset[i]])  # noqa: E731
    for i, (_, db, ds, dc, gb, gc, gd) in enumerate(images):
        assert len(ds) <= k and len(gc) <= m
        det_boxes[i, :len(ds)] = db * scale[i] + shift(i)
        det_scores[i, :len(ds)] = ds
        det_classes[i, :len(ds)] = dc
        det_valid[i, :len(ds)] = True
        gt_boxes[i, :len(gc)] = gb * scale[i] + shift(i)
        gt_classes[i, :len(gc)] = gc
        gt_mask[i, :len(gc)] = True
        gt_difficult[i, :len(gc)] = gd
    ev = VOCEvaluator(3)
    ev.update({"boxes": det_boxes, "scores": det_scores, "classes": det_classes,
               "valid": det_valid},
              {"boxes": gt_boxes, "classes": gt_classes, "box_mask": gt_mask,
               "difficult": gt_difficult, "scale": scale, "offset": offset,
               "valid": np.ones(b, bool)})
    r = ev.compute()
    np.testing.assert_allclose(r["AP"], ref["AP"], atol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(r["num_gt"], ref["num_gt"])

    # invalid images are skipped and counted
    ev2 = VOCEvaluator(3)
    iv = np.ones(b, bool)
    iv[0] = False
    ev2.add_batch(det_boxes, det_scores, det_classes, det_valid, gt_boxes, gt_classes, gt_mask,
                  gt_difficult, image_valid=iv, scale=scale, offset=offset)
    assert len(ev2) == b - 1 and ev2.num_skipped == 1
    # one-shot helper on the padded arrays (letterboxed coordinates, continuous IoU)
    out = voc_map(det_boxes, det_scores, det_classes, det_valid, gt_boxes, gt_classes, gt_mask,
                  gt_difficult, num_classes=3, pixel_offset=0.0)
    assert 0.0 < out["mAP"] <= 1.0


def test_bad_input_errors():
    ev = VOCEvaluator(2)
    box = np.array([[0.0, 0.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match="det_boxes"):
        ev.add(0, np.zeros((3, 5)), np.zeros(3), np.zeros(3, int), box, [0])
    with pytest.raises(ValueError, match="det_scores"):
        ev.add(0, box, np.zeros(2), [0], box, [0])
    with pytest.raises(ValueError, match="gt_classes"):
        ev.add(0, box, [0.5], [0], box, [2])
    with pytest.raises(ValueError, match="det_scores.*non-finite"):
        ev.add(0, box, [np.nan], [0], box, [0])
    with pytest.raises(ValueError, match="gt_boxes.*x2 < x1"):
        ev.add(0, box, [0.5], [0], np.array([[5.0, 0.0, 1.0, 5.0]]), [0])
    ev.add("img", box, [0.5], [0], box, [0])
    with pytest.raises(ValueError, match="already added"):
        ev.add("img", box, [0.5], [0], box, [0])
    with pytest.raises(ValueError, match="iou_threshold"):
        VOCEvaluator(2, iou_threshold=0.0)
    with pytest.raises(ValueError, match="class_names"):
        VOCEvaluator(2, class_names=["a"])
    with pytest.raises(ValueError, match="box_mask"):
        ev.update({"boxes": np.zeros((1, 1, 4)), "scores": np.zeros((1, 1)),
                   "classes": np.zeros((1, 1), int)}, {"boxes": np.zeros((1, 1, 4)),
                                                       "classes": np.zeros((1, 1), int)})
    # padded entries with out-of-range class ids are dropped before checking
    ev.add(None, np.zeros((2, 4)), np.zeros(2), [-1, -1], box, [1], det_valid=[False, False])
    assert ev.compute()["num_gt"].tolist() == [1, 1]


def test_speed_5000_images_100_detections():
    rng = np.random.default_rng(0)
    n_img, k, m, c = 5000, 100, 10, 20
    gxy = rng.uniform(0, 500, size=(n_img, m, 2))
    gt_boxes = np.concatenate([gxy, gxy + rng.uniform(10, 100, size=(n_img, m, 2))], axis=-1)
    gt_classes = rng.integers(0, c, size=(n_img, m))
    gt_diff = rng.random((n_img, m)) < 0.1
    src = rng.integers(0, m, size=(n_img, k))
    det_boxes = np.take_along_axis(gt_boxes, src[..., None], axis=1)
    det_boxes = det_boxes + rng.normal(0, 5, size=det_boxes.shape)
    det_boxes[..., 2:] = np.maximum(det_boxes[..., 2:], det_boxes[..., :2] + 1)
    det_classes = np.take_along_axis(gt_classes, src, axis=1)
    det_scores = rng.random((n_img, k))
    ev = VOCEvaluator(c)
    t0 = time.perf_counter()
    for start in range(0, n_img, 50):
        sl = slice(start, start + 50)
        ev.add_batch(det_boxes[sl], det_scores[sl], det_classes[sl], None, gt_boxes[sl],
                     gt_classes[sl], None, gt_diff[sl])
    t1 = time.perf_counter()
    r = ev.compute()
    t2 = time.perf_counter()
    print(f"\nVOC eval 5000 x 100: add {t1 - t0:.2f} s, compute {t2 - t1:.2f} s, "
          f"mAP {r['mAP']:.4f}")
    assert r["num_det"].sum() == n_img * k and 0.0 < r["mAP"] < 1.0


# ---------------------------------------------------------------------------
# COCO through pycocotools
# ---------------------------------------------------------------------------

def test_coco_perfect_and_empty():
    rng = np.random.default_rng(3)
    b, m = 4, 5
    xy = rng.uniform(0, 300, size=(b, m, 2))
    gt_boxes = np.concatenate([xy, xy + rng.uniform(5, 150, size=(b, m, 2))], axis=-1)
    gt_classes = rng.integers(0, 3, size=(b, m))
    gt_mask = np.ones((b, m), bool)
    gt_mask[1, 3:] = False
    scores = rng.uniform(0.1, 1.0, size=(b, m))
    perfect = coco_map(gt_boxes, scores, gt_classes, gt_mask, gt_boxes, gt_classes, gt_mask,
                       num_classes=3)
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert perfect[key] == pytest.approx(1.0, abs=1e-9)
    empty = coco_map(np.zeros((b, 0, 4)), np.zeros((b, 0)), np.zeros((b, 0), int), None,
                     gt_boxes, gt_classes, gt_mask, num_classes=3)
    assert empty["AP"] == 0.0 and empty["AP50"] == 0.0


def test_coco_evaluator_details():
    g = np.array([[10.0, 10.0, 60.0, 70.0]])  # 50 x 60 = 3000 px: "medium"
    ev = COCOEvaluator(2, class_names=["a", "b"])
    ev.add("p", g, [0.9], [0], g, [0])
    # a wrongly classified detection: FP for class 1, which has no GT (ignored)
    ev.add("q", g, [0.9], [1], np.array([[0.0, 0.0, 20.0, 20.0]]), [0])
    r = ev.compute()
    # class 0: ranked TP, then the missed box in "q": AP 0.5 (101-point)
    assert r["AP50"] == pytest.approx(0.50495, abs=1e-4)
    assert r["APm"] == pytest.approx(1.0, abs=1e-9)  # only the medium box, found
    assert np.isnan(r["APl"])  # no large ground truth
    assert "Average Precision" in ev.summary_text
    # difficult as crowd: the detection on it is not a false positive
    ev = COCOEvaluator(1, difficult="crowd")
    ev.add(0, np.array([[100.0, 100.0, 150.0, 150.0], [0.0, 0.0, 30.0, 30.0]]), [0.95, 0.9],
           [0, 0], np.array([[100.0, 100.0, 150.0, 150.0], [0.0, 0.0, 30.0, 30.0]]), [0, 0],
           [True, False])
    assert ev.compute()["AP50"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="difficult"):
        COCOEvaluator(1, difficult="maybe")


def test_official_tool_scores_integer_boxes_and_truncated_predictions():
    """The official tool's convention: the XML's integers for continuous 0-based ground
    truth, predictions truncated, the +1 rule. A small box that our continuous IoU
    matches (0.64) the official tool does not (9/23 = 0.39), as a +1-rule evaluator fed
    the integers by hand."""
    gt = np.array([[10.0, 10.0, 14.0, 14.0]])  # XML 11 11 14 14
    det = np.array([[10.0, 10.0, 13.2, 13.2]])
    ours = VOCEvaluator(1, pixel_offset=0.0)
    tool = official_tool(1)
    by_hand = VOCEvaluator(1, pixel_offset=1.0)
    for ev, d, g in ((ours, det, gt), (tool, det, gt),
                     (by_hand, np.array([[10.0, 10.0, 13.0, 13.0]]), np.array([[11.0, 11.0, 14.0, 14.0]]))):
        ev.add("a", d, [0.9], [0], g, [0])
    assert ours.compute()["mAP"] == 1.0
    assert tool.compute()["mAP"] == by_hand.compute()["mAP"] == 0.0
    np.testing.assert_allclose(box_iou(np.array([[10, 10, 13, 13]]), np.array([[11, 11, 14, 14]]), 1.0),
                               [[9 / 23]])
