"""The dense-task pipeline (classification, segmentation, denoising) and its factory wiring."""

import os

import numpy as np
import pytest
from PIL import Image

from adverse_vision import methods
from adverse_vision.data import factory
from adverse_vision.data import pipeline as pl
from adverse_vision.data.dense import dense_augment_config, make_dense_pipeline
from adverse_vision.data.folders import write_voc_mask
from adverse_vision.data.scenes_tasks import ScenesCropsSource

S = 16


class DenseSource:
    """Records of varying size: image channel 0 = column, channel 1 = row, channel 2
    = the record index; mask = column (so image and mask can be checked together);
    label = index % 3. Record i is (12 + 4 * (i % 3)) x (20 + 2 * i)."""

    def __init__(self, n, with_label=True, with_mask=True):
        self.n, self.with_label, self.with_mask = n, with_label, with_mask

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        i = int(i)
        h, w = 12 + 4 * (i % 3), 20 + 2 * i
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.stack([xx, yy, np.full_like(xx, i)], -1).astype(np.uint8)
        rec = {"image": image, "id": f"dense/{i}", "valid": True}
        if self.with_mask:
            rec["mask"] = xx.astype(np.uint8)
        if self.with_label:
            rec["label"] = i % 3
        return rec


def _make(source, **kw):
    args = {"batch_size": 4, "image_size": S, "train": False, "task": "segmentation",
            "seed": 0, "num_workers": 0, "process_index": 0, "process_count": 1}
    args.update(kw)
    return make_dense_pipeline(source, **args)


def _batches(ds, n=None):
    out = []
    for k, b in enumerate(ds):
        if n is not None and k == n:
            break
        out.append({key: np.asarray(v) for key, v in b.items()})
    return out


@pytest.mark.parametrize("task", ["classification", "segmentation", "denoise"])
@pytest.mark.parametrize("train", [True, False])
def test_shapes_and_dtypes(task, train):
    b = _batches(_make(DenseSource(6), task=task, train=train), 1)[0]
    keys = {"image", "valid", "index"} | {"classification": {"label"},
                                          "segmentation": {"mask"}}.get(task, set())
    assert set(b) == keys
    assert b["image"].shape == (4, S, S, 3) and b["image"].dtype == np.uint8
    assert b["valid"].shape == (4,) and b["valid"].dtype == bool
    assert b["index"].shape == (4,) and b["index"].dtype == np.int32
    if task == "classification":
        assert b["label"].shape == (4,) and b["label"].dtype == np.int32
        np.testing.assert_array_equal(b["label"], b["index"] % 3)
    if task == "segmentation":
        assert b["mask"].shape == (4, S, S) and b["mask"].dtype == np.uint8
    # The clean image of each sample: channel 2 holds its index (0 where padded).
    np.testing.assert_array_equal(b["image"][..., 2].max(axis=(1, 2)), b["index"])
    channel = b["image"][..., 2]
    assert np.all((channel == 0) | (channel == b["index"][:, None, None]))


def test_eval_is_deterministic_and_padded():
    src = DenseSource(5)
    first = _batches(_make(src))
    second = _batches(_make(src))
    assert len(first) == 2 == pl.num_eval_batches(5, 4)
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    last = first[1]
    np.testing.assert_array_equal(last["index"], [4, -1, -1, -1])
    np.testing.assert_array_equal(last["valid"], [True, False, False, False])
    np.testing.assert_array_equal(first[0]["index"], [0, 1, 2, 3])
    assert first[0]["valid"].all()


def test_eval_centre_crop_and_mask_padding():
    # Sample 0 is 12 x 20: padded to 16 rows (bottom), centre 16 columns of 20 (2..17).
    b = _batches(_make(DenseSource(1), batch_size=1))[0]
    image, mask = b["image"][0], b["mask"][0]
    np.testing.assert_array_equal(image[:12, :, 0], np.broadcast_to(np.arange(2, 18), (12, 16)))
    np.testing.assert_array_equal(image[:12, :, 1], np.broadcast_to(np.arange(12)[:, None], (12, 16)))
    assert np.all(image[12:] == 0)
    np.testing.assert_array_equal(mask[:12], np.broadcast_to(np.arange(2, 18), (12, 16)))
    assert np.all(mask[12:] == 255)
    # Denoise crops the same way.
    d = _batches(_make(DenseSource(1), batch_size=1, task="denoise"))[0]
    np.testing.assert_array_equal(d["image"][0], image)


def test_eval_classification_resizes_whole_image():
    class Flat:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"image": np.full((40, 24, 3), 50 + i, np.uint8), "label": 7, "id": str(i)}

    b = _batches(_make(Flat(), task="classification", batch_size=2))[0]
    assert b["image"].shape == (2, S, S, 3)
    assert np.all(b["image"][0] == 50) and np.all(b["image"][1] == 51)
    np.testing.assert_array_equal(b["label"], [7, 7])


