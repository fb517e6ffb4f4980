"""VOC XML source and the shared bad-input reporting, on tiny real folders."""

import logging
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from adverse_vision.data.problems import (
    DataError,
    DataPolicy,
    DataProblems,
    decode_image,
    invalid_record,
    sanitize_boxes,
)
from adverse_vision.data.voc import VOC_CLASSES, VOCSource

SUBSET = ("person", "bicycle", "car", "motorbike", "bus")


def gradient_image(w, h, seed):
    """Smooth uint8 RGB image (survives JPEG well)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    img = base[None, None, :] + (xx[..., None] * 2 + yy[..., None]) % 30
    return img.astype(np.uint8)


def write_jpeg(path, w, h, seed=0):
    img = gradient_image(w, h, seed)
    Image.fromarray(img).save(path, format="JPEG", quality=95)
    return img


def voc_xml(filename, size, objects):
    """objects: list of (name, difficult or None, (xmin, ymin, xmax, ymax))."""
    parts = ["<annotation>", "<folder>VOC</folder>", f"<filename>{filename}</filename>"]
    if size is not None:
        w, h = size
        parts.append(f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>")
    for name, difficult, box in objects:
        parts.append("<object>")
        parts.append(f"<name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>")
        if difficult is not None:
            parts.append(f"<difficult>{difficult}</difficult>")
        parts.append(
            "<bndbox>" + "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
            + "</bndbox>"
        )
        parts.append("</object>")
    parts.append("</annotation>")
    return "\n".join(parts)


def make_voc(root, samples, image_set="trainval", images=True):
    """samples: {stem: (size (w, h) or None for no <size>, objects)}; returns root."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for k, (stem, (size, objects)) in enumerate(samples.items()):
        w, h = size if size is not None else (40, 30)
        with open(os.path.join(root, "Annotations", stem + ".xml"), "w") as f:
            f.write(voc_xml(stem + ".jpg", size, objects))
        if images:
            write_jpeg(os.path.join(root, "JPEGImages", stem + ".jpg"), w, h, seed=k)
    with open(os.path.join(root, "ImageSets", "Main", image_set + ".txt"), "w") as f:
        f.write("\n".join(samples) + "\n")
    return str(root)


BASIC = {
    "000001": ((40, 30), [("person", 0, (11, 6, 30, 25)), ("car", 1, (1, 1, 40, 30))]),
    "000002": ((50, 40), [(" Motorcycle ", None, (5, 5, 20, 35)), ("dog", 0, (2, 2, 10, 10)),
                           ("BUS", 0, (21.5, 3, 49, 39))]),
    "000003": ((32, 48), [("bicycle", 1, (3, 4, 17, 44))]),
}


def problem_logs(caplog, kind):
    return [r for r in caplog.records if r.name == "adverse_vision.data" and f"{kind}:" in r.getMessage()]


@pytest.fixture
def basic_voc(tmp_path):
    return make_voc(tmp_path / "voc", BASIC)


def test_parse_folder_continuous_coordinates(basic_voc):
    src = VOCSource(basic_voc, "trainval", SUBSET, class_map={"motorcycle": "motorbike"})
    assert len(src) == 3
    assert src.ids == ["000001", "000002", "000003"]

    r = src[0]
    assert r["image"].dtype == np.uint8 and r["image"].shape == (30, 40, 3)
    expected = gradient_image(40, 30, 0).astype(np.float32)
    assert np.abs(r["image"].astype(np.float32) - expected).mean() < 4.0  # JPEG round trip
    np.testing.assert_array_equal(r["boxes"], np.array([[10, 5, 30, 25], [0, 0, 40, 30]], np.float32))
    assert r["boxes"].dtype == np.float32
    np.testing.assert_array_equal(r["classes"], np.array([0, 2], np.int32))
    assert r["classes"].dtype == np.int32
    np.testing.assert_array_equal(r["difficult"], [False, True])
    assert r["id"] == "000001" and bool(r["valid"]) is True

    r = src[1]  # motorcycle -> motorbike (case and spaces ignored), dog dropped, float coords
    np.testing.assert_array_equal(r["classes"], [3, 4])
    np.testing.assert_allclose(r["boxes"], [[4, 4, 20, 35], [20.5, 2, 49, 39]])
    np.testing.assert_array_equal(r["difficult"], [False, False])  # missing <difficult> -> 0
    assert src.problems.count("other_class") == 1
    assert src.problems.total == 0

    r = src[2]
    np.testing.assert_array_equal(r["difficult"], [True])
    assert r["image"].shape == (48, 32, 3)
    # annotation() gives the same ground truth without decoding
    ann = src.annotation(2)
    np.testing.assert_array_equal(ann["boxes"], r["boxes"])
    assert (ann["width"], ann["height"]) == (32, 48)


