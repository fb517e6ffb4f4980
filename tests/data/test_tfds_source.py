"""TFDS detection source: mocked voc/2007 and a tiny dataset prepared on disk (no TF)."""

import io
import logging
import os
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from adverse_vision.data.problems import DataError
from adverse_vision.data.tfds_source import TFDSSource

VOC_LABELS = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]


@pytest.fixture
def mocked_voc():
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        yield tfds.data_source("voc/2007", split="train", download=False)


def expected_from_raw(raw):
    """The documented conversion, written out independently of the source."""
    objects = raw["objects"]
    bbox = np.asarray(objects["bbox"], np.float32).reshape(-1, 4)
    label = np.asarray(objects["label"]).reshape(-1)
    diff = np.asarray(objects["is_difficult"]).reshape(-1)
    n = min(len(bbox), len(label), len(diff))  # random mock features differ in length
    h, w = raw["image"].shape[:2]
    ymin, xmin, ymax, xmax = bbox[:n].T
    px = np.stack([xmin * w, ymin * h, xmax * w, ymax * h], axis=1)
    keep = (px[:, 2] > px[:, 0]) & (px[:, 3] > px[:, 1])  # mock values lie in [0, 1]
    return px[keep], label[:n][keep], diff[:n][keep]


def test_mock_voc_records_match_raw_examples(mocked_voc):
    src = TFDSSource("voc/2007", "train")
    assert len(src) == 4 == len(mocked_voc)
    assert src.class_names == tuple(VOC_LABELS)
    n_boxes = 0
    for i in range(len(src)):
        r = src[i]
        raw = mocked_voc[i]
        assert set(r) == {"image", "boxes", "classes", "difficult", "id", "valid"}
        assert r["image"].dtype == np.uint8 and r["image"].ndim == 3 and r["image"].shape[2] == 3
        np.testing.assert_array_equal(r["image"], raw["image"])
        boxes, labels, diff = expected_from_raw(raw)
        assert r["boxes"].dtype == np.float32 and r["classes"].dtype == np.int32
        np.testing.assert_allclose(r["boxes"], boxes, rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(r["classes"], labels)
        np.testing.assert_array_equal(r["difficult"], diff)
        h, w = r["image"].shape[:2]
        assert (r["boxes"][:, 2] <= w).all() and (r["boxes"][:, 3] <= h).all()
        assert r["id"] == os.path.splitext(raw["image/filename"])[0]
        assert bool(r["valid"]) is True
        n_boxes += len(r["boxes"])
    assert n_boxes > 5  # the comparison was not vacuous


def test_mock_voc_class_subset_and_offset(mocked_voc):
    subset = ("person", "car", "motorbike")
    src = TFDSSource("voc/2007", "train", class_names=subset, pixel_offset=(-1, -1, 0, 0))
    full = TFDSSource("voc/2007", "train")
    seen = 0
    for i in range(len(src)):
        r, f = src[i], full[i]
        names = [VOC_LABELS[c] for c in f["classes"]]
        sel = np.array([n in subset for n in names], bool)
        np.testing.assert_array_equal(r["classes"], [subset.index(n) for n in np.array(names)[sel]]
                                      if sel.any() else np.zeros(0, np.int32))
        shifted = np.clip(f["boxes"][sel] - np.array([1, 1, 0, 0], np.float32), 0, None)
        # boxes whose x1/y1 shift left the image are clipped to 0 by the source
        ok = (shifted[:, 2] > shifted[:, 0]) & (shifted[:, 3] > shifted[:, 1])
        np.testing.assert_allclose(r["boxes"], shifted[ok], atol=1e-4)
        seen += len(r["boxes"])
    assert src.problems.count("other_class") > 0
    assert seen > 0


def test_mock_source_pickles(mocked_voc):
    src = TFDSSource("voc/2007", "train")
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[1]["boxes"], src[1]["boxes"])


