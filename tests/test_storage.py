"""Workdirs and outputs in a bucket: ``gs://`` served by an in-memory filesystem in
place of Cloud Storage (etils.epath's fsspec route, which gcsfs serves for real)."""

import json
import multiprocessing
import os
import signal

import numpy as np
import pytest
from etils.epath import backend
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image

from adverse_vision import checkpoint as ckpt_lib
from adverse_vision import logs, storage, trainer as trainer_lib, workdir as workdir_lib
from tests.helpers import signal_at_step, smoke_config, tensorboard_events


class _MemoryBucket(MemoryFileSystem):
    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]


@pytest.fixture
def bucket(monkeypatch):
    fs = _MemoryBucket()
    fs.store.clear()
    monkeypatch.setenv("EPATH_USE_TF", "false")
    monkeypatch.setattr(backend.fsspec_backend, "fs", lambda path: fs)
    return fs


def _rewrite(path: str, texts: tuple[str, str], times: int) -> None:
    for i in range(times):
        storage.write_text(path, texts[i % 2])


def test_a_reader_never_sees_a_file_half_written(tmp_path):
    # Another process rewrites the file as fast as it can while this one reads it:
    # every read is one of the two texts whole (a run's processes read config.json
    # while process 0 rewrites it).
    path = str(tmp_path / "config.json")
    texts = (json.dumps({"a": "x" * 200_000}), json.dumps({"b": "y" * 300_000}))
    storage.write_text(path, texts[0])
    writer = multiprocessing.get_context("spawn").Process(target=_rewrite, args=(path, texts, 400))
    writer.start()
    seen = set()
    try:
        while writer.is_alive():
            text = storage.read_text(path)
            assert text in texts, f"read {len(text)} characters, a part of the file"
            seen.add(text)
    finally:
        writer.join()
    assert writer.exitcode == 0 and seen
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left


def test_urls_keep_their_scheme():
    assert storage.absolute("gs://b/run") == "gs://b/run"
    assert storage.join("gs://b/run", "checkpoints") == "gs://b/run/checkpoints"
    assert storage.absolute("runs/x").startswith("/")


def test_growing_file_rewrites_whole_in_a_bucket_and_appends_locally(bucket, tmp_path):
    for where in ("gs://b/f.txt", str(tmp_path / "f.txt")):
        f = storage.GrowingFile(where)
        f.write("a\n")
        f.flush()
        assert storage.read_text(where) == "a\n"
        f.write("b\n")
        f.close()
        again = storage.GrowingFile(where)  # a resumed run adds to what is there
        again.write("c\n")
        again.close()
        assert storage.read_text(where) == "a\nb\nc\n"


def test_training_workdir_in_a_bucket(bucket, monkeypatch, tmp_path):
    """config.json, metrics.jsonl, TensorBoard events and summary.json land in the bucket,
    nothing in a local ``gs:`` folder; a rerun resumes and adds to the metrics."""
    asked = []

    class LocalCheckpointer(ckpt_lib.Checkpointer):
        # orbax writes gs:// through tensorstore's own GCS driver, which no in-memory
        # filesystem stands in for: the checkpoints alone go to a local folder here.
        def __init__(self, directory, **kw):
            asked.append(directory)
            super().__init__(str(tmp_path / "checkpoints"), **kw)

    monkeypatch.setattr(ckpt_lib, "Checkpointer", LocalCheckpointer)
    monkeypatch.chdir(tmp_path)
    cfg = smoke_config(total_steps=6, log_every=2, eval_every=4)
    # Preempted after step 4: the rerun compiles the same programs (the cache has them).
    original_update = signal_at_step(monkeypatch, signal.SIGTERM, 4)
    summary = trainer_lib.train_and_evaluate(cfg, "gs://b/run", progress=False)
    monkeypatch.setattr(logs.Progress, "update", original_update)
    assert summary["preempted"] and summary["final_step"] == 4
    assert asked == ["gs://b/run/checkpoints"]
    assert not (tmp_path / "gs:").exists()
    names = storage.listdir("gs://b/run")
    assert {"config.json", "metrics.jsonl", "summary.json", "tensorboard"} <= set(names)
    assert workdir_lib.load_config("gs://b/run").total_steps == 6
    assert json.loads(storage.read_text("gs://b/run/summary.json"))["final_step"] == 4
    steps = [r["step"] for r in logs.read_metrics("gs://b/run") if "train/loss" in r]
    assert steps == [2, 4]
    (event_file,) = storage.listdir("gs://b/run/tensorboard")
    with storage.open_file(f"gs://b/run/tensorboard/{event_file}") as f:
        tags = {v.tag for e in tensorboard_events(f.read()) for v in e.summary.value}
    assert {"train/loss", "val/mAP"} <= tags

    assert trainer_lib.train_and_evaluate(cfg, "gs://b/run", progress=False)["start_step"] == 4
    steps = [r["step"] for r in logs.read_metrics("gs://b/run") if "train/loss" in r]
    assert steps == [2, 4, 6]