def test_train_flip_moves_image_and_mask_together():
    # No scaling: the crop and the flip are the only changes, so channel 0 of the image
    # (the source column) must equal the mask everywhere it is not padding.
    src = DenseSource(8)
    ds = _make(src, train=True, augment={"scale": None, "flip": 0.5}, batch_size=8)
    b = _batches(ds, 1)[0]
    flipped = 0
    for image, mask in zip(b["image"], b["mask"]):
        real = mask != 255
        np.testing.assert_array_equal(image[..., 0][real], mask[real])
        assert np.all(image[~real] == 0)
        row = mask[0]
        flipped += int(row[0] > row[-1])
        assert np.all(np.abs(np.diff(row.astype(int))) == 1)
    assert 0 < flipped < 8
    always = _batches(_make(src, train=True, augment={"scale": None, "flip": 1.0}, batch_size=8), 1)[0]
    assert np.all(always["mask"][:, 0, 0] > always["mask"][:, 0, -1])
    never = _batches(_make(src, train=True, augment={"flip": 0.0, "scale": None}, batch_size=8), 1)[0]
    assert np.all(never["mask"][:, 0, 0] < never["mask"][:, 0, -1])


def test_train_scale_keeps_mask_labels_and_pads_with_ignore():
    src = DenseSource(6)
    b = _batches(_make(src, train=True, augment={"scale": (0.5, 0.6), "flip": 0.0},
                       batch_size=6), 1)[0]
    for i, mask in zip(b["index"], b["mask"]):
        w = 20 + 2 * int(i)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(w)) | {255}  # nearest neighbour: no new labels
        assert 255 in values  # half-size images are smaller than S: padded
    assert np.all(b["image"][b["mask"] == 255] == 0)


def test_train_is_reproducible_and_checkpointable():
    src = DenseSource(7)
    a = _batches(_make(src, train=True, seed=3), 3)
    b = _batches(_make(src, train=True, seed=3), 3)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    c = _batches(_make(src, train=True, seed=4), 1)[0]
    assert not np.array_equal(a[0]["index"], c["index"]) or not np.array_equal(
        a[0]["image"], c["image"])
    it = iter(_make(src, train=True, seed=3))
    next(it)
    state = pl.get_state(it)
    expected = next(it)
    it2 = iter(_make(src, train=True, seed=3))
    pl.set_state(it2, state)
    got = next(it2)
    for key in expected:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]))


def test_worker_processes_match_in_process_loading():
    # The crops source builds its object list before it is sent to the workers.
    src = ScenesCropsSource("train", num_samples=8, crop_size=S, scene_size=48)
    ref = _batches(_make(src, train=True, task="classification", seed=1), 2)
    it = iter(_make(src, train=True, task="classification", seed=1, num_workers=1))
    got = [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(2)]
    it.close()
    for x, y in zip(ref, got):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_eval_sharding_over_hosts():
    src = DenseSource(7)
    seen = []
    for p in range(2):
        batches = _batches(_make(src, batch_size=2, process_index=p, process_count=2))
        assert len(batches) == pl.num_eval_batches(7, 2, 2)
        for b in batches:
            seen += b["index"][b["valid"]].tolist()
    assert sorted(seen) == list(range(7))


def test_invalid_records_are_not_valid():
    class Broken(DenseSource):
        def __getitem__(self, i):
            rec = super().__getitem__(i)
            if i == 1:
                rec = {"image": np.zeros((8, 8, 3), np.uint8), "id": "broken", "valid": False}
            return rec

    b = _batches(_make(Broken(3), batch_size=3))[0]
    np.testing.assert_array_equal(b["valid"], [True, False, True])
    assert np.all(b["mask"][1] == 255)


def test_bad_arguments():
    src = DenseSource(3)
    with pytest.raises(ValueError, match="'jitter'"):
        _make(src, augment={"jitter": 0.1})
    with pytest.raises(ValueError, match="flip"):
        dense_augment_config({"flip": 2})
    with pytest.raises(ValueError, match="scale"):
        dense_augment_config({"scale": (1.2, 0.8)})
    with pytest.raises(ValueError, match="task"):
        _make(src, task="detection")
    with pytest.raises(ValueError, match="'label'"):
        _make(DenseSource(3, with_label=False), task="classification")
    with pytest.raises(ValueError, match="'mask'"):
        _make(DenseSource(3, with_mask=False), task="segmentation")
    with pytest.raises(ValueError, match="batch_size"):
        _make(src, batch_size=0)
    assert dense_augment_config(None) == {"scale": (0.75, 1.25), "flip": 0.5}