def test_not_prepared_error_names_dataset_and_dir(tmp_path):
    with pytest.raises(DataError) as e:
        TFDSSource("voc/2007", "train", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "'voc/2007'" in msg and str(tmp_path) in msg and "tfds build voc/2007" in msg
    assert "not prepared" in msg


# -- a real prepared dataset, written and read without tensorflow -------------------


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


class AvTinyDetection(tfds.core.GeneratorBasedBuilder):
    """Three images with COCO-like objects (crowd flags, an empty image)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "image/filename": tfds.features.Text(),
                "objects": tfds.features.Sequence({
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(names=["person", "car", "dog"]),
                    "is_crowd": np.bool_,
                }),
            }),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        objects = [
            {"bbox": np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], np.float32),
             "label": [1, 0], "is_crowd": [False, True]},
            {"bbox": np.array([[0.25, 0.5, 0.75, 1.0]], np.float32), "label": [2], "is_crowd": [False]},
            {"bbox": np.zeros((0, 4), np.float32), "label": [], "is_crowd": []},
        ]
        for i, obj in enumerate(objects):
            img = np.full((20, 40, 3), 50 * (i + 1), np.uint8)
            yield i, {"image": _png(img), "image/filename": f"img_{i}.png", "objects": obj}


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    AvTinyDetection(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def check_tiny(src):
    assert len(src) == 3
    recs = {src[i]["id"]: src[i] for i in range(3)}
    r0 = recs["img_0"]
    assert r0["image"].shape == (20, 40, 3) and (r0["image"] == 50).all()
    np.testing.assert_allclose(r0["boxes"], [[8, 2, 24, 10]], atol=1e-4)  # crowd box dropped
    np.testing.assert_array_equal(r0["classes"], [1])
    np.testing.assert_array_equal(r0["difficult"], [False])  # no is_difficult feature
    r1 = recs["img_1"]
    np.testing.assert_allclose(r1["boxes"], [[20, 5, 40, 15]], atol=1e-4)
    np.testing.assert_array_equal(r1["classes"], [2])
    assert recs["img_2"]["boxes"].shape == (0, 4) and bool(recs["img_2"]["valid"])
    assert src.problems.count("crowd") == 1
    assert src.problems.count("empty_annotation") == 1
    assert src.problems.total == 1  # the empty image (counted, not logged)


def test_prepared_dataset_on_disk(prepared_dir):
    check_tiny(TFDSSource("av_tiny_detection", "train", data_dir=prepared_dir))


def test_read_only_fallback_when_builder_code_needs_tensorflow(prepared_dir, monkeypatch):
    def needs_tf(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'")

    monkeypatch.setattr(tfds, "data_source", needs_tf)
    check_tiny(TFDSSource("av_tiny_detection", "train", data_dir=prepared_dir))


def test_subset_unknown_class_policy(prepared_dir, caplog):
    caplog.set_level(logging.WARNING, logger="adverse_vision.data")
    src = TFDSSource("av_tiny_detection", "train", data_dir=prepared_dir, class_names=("car", "person"),
                     ignore_other_classes=False)
    rec = {src[i]["id"]: src[i] for i in range(3)}
    np.testing.assert_array_equal(rec["img_0"]["classes"], [0])
    assert rec["img_1"]["boxes"].shape == (0, 4)  # dog is not wanted
    assert src.problems.count("unknown_class") == 1
    assert any("unknown_class" in m.getMessage() and "dog" in m.getMessage() for m in caplog.records)
    strict = TFDSSource("av_tiny_detection", "train", data_dir=prepared_dir, class_names=("car", "person"),
                        ignore_other_classes=False, policy={"on_unknown_class": "error"})
    with pytest.raises(DataError, match=r"av_tiny_detection:train\[\d\] \(img_1\.png\).*'dog'"):
        for i in range(3):
            strict[i]


def test_missing_feature_key(prepared_dir):
    with pytest.raises(DataError, match="has no feature 'objects/boxes'"):
        TFDSSource("av_tiny_detection", "train", data_dir=prepared_dir, bbox_key="objects/boxes")

