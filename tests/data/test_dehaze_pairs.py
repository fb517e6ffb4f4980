"""Hazy / clear pair sources (RESIDE, lowq/clear, NTIRE real-haze sets) on tiny real
folders, their bad input, the pipeline and the catalog builder."""

import os
import pickle
import types

import ml_collections
import numpy as np
import pytest
from PIL import Image

from adverse_vision.data import augment as aug
from adverse_vision.data import catalog
from adverse_vision.data import pipeline as pl
from adverse_vision.data.dehaze_pairs import DehazePairSource, clear_keys, hazy_keys
from adverse_vision.data.problems import INVALID_IMAGE_SIZE, DataError, DataProblems


def rgb_image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path, array, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format=fmt or ("JPEG" if path.lower().endswith(
        (".jpg", ".jpeg")) else "PNG"))


def write_pairs(root, hazy_dir, clear_dir, pairs, size=(10, 12)):
    """pairs: {hazy name: clear name}; returns the arrays written, ({clear name: array},
    {hazy name: array}), each hazy image a darker copy of its clear image."""
    clears, hazies = {}, {}
    for k, (hazy, clear) in enumerate(pairs.items()):
        if clear not in clears:
            clears[clear] = rgb_image(*size, len(clears))
            save(os.path.join(root, clear_dir, clear), clears[clear])
        hazies[hazy] = (clears[clear] // 2 + k).astype(np.uint8)
        save(os.path.join(root, hazy_dir, hazy), hazies[hazy])
    return clears, hazies


def truncate(path):
    """Keeps the PNG header but cuts the pixel data: the header reads, decoding fails."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])


# -- pairing rules ---------------------------------------------------------------------


def test_the_names_tried_for_a_hazy_image():
    assert hazy_keys("0001_0.8_0.2") == ["0001_0.8_0.2", "0001_0.8", "0001"]
    assert hazy_keys("1400_10") == ["1400_10", "1400"]
    assert hazy_keys("1_1_0.90179") == ["1_1_0.90179", "1_1", "1"]
    assert hazy_keys("01_Outdoor_HAZY") == ["01_outdoor_hazy", "01_outdoor"]
    assert hazy_keys("51_hazy") == ["51_hazy", "51"]
    assert hazy_keys("street") == ["street"]
    assert clear_keys("01_outdoor_GT") == ["01_outdoor_gt", "01_outdoor"]
    assert clear_keys("0001") == ["0001"]


# -- layouts ---------------------------------------------------------------------------


def test_reside_outdoor_and_indoor_names(tmp_path):
    root = str(tmp_path / "sots_outdoor")
    clears, hazies = write_pairs(root, "hazy", "gt", {
        "0001_0.8_0.2.png": "0001.png", "0001_1_0.08.PNG": "0001.png",
        "0002_0.9_0.16.jpg": "0002.PNG",
    })
    src = DehazePairSource(root)
    assert src.layout == "reside" and len(src) == 3
    assert src.ids == ["0001_0.8_0.2", "0001_1_0.08", "0002_0.9_0.16"]
    assert [os.path.basename(p) for p in src.clear_paths] == ["0001.png", "0001.png", "0002.PNG"]
    rec = src[1]
    assert set(rec) == {"image", "hazy", "id", "valid"} and bool(rec["valid"])
    np.testing.assert_array_equal(rec["image"], clears["0001.png"])
    np.testing.assert_array_equal(rec["hazy"], hazies["0001_1_0.08.PNG"])
    jpeg = src[-1]
    assert jpeg["hazy"].shape == (10, 12, 3) and jpeg["hazy"].dtype == np.uint8
    np.testing.assert_array_equal(jpeg["image"], clears["0002.PNG"])
    assert src.problems.total == 0
    with pytest.raises(IndexError, match="out of range for 3"):
        src[3]
    # Indoor SOTS (<id>_<k>) and ITS (<id>_<k>_<A>) names, clear/ folder, any case.
    root = str(tmp_path / "its")
    write_pairs(root, "Hazy", "Clear", {"1400_1.png": "1400.png", "1400_10.png": "1400.png",
                                        "1_1_0.90179.png": "1.png"})
    src = DehazePairSource(root, "reside")
    assert src.ids == ["1400_1", "1400_10", "1_1_0.90179"]
    assert [os.path.basename(p) for p in src.clear_paths] == ["1400.png", "1400.png", "1.png"]
    assert "3 pairs, 2 clear images" in repr(src)
    src = pickle.loads(pickle.dumps(src))
    assert src[2]["valid"]


def test_lowq_clear_layout_pairs_by_name(tmp_path):
    root = str(tmp_path)
    clears, hazies = write_pairs(root, "lowq", "clear", {
        "a.png": "a.png", "1401_3.png": "1401.png", "B.jpeg": "b.png"})
    src = DehazePairSource(root)
    assert src.layout == "lowq" and src.ids == ["1401_3", "B", "a"]
    np.testing.assert_array_equal(src[2]["image"], clears["a.png"])
    np.testing.assert_array_equal(src[2]["hazy"], hazies["a.png"])
    assert DehazePairSource(root, layout="lowq").ids == src.ids
    with pytest.raises(DataError, match=r"no dehazing layout found \(folders here: "
                                        r"\['clear', 'lowq'\]; expected reside: hazy/"):
        DehazePairSource(root, layout="reside")
    with pytest.raises(DataError, match="layout 'sots' is not 'auto' or one of"):
        DehazePairSource(root, layout="sots")


def test_ntire_sets_in_one_folder_or_two(tmp_path):
    root = str(tmp_path / "nh")
    clears, hazies = write_pairs(root, ".", ".", {
        "01_hazy.png": "01_GT.png", "02_hazy.png": "02_GT.png",
        "03_outdoor_hazy.jpg": "03_outdoor_GT.jpg"})
    save(os.path.join(root, "readme.png"), rgb_image(4, 4, 9))  # neither hazy nor GT: ignored
    src = DehazePairSource(root)
    assert src.layout == "ntire" and src.ids == ["01_hazy", "02_hazy", "03_outdoor_hazy"]
    np.testing.assert_array_equal(src[1]["image"], clears["02_GT.png"])
    np.testing.assert_array_equal(src[1]["hazy"], hazies["02_hazy.png"])
    assert src.problems.total == 0
    # O-HAZE / I-HAZE releases: hazy/ and GT/ folders.
    root = str(tmp_path / "ohaze")
    write_pairs(root, "hazy", "GT", {"01_outdoor_hazy.jpg": "01_outdoor_GT.jpg",
                                     "02_indoor_hazy.JPG": "02_indoor_GT.JPG"})
    src = DehazePairSource(root)
    assert src.layout == "ntire" and src.ids == ["01_outdoor_hazy", "02_indoor_hazy"]
    assert [os.path.basename(p) for p in src.clear_paths] == ["01_outdoor_GT.jpg",
                                                               "02_indoor_GT.JPG"]
    # Named folders override the layout.
    os.rename(os.path.join(root, "GT"), os.path.join(root, "target"))
    src = DehazePairSource(root, hazy_dir="hazy", clear_dir="target")
    assert src.layout == "folders" and len(src) == 2
    with pytest.raises(DataError, match="give both hazy_dir and clear_dir"):
        DehazePairSource(root, hazy_dir="hazy")


# -- bad input -------------------------------------------------------------------------


def test_unmatched_and_mismatched_pairs_follow_the_policy(tmp_path):
    root = str(tmp_path)
    write_pairs(root, "hazy", "gt", {"0001_0.8_0.2.png": "0001.png",
                                     "0002_0.8_0.2.png": "0002.png"})
    save(os.path.join(root, "hazy", "0003_0.8_0.2.png"), rgb_image(10, 12, 3))  # no partner
    save(os.path.join(root, "hazy", "0002_1_0.1.png"), rgb_image(11, 12, 4))  # other size
    problems = DataProblems("test")
    src = DehazePairSource(root, problems=problems)
    assert src.ids == ["0001_0.8_0.2", "0002_0.8_0.2"] and src.problems is problems
    unmatched = os.path.join(root, "hazy", "0003_0.8_0.2.png")
    assert problems.files("missing_image") == [unmatched]
    (missing,) = [p for p in problems.records if p.kind == "missing_image"]
    assert "no clear image for it in" in missing.reason and "'0003'" in missing.reason
    assert missing.action == "sample skipped"
    assert problems.files("bad_annotation") == [os.path.join(root, "hazy", "0002_1_0.1.png")]
    assert problems.count("missing_image") == 1 and problems.count("bad_annotation") == 1
    with pytest.raises(DataError, match=r"0003_0\.8_0\.2\.png: no clear image for it.*"
                                        r"on_missing_image='error'"):
        DehazePairSource(root, policy={"on_missing_image": "error"})
    with pytest.raises(DataError, match=r"0002_1_0\.1\.png: hazy image is 12x11 but its clear "
                                        r"image .*0002\.png is 12x10"):
        DehazePairSource(root, policy={"on_bad_annotation": "error"})


def test_unreadable_files_are_reported_once(tmp_path):
    root = str(tmp_path)
    write_pairs(root, "hazy", "gt", {"1_1.png": "1.png", "1_2.png": "1.png", "2_1.png": "2.png",
                                     "3_1.png": "3.png", "4_1.png": "4.png"})
    with open(os.path.join(root, "gt", "1.png"), "wb") as f:
        f.write(b"not an image")  # clear header unreadable: both of its pairs skipped
    with open(os.path.join(root, "hazy", "2_1.png"), "wb") as f:
        f.write(b"not an image either")
    truncate(os.path.join(root, "hazy", "3_1.png"))  # header fine, pixels cut
    src = DehazePairSource(root)
    assert src.ids == ["3_1", "4_1"]
    assert src.problems.files("corrupt_image") == [os.path.join(root, "gt", "1.png"),
                                                   os.path.join(root, "hazy", "2_1.png")]
    (clear_problem,) = [p for p in src.problems.records
                        if p.file == os.path.join(root, "gt", "1.png")]
    assert clear_problem.reason == "cannot read the clear image header"
    assert clear_problem.action == "its 2 pair(s) skipped"
    assert src.problems.count("corrupt_image") == 2
    for _ in range(2):  # read twice: reported once
        rec = src[0]
        assert not rec["valid"] and rec["id"] == "3_1"
        assert set(rec) == {"image", "hazy", "id", "valid"}
        s = INVALID_IMAGE_SIZE
        assert rec["hazy"].shape == rec["image"].shape == (s, s, 3)
    assert src.problems.count("corrupt_image") == 3
    assert src[1]["valid"]
    # A file replaced by one of another size after the source was built.
    save(os.path.join(root, "hazy", "4_1.png"), rgb_image(9, 12, 0))
    rec = src[1]
    assert not rec["valid"] and rec["id"] == "4_1"
    (changed,) = [p for p in src.problems.records if p.file.endswith("4_1.png")]
    assert changed.kind == "corrupt_image" and changed.action == "sample marked invalid"
    assert changed.reason.startswith("decoded hazy image is 12x9, its clear image")


def test_folders_without_pairs_and_ambiguous_names(tmp_path):
    with pytest.raises(DataError, match="dehazing dataset root does not exist"):
        DehazePairSource(str(tmp_path / "nope"))
    root = str(tmp_path / "empty")
    os.makedirs(os.path.join(root, "hazy"))
    os.makedirs(os.path.join(root, "gt"))
    with pytest.raises(DataError, match=r"empty: no hazy/clear pairs \(reside layout"):
        DehazePairSource(root)
    save(os.path.join(root, "hazy", "5_1.png"), rgb_image(8, 8, 0))
    with pytest.raises(DataError, match=r"no hazy/clear pairs .*missing_image=1"):
        DehazePairSource(root)
    root = str(tmp_path / "plain")
    save(os.path.join(root, "photo.png"), rgb_image(8, 8, 0))
    with pytest.raises(DataError, match=r"plain: no dehazing layout found \(folders here: \[\];"):
        DehazePairSource(root)
    root = str(tmp_path / "dup")
    write_pairs(root, "hazy", "gt", {"7_1.png": "7.png"})
    save(os.path.join(root, "gt", "7.JPG"), rgb_image(10, 12, 0))
    with pytest.raises(DataError, match=r"two images with the stem '7' in one folder"):
        DehazePairSource(root)


def test_a_list_file_with_a_byte_order_mark(tmp_path):
    root = str(tmp_path)
    write_pairs(root, "hazy", "gt", {"10_1.png": "10.png", "11_1.png": "11.png",
                                     "12_1.png": "12.png"})
    with open(os.path.join(root, "test.txt"), "w", encoding="utf-8-sig") as f:
        f.write("12_1.png\n10_1\n\n13_1.png\n")
    src = DehazePairSource(root, list_file="test.txt")
    assert src.ids == ["10_1", "12_1"]
    assert src.problems.files("missing_image") == [os.path.join(root, "hazy", "13_1.png")]
    with pytest.raises(DataError, match="other.txt: hazy image list not found"):
        DehazePairSource(root, list_file="other.txt")


# -- pipeline and catalog ----------------------------------------------------------------


def test_pairs_through_the_pipeline(tmp_path):
    root = str(tmp_path)
    write_pairs(root, "hazy", "gt", {"1_1.png": "1.png", "1_2.png": "1.png", "2_1.png": "2.png"},
                size=(12, 16))
    src = DehazePairSource(root)
    batch = next(iter(pl.make_pipeline(
        src, batch_size=2, image_size=32, max_boxes=2, train=False, seed=0,
        degrade={"name": "haze"}, process_index=0, process_count=1)))
    for i in range(2):  # the real hazy image is the input, never re-fogged
        rec = aug.letterbox(src[i], 32)
        np.testing.assert_array_equal(batch["image"][i], rec["hazy"])
        np.testing.assert_array_equal(batch["clean"][i], rec["image"])
    assert batch["valid"].all() and not batch["box_mask"].any()
    batch = next(iter(pl.make_pipeline(
        src, batch_size=2, image_size=32, max_boxes=2, train=True, seed=0,
        process_index=0, process_count=1)))
    assert batch["image"].shape == batch["clean"].shape == (2, 32, 32, 3)
    assert not np.array_equal(batch["image"], batch["clean"])


def test_catalog_builder_reads_the_split_folder(tmp_path):
    root = str(tmp_path)
    write_pairs(os.path.join(root, "test"), "hazy", "gt", {"1_1.png": "1.png"})
    write_pairs(os.path.join(root, "train"), "hazy", "clear",
                {"1_1.png": "1.png", "2_1.png": "2.png"})
    d = ml_collections.ConfigDict({"root": root, "train_split": "train", "val_split": "test"})
    bundle = types.SimpleNamespace(
        policy=None, split_name=lambda d, split: d.train_split if split == "train" else d.val_split)
    assert catalog.dehaze_pairs.reads_root
    problems = DataProblems("val")
    src = catalog.dehaze_pairs(bundle, d, "val", problems)
    assert len(src) == 1 and src.problems is problems
    assert len(catalog.dehaze_pairs(bundle, d, "train", problems)) == 2
    d.layout = "lowq"
    with pytest.raises(DataError, match="no dehazing layout found"):
        catalog.dehaze_pairs(bundle, d, "train", problems)
    # Without the split folder, the root itself.
    flat = str(tmp_path / "flat")
    write_pairs(flat, "lowq", "clear", {"a.png": "a.png"})
    d.root = flat
    assert len(catalog.dehaze_pairs(bundle, d, "val", problems)) == 1
