"""Tests for adverse_vision.data.augment: geometry shared by all aligned arrays."""

import numpy as np
import pytest

from adverse_vision.data import augment as aug


def _record(h=48, w=64, boxes=((8, 6, 30, 26), (36, 20, 60, 44)), seed=0):
    """A record whose mask / depth / thermal mark the inside of each box.

    mask = class + 1 inside box c, depth = 10 inside boxes (1 elsewhere), thermal =
    200 inside boxes: so the geometry of every aligned array can be checked against
    the transformed boxes.
    """
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    depth = np.ones((h, w), np.float32)
    thermal = np.zeros((h, w, 1), np.uint8)
    for c, (x1, y1, x2, y2) in enumerate(boxes):
        mask[y1:y2, x1:x2] = c + 1
        depth[y1:y2, x1:x2] = 10.0
        thermal[y1:y2, x1:x2] = 200
    n = len(boxes)
    return {
        "image": image,
        "hazy": (255 - image).astype(np.uint8),
        "boxes": np.asarray(boxes, np.float32).reshape(n, 4),
        "classes": np.arange(n, dtype=np.int32),
        "difficult": np.array([False, True][:n] + [False] * max(0, n - 2), bool),
        "depth": depth,
        "mask": mask,
        "thermal": thermal,
        "id": "test/0",
        "valid": True,
    }


def _extent(binary):
    ys, xs = np.nonzero(binary)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _assert_aligned(out, tol=1.5):
    """Each box matches the region its class occupies in mask, depth and thermal."""
    for box, c in zip(out["boxes"], out["classes"]):
        region = out["mask"] == c + 1
        np.testing.assert_allclose(_extent(region), box, atol=tol)
        # depth and thermal are high exactly where some box is (bilinear edges aside).
        np.testing.assert_allclose(_extent((out["depth"] > 5.5) & region), box, atol=tol)
        np.testing.assert_allclose(_extent((out["thermal"][..., 0] > 100) & region), box, atol=tol)
    # The degraded twin got the same geometry: it is still 255 - image.
    diff = out["image"].astype(int) + out["hazy"].astype(int) - 255
    win = out.get(aug.WINDOW_KEY)
    if win is not None:
        y0, x0, y1, x1 = win
        diff = diff[y0:y1, x0:x1]
    assert (
        np.abs(diff).max() <= 2
    )  # two rounded resampling passes; a 1 px shift of noise gives ~100


def test_flip_hand_checked():
    rec = _record()
    out = aug.random_flip(rec, np.random.default_rng(0), p=1.0)
    np.testing.assert_array_equal(out["boxes"], [[34, 6, 56, 26], [4, 20, 28, 44]])
    np.testing.assert_array_equal(out["image"], rec["image"][:, ::-1])
    np.testing.assert_array_equal(out["hazy"], rec["hazy"][:, ::-1])
    np.testing.assert_array_equal(out["mask"], rec["mask"][:, ::-1])
    np.testing.assert_array_equal(out["depth"], rec["depth"][:, ::-1])
    np.testing.assert_array_equal(out["thermal"], rec["thermal"][:, ::-1])
    _assert_aligned(out, tol=0)
    # The input record is untouched.
    np.testing.assert_array_equal(rec["boxes"], [[8, 6, 30, 26], [36, 20, 60, 44]])
    same = aug.random_flip(rec, np.random.default_rng(0), p=0.0)
    np.testing.assert_array_equal(same["image"], rec["image"])
    np.testing.assert_array_equal(same["boxes"], rec["boxes"])


def test_flip_probability():
    rec = _record()
    rng = np.random.default_rng(1)
    flipped = sum(
        not np.array_equal(aug.random_flip(rec, rng, p=0.3)["boxes"], rec["boxes"])
        for _ in range(400)
    )
    assert 80 <= flipped <= 160


def test_letterbox_hand_checked():
    rec = _record(h=50, w=100, boxes=((10, 20, 60, 40),))
    out = aug.letterbox(rec, 64)
    # long side 100 -> 64: scale 0.64, content 32 x 64, centred vertically (16 px).
    assert out["scale"] == np.float32(0.64)
    np.testing.assert_array_equal(out["offset"], [0, 16])
    np.testing.assert_array_equal(out["orig_size"], [50, 100])
    np.testing.assert_allclose(out["boxes"], [[6.4, 28.8, 38.4, 41.6]], atol=1e-5)
    # Back to the original image.
    back = (out["boxes"] - np.tile(out["offset"], 2)) / out["scale"]
    np.testing.assert_allclose(back, rec["boxes"], atol=1e-4)
    for key in ("image", "hazy", "depth", "mask", "thermal"):
        assert out[key].shape[:2] == (64, 64), key
    assert np.all(out["image"][:16] == aug.PAD_VALUE)
    assert np.all(out["image"][48:] == aug.PAD_VALUE)
    assert np.all(out["hazy"][:16] == aug.PAD_VALUE)
    assert np.all(out["mask"][:16] == aug.MASK_IGNORE)
    assert np.all(out["mask"][48:] == aug.MASK_IGNORE)
    assert np.all(out["depth"][:16] == 10.0)  # the record's maximum depth
    assert np.all(out["thermal"][:16] == 0)
    assert set(np.unique(out["mask"][16:48])) <= {0, 1}  # nearest neighbour: no new labels
    np.testing.assert_array_equal(out[aug.WINDOW_KEY], [16, 0, 48, 64])
    _assert_aligned(out)


