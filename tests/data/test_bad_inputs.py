"""Bad input, case by case: the message, what the policy does, and the count, from the
sources through the pipelines (with and without worker processes) to ``summary.json``
of real training runs."""

import contextlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from adverse_vision import trainer as trainer_lib
from adverse_vision.data import pipeline
from adverse_vision.data.coco import COCOSource
from adverse_vision.data.dense import make_dense_pipeline
from adverse_vision.data.folders import ImageFolderSource
from adverse_vision.data.fusion_pairs import FusionFolderSource
from adverse_vision.data.problems import PROBLEM_KINDS, DataError
from adverse_vision.data.voc import VOCSource
from tests.data.test_coco import ann, make_coco
from tests.data.test_files import GREY16, GREY8, write_png
from tests.data.test_fusion_pairs import gray_image, rgb_image, save
from tests.data.test_voc import make_voc, write_jpeg
from tests.helpers import smoke_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ("person", "bicycle", "car", "motorbike", "bus")  # the smoke config's
MAX_BOXES = 16  # the smoke config's data.max_boxes
BOX = (5, 5, 30, 25)
GOOD = [f"g{i:02d}" for i in range(6)]

# case: (kind, file (relative to the VOC root) or sample id, reason, action).
VOC_CASES = {
    "missing_image": ("missing_image", "JPEGImages/missing_image.jpg",
                      r"image file not found \(annotation .*Annotations/missing_image\.xml\)",
                      "image skipped"),
    "corrupt": ("corrupt_image", "JPEGImages/corrupt.jpg",
                r"cannot decode image \(UnidentifiedImageError: ", "sample marked invalid"),
    "truncated": ("corrupt_image", "JPEGImages/truncated.jpg",
                  r"cannot decode image \(OSError: [Tt]runcated", "sample marked invalid"),
    "box_outside": ("box_outside", "Annotations/box_outside.xml",
                    r"1 box\(es\) extend outside the 48x40 image \(first: \[4\.0, 4\.0, 60\.0, 25\.0\]\)",
                    "clipped to the image"),
    "box_degenerate": ("box_degenerate", "Annotations/box_degenerate.xml",
                       r"1 box\(es\) with zero or negative area", "dropped"),
    "unknown_class": ("unknown_class", "Annotations/unknown_class.xml",
                      r"object class 'zebra' is not in class_names", "object dropped"),
    "empty": ("empty_annotation", "Annotations/empty.xml", "no objects", "kept as a negative image"),
    "broken_xml": ("bad_annotation", "Annotations/broken_xml.xml", r"cannot parse XML",
                   "image skipped"),
    "size_mismatch": ("bad_annotation", "Annotations/size_mismatch.xml",
                      r"<size> 50x40 differs from the decoded image 48x40 \(.*size_mismatch\.jpg\)",
                      "size ignored, boxes clipped to the decoded image"),
    "many_boxes": ("too_many_boxes", "many_boxes", rf"20 boxes, more than data\.max_boxes={MAX_BOXES}",
                   f"the {MAX_BOXES} largest by area kept"),
}
# Cases that are no problem once read right: a 16-bit PNG named .jpg, a byte-order mark
# before the first id of the image set (``g00``).
VOC_COUNTS = {"missing_image": 1, "corrupt_image": 2, "box_outside": 1, "box_degenerate": 1,
              "unknown_class": 1, "empty_annotation": 1, "bad_annotation": 2,
              "too_many_boxes": 1}


