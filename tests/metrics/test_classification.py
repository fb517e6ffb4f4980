"""Top-k correctness and the accuracy meter on hand-checked cases and against a sort."""

import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.metrics.classification import AccuracyMeter, topk_correct


def test_topk_correct_hand_case():
    logits = np.array([
        [0.1, 0.9, 0.3, 0.2],   # label 1: rank 0
        [0.5, 0.1, 0.4, 0.3],   # label 2: rank 1
        [0.1, 0.2, 0.3, 0.4],   # label 0: rank 3
    ], np.float32)
    labels = np.array([1, 2, 0])
    out = topk_correct(logits, labels, ks=(1, 2, 3, 5))
    assert set(out) == {1, 2, 3, 5}
    np.testing.assert_array_equal(out[1], [True, False, False])
    np.testing.assert_array_equal(out[2], [True, True, False])
    np.testing.assert_array_equal(out[3], [True, True, False])
    np.testing.assert_array_equal(out[5], [True, True, True])  # k clipped to 4 classes
    assert out[1].dtype == bool and out[1].shape == (3,)


def test_ties_go_to_the_lower_class_index():
    logits = np.zeros((3, 4))
    out = topk_correct(logits, np.array([0, 1, 3]), ks=(1, 2))
    np.testing.assert_array_equal(out[1], [True, False, False])
    np.testing.assert_array_equal(out[2], [True, True, False])
    # top-1 agrees with argmax
    rng = np.random.default_rng(0)
    lg = rng.integers(0, 3, size=(50, 6)).astype(np.float32)
    lb = rng.integers(0, 6, size=50)
    np.testing.assert_array_equal(topk_correct(lg, lb, ks=(1,))[1], np.argmax(lg, axis=1) == lb)


def test_matches_stable_sort_reference():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 10))
    logits[:20, 3] = logits[:20, 7]  # some ties
    labels = rng.integers(0, 10, size=200)
    order = np.argsort(-logits, axis=1, kind="stable")
    for k in (1, 3, 5, 10, 12):
        expected = np.any(order[:, :min(k, 10)] == labels[:, None], axis=1)
        np.testing.assert_array_equal(topk_correct(logits, labels, ks=(k,))[k], expected)


def test_meter_accumulates_with_valid_mask():
    meter = AccuracyMeter()
    logits = np.eye(6)[[0, 1, 2, 3]] * 5.0  # predicts 0, 1, 2, 3
    meter.add(logits, np.array([0, 1, 5, 4]))  # two top-1 hits
    # second batch: one real sample (correct) and padding with a garbage label
    meter.add(jnp.asarray(np.eye(6)[[5, 0]]), jnp.asarray([5, -1]), valid=np.array([True, False]))
    result = meter.compute()
    assert result["count"] == 5
    assert result["top1"] == pytest.approx(100.0 * 3 / 5)
    # top-5 of 6 classes: a sample misses only if its label is last in the order;
    # [0,1,2,3]-rows with labels 5 and 4: all other logits are 0, ties go to low index
    # -> label 5 has rank 5 (miss), label 4 has rank 4 (hit).
    assert result["top5"] == pytest.approx(100.0 * 4 / 5)
    meter.reset()
    assert meter.compute()["count"] == 0
    assert np.isnan(meter.compute()["top1"])


def test_meter_clips_k_to_number_of_classes():
    meter = AccuracyMeter(ks=(1, 5))
    meter.add(np.array([[0.2, 0.8, 0.0], [0.9, 0.05, 0.05]]), np.array([2, 2]))
    result = meter.compute()
    assert result == {"top1": 0.0, "top5": 100.0, "count": 2}


def test_meter_equals_topk_over_batches():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(37, 8))
    labels = rng.integers(0, 8, size=37)
    valid = rng.random(37) > 0.3
    meter = AccuracyMeter(ks=(1, 2, 5))
    for s in range(0, 37, 10):
        meter.add(logits[s:s + 10], labels[s:s + 10], valid[s:s + 10])
    ref = topk_correct(logits[valid], labels[valid], ks=(1, 2, 5))
    result = meter.compute()
    assert result["count"] == int(valid.sum())
    for k in (1, 2, 5):
        assert result[f"top{k}"] == pytest.approx(100.0 * ref[k].mean())


def test_bad_inputs():
    with pytest.raises(ValueError, match="label 4 is outside"):
        topk_correct(np.zeros((2, 4)), np.array([0, 4]))
    with pytest.raises(ValueError, match="label -1 is outside"):
        topk_correct(np.zeros((2, 4)), np.array([-1, 0]))
    with pytest.raises(ValueError, match="labels must have shape"):
        topk_correct(np.zeros((2, 4)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\)"):
        topk_correct(np.zeros(4), np.array([0]))
    with pytest.raises(ValueError, match="integer class ids"):
        topk_correct(np.zeros((1, 4)), np.array([0.5]))
    with pytest.raises(ValueError, match="positive integer"):
        topk_correct(np.zeros((1, 4)), np.array([0]), ks=(0,))
    with pytest.raises(ValueError, match="NaN"):
        topk_correct(np.full((1, 4), np.nan), np.array([0]))
    meter = AccuracyMeter()
    meter.add(np.zeros((1, 4)), np.array([0]))
    with pytest.raises(ValueError, match="3 classes but earlier batches had 4"):
        meter.add(np.zeros((1, 3)), np.array([0]))
    with pytest.raises(ValueError, match="valid must have shape"):
        meter.add(np.zeros((2, 4)), np.array([0, 1]), valid=np.array([True]))
    with pytest.raises(ValueError, match="AccuracyMeter.add: label 9"):
        meter.add(np.zeros((2, 4)), np.array([9, 1]), valid=np.array([True, True]))
