"""COCO JSON source on a tiny real JSON file and image folder."""

import json
import logging
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from adverse_vision.data.coco import COCOSource
from adverse_vision.data.problems import DataError

CATEGORIES = [  # sparse ids, listed out of order
    {"id": 7, "name": "Car", "supercategory": "vehicle"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "motorcycle", "supercategory": "vehicle"},
    {"id": 9, "name": "dog", "supercategory": "animal"},
]


def write_image(path, w, h, value):
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path, format="JPEG", quality=95)


def ann(aid, image_id, cat, bbox, iscrowd=0):
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": bbox,
            "iscrowd": iscrowd, "area": 1.0}


def make_coco(tmp_path, images, annotations, categories=CATEGORIES, write=True):
    """images: list of (id, file_name, w, h); returns (json path, image dir)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    if write:
        for k, (_, name, w, h) in enumerate(images):
            write_image(img_dir / name, w, h, 30 + 40 * k)
    data = {
        "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
        "annotations": annotations,
        "categories": categories,
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path), str(img_dir)


IMAGES = [(42, "000000000042.jpg", 40, 30), (5, "000000000005.jpg", 20, 24), (77, "000000000077.jpg", 16, 16)]
ANNOTATIONS = [
    ann(1, 42, 7, [10.5, 5, 12, 8]),
    ann(2, 42, 1, [0, 0, 40, 30]),
    ann(3, 42, 1, [2, 2, 30, 20], iscrowd=1),
    ann(4, 5, 3, [1, 2, 3, 4]),
    ann(5, 5, 9, [4, 4, 5, 5]),
]


def test_parse_default_classes_sorted_by_id(tmp_path):
    src = COCOSource(*make_coco(tmp_path, IMAGES, ANNOTATIONS))
    assert src.class_names == ("person", "motorcycle", "Car", "dog")  # by category id 1, 3, 7, 9
    assert len(src) == 3
    assert src.ids == ["000000000042", "000000000005", "000000000077"]
    assert src.coco_ids == [42, 5, 77]

    r = src[0]
    assert r["image"].shape == (30, 40, 3) and r["image"].dtype == np.uint8
    assert abs(float(r["image"].mean()) - 30) < 2
    np.testing.assert_allclose(r["boxes"], [[10.5, 5, 22.5, 13], [0, 0, 40, 30]])  # xywh -> xyxy
    assert r["boxes"].dtype == np.float32
    np.testing.assert_array_equal(r["classes"], np.array([2, 0], np.int32))
    np.testing.assert_array_equal(r["difficult"], [False, False])
    assert bool(r["valid"]) is True

    np.testing.assert_array_equal(src[1]["classes"], [1, 3])
    assert src[2]["boxes"].shape == (0, 4)  # no annotations: kept by default
    assert src.problems.count("crowd") == 1
    assert src.problems.count("empty_annotation") == 1
    assert src.problems.total == 1
    assert src.annotation(1)["image_id"] == 5


def test_class_subset_and_map_and_crowd(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="adverse_vision.data")
    src = COCOSource(*make_coco(tmp_path, IMAGES, ANNOTATIONS),
                     class_names=("person", "car", "motorbike"), class_map={"motorcycle": "motorbike"})
    np.testing.assert_array_equal(src[0]["classes"], [1, 0])
    np.testing.assert_array_equal(src[1]["classes"], [2])  # dog dropped silently
    np.testing.assert_allclose(src[1]["boxes"], [[1, 2, 4, 6]])
    assert src.problems.count("other_class") == 1 and src.problems.count("crowd") == 1
    assert src.problems.count("unknown_class") == 0
    assert not any("crowd" in r.getMessage() or "other_class" in r.getMessage() for r in caplog.records)

    # no class_names: the class map renames the JSON categories
    renamed = COCOSource(*make_coco(tmp_path, IMAGES, ANNOTATIONS), class_map={"motorcycle": "motorbike"})
    assert renamed.class_names == ("person", "motorbike", "Car", "dog")


def test_boxes_clipped_and_degenerate_dropped(tmp_path, caplog):
    anns = [ann(1, 42, 1, [-5, 3, 20, 30]), ann(2, 42, 1, [5, 5, 0, 4]), ann(3, 42, 7, [1, 1, 2, 2])]
    caplog.set_level(logging.WARNING, logger="adverse_vision.data")
    src = COCOSource(*make_coco(tmp_path, IMAGES[:1], anns))
    for _ in range(2):
        r = src[0]
    np.testing.assert_array_equal(r["boxes"], [[0, 3, 15, 30], [1, 1, 3, 3]])
    np.testing.assert_array_equal(r["classes"], [0, 2])
    s = src.problems.summary()
    assert s["box_outside"] == 1 and s["box_degenerate"] == 1
    logs = [m.getMessage() for m in caplog.records if "box_outside" in m.getMessage()]
    assert len(logs) == 1
    assert "instances.json (image 000000000042.jpg)" in logs[0] and "clipped" in logs[0]

    with pytest.raises(DataError) as e:
        COCOSource(*make_coco(tmp_path, IMAGES[:1], anns), policy={"on_bad_box": "error"})
    assert "instances.json" in str(e.value) and "000000000042.jpg" in str(e.value)


def test_unknown_category_and_bad_entries(tmp_path):
    anns = [
        ann(1, 42, 99, [1, 1, 5, 5]),  # category not declared
        ann(2, 42, 1, [1, 2, 3]),  # bad bbox
        ann(3, 1234, 1, [1, 1, 5, 5]),  # unknown image
        ann(4, 42, 1, [1, 1, 5, 5]),
    ]
    src = COCOSource(*make_coco(tmp_path, IMAGES[:1], anns))
    np.testing.assert_array_equal(src[0]["boxes"], [[1, 1, 6, 6]])
    assert src.problems.count("unknown_class") == 1
    assert src.problems.count("bad_annotation") == 2
    with pytest.raises(DataError, match=r"instances\.json \(image 000000000042\.jpg\).*undefined category id 99"):
        COCOSource(*make_coco(tmp_path, IMAGES[:1], anns), policy={"on_unknown_class": "error"})
    with pytest.raises(DataError, match=r"instances\.json.*bad 'bbox'"):
        COCOSource(*make_coco(tmp_path, IMAGES[:1], anns), policy={"on_bad_annotation": "error"})


def test_empty_images_skip(tmp_path):
    anns = ANNOTATIONS + [ann(9, 77, 1, [20, 20, 5, 5])]  # outside a 16x16 image -> nothing left
    src = COCOSource(*make_coco(tmp_path, IMAGES, anns), policy={"on_empty": "skip"})
    assert src.coco_ids == [42, 5]
    assert src.problems.count("empty_annotation") == 1
    assert src.problems.count("box_degenerate") == 1


def test_missing_and_corrupt_images(tmp_path, caplog):
    path, img_dir = make_coco(tmp_path, IMAGES, ANNOTATIONS)
    os.remove(os.path.join(img_dir, "000000000005.jpg"))
    with open(os.path.join(img_dir, "000000000077.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    caplog.set_level(logging.WARNING, logger="adverse_vision.data")
    src = COCOSource(path, img_dir)
    assert src.coco_ids == [42, 77]
    assert src.problems.files("missing_image") == [os.path.join(img_dir, "000000000005.jpg")]
    r = src[1]
    assert bool(r["valid"]) is False and r["id"] == "000000000077"
    assert r["image"].shape == (32, 32, 3) and r["boxes"].shape == (0, 4)
    assert any("corrupt_image" in m.getMessage() and "000000000077.jpg" in m.getMessage()
               for m in caplog.records)
    with pytest.raises(DataError, match=r"000000000005\.jpg: image file not found \(listed in .*instances\.json\)"):
        COCOSource(path, img_dir, policy={"on_missing_image": "error"})


def test_size_missing_in_json_read_from_header(tmp_path):
    path, img_dir = make_coco(tmp_path, IMAGES[:1], ANNOTATIONS[:2])
    data = json.loads(open(path).read())
    del data["images"][0]["width"]
    data["images"][0]["height"] = 0
    open(path, "w").write(json.dumps(data))
    src = COCOSource(path, img_dir)
    assert src.sizes == [(40, 30)]


def test_bad_json_files(tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON"):
        COCOSource(str(bad), str(img_dir))
    with pytest.raises(DataError, match=r"missing\.json: COCO annotation file not found"):
        COCOSource(str(tmp_path / "missing.json"), str(img_dir))
    nocat = tmp_path / "nocat.json"
    nocat.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=r"nocat\.json: missing or non-list 'categories'"):
        COCOSource(str(nocat), str(img_dir))


def test_pickle_roundtrip(tmp_path):
    src = COCOSource(*make_coco(tmp_path, IMAGES, ANNOTATIONS))
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[0]["boxes"], src[0]["boxes"])
    assert clone.class_names == src.class_names


def test_json_with_a_byte_order_mark(tmp_path):
    path, img_dir = make_coco(tmp_path, IMAGES, ANNOTATIONS)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8-sig") as f:
        f.write(text)
    src = COCOSource(path, img_dir)
    assert sorted(src.ids) == ["000000000005", "000000000042", "000000000077"]
