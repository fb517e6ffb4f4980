"""Image-folder, class-folder and VOC segmentation sources, on tiny real folders."""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from adverse_vision.data.folders import (
    VOC_PALETTE,
    VOC_SEG_CLASSES,
    ClassFolderSource,
    ImageFolderSource,
    VOCSegmentationSource,
    read_voc_mask,
    write_voc_mask,
)
from adverse_vision.data.problems import DataError


def random_image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth_image(h, w, seed):
    """A smooth image that survives JPEG compression well."""
    base = np.random.default_rng(seed).integers(40, 200, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    return (base[None, None, :] + (2 * xx[..., None] + yy[..., None]) % 30).astype(np.uint8)


def write_garbage(path, data=b"this is not an image at all"):
    with open(path, "wb") as f:
        f.write(data)


# -- ImageFolderSource -------------------------------------------------------------


def test_image_folder_reads_sorted_images_and_ignores_other_files(tmp_path):
    png = random_image(12, 16, 0)
    Image.fromarray(png).save(tmp_path / "b.png")
    jpg = smooth_image(10, 8, 1)
    Image.fromarray(jpg).save(tmp_path / "a.JPG", quality=95)
    grey = np.arange(6 * 7, dtype=np.uint8).reshape(6, 7) * 5
    Image.fromarray(grey, mode="L").save(tmp_path / "c.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    os.mkdir(tmp_path / "sub.png")  # a folder, not an image file

    src = ImageFolderSource(str(tmp_path))
    assert len(src) == 3
    assert src.ids == ["a.JPG", "b.png", "c.bmp"]
    rec = src[1]
    assert set(rec) == {"image", "id", "valid"}
    assert rec["id"] == "b.png" and bool(rec["valid"])
    np.testing.assert_array_equal(rec["image"], png)
    a = src[0]["image"]
    assert a.shape == (10, 8, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - jpg).max() <= 8
    c = src[-1]["image"]
    assert c.shape == (6, 7, 3)
    for k in range(3):
        np.testing.assert_array_equal(c[..., k], grey)
    with pytest.raises(IndexError):
        src[3]
    assert src.problems.total == 0


def test_image_folder_extensions_filter(tmp_path):
    Image.fromarray(random_image(4, 4, 0)).save(tmp_path / "x.png")
    Image.fromarray(random_image(4, 4, 1)).save(tmp_path / "y.jpg")
    assert ImageFolderSource(str(tmp_path), extensions=("png",)).ids == ["x.png"]


def test_image_folder_corrupt_file_is_invalid_and_reported(tmp_path):
    Image.fromarray(random_image(8, 8, 0)).save(tmp_path / "good.png")
    write_garbage(tmp_path / "bad.png")
    src = ImageFolderSource(str(tmp_path))
    assert src.ids == ["bad.png", "good.png"]
    bad = src[0]
    assert not bool(bad["valid"]) and bad["id"] == "bad.png"
    assert bad["image"].dtype == np.uint8 and bad["image"].ndim == 3
    src[0]  # reported once
    assert src.problems.count("corrupt_image") == 1
    assert src.problems.files("corrupt_image") == [str(tmp_path / "bad.png")]
    assert bool(src[1]["valid"])


def test_image_folder_missing_and_empty(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolderSource(missing)
    os.mkdir(tmp_path / "empty")
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        ImageFolderSource(str(tmp_path / "empty"))


def test_image_folder_pickles(tmp_path):
    Image.fromarray(random_image(5, 6, 0)).save(tmp_path / "x.png")
    src = pickle.loads(pickle.dumps(ImageFolderSource(str(tmp_path))))
    assert src[0]["image"].shape == (5, 6, 3)


# -- ClassFolderSource -------------------------------------------------------------


def make_classes(root, spec):
    """spec: {class: number of images}; image k of class c is random_image(seed=...)."""
    images = {}
    for ci, (name, count) in enumerate(spec.items()):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(count):
            img = random_image(6 + k, 9, 10 * ci + k)
            Image.fromarray(img).save(os.path.join(root, name, f"img{k}.png"))
            images[f"{name}/img{k}.png"] = img
    return images


def test_class_folder_default_order(tmp_path):
    images = make_classes(str(tmp_path), {"zebra": 1, "ant": 2, "cat": 1})
    (tmp_path / "stray.png").write_bytes(b"")  # files at the top level are ignored
    src = ClassFolderSource(str(tmp_path))
    assert src.class_names == ("ant", "cat", "zebra")
    assert src.ids == ["ant/img0.png", "ant/img1.png", "cat/img0.png", "zebra/img0.png"]
    labels = [src[i]["label"] for i in range(len(src))]
    assert labels == [0, 0, 1, 2]
    rec = src[1]
    assert set(rec) == {"image", "label", "id", "valid"}
    np.testing.assert_array_equal(rec["image"], images["ant/img1.png"])


def test_class_folder_explicit_order_and_other_folders(tmp_path):
    make_classes(str(tmp_path), {"a": 1, "b": 1, "c": 2})
    src = ClassFolderSource(str(tmp_path), class_names=("c", "a"))
    assert src.ids == ["c/img0.png", "c/img1.png", "a/img0.png"]
    assert [src[i]["label"] for i in range(3)] == [0, 0, 1]
    assert src.problems.count("other_class") == 1  # folder b, silently ignored


def test_class_folder_errors(tmp_path):
    make_classes(str(tmp_path), {"a": 1})
    with pytest.raises(ValueError, match="'dog'"):
        ClassFolderSource(str(tmp_path), class_names=("a", "dog"))
    with pytest.raises(ValueError, match="duplicate"):
        ClassFolderSource(str(tmp_path), class_names=("a", "a"))
    with pytest.raises(FileNotFoundError, match="missing_root"):
        ClassFolderSource(str(tmp_path / "missing_root"))
    os.mkdir(tmp_path / "bare")
    with pytest.raises(ValueError, match="bare"):
        ClassFolderSource(str(tmp_path / "bare"))


def test_class_folder_corrupt_image_keeps_label(tmp_path):
    make_classes(str(tmp_path), {"a": 1, "b": 0})
    write_garbage(tmp_path / "b" / "broken.jpg")
    src = ClassFolderSource(str(tmp_path))
    rec = src[1]
    assert rec["id"] == "b/broken.jpg" and rec["label"] == 1 and not bool(rec["valid"])
    assert src.problems.files("corrupt_image") == [str(tmp_path / "b" / "broken.jpg")]


# -- VOC segmentation --------------------------------------------------------------


def test_palette_and_classes():
    assert len(VOC_SEG_CLASSES) == 21 and VOC_SEG_CLASSES[0] == "background"
    assert VOC_SEG_CLASSES[15] == "person"
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    assert VOC_PALETTE[0].tolist() == [0, 0, 0]
    assert VOC_PALETTE[1].tolist() == [128, 0, 0]
    assert VOC_PALETTE[15].tolist() == [192, 128, 128]
    assert VOC_PALETTE[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in VOC_PALETTE}) == 256


def test_write_and_read_mask_indices_exactly(tmp_path):
    mask = np.zeros((9, 11), np.uint8)
    mask[2:5, 3:8] = 15
    mask[0, :] = 255
    mask[8, 10] = 20
    path = str(tmp_path / "m.png")
    write_voc_mask(path, mask)
    with Image.open(path) as im:
        assert im.mode == "P"
        rgb = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(rgb, VOC_PALETTE[mask])  # the colours are VOC's
    np.testing.assert_array_equal(read_voc_mask(path), mask)  # the indices come back
    with pytest.raises(ValueError, match="m2.png"):
        write_voc_mask(str(tmp_path / "m2.png"), np.full((3, 3), 300))
    Image.fromarray(VOC_PALETTE[mask]).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png"):
        read_voc_mask(str(tmp_path / "rgb.png"))


def make_voc_seg(root, samples, image_set="train"):
    """samples: {id: (image or None, mask or None)}; writes the VOC2012 layout."""
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for stem, (image, mask) in samples.items():
        if image is not None:
            Image.fromarray(image).save(os.path.join(root, "JPEGImages", stem + ".jpg"), quality=95)
        if mask is not None:
            write_voc_mask(os.path.join(root, "SegmentationClass", stem + ".png"), mask)
    with open(os.path.join(root, "ImageSets", "Segmentation", image_set + ".txt"), "w") as f:
        f.write("\n".join(samples) + "\n")
    return str(root)


def seg_mask(h, w):
    mask = np.zeros((h, w), np.uint8)
    mask[1:4, 2:6] = 15
    mask[4:, :3] = 7
    mask[0, 0] = 255
    mask[-1, :] = 255
    return mask


def test_voc_seg_reads_images_and_palette_indices(tmp_path):
    img = smooth_image(12, 14, 0)
    mask = seg_mask(12, 14)
    root = make_voc_seg(str(tmp_path), {"2007_000001": (img, mask),
                                        "2007_000002": (smooth_image(8, 8, 1), np.zeros((8, 8), np.uint8))})
    src = VOCSegmentationSource(root, "train")
    assert len(src) == 2 and src.ids == ["2007_000001", "2007_000002"]
    rec = src[0]
    assert set(rec) == {"image", "mask", "id", "valid"}
    assert rec["image"].shape == (12, 14, 3) and rec["image"].dtype == np.uint8
    assert np.abs(rec["image"].astype(int) - img).max() <= 8
    assert rec["mask"].dtype == np.uint8
    np.testing.assert_array_equal(rec["mask"], mask)
    assert (rec["mask"] == 255).sum() == (mask == 255).sum()
    assert src.problems.total == 0
    assert src.class_names == VOC_SEG_CLASSES
    pickle.loads(pickle.dumps(src))[1]


def test_voc_seg_missing_and_mismatched_files_are_skipped(tmp_path):
    good = (smooth_image(10, 10, 0), seg_mask(10, 10))
    root = make_voc_seg(str(tmp_path), {
        "a": good,
        "no_mask": (smooth_image(10, 10, 1), None),
        "no_image": (None, seg_mask(10, 10)),
        "wrong_size": (smooth_image(10, 10, 2), seg_mask(10, 12)),
    })
    Image.fromarray(VOC_PALETTE[seg_mask(10, 10)]).save(tmp_path / "SegmentationClass" / "rgb.png")
    Image.fromarray(smooth_image(10, 10, 3)).save(tmp_path / "JPEGImages" / "rgb.jpg")
    with open(tmp_path / "ImageSets" / "Segmentation" / "train.txt", "a") as f:
        f.write("rgb\n")
    src = VOCSegmentationSource(root, "train")
    assert src.ids == ["a"]
    assert src.problems.count("missing_image") == 2
    assert src.problems.files("missing_image") == sorted([
        os.path.join(root, "SegmentationClass", "no_mask.png"),
        os.path.join(root, "JPEGImages", "no_image.jpg"),
    ])
    assert src.problems.files("bad_annotation") == sorted([
        os.path.join(root, "SegmentationClass", "rgb.png"),
        os.path.join(root, "SegmentationClass", "wrong_size.png"),
    ])


def test_voc_seg_policy_errors(tmp_path):
    root = make_voc_seg(str(tmp_path / "m"), {"a": (smooth_image(8, 8, 0), None)})
    with pytest.raises(DataError, match="a.png"):
        VOCSegmentationSource(root, "train", policy={"on_missing_image": "error"})
    with pytest.raises(DataError, match="no usable samples"):
        VOCSegmentationSource(root, "train")
    root = make_voc_seg(str(tmp_path / "s"), {"b": (smooth_image(8, 8, 0), seg_mask(6, 8))})
    with pytest.raises(DataError, match="b.png.*8x6"):
        VOCSegmentationSource(root, "train", policy={"on_bad_annotation": "error"})
    with pytest.raises(FileNotFoundError, match="val.txt"):
        VOCSegmentationSource(root, "val")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VOCSegmentationSource(str(tmp_path / "nowhere"))


def test_voc_seg_corrupt_image_gives_invalid_record(tmp_path):
    root = make_voc_seg(str(tmp_path), {"a": (smooth_image(16, 16, 0), seg_mask(16, 16)),
                                        "b": (random_image(48, 48, 1), seg_mask(48, 48))})
    path = os.path.join(root, "JPEGImages", "b.jpg")
    with open(path, "rb") as f:
        data = f.read()
    write_garbage(path, data[: len(data) * 2 // 3])  # header intact, data truncated
    src = VOCSegmentationSource(root, "train")
    assert len(src) == 2
    rec = src[1]
    assert not bool(rec["valid"]) and rec["id"] == "b"
    assert rec["mask"].shape == rec["image"].shape[:2]
    assert np.all(rec["mask"] == 255)
    assert src.problems.files("corrupt_image") == [path]
    assert bool(src[0]["valid"])


def test_voc_seg_list_with_a_byte_order_mark(tmp_path):
    root = make_voc_seg(tmp_path / "seg", {"a": (smooth_image(8, 8, 0), seg_mask(8, 8))})
    list_path = os.path.join(root, "ImageSets", "Segmentation", "train.txt")
    with open(list_path, "w", encoding="utf-8-sig") as f:
        f.write("a\n")
    src = VOCSegmentationSource(root, "train")
    assert src.ids == ["a"] and src.problems.total == 0
