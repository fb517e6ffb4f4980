"""Confusion matrix, VOC-style mIoU / accuracies and the segmentation meter, by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.metrics.segmentation import (
    SegmentationMeter,
    confusion_matrix,
    segmentation_scores,
)

# 4 classes; class 2 is neither in the ground truth nor predicted; class 3 is only
# predicted (one pixel); two pixels are void (255) and their predictions are ignored.
LABEL = np.array([[0, 0, 0, 0, 255],
                  [1, 1, 1, 1, 255]], np.uint8)
PRED = np.array([[0, 0, 0, 1, 3],
                 [0, 1, 1, 3, 2]], np.int32)
CONF = np.array([[3, 1, 0, 0],
                 [1, 2, 0, 1],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0]])


def test_confusion_matrix_hand_case():
    conf = confusion_matrix(PRED, LABEL, 4)
    assert conf.dtype == np.int64 and conf.shape == (4, 4)
    np.testing.assert_array_equal(conf, CONF)
    # a batch axis and jax inputs give the same counts
    conf2 = confusion_matrix(jnp.asarray(PRED[None]), jnp.asarray(LABEL[None]), 4)
    np.testing.assert_array_equal(conf2, CONF)


def test_confusion_matrix_without_ignore_label():
    label = np.array([[0, 1], [1, 2]])
    pred = np.array([[0, 2], [1, 2]])
    conf = confusion_matrix(pred, label, 3, ignore_label=None)
    np.testing.assert_array_equal(conf, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="label value 255 is outside"):
        confusion_matrix(PRED, LABEL, 4, ignore_label=None)


def test_scores_hand_case():
    s = segmentation_scores(CONF)
    # IoU: class 0: 3 / (4 + 4 - 3) = 60 %, class 1: 2 / (4 + 3 - 2) = 40 %,
    # class 2: empty union (left out), class 3: 0 / 1 = 0 %.
    np.testing.assert_allclose(s["iou"], [60.0, 40.0, np.nan, 0.0])
    assert s["miou"] == pytest.approx((60.0 + 40.0 + 0.0) / 3)
    assert s["pixel_acc"] == pytest.approx(100.0 * 5 / 8)
    np.testing.assert_allclose(s["acc"], [75.0, 50.0, np.nan, np.nan])
    assert s["mean_acc"] == pytest.approx(62.5)


def test_scores_perfect_and_empty():
    s = segmentation_scores(np.diag([5, 0, 7]))
    assert s["miou"] == 100.0 and s["pixel_acc"] == 100.0 and s["mean_acc"] == 100.0
    assert np.isnan(s["iou"][1])
    empty = segmentation_scores(np.zeros((3, 3), np.int64))
    assert np.isnan(empty["miou"]) and np.isnan(empty["pixel_acc"]) and np.isnan(empty["mean_acc"])


def _brute_force(pred, label, c, ignore):
    conf = np.zeros((c, c), np.int64)
    for p, g in zip(pred.ravel(), label.ravel()):
        if g != ignore:
            conf[g, p] += 1
    return conf


def test_meter_logits_and_predictions_agree_with_brute_force():
    rng = np.random.default_rng(0)
    c = 5
    logits = rng.normal(size=(3, 6, 7, c)).astype(np.float32)
    label = rng.integers(0, c, size=(3, 6, 7)).astype(np.uint8)
    label[rng.random(label.shape) < 0.2] = 255
    valid = np.array([True, False, True])

    from_logits = SegmentationMeter(c)
    from_logits.add(logits[:2], label[:2], valid=valid[:2])
    from_logits.add(jnp.asarray(logits[2:]), jnp.asarray(label[2:]))
    from_pred = SegmentationMeter(c)
    pred = np.argmax(logits, axis=-1)
    from_pred.add(pred[valid], label[valid])

    expected = _brute_force(pred[valid], label[valid], c, 255)
    np.testing.assert_array_equal(from_logits.confusion, expected)
    np.testing.assert_array_equal(from_pred.confusion, expected)
    a, b = from_logits.compute(), segmentation_scores(expected)
    assert a["miou"] == pytest.approx(b["miou"])
    np.testing.assert_allclose(a["iou"], b["iou"])
    from_logits.reset()
    assert from_logits.confusion.sum() == 0


def test_meter_hand_case():
    meter = SegmentationMeter(4)
    meter.add(PRED[None, :, :3], LABEL[None, :, :3])
    meter.add(PRED[None, :, 3:], LABEL[None, :, 3:])
    np.testing.assert_array_equal(meter.confusion, CONF)
    assert meter.compute()["miou"] == pytest.approx(100.0 / 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="label value 7 is outside"):
        confusion_matrix(np.zeros((2, 2), int), np.array([[0, 7], [1, 255]]), 4)
    with pytest.raises(ValueError, match="predicted value 4 is outside"):
        confusion_matrix(np.array([[4]]), np.array([[0]]), 4)
    # an out-of-range prediction on a void pixel is not looked at
    assert confusion_matrix(np.array([[4]]), np.array([[255]]), 4).sum() == 0
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 4)
    with pytest.raises(ValueError, match="integer class ids"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2), int), 4)
    with pytest.raises(ValueError, match="ignore_label 1 is a class id"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 2), int), 4, ignore_label=1)
    with pytest.raises(ValueError, match="square"):
        segmentation_scores(np.zeros((2, 3)))
    meter = SegmentationMeter(3)
    with pytest.raises(ValueError, match="upsample"):
        meter.add(np.zeros((1, 2, 2, 3)), np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="SegmentationMeter.add: label value 3"):
        meter.add(np.zeros((1, 2, 2), np.int32), np.full((1, 2, 2), 3, np.uint8))
    with pytest.raises(ValueError, match="one entry per image"):
        meter.add(np.zeros((2, 2, 2), np.int32), np.zeros((2, 2, 2), np.uint8), valid=[True])