def build_voc(root):
    """The VOC corpus: six good images and one per case, listed in ``trainval`` (with a
    byte-order mark), and each case after one good image in ``<case>.txt``."""
    good = [("car", 0, BOX)]
    # 20 boxes in the middle of the image, where no random crop of the augmentation
    # (at most 1 / 1.25 of the image on each side) can reach them.
    grid = [("person", 0, (25 + 9 * (k % 5), 17 + 8 * (k // 5), 31 + 9 * (k % 5), 23 + 8 * (k // 5)))
            for k in range(20)]
    samples = {stem: ((48, 40), good) for stem in GOOD}
    samples.update({
        "missing_image": ((48, 40), good),
        "corrupt": ((48, 40), good),
        "truncated": ((48, 40), good),
        "png16": ((48, 40), good),
        "box_outside": ((48, 40), [("car", 0, (5, 5, 60, 25))]),
        "box_degenerate": ((48, 40), good + [("bus", 0, (20, 10, 10, 20))]),
        "unknown_class": ((48, 40), good + [("zebra", 0, BOX)]),
        "empty": ((48, 40), []),
        "broken_xml": ((48, 40), good),
        "size_mismatch": ((50, 40), good),
        "many_boxes": ((96, 64), grid),
    })
    root = make_voc(root, samples)
    images = os.path.join(root, "JPEGImages")
    os.remove(os.path.join(images, "missing_image.jpg"))
    with open(os.path.join(images, "corrupt.jpg"), "wb") as f:
        f.write(b"not a jpeg at all")
    with open(os.path.join(images, "truncated.jpg"), "rb") as f:
        data = f.read()
    with open(os.path.join(images, "truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 2])
    os.remove(os.path.join(images, "png16.jpg"))
    sixteen = np.tile(GREY16, (20, 12))  # 48 x 40, a PNG under a .jpg name
    Image.fromarray(sixteen).save(os.path.join(images, "png16.jpg"), format="PNG")
    write_jpeg(os.path.join(images, "size_mismatch.jpg"), 48, 40, seed=3)
    with open(os.path.join(root, "Annotations", "broken_xml.xml"), "w") as f:
        f.write("<annotation><size><width>48</wid")
    sets = os.path.join(root, "ImageSets", "Main")
    with open(os.path.join(sets, "trainval.txt"), "w", encoding="utf-8-sig") as f:
        f.write("\n".join(samples) + "\n")
    for case in samples:
        if case not in GOOD:
            with open(os.path.join(sets, f"{case}.txt"), "w") as f:
                f.write(f"g00\n{case}\n")  # not first: the pipeline reads sample 0 itself
    return root


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return build_voc(tmp_path_factory.mktemp("bad_voc") / "voc")


def _read_all(source, num_workers, batch_size, epochs=2, **kw):
    """Runs a training pipeline over ``source`` for exactly ``epochs`` epochs; returns
    the number of invalid samples seen."""
    steps, rest = divmod(epochs * len(source), batch_size)
    assert rest == 0
    ds = pipeline.make_pipeline(
        source, batch_size=batch_size, image_size=64, max_boxes=MAX_BOXES, train=True,
        seed=0, num_workers=num_workers, process_index=0,
        process_count=1, **kw)
    invalid = 0
    with contextlib.closing(iter(ds)) as it:
        for _ in range(steps):
            batch = next(it)
            assert "_found" not in batch
            invalid += int((~batch["valid"]).sum())
    return invalid


_READ = {}


def read_voc(root, num_workers):
    """The corpus's training source after two epochs through the pipeline (once per
    worker count)."""
    if (root, num_workers) not in _READ:
        src = VOCSource(root, "trainval", CLASSES)
        _READ[root, num_workers] = (src, _read_all(src, num_workers, batch_size=5))
    return _READ[root, num_workers]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("case", sorted(VOC_CASES))
def test_voc_case_message_action_and_count(voc_root, num_workers, case):
    src, _ = read_voc(voc_root, num_workers)
    kind, file, reason, action = VOC_CASES[case]
    where = file if kind == "too_many_boxes" else os.path.join(voc_root, file)
    records = [r for r in src.problems.records if r.file == where]
    assert len(records) == 1, src.problems.records
    assert records[0].kind == kind and records[0].action == action
    assert re.search(reason, records[0].reason), records[0].reason


@pytest.mark.parametrize("num_workers", [0, 2])
def test_voc_counts_and_well_read_cases(voc_root, num_workers):
    src, invalid = read_voc(voc_root, num_workers)
    expected = {k: VOC_COUNTS.get(k, 0) for k in PROBLEM_KINDS}
    assert {k: src.problems.count(k) for k in PROBLEM_KINDS} == expected
    assert invalid == 4  # the corrupt and the truncated image, in each of two epochs
    assert src.ids[0] == "g00"  # not "\ufeffg00": the byte-order mark is skipped
    png16 = src[src.ids.index("png16")]
    assert png16["valid"]
    np.testing.assert_array_equal(png16["image"][:2, :4, 0], GREY8)  # not all white


@pytest.mark.parametrize("case, policy, message", [
    ("missing_image", {"on_missing_image": "error"},
     r"JPEGImages/missing_image\.jpg: image file not found"),
    ("box_outside", {"on_bad_box": "error"}, r"box_outside\.xml: 1 box\(es\) extend outside"),
    ("box_degenerate", {"on_bad_box": "error"}, r"box_degenerate\.xml: 1 box\(es\) with zero"),
    ("unknown_class", {"on_unknown_class": "error"},
     r"unknown_class\.xml: object class 'zebra' is not in class_names"),
    ("broken_xml", {"on_bad_annotation": "error"}, r"broken_xml\.xml: cannot parse XML"),
    ("size_mismatch", {"on_bad_annotation": "error"},
     r"Annotations/size_mismatch\.xml: <size> 50x40 differs from the decoded image 48x40 "
     r"\(.*JPEGImages/size_mismatch\.jpg\) \(data policy on_bad_annotation='error'\)$"),
])
def test_voc_error_policies_raise_one_message_naming_the_file(voc_root, case, policy, message):
    with pytest.raises(DataError, match=message):
        src = VOCSource(voc_root, case, CLASSES, policy=policy)
        for i in range(len(src)):
            src[i]


def test_voc_skip_policies(voc_root):
    src = VOCSource(voc_root, "box_outside", CLASSES, policy={"on_bad_box": "skip"})
    assert src.problems.records[0].action == "dropped"
    assert len(src.annotation(1)["boxes"]) == 0  # and the image kept as a negative
    src = VOCSource(voc_root, "empty", CLASSES, policy={"on_empty": "skip"})
    assert src.ids == ["g00"] and src.problems.records[0].action == "image skipped"
    src = VOCSource(voc_root, "size_mismatch", CLASSES)
    record = src[1]  # the boxes fitted to the decoded image
    assert record["valid"] and record["image"].shape == (40, 48, 3)
    assert record["boxes"].max(axis=0)[2] <= 48


@pytest.mark.parametrize("num_workers", [0, 2])
def test_coco_cases(tmp_path, num_workers):
    images = [(1, "good.jpg", 40, 30), (2, "missing.jpg", 40, 30), (3, "corrupt.jpg", 40, 30),
              (4, "mismatch.jpg", 44, 30), (5, "outside.jpg", 40, 30), (6, "good2.jpg", 40, 30)]
    annotations = [ann(k, k, 3, [2, 2, 20, 20]) for k in range(1, 7)]
    annotations += [ann(10, 5, 3, [30, 10, 20, 10]), ann(11, 6, 99, [1, 1, 5, 5])]
    categories = [{"id": 3, "name": "car"}]
    path, image_dir = make_coco(tmp_path, images, annotations, categories)
    os.remove(os.path.join(image_dir, "missing.jpg"))
    with open(os.path.join(image_dir, "corrupt.jpg"), "wb") as f:
        f.write(b"garbage")
    write_jpeg(os.path.join(image_dir, "mismatch.jpg"), 40, 30)
    src = COCOSource(path, image_dir, CLASSES)
    assert _read_all(src, num_workers, batch_size=5) == 2
    counts = {k: v for k, v in src.problems.summary().items() if v and k != "total"}
    assert counts == {"missing_image": 1, "corrupt_image": 1, "bad_annotation": 1,
                      "box_outside": 1, "unknown_class": 1}
    mismatch = [r for r in src.problems.records if "mismatch.jpg" in r.file]
    assert mismatch[0].reason.startswith("size in the JSON 44x30 differs from the decoded image "
                                         "40x30")
    with open(path, "w") as f:
        f.write('{"images": [')
    with pytest.raises(DataError, match=re.escape(path) + r": not valid JSON"):
        COCOSource(path, image_dir, CLASSES)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_image_folder_cases(tmp_path, num_workers):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        save(str(folder / f"good{i}.png"), rgb_image(24, 24, i))
    (folder / "corrupt.png").write_bytes(b"not a png")
    write_png(folder / "png16.png", np.tile(GREY16, (12, 6)), color_type=0)
    src = ImageFolderSource(str(folder))
    ds = make_dense_pipeline(src, batch_size=5, image_size=16, train=True, task="denoise",
                             num_workers=num_workers, process_index=0, process_count=1)
    with contextlib.closing(iter(ds)) as it:
        invalid = sum(int((~next(it)["valid"]).sum()) for _ in range(3))
    assert invalid == 3  # one corrupt image in each of three epochs
    assert src.problems.count("corrupt_image") == 1 and src.problems.total == 1
    assert src.problems.records[0].file == str(folder / "corrupt.png")
    np.testing.assert_array_equal(src[src.ids.index("png16.png")]["image"][:2, :4, 1], GREY8)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_infrared_visible_pair_cases(tmp_path, num_workers):
    root = tmp_path / "pairs"
    for i in range(3):
        save(str(root / "vi" / f"good{i}.png"), rgb_image(16, 20, i))
        save(str(root / "ir" / f"good{i}.png"), gray_image(16, 20, i))
    save(str(root / "vi" / "alone.png"), rgb_image(16, 20, 7))  # no infrared partner
    save(str(root / "vi" / "small.png"), rgb_image(16, 20, 8))
    save(str(root / "ir" / "small.png"), gray_image(16, 18, 8))  # another size
    save(str(root / "vi" / "corrupt.png"), rgb_image(16, 20, 9))
    (root / "ir" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    save(str(root / "vi" / "ir16.png"), rgb_image(16, 20, 10))
    write_png(root / "ir" / "ir16.png", np.tile(GREY16, (8, 5)), color_type=0)
    src = FusionFolderSource(str(root))
    assert src.ids == ["good0", "good1", "good2", "ir16"]  # corrupt: header unreadable
    counts = {k: v for k, v in src.problems.summary().items() if v and k != "total"}
    assert counts == {"missing_image": 1, "bad_annotation": 1, "corrupt_image": 1}
    missing = [r for r in src.problems.records if r.kind == "missing_image"][0]
    assert missing.file == os.path.join(root, "ir", "alone.*")
    assert missing.reason.startswith("no infrared partner for ")
    np.testing.assert_array_equal(src[3]["thermal"][:2, :4, 0], GREY8)
    # A pair whose infrared image turns out undecodable when read: an invalid sample.
    truncated = root / "ir" / "good2.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    assert _read_all(src, num_workers, batch_size=2, saliency=True) == 2
    assert src.problems.count("corrupt_image") == 2
    assert src.problems.records[-1].file == str(truncated)


# -- real training runs -------------------------------------------------------------


def _voc_config(root, **overrides):
    return smoke_config(**{"data.name": "voc", "data.root": root, "data.val_split": "trainval",
                           "checkpoint_every": 6, **overrides})


def _train_command(root, workdir, **overrides):
    """The command line of the training run ``_voc_config`` describes."""
    cfg = _voc_config(root, **overrides)
    keys = {"total_steps": cfg.total_steps, "eval_every": cfg.eval_every,
            "checkpoint_every": cfg.checkpoint_every, "log_every": cfg.log_every,
            "data.name": "voc", "data.root": root, "data.val_split": "trainval", **overrides}
    return ([sys.executable, "-m", "adverse_vision.train", "--config",
             "configs/yolox_scenes.py:smoke", "--workdir", str(workdir), "--progress", "off"]
            + [f"--config.{k}={v}" for k, v in keys.items()])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_summary_counts_after_a_real_training_run(voc_root, tmp_path, num_workers):
    """With workers the run is a separate program: its stderr must not report shared
    memory left behind."""
    workdir = tmp_path / "run"
    if num_workers == 0:
        trainer_lib.train_and_evaluate(_voc_config(voc_root), str(workdir), progress=False)
    else:
        result = subprocess.run(
            _train_command(voc_root, workdir, **{"data.num_workers": num_workers}),
            cwd=REPO, env=dict(os.environ, PYTHONWARNINGS="default"), text=True,
            capture_output=True, timeout=900)
        assert result.returncode == 0, result.stderr[-4000:]
        assert "leaked shared_memory" not in result.stderr, result.stderr[-4000:]
    with open(workdir / "summary.json") as f:
        summary = json.load(f)
    problems = summary["data_problems"]
    expected = {k: VOC_COUNTS.get(k, 0) for k in PROBLEM_KINDS}
    for split in ("train", "val"):
        assert {k: problems[split][k] for k in PROBLEM_KINDS} == expected, split
    assert summary["invalid_samples"] > 0


def test_an_error_in_a_worker_ends_the_program_with_one_line(voc_root, tmp_path):
    """A size mismatch under on_bad_annotation=error is found in a worker, when the
    sample is read: the program still ends with the message, on one line."""
    result = subprocess.run(
        _train_command(voc_root, tmp_path / "run", **{
            "data.num_workers": 2, "data.on_bad_annotation": "error",
            "data.train_split": "size_mismatch"}),
        cwd=REPO, text=True, capture_output=True, timeout=900)
    assert result.returncode == 2, result.stderr[-4000:]
    line = (f"error: {voc_root}/Annotations/size_mismatch.xml: <size> 50x40 differs from the "
            f"decoded image 48x40 ({voc_root}/JPEGImages/size_mismatch.jpg) (data policy "
            f"on_bad_annotation='error')")
    assert line + "\n" in result.stderr, result.stderr[-4000:]
    assert "Traceback" not in result.stderr and "leaked shared_memory" not in result.stderr


def test_every_image_corrupt_with_workers_stops_naming_the_counts(tmp_path):
    """The run stops at once, and its message counts the images the workers found
    corrupt."""
    samples = {f"{i:06d}": ((48, 40), [("car", 0, BOX)]) for i in range(8)}
    root = make_voc(tmp_path / "voc", samples)
    for stem in samples:
        with open(os.path.join(root, "JPEGImages", f"{stem}.jpg"), "wb") as f:
            f.write(b"not a jpeg")
    cfg = _voc_config(root, **{"data.num_workers": 2})
    with pytest.raises(DataError, match=r"^no valid training sample in steps 1-1 .*"
                                        r"\(corrupt_image=8\)$"):
        trainer_lib.train_and_evaluate(cfg, str(tmp_path / "w"), progress=False)
