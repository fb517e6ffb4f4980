"""Scenes as segmentation data and as classification crops."""

import pickle

import numpy as np
import pytest
from PIL import Image

from adverse_vision.data import scenes
from adverse_vision.data.scenes_tasks import (
    SEG_CLASSES,
    ScenesCropsSource,
    ScenesSegmentationSource,
)


def test_seg_classes():
    assert SEG_CLASSES == ("background", "person", "bicycle", "car", "motorbike", "bus")


def test_segmentation_source_matches_scenes():
    src = ScenesSegmentationSource("val", num_samples=3, image_size=48, seed=2)
    ref = scenes.ScenesSource("val", num_samples=3, image_size=(48, 48), seed=2)
    assert len(src) == 3
    for i in range(3):
        rec, r = src[i], ref[i]
        assert set(rec) == {"image", "mask", "id", "valid"}
        assert rec["image"].shape == (48, 48, 3) and rec["image"].dtype == np.uint8
        assert rec["mask"].shape == (48, 48) and rec["mask"].dtype == np.uint8
        np.testing.assert_array_equal(rec["image"], r["image"])
        np.testing.assert_array_equal(rec["mask"], r["mask"])
        assert rec["mask"].max() < len(SEG_CLASSES)
        assert rec["id"] == f"scenes/val/{i}"
    rect = ScenesSegmentationSource("train", num_samples=1, image_size=(40, 64))
    assert rect[0]["mask"].shape == (40, 64)


def test_segmentation_mask_labels_the_annotated_objects():
    # Each annotated box's class (+1) is the mask label found most inside the box.
    src = ScenesSegmentationSource("train", num_samples=4, image_size=64, seed=0)
    ref = scenes.ScenesSource("train", num_samples=4, image_size=(64, 64), seed=0)
    checked = 0
    for i in range(4):
        mask = src[i]["mask"]
        r = ref[i]
        for box, cls in zip(r["boxes"].astype(int), r["classes"]):
            inside = mask[box[1]:box[3], box[0]:box[2]]
            assert (inside == cls + 1).any()
            checked += 1
    assert checked > 0


def test_crops_labels_match_scene_boxes():
    src = ScenesCropsSource("train", num_samples=10, crop_size=24, scene_size=64, seed=1)
    ref = scenes.ScenesSource("train", num_samples=100, image_size=(64, 64), seed=1)
    assert len(src) == 10
    objects = src.objects
    assert objects["label"].shape == (10,) and objects["box"].shape == (10, 4)
    # Objects are the boxes of scenes 0, 1, ... in order.
    expected = []
    for s in range(src.num_scenes):
        for k, (box, cls) in enumerate(zip(ref[s]["boxes"], ref[s]["classes"])):
            expected.append((s, k, tuple(box), int(cls)))
    expected = expected[:10]
    got = [(int(s), int(k), tuple(b), int(c)) for s, k, b, c in zip(
        objects["scene"], objects["box_index"], objects["box"], objects["label"])]
    assert got == expected
    for i in range(10):
        rec = src[i]
        assert set(rec) == {"image", "label", "id", "valid"}
        assert rec["image"].shape == (24, 24, 3) and rec["image"].dtype == np.uint8
        s, k, box, cls = expected[i]
        assert rec["label"] == cls
        assert rec["id"] == f"scenes_crops/train/{s}/{k}"
        np.testing.assert_array_equal(rec["image"], src.crop(ref[s]["image"], box))
    assert src[-1]["id"] == src[9]["id"]
    with pytest.raises(IndexError):
        src[10]


def test_crops_are_deterministic_and_pickle():
    a = ScenesCropsSource("val", num_samples=5, crop_size=16, scene_size=48, seed=0)
    first = [a[i]["image"] for i in (4, 0, 2)]  # random access order
    b = pickle.loads(pickle.dumps(a))
    c = ScenesCropsSource("val", num_samples=5, crop_size=16, scene_size=48, seed=0)
    for i, img in zip((4, 0, 2), first):
        np.testing.assert_array_equal(b[i]["image"], img)
        np.testing.assert_array_equal(c[i]["image"], img)
    other = ScenesCropsSource("train", num_samples=5, crop_size=16, scene_size=48, seed=0)
    assert not all(np.array_equal(other[i]["image"], a[i]["image"]) for i in range(5))


def test_crop_geometry():
    src = ScenesCropsSource("train", num_samples=1, crop_size=4, scene_size=32, context=0.0)
    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    # A 4x4 box, no context: the crop is the box itself.
    np.testing.assert_array_equal(src.crop(image, (2, 3, 6, 7)), image[3:7, 2:6])
    # A 2x4 box: a square of side 4 centred on it.
    np.testing.assert_array_equal(src.crop(image, (3, 3, 5, 7)), image[3:7, 2:6])
    # At the corner the square leaves the image; the outside gets the image mean.
    mean = np.round(image.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    out = src.crop(image, (0, 0, 2, 4))  # square x in [-1, 3)
    np.testing.assert_array_equal(out[:, 0], np.broadcast_to(mean, (4, 3)))
    np.testing.assert_array_equal(out[:, 1:], image[0:4, 0:3])
    # With context the square grows (side 4 * 1.5 = 6) and is resized to crop_size.
    wide = ScenesCropsSource("train", num_samples=1, crop_size=4, scene_size=32, context=0.5)
    region = image[2:8, 1:7]
    expected = np.asarray(Image.fromarray(region).resize((4, 4), Image.BILINEAR))
    np.testing.assert_array_equal(wide.crop(image, (2, 3, 6, 7)), expected)


def test_crops_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        ScenesCropsSource(num_samples=0)
    with pytest.raises(ValueError, match="crop_size"):
        ScenesCropsSource(crop_size=0)
    with pytest.raises(ValueError, match="context"):
        ScenesCropsSource(context=-0.1)
    with pytest.raises(ValueError, match="split"):
        ScenesCropsSource(split="dev")
    with pytest.raises(ValueError, match="image size"):
        ScenesCropsSource(scene_size=16)
    with pytest.raises(ValueError, match="image_size"):
        ScenesSegmentationSource(image_size=(32, 32, 3))