def test_raw_coordinates_and_keep_difficult(basic_voc):
    src = VOCSource(basic_voc, "trainval", SUBSET, coordinates="raw", keep_difficult=False)
    r = src[0]
    np.testing.assert_array_equal(r["boxes"], [[11, 6, 30, 25]])  # difficult car dropped
    np.testing.assert_array_equal(r["classes"], [0])
    assert src.problems.count("difficult_dropped") == 2
    assert src.problems.count("unknown_class") == 1  # "motorcycle" without the class map
    # 000003 only had a difficult object: still kept (on_empty="keep") with no boxes
    assert len(src) == 3 and src[2]["boxes"].shape == (0, 4)


def _devkit_iou(a, b):
    """VOC devkit / TogetherNet utils_map IoU: raw XML integers with '+1'."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    ua = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - iw * ih
    return iw * ih / ua


def _continuous_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_continuous_boxes_reproduce_devkit_iou():
    raw = [(11, 6, 30, 25), (15, 10, 40, 30), (1, 1, 5, 5), (5, 5, 9, 9)]
    conv = [(a - 1, b - 1, c, d) for a, b, c, d in raw]
    for i in range(len(raw)):
        for j in range(len(raw)):
            assert _continuous_iou(conv[i], conv[j]) == pytest.approx(_devkit_iou(raw[i], raw[j]))


def test_box_outside_clipped_and_reported_once(tmp_path, caplog):
    root = make_voc(tmp_path / "voc", {
        "a": ((40, 30), [("person", 0, (0, -3, 45, 20)), ("car", 0, (2, 2, 10, 10))]),
    })
    caplog.set_level(logging.INFO, logger="adverse_vision.data")
    src = VOCSource(root, "trainval", SUBSET)
    for _ in range(3):
        r = src[0]
    np.testing.assert_array_equal(r["boxes"], [[0, 0, 40, 20], [1, 1, 10, 10]])
    logs = problem_logs(caplog, "box_outside")
    assert len(logs) == 1
    msg = logs[0].getMessage()
    assert os.path.join(root, "Annotations", "a.xml") in msg and "clipped" in msg and "40x30" in msg
    summary = src.problems.summary()
    assert summary["box_outside"] == 1 and summary["box_degenerate"] == 0 and summary["total"] == 1
    assert "box_outside=1" in src.problems.summary_text()


def test_bad_box_policies(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": ((40, 30), [("person", 0, (0, 1, 45, 20))])})
    skipped = VOCSource(root, "trainval", SUBSET, policy={"on_bad_box": "skip"})
    assert skipped[0]["boxes"].shape == (0, 4)
    assert skipped.problems.count("box_outside") == 1
    assert skipped.problems.count("empty_annotation") == 1
    with pytest.raises(DataError, match=r"a\.xml.*outside the 40x30 image"):
        VOCSource(root, "trainval", SUBSET, policy={"on_bad_box": "error"})


def test_zero_area_box_dropped(tmp_path, caplog):
    root = make_voc(tmp_path / "voc", {
        "a": ((40, 30), [("person", 0, (11, 5, 10, 20)), ("car", 0, (5, 5, 9, 9)),
                         ("bus", 0, (50, 5, 60, 9))]),  # last one entirely outside
    })
    caplog.set_level(logging.WARNING, logger="adverse_vision.data")
    src = VOCSource(root, "trainval", SUBSET)
    np.testing.assert_array_equal(src[0]["boxes"], [[4, 4, 9, 9]])
    np.testing.assert_array_equal(src[0]["classes"], [2])
    assert src.problems.count("box_degenerate") == 2
    assert src.problems.count("box_outside") == 1
    assert len(problem_logs(caplog, "box_degenerate")) == 1
    with pytest.raises(DataError, match="zero or negative area"):
        VOCSource(make_voc(tmp_path / "v2", {"b": ((40, 30), [("person", 0, (11, 5, 10, 20))])}),
                  "trainval", SUBSET, policy=DataPolicy(on_bad_box="error"))


def test_unknown_class_skipped_or_error(tmp_path, caplog):
    root = make_voc(tmp_path / "voc", {
        "a": ((40, 30), [("unicorn", 0, (2, 2, 20, 20)), ("person", 0, (3, 3, 9, 9))]),
        "b": ((40, 30), [("dog", 0, (2, 2, 20, 20)), ("person", 0, (3, 3, 9, 9))]),
    })
    caplog.set_level(logging.WARNING, logger="adverse_vision.data")
    src = VOCSource(root, "trainval", SUBSET)
    np.testing.assert_array_equal(src[0]["classes"], [0])
    assert src.problems.count("unknown_class") == 1
    assert src.problems.count("other_class") == 1  # dog: a VOC class outside the subset
    logs = [r.getMessage() for r in caplog.records]
    assert any("unknown_class" in m and "unicorn" in m and "a.xml" in m for m in logs)
    assert not any("other_class" in m for m in logs)  # silent, only counted

    with pytest.raises(DataError) as e:
        VOCSource(root, "trainval", SUBSET, policy={"on_unknown_class": "error"})
    assert os.path.join(root, "Annotations", "a.xml") in str(e.value) and "unicorn" in str(e.value)

    # ignore_other_classes=False reports VOC classes outside the subset as unknown too
    strict = VOCSource(root, "trainval", SUBSET, ignore_other_classes=False)
    assert strict.problems.count("unknown_class") == 2
    # a class map entry to None drops on purpose
    mapped = VOCSource(root, "trainval", SUBSET, class_map={"unicorn": None})
    assert mapped.problems.count("unknown_class") == 0 and mapped.problems.count("other_class") == 2


def test_empty_annotation_keep_or_skip(tmp_path, caplog):
    samples = {
        "a": ((40, 30), [("person", 0, (2, 2, 20, 20))]),
        "b": ((40, 30), [("dog", 0, (2, 2, 20, 20))]),  # only another VOC class
        "c": ((40, 30), []),  # no objects at all
    }
    root = make_voc(tmp_path / "voc", samples)
    caplog.set_level(logging.WARNING, logger="adverse_vision.data")
    kept = VOCSource(root, "trainval", SUBSET)
    assert kept.ids == ["a", "b", "c"]
    assert kept[1]["boxes"].shape == (0, 4) and kept[1]["classes"].shape == (0,)
    assert kept.problems.count("empty_annotation") == 2
    empty_logs = problem_logs(caplog, "empty_annotation")
    assert len(empty_logs) == 1 and "c.xml" in empty_logs[0].getMessage()

    skipped = VOCSource(root, "trainval", SUBSET, policy={"on_empty": "skip"})
    assert skipped.ids == ["a"]
    assert skipped.problems.count("empty_annotation") == 2


def test_missing_image_skip_or_error(tmp_path):
    root = make_voc(tmp_path / "voc", dict(list(BASIC.items())[:2]))
    os.remove(os.path.join(root, "JPEGImages", "000002.jpg"))
    src = VOCSource(root, "trainval", SUBSET)
    assert src.ids == ["000001"]
    assert src.problems.count("missing_image") == 1
    assert src.problems.files("missing_image") == [os.path.join(root, "JPEGImages", "000002.jpg")]
    with pytest.raises(DataError, match=r"000002\.jpg: image file not found"):
        VOCSource(root, "trainval", SUBSET, policy={"on_missing_image": "error"})


def test_corrupt_jpeg_gives_invalid_record(tmp_path, caplog):
    root = make_voc(tmp_path / "voc", dict(list(BASIC.items())[:2]))
    bad = os.path.join(root, "JPEGImages", "000002.jpg")
    with open(bad, "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    caplog.set_level(logging.WARNING, logger="adverse_vision.data")
    src = VOCSource(root, "trainval", SUBSET)
    assert len(src) == 2  # size comes from the XML: corrupt data only shows when decoding
    for _ in range(2):
        r = src[1]
    assert bool(r["valid"]) is False and r["id"] == "000002"
    assert r["image"].shape == (32, 32, 3) and r["image"].dtype == np.uint8 and not r["image"].any()
    assert r["boxes"].shape == (0, 4) and r["classes"].shape == (0,) and r["difficult"].shape == (0,)
    assert bool(src[0]["valid"]) is True
    logs = problem_logs(caplog, "corrupt_image")
    assert len(logs) == 1 and bad in logs[0].getMessage()
    assert src.problems.count("corrupt_image") == 1  # counted and logged once per file


def test_decode_image_and_invalid_record(tmp_path, caplog):
    good = tmp_path / "g.png"
    img = gradient_image(7, 5, 1)
    Image.fromarray(img).convert("L").save(good)
    out = decode_image(str(good))
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all()  # grey expanded to RGB
    caplog.set_level(logging.WARNING, logger="adverse_vision.data")
    assert decode_image(str(tmp_path / "nope.jpg")) is None
    assert decode_image(str(tmp_path / "nope.jpg")) is None
    assert len(problem_logs(caplog, "corrupt_image")) == 1
    rec = invalid_record("x", ["hazy"])
    assert rec["hazy"].shape == (32, 32, 3) and not bool(rec["valid"])


def test_missing_root_and_image_set(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        VOCSource(str(tmp_path / "nowhere"), "trainval")
    root = make_voc(tmp_path / "voc", BASIC)
    with pytest.raises(DataError) as e:
        VOCSource(root, "test")
    assert os.path.join(root, "ImageSets", "Main", "test.txt") in str(e.value)


def test_bad_xml_and_missing_annotation(tmp_path):
    root = make_voc(tmp_path / "voc", BASIC)
    with open(os.path.join(root, "Annotations", "000002.xml"), "w") as f:
        f.write("<annotation><object><name>car</name>")  # truncated
    os.remove(os.path.join(root, "Annotations", "000003.xml"))
    src = VOCSource(root, "trainval", SUBSET)
    assert src.ids == ["000001"]
    assert src.problems.count("bad_annotation") == 2
    with pytest.raises(DataError, match=r"000002\.xml: cannot parse XML"):
        VOCSource(root, "trainval", SUBSET, policy={"on_bad_annotation": "error"})


def test_bad_object_fields(tmp_path):
    root = make_voc(tmp_path / "voc", {
        "a": ((40, 30), [("person", 0, ("x", 2, 20, 20)), ("car", "maybe", (2, 2, 9, 9)),
                         ("bus", 0, (3, 3, 9, 9))]),
    })
    src = VOCSource(root, "trainval", SUBSET)
    np.testing.assert_array_equal(src[0]["classes"], [4])
    assert src.problems.count("bad_annotation") == 2


def test_size_read_from_image_when_missing(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": (None, [("person", 0, (2, 2, 50, 20))])})
    src = VOCSource(root, "trainval", SUBSET)  # image is 40x30: box clipped to its width
    assert src.sizes == [(40, 30)]
    np.testing.assert_array_equal(src[0]["boxes"], [[1, 1, 40, 20]])
    assert src.problems.count("box_outside") == 1


def test_several_image_sets_degraded_twin_and_pickle(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    make_voc(devkit / "VOC2007", {"000001": BASIC["000001"]})
    make_voc(devkit / "VOC2012", {"2008_000001": BASIC["000003"]})
    fog = devkit / "VOC2007" / "VOC2007-FOG"
    fog.mkdir()
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(fog / "000001.jpg", quality=95)
    src = VOCSource(str(devkit), ["VOC2007/trainval", "VOC2012/trainval"], SUBSET)
    assert src.ids == ["VOC2007/000001", "VOC2012/2008_000001"]
    assert src[1]["image"].shape == (48, 32, 3)

    twin = VOCSource(str(devkit), "VOC2007/trainval", SUBSET, degraded_dir="VOC2007-FOG")
    r = twin[0]
    assert r["hazy"].shape == r["image"].shape and abs(float(r["hazy"].mean()) - 200) < 2
    assert abs(float(r["image"].mean()) - 200) > 20  # clean image is the other file

    clone = pickle.loads(pickle.dumps(twin))
    np.testing.assert_array_equal(clone[0]["boxes"], r["boxes"])
    np.testing.assert_array_equal(clone[0]["hazy"], r["hazy"])


def test_all_voc_classes_default(basic_voc):
    src = VOCSource(basic_voc)
    assert src.class_names == VOC_CLASSES
    # "motorcycle" is not a VOC name: unknown without a class map
    assert src.problems.count("unknown_class") == 1
    np.testing.assert_array_equal(src[1]["classes"], [VOC_CLASSES.index("dog"), VOC_CLASSES.index("bus")])


def test_policy_from_config():
    assert DataPolicy.from_config(None) == DataPolicy()
    p = DataPolicy.from_config({"on_bad_box": "skip", "image_size": 640})
    assert p.on_bad_box == "skip" and p.on_empty == "keep"
    with pytest.raises(DataError, match="on_bad_box='crop'"):
        DataPolicy.from_config({"on_bad_box": "crop"})
    with pytest.raises(DataError, match="on_bad_boxes"):
        DataPolicy.from_config({"on_bad_boxes": "skip"})
    import ml_collections

    cfg = ml_collections.ConfigDict({"on_empty": "skip", "on_missing_image": "error"})
    p = DataPolicy.from_config(cfg)
    assert (p.on_empty, p.on_missing_image) == ("skip", "error")


def test_sanitize_boxes_unit(caplog):
    probs = DataProblems("unit")
    boxes = np.array([[-2, 1, 5, 5], [1, 1, 1, 4], [np.nan, 0, 2, 2], [0, 0, 10, 8]], np.float32)
    b, c, d = sanitize_boxes(boxes, [0, 1, 2, 3], [False, True, False, True], 10, 8,
                             DataPolicy(), probs, "f.xml")
    np.testing.assert_array_equal(b, [[0, 1, 5, 5], [0, 0, 10, 8]])
    np.testing.assert_array_equal(c, [0, 3])
    np.testing.assert_array_equal(d, [False, True])
    assert probs.summary()["box_degenerate"] == 2 and probs.summary()["box_outside"] == 1
    with pytest.raises(ValueError, match="differ in length"):
        sanitize_boxes(boxes, [0], [False], 10, 8, DataPolicy(), probs, "f.xml")
    with pytest.raises(ValueError, match="unknown data problem kind"):
        probs.add("oops", "f", "r", "a")


def test_image_set_with_a_byte_order_mark(tmp_path):
    root = make_voc(tmp_path / "voc", BASIC)
    list_path = os.path.join(root, "ImageSets", "Main", "trainval.txt")
    with open(list_path, "rb") as f:
        text = f.read()
    with open(list_path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + text)  # as Windows editors save UTF-8
    src = VOCSource(root, "trainval", SUBSET, class_map={"motorcycle": "motorbike"})
    assert src.ids == ["000001", "000002", "000003"]
    assert src.problems.total == 0