def test_letterbox_tall_and_identity():
    rec = _record(h=64, w=32, boxes=((4, 8, 20, 40),))
    out = aug.letterbox(rec, 32)
    assert out["scale"] == np.float32(0.5)
    np.testing.assert_array_equal(out["offset"], [8, 0])
    np.testing.assert_allclose(out["boxes"], [[10, 4, 18, 20]])
    same = aug.letterbox(_record(h=32, w=32, boxes=((1, 2, 3, 4),)), 32)
    assert same["scale"] == 1.0
    np.testing.assert_array_equal(
        same["image"], _record(h=32, w=32, boxes=((1, 2, 3, 4),))["image"]
    )


def test_scale_crop_keeps_alignment_and_clips():
    rec = _record()
    rng = np.random.default_rng(3)
    for _ in range(12):
        out = aug.random_scale_crop(rec, rng, scale=(0.6, 1.4), jitter=0.3, out_size=(56, 72))
        assert out["image"].shape == (56, 72, 3)
        assert out["mask"].shape == (56, 72) and out["thermal"].shape == (56, 72, 1)
        b = out["boxes"]
        assert np.all(b[:, [0, 2]] >= 0) and np.all(b[:, [0, 2]] <= 72)
        assert np.all(b[:, [1, 3]] >= 0) and np.all(b[:, [1, 3]] <= 56)
        assert np.all(b[:, 2] - b[:, 0] >= 2) and np.all(b[:, 3] - b[:, 1] >= 2)
        assert len(out["classes"]) == len(b) == len(out["difficult"])
        # Boxes cut by the canvas edge still match the visible part of their region.
        _assert_aligned(out, tol=2.0)


def test_scale_crop_drops_tiny_boxes():
    rec = _record(boxes=((2, 2, 6, 6), (10, 10, 60, 44)))
    out = aug.random_scale_crop(rec, np.random.default_rng(0), scale=(0.25, 0.25), jitter=0.0)
    # 4 px box -> about 1 px: dropped; the large one stays with its class / flag.
    np.testing.assert_array_equal(out["classes"], [1])
    np.testing.assert_array_equal(out["difficult"], [True])
    w = out["boxes"][0, 2] - out["boxes"][0, 0]
    np.testing.assert_allclose(w, 50 * 0.25, atol=0.5)


def test_hsv_same_gains_for_twin_and_hand_checked():
    rec = _record()
    rec["hazy"] = rec["image"].copy()
    out = aug.random_hsv(rec, np.random.default_rng(5))
    np.testing.assert_array_equal(out["image"], out["hazy"])
    assert not np.array_equal(out["image"], rec["image"])
    for key in ("depth", "mask", "thermal", "boxes"):
        np.testing.assert_array_equal(out[key], rec[key])
    # A distinct twin gets exactly the same gains.
    rec2 = _record()
    out2 = aug.random_hsv(rec2, np.random.default_rng(5))
    gains = np.random.default_rng(5).uniform(-1, 1, 3) * np.array([0.1, 0.7, 0.4]) + 1
    ref_image, ref_hazy = aug.hsv_jitter([rec2["image"], rec2["hazy"]], gains)
    np.testing.assert_array_equal(out2["image"], ref_image)
    np.testing.assert_array_equal(out2["hazy"], ref_hazy)
    # Value gain 0.5 on grey 200 -> grey 100; saturated red keeps its hue.
    grey = np.full((2, 2, 3), 200, np.uint8)
    np.testing.assert_array_equal(aug.hsv_jitter([grey], (1.0, 1.0, 0.5))[0], 100)
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    dark_red = aug.hsv_jitter([red], (1.0, 1.0, 0.5))[0]
    np.testing.assert_array_equal(dark_red[0, 0], [128, 0, 0])


def test_augment_compose_deterministic_and_aligned():
    rec = _record()
    a = aug.augment(rec, np.random.default_rng(7), {"hsv": None}, out_size=64)
    b = aug.augment(rec, np.random.default_rng(7), {"hsv": None}, out_size=64)
    for key in ("image", "hazy", "depth", "mask", "thermal", "boxes"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["image"].shape == (64, 64, 3)
    _assert_aligned(a, tol=2.0)
    off = aug.augment(rec, np.random.default_rng(7), {"flip": 0.0, "scale": None, "hsv": None})
    np.testing.assert_array_equal(off["image"], rec["image"])


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown key 'flipp'"):
        aug.augment_config({"flipp": 0.5})
    with pytest.raises(ValueError, match="'scale'"):
        aug.augment_config({"scale": (1.5, 0.5)})
    rec = _record()
    rec["depth"] = rec["depth"][:10]
    with pytest.raises(ValueError, match="test/0.*'depth'"):
        aug.letterbox(rec, 32)
    rec = _record()
    rec["classes"] = rec["classes"][:1]
    with pytest.raises(ValueError, match="'classes'"):
        aug.random_flip(rec, np.random.default_rng(0))
    with pytest.raises(ValueError, match="size"):
        aug.letterbox(_record(), 0)
