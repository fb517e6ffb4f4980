"""Infrared-visible pair sources (M3FD, MFNet, paired folders), on tiny real folders."""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from adverse_vision.data import pipeline as pl
from adverse_vision.data.fusion_pairs import (
    M3FD_CLASSES,
    MFNET_CLASSES,
    FusionFolderSource,
    M3FDSource,
    MFNetSource,
    read_thermal,
)
from adverse_vision.data.problems import INVALID_IMAGE_SIZE, DataError


def rgb_image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def gray_image(h, w, seed):
    return np.random.default_rng(seed + 100).integers(0, 256, (h, w), dtype=np.uint8)


def save(path, array, fmt="PNG"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def truncate(path):
    """Keeps the PNG header but cuts the pixel data: opens, fails to decode."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])


def write_garbage(path):
    with open(path, "wb") as f:
        f.write(b"definitely not an image")


# -- M3FD ---------------------------------------------------------------------------


def m3fd_xml(stem, size, objects):
    """objects: (name, (xmin, ymin, xmax, ymax)[, difficult])."""
    w, h = size
    parts = [f"<annotation><filename>{stem}.png</filename>",
             f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"]
    for obj in objects:
        name, box = obj[0], obj[1]
        parts.append(f"<object><name>{name}</name>")
        if len(obj) > 2:
            parts.append(f"<difficult>{obj[2]}</difficult>")
        parts.append("<bndbox>" + "".join(
            f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box)) + "</bndbox>")
        parts.append("</object>")
    parts.append("</annotation>")
    return "".join(parts)


def make_m3fd(root, samples, splits=None, masks=False, gray_vis=()):
    """samples: {stem: ((w, h), objects)}; splits: {name: [stems]} (default: train = all).

    Returns {stem: (vis, ir, mask)} as written.
    """
    written = {}
    for k, (stem, ((w, h), objects)) in enumerate(samples.items()):
        vis = gray_image(h, w, k + 50) if stem in gray_vis else rgb_image(h, w, k)
        ir = gray_image(h, w, k)
        mask = gray_image(h, w, k + 7) if masks else None
        save(os.path.join(root, "Vis", stem + ".png"), vis)
        save(os.path.join(root, "Ir", stem + ".png"), ir)
        if masks:
            save(os.path.join(root, "Mask", stem + ".png"), mask)
        os.makedirs(os.path.join(root, "Annotation"), exist_ok=True)
        with open(os.path.join(root, "Annotation", stem + ".xml"), "w") as f:
            f.write(m3fd_xml(stem, (w, h), objects))
        written[stem] = (vis, ir, mask)
    os.makedirs(os.path.join(root, "Main"), exist_ok=True)
    for name, stems in (splits or {"train": list(samples)}).items():
        with open(os.path.join(root, "Main", name + ".txt"), "w") as f:
            f.write("\n".join(stems) + "\n")
    return written


M3FD_SAMPLES = {
    "00001": ((40, 30), [("People", (1, 1, 10, 20)), ("Car", (11, 5, 40, 30), 1)]),
    "00002": ((32, 24), [("Lamp", (3, 4, 8, 12)), ("Truck", (10, 2, 30, 20))]),
    "00003": ((36, 28), [("Bus", (2, 2, 30, 26)), ("Motorcycle", (5, 6, 9, 9))]),
}


def test_m3fd_records(tmp_path):
    root = str(tmp_path)
    written = make_m3fd(root, M3FD_SAMPLES, masks=True, gray_vis=("00003",))
    src = M3FDSource(root, "train")
    assert len(src) == 3 and src.ids == ["00001", "00002", "00003"]
    assert src.problems.total == 0
    rec = src[0]
    vis, ir, mask = written["00001"]
    assert set(rec) == {"image", "boxes", "classes", "difficult", "id", "valid", "thermal",
                        "saliency"}
    np.testing.assert_array_equal(rec["image"], vis)
    assert rec["thermal"].dtype == np.uint8 and rec["thermal"].shape == (30, 40, 1)
    np.testing.assert_array_equal(rec["thermal"][..., 0], ir)
    assert rec["saliency"].dtype == np.float32 and rec["saliency"].shape == (30, 40, 1)
    np.testing.assert_allclose(rec["saliency"][..., 0], mask / 255.0, atol=1e-7)
    # VOC convention: x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax.
    np.testing.assert_array_equal(rec["boxes"], [[0, 0, 10, 20], [10, 4, 40, 30]])
    np.testing.assert_array_equal(rec["classes"], [0, 1])  # People, Car
    np.testing.assert_array_equal(rec["difficult"], [False, True])
    assert rec["id"] == "00001" and rec["valid"]
    np.testing.assert_array_equal(src[1]["classes"], [4, 5])  # Lamp, Truck
    np.testing.assert_array_equal(src[2]["classes"], [2, 3])  # Bus, Motorcycle
    # A grayscale visible image is replicated to three channels.
    gray = src[2]["image"]
    assert gray.shape == (28, 36, 3)
    for c in range(3):
        np.testing.assert_array_equal(gray[..., c], written["00003"][0])
    assert M3FD_CLASSES == ("People", "Car", "Bus", "Motorcycle", "Lamp", "Truck")
    # Sources cross process boundaries (grain workers).
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[1]["thermal"], src[1]["thermal"])


def test_m3fd_without_masks_subset_and_splits(tmp_path):
    root = str(tmp_path)
    make_m3fd(root, M3FD_SAMPLES, splits={"train": ["00001", "00003"], "test": ["00002"]})
    src = M3FDSource(root, "train", class_names=("car", "people"))
    assert src.ids == ["00001", "00003"] and "saliency" not in src[0]
    np.testing.assert_array_equal(src[0]["classes"], [1, 0])
    # Bus and Motorcycle are M3FD classes outside the subset: dropped silently.
    assert len(src[1]["boxes"]) == 0 and src.problems.count("other_class") == 2
    assert src.problems.total == 1  # 00003 left without objects (kept as a negative)
    test = M3FDSource(root, "test")
    assert test.ids == ["00002"]
    listed = M3FDSource(root, os.path.join(root, "Main", "test.txt"))
    assert listed.ids == ["00002"]
    assert repr(listed).startswith(f"M3FDSource(root={root!r}, split=")
    assert "1 images" in repr(listed)


def test_m3fd_missing_paths_raise(tmp_path):
    root = str(tmp_path)
    with pytest.raises(ValueError, match="nowhere: M3FD dataset root does not exist"):
        M3FDSource(os.path.join(root, "nowhere"), "train")
    make_m3fd(root, M3FD_SAMPLES)
    with pytest.raises(DataError, match=r"Main[/\\]val\.txt: split file not found"):
        M3FDSource(root, "val")
    os.rename(os.path.join(root, "Ir"), os.path.join(root, "IR_moved"))
    with pytest.raises(DataError, match=r"Ir: infrared image folder does not exist"):
        M3FDSource(root, "train")


def test_m3fd_bad_samples(tmp_path):
    root = str(tmp_path)
    samples = dict(M3FD_SAMPLES)
    samples["00004"] = ((20, 20), [("Car", (1, 1, 10, 10))])
    samples["00005"] = ((20, 20), [("Car", (5, 5, 25, 15))])  # box outside the image
    samples["00006"] = ((20, 20), [("Car", (1, 1, 10, 10))])
    make_m3fd(root, samples, masks=True)
    os.remove(os.path.join(root, "Ir", "00002.png"))  # missing infrared image
    save(os.path.join(root, "Ir", "00003.png"), gray_image(10, 36, 0))  # IR of another size
    save(os.path.join(root, "Mask", "00004.png"), gray_image(20, 19, 0))  # mask of another size
    write_garbage(os.path.join(root, "Ir", "00006.png"))  # unreadable header
    src = M3FDSource(root, "train")
    assert src.ids == ["00001", "00005"]
    # Every per-sample list stays aligned after the skips.
    for values in (src.image_paths, src.sizes, src.annotation_paths, src.ir_paths,
                   src.saliency_paths):
        assert len(values) == 2
    assert src.ir_paths[1].endswith(os.path.join("Ir", "00005.png"))
    p = src.problems
    assert p.files("missing_image") == [os.path.join(root, "Ir", "00002.png")]
    assert p.files("bad_annotation") == [os.path.join(root, "Ir", "00003.png"),
                                         os.path.join(root, "Mask", "00004.png")]
    assert p.files("corrupt_image") == [os.path.join(root, "Ir", "00006.png")]
    assert any("infrared image is 36x10 but the visible image" in r.reason for r in p.records)
    # Box outside the image: clipped by default.
    assert p.count("box_outside") == 1
    np.testing.assert_array_equal(src[1]["boxes"], [[4, 4, 20, 15]])
    # The policy turns each of them into an error naming the file.
    with pytest.raises(DataError, match=r"00002\.png: infrared image not found"):
        M3FDSource(root, "train", policy={"on_missing_image": "error"})
    with pytest.raises(DataError, match=r"Ir[/\\]00003\.png: infrared image is 36x10"):
        M3FDSource(root, "train", policy={"on_bad_annotation": "error"})
    with pytest.raises(DataError, match=r"00005\.xml: 1 box\(es\) extend outside the 20x20"):
        M3FDSource(root, "train", policy={"on_bad_box": "error"})
    # A missing visible image is reported by the VOC parser.
    os.remove(os.path.join(root, "Vis", "00001.png"))
    again = M3FDSource(root, "train")
    assert again.ids == ["00005"]
    assert os.path.join(root, "Vis", "00001.jpg") in again.problems.files("missing_image")


def test_m3fd_undecodable_files_give_invalid_records(tmp_path):
    root = str(tmp_path)
    make_m3fd(root, M3FD_SAMPLES, masks=True)
    truncate(os.path.join(root, "Ir", "00001.png"))
    truncate(os.path.join(root, "Mask", "00002.png"))
    truncate(os.path.join(root, "Vis", "00003.png"))
    src = M3FDSource(root, "train")
    assert len(src) == 3  # headers are fine: found when the samples are read
    s = INVALID_IMAGE_SIZE
    for i in range(3):
        rec = src[i]
        assert not rec["valid"] and rec["id"] == src.ids[i]
        assert rec["image"].shape == (s, s, 3) and rec["thermal"].shape == (s, s, 1)
        assert rec["saliency"].shape == (s, s, 1) and len(rec["boxes"]) == 0
    assert sorted(src.problems.files("corrupt_image")) == sorted([
        os.path.join(root, "Ir", "00001.png"), os.path.join(root, "Mask", "00002.png"),
        os.path.join(root, "Vis", "00003.png"),
    ])
    assert read_thermal(os.path.join(root, "Ir", "00001.png")) is None


def test_m3fd_through_the_pipeline_with_saliency(tmp_path):
    for masks in (True, False):
        root = str(tmp_path / f"masks{masks}")
        make_m3fd(root, M3FD_SAMPLES, masks=masks)
        src = M3FDSource(root, "train")
        for train in (False, True):
            batch = next(iter(pl.make_pipeline(
                src, batch_size=2, image_size=48, max_boxes=4, train=train, seed=0,
                saliency=True, process_index=0, process_count=1)))
            assert batch["image"].shape == (2, 48, 48, 3)
            assert batch["thermal"].shape == (2, 48, 48, 1)
            assert batch["saliency"].shape == (2, 48, 48, 1)
            assert batch["saliency"].dtype == np.float32
            assert batch["boxes"].shape == (2, 4, 4) and batch["box_mask"].any()
            assert 0 <= batch["saliency"].min() and batch["saliency"].max() <= 1
            assert batch["saliency"].max() > 0.5 and batch["valid"].all()
        # Eval, sample 0 (40 x 30 -> 48 x 36, 6 rows of padding above): boxes scaled.
        batch = next(iter(pl.make_pipeline(
            src, batch_size=2, image_size=48, max_boxes=4, train=False, saliency=True,
            process_index=0, process_count=1)))
        np.testing.assert_allclose(batch["boxes"][0, :2],
                                   np.array([[0, 0, 10, 20], [10, 4, 40, 30]]) * 1.2 + [0, 6, 0, 6],
                                   atol=1e-4)
        np.testing.assert_array_equal(batch["saliency"][0, :6], 0.0)


# -- MFNet --------------------------------------------------------------------------


def make_mfnet(root, samples, splits=None):
    """samples: {stem: (h, w)}; returns {stem: (rgba, labels)}."""
    written = {}
    for k, (stem, (h, w)) in enumerate(samples.items()):
        rgba = np.concatenate([rgb_image(h, w, k), gray_image(h, w, k)[..., None]], axis=-1)
        labels = np.random.default_rng(k).integers(0, 9, (h, w)).astype(np.uint8)
        save(os.path.join(root, "images", stem + ".png"), rgba)
        save(os.path.join(root, "labels", stem + ".png"), labels)
        written[stem] = (rgba, labels)
    for name, stems in (splits or {"train": list(samples)}).items():
        with open(os.path.join(root, name + ".txt"), "w") as f:
            f.write("\n".join(stems) + "\n")
    return written


def test_mfnet_records_and_splits(tmp_path):
    root = str(tmp_path)
    samples = {"00001D": (12, 16), "00002N": (12, 16), "00003D": (10, 14)}
    written = make_mfnet(root, samples, {"train": ["00001D", "00003D"], "test": ["00002N"]})
    src = MFNetSource(root, "train")
    assert src.ids == ["00001D", "00003D"] and len(src) == 2
    rec = src[1]
    rgba, labels = written["00003D"]
    assert set(rec) == {"image", "thermal", "mask", "id", "valid"}
    np.testing.assert_array_equal(rec["image"], rgba[..., :3])
    np.testing.assert_array_equal(rec["thermal"], rgba[..., 3:])
    np.testing.assert_array_equal(rec["mask"], labels)
    assert rec["mask"].dtype == np.uint8 and rec["thermal"].shape == (10, 14, 1)
    assert rec["id"] == "00003D" and rec["valid"]
    assert src[-1]["id"] == "00003D"
    assert MFNetSource(root, "test").ids == ["00002N"]
    assert len(MFNET_CLASSES) == 9 and MFNET_CLASSES[2] == "person"
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[0]["mask"], src[0]["mask"])
    # A palette label gives its indices.
    pal = Image.fromarray(labels, mode="P")
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    pal.save(os.path.join(root, "labels", "00003D.png"))
    np.testing.assert_array_equal(MFNetSource(root, "train")[1]["mask"], labels)


def test_mfnet_bad_input(tmp_path):
    root = str(tmp_path)
    with pytest.raises(ValueError, match="MFNet dataset root does not exist"):
        MFNetSource(os.path.join(root, "missing"))
    samples = {f"{i:05d}": (12, 16) for i in range(1, 8)}
    make_mfnet(root, samples)
    with pytest.raises(DataError, match=r"val\.txt: split file not found"):
        MFNetSource(root, "val")
    os.remove(os.path.join(root, "images", "00001.png"))  # missing image
    os.remove(os.path.join(root, "labels", "00002.png"))  # missing label
    save(os.path.join(root, "labels", "00003.png"), np.zeros((12, 15), np.uint8))  # other size
    save(os.path.join(root, "images", "00004.png"), rgb_image(12, 16, 0))  # no thermal channel
    bad_values = np.zeros((12, 16), np.uint8)
    bad_values[3, 4] = 12
    save(os.path.join(root, "labels", "00005.png"), bad_values)  # not a class id
    truncate(os.path.join(root, "images", "00006.png"))  # decodes badly
    src = MFNetSource(root, "train")
    assert src.ids == ["00005", "00006", "00007"]
    p = src.problems
    assert p.files("missing_image") == [os.path.join(root, "images", "00001.png"),
                                        os.path.join(root, "labels", "00002.png")]
    assert p.files("bad_annotation") == [os.path.join(root, "labels", "00003.png")]
    assert p.files("corrupt_image") == [os.path.join(root, "images", "00004.png")]
    s = INVALID_IMAGE_SIZE
    for i in (0, 1):
        rec = src[i]
        assert not rec["valid"] and rec["image"].shape == (s, s, 3)
        assert rec["thermal"].shape == (s, s, 1) and np.all(rec["mask"] == 255)
    assert os.path.join(root, "labels", "00005.png") in p.files("bad_annotation")
    assert os.path.join(root, "images", "00006.png") in p.files("corrupt_image")
    assert any("label values [12]" in r.reason for r in p.records)
    assert src[2]["valid"]
    with pytest.raises(DataError, match=r"images[/\\]00001\.png: RGB-thermal image not found"):
        MFNetSource(root, "train", policy={"on_missing_image": "error"})
    with pytest.raises(DataError, match=r"00003\.png: label is 15x12 but its image"):
        MFNetSource(root, "train", policy={"on_bad_annotation": "error"})


# -- paired folders ------------------------------------------------------------------


def test_fusion_folders_pair_by_stem(tmp_path):
    root = str(tmp_path)
    vis = {"b": rgb_image(10, 12, 1), "a": gray_image(8, 6, 2), "c": rgb_image(9, 9, 3)}
    ir = {"b": gray_image(10, 12, 1), "a": rgb_image(8, 6, 2), "c": gray_image(9, 9, 3)}
    for stem, image in vis.items():
        save(os.path.join(root, "vi", stem + ".png"), image)
    save(os.path.join(root, "ir", "a.bmp"), ir["a"], "BMP")  # another extension
    save(os.path.join(root, "ir", "b.png"), ir["b"])
    save(os.path.join(root, "ir", "c.tif"), ir["c"], "TIFF")
    save(os.path.join(root, "ir", "d.png"), gray_image(4, 4, 0))  # no visible partner
    with open(os.path.join(root, "ir", "notes.txt"), "w") as f:
        f.write("not an image")
    src = FusionFolderSource(root)
    assert src.ids == ["a", "b", "c"]
    rec = src[1]
    assert set(rec) == {"image", "thermal", "id", "valid"}
    np.testing.assert_array_equal(rec["image"], vis["b"])
    np.testing.assert_array_equal(rec["thermal"][..., 0], ir["b"])
    # Grayscale visible -> 3 channels; colour infrared -> Pillow "L" luma.
    a = src[0]
    assert a["image"].shape == (8, 6, 3) and np.all(a["image"] == vis["a"][..., None])
    expected_l = np.asarray(Image.fromarray(ir["a"]).convert("L"))
    np.testing.assert_array_equal(a["thermal"][..., 0], expected_l)
    np.testing.assert_array_equal(src[2]["thermal"][..., 0], ir["c"])
    assert src.problems.files("missing_image") == [os.path.join(root, "vi", "d.*")]
    with pytest.raises(DataError, match=r"vi[/\\]d\.\*: no visible partner"):
        FusionFolderSource(root, policy={"on_missing_image": "error"})
    # Only some extensions.
    assert FusionFolderSource(root, extensions=("png",), policy=None).ids == ["b"]
    clone = pickle.loads(pickle.dumps(src))
    assert clone[2]["id"] == "c"


def test_fusion_folders_names_and_bad_input(tmp_path):
    root = str(tmp_path)
    for stem, size in (("FLIR_1", (8, 10)), ("FLIR_2", (8, 10)), ("FLIR_3", (8, 10))):
        save(os.path.join(root, "crop_HR_visible", stem + ".jpg"), rgb_image(*size, 0), "JPEG")
        save(os.path.join(root, "cropinfrared", stem + ".jpg"), gray_image(*size, 0), "JPEG")
    with pytest.raises(DataError, match=r"ir: infrared folder does not exist.*crop_HR_visible"):
        FusionFolderSource(root)
    src = FusionFolderSource(root, ir_dir="cropinfrared", vis_dir="crop_HR_visible")
    assert src.ids == ["FLIR_1", "FLIR_2", "FLIR_3"]
    assert src[0]["image"].shape == (8, 10, 3) and src[0]["thermal"].shape == (8, 10, 1)
    # Size mismatch, unreadable and undecodable files.
    ir_dir = os.path.join(root, "cropinfrared")
    save(os.path.join(ir_dir, "FLIR_2.jpg"), gray_image(8, 11, 0), "JPEG")
    save(os.path.join(ir_dir, "FLIR_3.png"), (gray_image(8, 10, 0).astype(np.uint16) * 256))
    os.remove(os.path.join(ir_dir, "FLIR_3.jpg"))
    src = FusionFolderSource(root, ir_dir="cropinfrared", vis_dir="crop_HR_visible")
    assert src.ids == ["FLIR_1", "FLIR_3"]
    assert src.problems.files("bad_annotation") == [os.path.join(ir_dir, "FLIR_2.jpg")]
    with pytest.raises(DataError, match=r"FLIR_2\.jpg: infrared image is 11x8 but the visible"):
        FusionFolderSource(root, ir_dir="cropinfrared", vis_dir="crop_HR_visible",
                           policy={"on_bad_annotation": "error"})
    # A 16-bit infrared image is scaled to 8 bits (its high byte), not clipped to white.
    rec = src[1]
    assert rec["valid"]
    np.testing.assert_array_equal(rec["thermal"], gray_image(8, 10, 0)[..., None])
    assert src.problems.count("corrupt_image") == 0
    # Two files with one stem in a folder are ambiguous.
    save(os.path.join(ir_dir, "FLIR_1.png"), gray_image(8, 10, 0))
    with pytest.raises(DataError, match=r"two images with the stem 'FLIR_1'"):
        FusionFolderSource(root, ir_dir="cropinfrared", vis_dir="crop_HR_visible")
    with pytest.raises(ValueError, match="fusion dataset root does not exist"):
        FusionFolderSource(os.path.join(root, "nope"))


def test_split_lists_with_a_byte_order_mark(tmp_path):
    make_m3fd(tmp_path / "m3fd", M3FD_SAMPLES)
    with open(tmp_path / "m3fd" / "Main" / "train.txt", "w", encoding="utf-8-sig") as f:
        f.write("00001\n00002\n")
    src = M3FDSource(str(tmp_path / "m3fd"), "train")
    assert src.ids == ["00001", "00002"] and src.problems.total == 0
    make_mfnet(tmp_path / "mfnet", {"g01": (8, 8)})
    with open(tmp_path / "mfnet" / "train.txt", "w", encoding="utf-8-sig") as f:
        f.write("g01\n")
    src = MFNetSource(str(tmp_path / "mfnet"), "train")
    assert src.ids == ["g01"] and src.problems.total == 0