def test_predict_reads_and_writes_a_bucket(bucket):
    from adverse_vision import predict  # pylint: disable=import-outside-toplevel
    pixels = np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8)
    with storage.open_file("gs://b/in/a.png", "wb") as f:
        Image.fromarray(pixels).save(f, format="PNG")
    storage.write_text("gs://b/in/notes.txt", "not an image")
    (path,) = predict.list_images("gs://b/in")
    assert path == "gs://b/in/a.png"
    np.testing.assert_array_equal(predict.read_image(path), pixels)
    predict.save_image(pixels, "gs://b/out/a_restored.png")
    with storage.open_file("gs://b/out/a_restored.png") as f:
        np.testing.assert_array_equal(np.asarray(Image.open(f)), pixels)


def test_copy_program_puts_a_local_file_in_the_bucket(bucket, tmp_path, capsys):
    log = tmp_path / "train.log"
    log.write_text("step 1\n")
    assert storage.main(["copy", str(log), "gs://b/run/logs/worker-0.log"]) == 0
    assert storage.read_text("gs://b/run/logs/worker-0.log") == "step 1\n"
    assert storage.main(["copy", str(tmp_path / "missing.log"), "gs://b/x"]) == 1
    assert "cannot copy" in capsys.readouterr().err


def _same_records(a, b):
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        ra, rb = a[i], b[i]
        assert sorted(ra) == sorted(rb) and bool(ra["valid"])
        for key in ra:
            np.testing.assert_array_equal(np.asarray(ra[key]), np.asarray(rb[key]), err_msg=key)


def test_datasets_are_read_from_a_bucket(bucket, tmp_path):
    """VOC (its image set, XML and images), COCO (its JSON) and image folders under
    ``gs://`` give the records they give from a local folder."""
    from adverse_vision.data.coco import COCOSource  # pylint: disable=import-outside-toplevel
    from adverse_vision.data.folders import ImageFolderSource  # pylint: disable=import-outside-toplevel
    from adverse_vision.data.voc import VOCSource  # pylint: disable=import-outside-toplevel
    from tests.data.test_coco import ANNOTATIONS, IMAGES, make_coco  # pylint: disable=import-outside-toplevel
    from tests.data.test_voc import BASIC, make_voc  # pylint: disable=import-outside-toplevel
    voc = make_voc(tmp_path / "voc", BASIC)
    (tmp_path / "coco").mkdir()
    coco_json, coco_images = make_coco(tmp_path / "coco", IMAGES, ANNOTATIONS)
    bucket.put(str(tmp_path), "gs://b/data", recursive=True)
    url = "gs://b/data"
    _same_records(VOCSource(voc, image_set="trainval", class_names=("person", "car")),
                  VOCSource(f"{url}/voc", image_set="trainval", class_names=("person", "car")))
    _same_records(COCOSource(coco_json, coco_images),
                  COCOSource(f"{url}/coco/instances.json", f"{url}/coco/images"))
    _same_records(ImageFolderSource(coco_images), ImageFolderSource(f"{url}/coco/images"))