# -- factory wiring ----------------------------------------------------------------


def _cfg(name, **data):
    cfg = methods.config("dnhl")
    cfg.image_size = 32
    cfg.data.name = name
    cfg.data.num_workers = 0
    cfg.data.num_train = 6
    cfg.data.num_val = 3
    cfg.data.scene_size = 48
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def test_factory_scenes_tasks():
    cfg = _cfg("scenes_crops")
    cfg.dnhl.task = "classification"
    cfg.dnhl.stage = "high"
    bundle = factory.DataBundle(cfg, per_host_batch=2)
    b = next(bundle.train_iterator())
    assert set(b) == {"image", "valid", "index", "label"}
    assert np.asarray(b["image"]).shape == (2, 32, 32, 3)
    assert type(bundle.source("train")).__name__ == "ScenesCropsSource"
    assert bundle.source("train").crop_size == 32
    val = _batches(bundle.val_pipeline())
    assert len(val) == 2 and sum(int(v["valid"].sum()) for v in val) == 3

    cfg.dnhl.stage = "denoise"
    b = next(iter(factory.DataBundle(cfg, per_host_batch=2).val_pipeline()))
    assert set(b) == {"image", "valid", "index"}

    seg = _cfg("scenes")
    seg.dnhl.task = "segmentation"
    b = next(factory.DataBundle(seg, per_host_batch=2).train_iterator())
    assert np.asarray(b["mask"]).shape == (2, 32, 32)
    seg.dnhl.task = "classification"
    with pytest.raises(ValueError, match="scenes_crops"):  # checked with the config
        methods.validate(seg)
    seg.dnhl.stage = "denoise"
    assert type(factory.DataBundle(seg, per_host_batch=2).source("val")).__name__ \
        == "ScenesSegmentationSource"


def test_factory_folder_datasets(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        os.makedirs(tmp_path / "plain" / split)
        for cls in ("dog", "cat"):
            os.makedirs(tmp_path / "cls" / split / cls)
        for k in range(2):
            img = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / "plain" / split / f"{k}.png")
            Image.fromarray(img).save(tmp_path / "cls" / split / ("dog", "cat")[k] / f"{k}.png")
    voc = tmp_path / "voc"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(voc / d)
    for stem in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(
            voc / "JPEGImages" / f"{stem}.jpg")
        write_voc_mask(str(voc / "SegmentationClass" / f"{stem}.png"), np.full((40, 36), 15))
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("a\nb\n")

    cfg = _cfg("image_folder", root=str(tmp_path / "plain"), train_split="train",
               val_split="test")
    cfg.dnhl.stage = "denoise"
    bundle = factory.DataBundle(cfg, per_host_batch=2)
    b = next(iter(bundle.val_pipeline("test")))
    assert set(b) == {"image", "valid", "index"} and np.asarray(b["image"]).shape == (2, 32, 32, 3)
    assert bundle.source("test").root == str(tmp_path / "plain" / "test")

    cfg = _cfg("class_folder", root=str(tmp_path / "cls"), train_split="train",
               val_split="test", class_names=("dog", "cat"))
    cfg.dnhl.stage, cfg.dnhl.task = "joint", "classification"
    b = next(factory.DataBundle(cfg, per_host_batch=2).train_iterator())
    assert sorted(np.asarray(b["label"]).tolist()) == [0, 1]
    # No class_names: every split numbers the classes as the training folders do.
    os.makedirs(tmp_path / "cls" / "test" / "aardvark")
    cfg.data.class_names = ()
    bundle = factory.DataBundle(cfg, per_host_batch=2)
    assert bundle.source("train").class_names == ("cat", "dog")
    assert bundle.source("test").class_names == ("cat", "dog")

    cfg = _cfg("voc_seg", root=str(voc), val_split="val")
    cfg.dnhl.stage, cfg.dnhl.task = "joint", "segmentation"
    b = next(iter(factory.DataBundle(cfg, per_host_batch=2).val_pipeline()))
    mask = np.asarray(b["mask"])
    assert mask.shape == (2, 32, 32) and np.all(mask == 15)

    cfg = _cfg("voc_seg", root="")
    with pytest.raises(ValueError, match="data.root"):
        factory.DataBundle(cfg, per_host_batch=2).source("train")
    cfg = _cfg("voc", root=str(voc))
    with pytest.raises(ValueError, match="'voc'"):
        methods.validate(cfg)
    cfg = _cfg("scenes")
    cfg.dnhl.stage = "pretrain"
    with pytest.raises(ValueError, match="dnhl.stage"):
        methods.validate(cfg)
