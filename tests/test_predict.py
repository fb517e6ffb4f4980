"""Prediction on image files: JSON structure, boxes in original pixels, drawn boxes,
unreadable files, batching, checkpoint choice and the command line."""

import functools
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from adverse_vision import checkpoint as ckpt_lib
from adverse_vision import draw as draw_lib
from adverse_vision import methods, parallel, predict
from adverse_vision import trainer as trainer_lib
from adverse_vision.data import augment, catalog
from adverse_vision.data.scenes import ScenesSource
from adverse_vision.methods.detection import normalize_images
from adverse_vision.models.layers import BN_MOMENTUM
from configs import dnhl_scenes_cls, togethernet_scenes, yolox_scenes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (height, width) of the test images: square at the trained size, wide, tall, small.
SIZES = [(96, 96), (80, 150), (200, 120), (64, 64), (90, 90), (50, 130), (120, 40),
         (100, 100), (70, 110)]


def _bump_objectness(params, amount):
    """Raises the objectness biases, so every score of the model goes up."""
    flat = traverse_util.flatten_dict(jax.device_get(params))
    hits = [k for k in flat if k[-2].startswith("obj_preds") and k[-1] == "bias"]
    assert len(hits) == 3, "expected one objectness bias per level"
    for k in hits:
        flat[k] = flat[k] + amount
    return traverse_util.unflatten_dict(flat)


def _random_state(tr, seed=0):
    """A train state of random numbers in the layout ``tr`` saves and restores, like
    ``init_state`` but without compiling anything: He-normal kernels, unit BatchNorm
    scales, zero biases except the prediction layers' (YOLOX's 0.01 prior for objectness
    and classes, boxes of a few strides), zero optimiser state."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        shape, dtype = leaf.shape, leaf.dtype
        if "params" in names[:1] and names[-1] == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            std = np.sqrt(2.0 / fan_in) * (0.1 if "reg_preds" in names[-2] else 1.0)
            return rng.normal(0.0, std, shape).astype(dtype)
        if "params" in names[:1] and names[-1] == "scale":
            return np.ones(shape, dtype)
        if "params" in names[:1] and names[-1] == "bias" and "reg_preds" in names[-2]:
            return np.array([0.0, 0.0, 1.0, 1.0], dtype)  # boxes about 2.7 strides wide
        if "params" in names[:1] and names[-1] == "bias" and "preds" in names[-2]:
            return np.full(shape, -4.6, dtype)  # prior probability 0.01
        if names[-1] == "var":
            return np.ones(shape, dtype)
        return np.zeros(shape, dtype)

    return jax.tree_util.tree_map_with_path(fill, tr.abstract_state())


def _calibrate_batch_stats(tr, variables, images):
    """BatchNorm running statistics set to the batch statistics of ``images``, so that
    the eval-mode network equals the train-mode one on them: its activations keep a
    useful range and its scores depend on the image, like a trained model's."""
    zeroed = jax.tree.map(np.zeros_like, variables["batch_stats"])

    @jax.jit
    def stats(params, x):
        _, updates = tr.method.model.apply({"params": params, "batch_stats": zeroed}, x,
                                           train=True, mutable=["batch_stats"])
        # From zero, the running average holds (1 - momentum) x the batch statistic.
        return jax.tree.map(lambda v: v / (1.0 - BN_MOMENTUM), updates["batch_stats"])

    return jax.device_get(stats(variables["params"], normalize_images(images)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A detection workdir as training leaves it: config.json and two checkpoints, the
    best (step 1, by val/mAP) a random model with BatchNorm statistics calibrated on
    scenes, the latest (step 2) the same model with objectness biases 3 higher.
    Training one to useful scores would take minutes; prediction only needs a model
    whose outputs depend on the image."""
    cfg = yolox_scenes.get_config("smoke")
    cfg.total_steps = 2
    cfg.data.num_train = 16
    cfg.data.num_val = 8
    cfg.model.conf_threshold = 0.0  # keep every detection of the untrained model
    cfg.model.max_detections = 30
    path = str(tmp_path_factory.mktemp("workdir"))
    trainer_lib.save_config(cfg, path)
    tr = trainer_lib.Trainer(cfg)
    state = _random_state(tr)
    calib = np.stack([ScenesSource("train", 8, (96, 96), seed=5)[i]["image"] for i in range(8)])
    stats = _calibrate_batch_stats(tr, state.eval_variables(), calib)
    state = jax.device_put(state.replace(model_state={"batch_stats": stats}), tr.replicated)
    ckpt = ckpt_lib.Checkpointer(os.path.join(path, "checkpoints"))
    ckpt.save(1, state, metrics={"val/mAP": 0.5})
    bumped = jax.device_put(_bump_objectness(state.params, 3.0), tr.replicated)
    ckpt.save(2, state.replace(step=state.step + 2, params=bumped), metrics={"val/mAP": 0.1})
    ckpt.close()
    return path


def _scene(i, h, w):
    return ScenesSource("test", 16, (h, w), seed=3)[i]["image"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Nine scenes of different sizes (one stored grey, one as .JPEG), a corrupt .jpg
    and a text file, in one folder."""
    folder = tmp_path_factory.mktemp("images")
    arrays = {}
    for i, (h, w) in enumerate(SIZES):
        im = _scene(i, h, w)
        if i == 3:
            name = f"scene{i}.png"
            Image.fromarray(im).convert("L").save(folder / name)
            im = np.asarray(Image.fromarray(im).convert("L").convert("RGB"))
        elif i == 4:
            name = f"scene{i}.JPEG"
            Image.fromarray(im).save(folder / name, quality=95)
            im = np.asarray(Image.open(folder / name).convert("RGB"))
        elif i == 5:
            name = f"scene{i}.bmp"
            Image.fromarray(im).save(folder / name)
        else:
            name = f"scene{i}.png"
            Image.fromarray(im).save(folder / name)
        arrays[name] = im
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return str(folder), arrays


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def best(workdir):
    """(trainer, variables, step) of the best checkpoint."""
    return trainer_lib.restore_for_eval(workdir, "best")


@pytest.fixture(scope="module")
def folder_run(best, images, tmp_path_factory):
    """The folder predicted with the best checkpoint, every score kept."""
    folder, _ = images
    tr, variables, _ = best
    out = str(tmp_path_factory.mktemp("out"))
    handler = _Records()
    logger = logging.getLogger("adverse_vision")
    logger.addHandler(handler)
    try:
        predictor = predict.Predictor(tr, variables, batch_size=8, score_threshold=0.0)
        summary = predict.predict_files(predictor, predict.list_images(folder), out,
                                        progress=False)
    finally:
        logger.removeHandler(handler)
    return out, summary, handler.messages


def _load(out, stem):
    with open(os.path.join(out, f"{stem}.json")) as f:
        return json.load(f)


def test_every_readable_image_gets_json_and_drawing(folder_run, images, best):
    out, summary, _ = folder_run
    _, arrays = images
    assert summary["images"] == len(SIZES) == 9  # two batches of 8 on 8 devices
    assert best[2] == 1  # the best checkpoint by val/mAP, not the latest
    assert summary["restored"] is False
    names = sorted(os.listdir(out))
    stems = sorted(os.path.splitext(n)[0] for n in arrays)
    assert names == sorted([f"{s}.json" for s in stems] + [f"{s}_boxes.jpg" for s in stems])
    total = 0
    for name, im in arrays.items():
        rec = _load(out, os.path.splitext(name)[0])
        h, w = im.shape[:2]
        assert rec["image"] == name and (rec["height"], rec["width"]) == (h, w)
        dets = rec["detections"]
        assert len(dets) > 0
        total += len(dets)
        for d in dets:
            assert set(d) == {"box", "class", "class_id", "score"}
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, (name, d["box"])
            assert d["class"] == ("person", "bicycle", "car", "motorbike", "bus")[d["class_id"]]
            assert 0.0 <= d["score"] <= 1.0
        scores = [d["score"] for d in dets]
        assert scores == sorted(scores, reverse=True)
        drawn = np.asarray(Image.open(os.path.join(out, f"{os.path.splitext(name)[0]}_boxes.jpg")))
        assert drawn.shape == im.shape
    assert summary["detections"] == total


def test_corrupt_file_is_skipped_with_a_warning(folder_run, images):
    _, summary, messages = folder_run
    folder, _ = images
    assert [p for p, _ in summary["skipped"]] == [os.path.join(folder, "broken.jpg")]
    assert "broken.jpg" in summary["skipped"][0][1]
    warned = [m for m in messages if "broken.jpg" in m]
    assert len(warned) == 1 and "\n" not in warned[0]


def test_drawn_image_has_the_boxes_of_the_json(folder_run, images):
    out, _, _ = folder_run
    _, arrays = images
    for name in ("scene1.png", "scene2.png"):
        im = arrays[name]
        stem = os.path.splitext(name)[0]
        dets = _load(out, stem)["detections"]
        expected = draw_lib.draw_detections(
            im, [d["box"] for d in dets], [d["class_id"] for d in dets],
            [d["score"] for d in dets], ("person", "bicycle", "car", "motorbike", "bus"))
        drawn = np.asarray(Image.open(os.path.join(out, f"{stem}_boxes.jpg"))).astype(float)
        changed = np.any(expected != im, axis=-1)
        assert changed.mean() > 0.01
        # Where boxes are drawn the saved JPEG follows the drawing, not the input.
        err_drawing = np.abs(drawn - expected)[changed].mean()
        err_input = np.abs(drawn - im)[changed].mean()
        assert err_input > 2.5 * err_drawing, (err_drawing, err_input)
        # Elsewhere it is the input (up to JPEG error).
        assert np.abs(drawn - im)[~changed].mean() < 10


def test_square_image_at_trained_size_matches_the_model_directly(folder_run, images, best):
    """96 x 96 is the letterbox size: scale 1, no offset, so the JSON boxes are the raw
    model output clipped to the image; this also checks the image reached the model
    unchanged and found the right place in a batch of several images."""
    out, _, _ = folder_run
    _, arrays = images
    im = arrays["scene0.png"]
    tr, variables, _ = best
    batch = {"image": np.repeat(im[None], 8, axis=0), "valid": np.ones((8,), bool)}
    raw = parallel.to_host(tr.predict(variables, parallel.global_batch(batch, tr.mesh)))
    clipped = np.clip(raw["boxes"][0], 0, 96)
    keep = raw["valid"][0] & np.all(clipped[:, 2:] - clipped[:, :2] >= predict.MIN_BOX_SIZE, -1)
    order = np.argsort(-raw["scores"][0][keep], kind="stable")
    dets = _load(out, "scene0")["detections"]
    # Clipped to the image, nothing else.
    expected = np.clip(raw["boxes"][0][keep][order], 0, 96)
    assert np.any(raw["boxes"][0][keep] < 0)  # some boxes did need clipping
    np.testing.assert_allclose([d["box"] for d in dets], expected, atol=0.011)
    np.testing.assert_allclose([d["score"] for d in dets], raw["scores"][0][keep][order], rtol=1e-5)
    assert [d["class_id"] for d in dets] == raw["classes"][0][keep][order].tolist()


def test_single_file_and_threshold(folder_run, images, best, tmp_path):
    """A file predicted alone (in a batch padded with invalid zero images, batch size 3
    rounded up to the 8 devices) gives what it got within the folder; a threshold keeps
    exactly the detections scoring at least that."""
    out, _, _ = folder_run
    folder, _ = images
    tr, variables, _ = best
    path = os.path.join(folder, "scene2.png")
    full = _load(out, "scene2")["detections"]
    predictor = predict.Predictor(tr, variables, batch_size=3, score_threshold=0.0)
    assert predictor.batch_size == 8
    summary = predict.predict_files(predictor, [path], str(tmp_path / "single"), progress=False)
    assert summary["images"] == 1 and summary["skipped"] == []
    alone = _load(str(tmp_path / "single"), "scene2")["detections"]
    np.testing.assert_allclose([d["box"] for d in alone], [d["box"] for d in full], atol=0.011)
    np.testing.assert_allclose([d["score"] for d in alone], [d["score"] for d in full], rtol=1e-4)

    scores = np.array([d["score"] for d in full])
    distinct = np.unique(scores)
    assert len(distinct) > 5  # the scores depend on the image content
    mid = len(distinct) // 2
    threshold = float(distinct[mid - 1] + distinct[mid]) / 2
    predictor = predict.Predictor(tr, variables, score_threshold=threshold)
    predict.predict_files(predictor, [path], str(tmp_path / "cut"), progress=False)
    kept = _load(str(tmp_path / "cut"), "scene2")["detections"]
    assert len(kept) == int(np.sum(scores >= threshold)) and 0 < len(kept) < len(full)
    assert min(d["score"] for d in kept) >= threshold


def test_nothing_readable_is_an_error(best, tmp_path):
    tr, variables, _ = best
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    (tmp_path / "b.png").write_bytes(b"")
    paths = predict.list_images(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["a.jpg", "b.png"]
    with pytest.raises(ValueError, match=r"none of the 2 image file\(s\).*a\.jpg"):
        predict.predict_files(predict.Predictor(tr, variables), paths, str(tmp_path / "out"),
                              progress=False)


def test_bad_arguments_are_refused_by_name(workdir, images, tmp_path):
    folder, _ = images
    with pytest.raises(FileNotFoundError, match="missing_folder"):
        predict.list_images(str(tmp_path / "missing_folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files.*empty"):
        predict.list_images(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="notes.txt is not an image file"):
        predict.list_images(os.path.join(folder, "notes.txt"))
    with pytest.raises(ValueError, match="score_threshold"):
        predict.predict_folder(workdir, folder, str(tmp_path / "o"), score_threshold=1.5)
    with pytest.raises(ValueError, match="checkpoint"):
        predict.predict_folder(workdir, folder, str(tmp_path / "o"), checkpoint="last")
    with pytest.raises(FileNotFoundError, match="config.json"):
        predict.predict_folder(str(tmp_path), folder, str(tmp_path / "o"))


def test_boxes_to_original_inverts_letterbox():
    rng = np.random.default_rng(0)
    for h, w in [(80, 150), (200, 120), (96, 96), (33, 250)]:
        x1 = rng.uniform(0, w - 10, 5)
        y1 = rng.uniform(0, h - 10, 5)
        boxes = np.stack([x1, y1, x1 + rng.uniform(1, 10, 5), y1 + rng.uniform(1, 10, 5)], 1)
        rec = augment.letterbox({"image": np.zeros((h, w, 3), np.uint8),
                                 "boxes": boxes.astype(np.float32)}, 96)
        back = predict.boxes_to_original(rec["boxes"], rec["scale"], rec["offset"], h, w)
        np.testing.assert_allclose(back, boxes, atol=1e-3)
    # Clipped to the image.
    out = predict.boxes_to_original(np.array([[-5.0, 10, 200, 90]]), 0.5, (10, 20), 100, 120)
    np.testing.assert_allclose(out, [[0, 0, 120, 100]])


def test_unletterbox_image_restores_the_original_geometry():
    im = _scene(0, 80, 150)
    rec = augment.letterbox({"image": im}, 96)
    letterboxed = rec["image"].astype(np.float32) / 127.5 - 1.0  # as a decoder output
    back = predict.unletterbox_image(letterboxed, rec["scale"], rec["offset"], 80, 150)
    assert back.shape == (80, 150, 3) and back.dtype == np.uint8
    # Down- and up-sampling loses detail, but no grey padding came back and nothing moved.
    assert np.abs(back.astype(float) - im).mean() < 12
    assert np.abs(back.astype(float) - np.roll(im, 6, axis=1)).mean() > \
        np.abs(back.astype(float) - im).mean() + 3
    exact = predict.unletterbox_image(np.full((96, 96, 3), 1.0), 1.0, (0, 0), 96, 96)
    assert (exact == 255).all()


def test_output_stems_keep_same_named_files_apart():
    assert predict.output_stems(["d/a.jpg", "d/a.png", "d/b.bmp"]) == ["a_jpg", "a_png", "b"]
    assert predict.output_stems(["a.jpg", "a.png", "a_png.png"]) == ["a_jpg", "a_png2", "a_png"]


def test_command_line(workdir, images, folder_run, tmp_path):
    """The program on the latest checkpoint (step 2: objectness biases 3 higher than the
    best one's, so higher scores than the in-process run on the best)."""
    folder, arrays = images
    out = tmp_path / "cli"
    env = dict(os.environ, PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "adverse_vision.predict", "--workdir", workdir,
           "--images", folder, "--out", str(out), "--score_threshold", "0.0",
           "--checkpoint", "latest", "--norestore"]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint step 2 (latest): 9 image(s)" in proc.stdout
    assert "skipped 1 unreadable file(s)" in proc.stdout
    assert "broken.jpg" in proc.stderr
    assert len(list(out.glob("*.json"))) == len(arrays)
    assert len(list(out.glob("*_boxes.jpg"))) == len(arrays)
    best_scores = [d["score"] for d in _load(folder_run[0], "scene2")["detections"]]
    latest_scores = [d["score"] for d in _load(str(out), "scene2")["detections"]]
    assert latest_scores[0] > 3 * best_scores[0]

    bad = [sys.executable, "-m", "adverse_vision.predict", "--workdir", workdir,
           "--images", str(tmp_path / "nowhere"), "--out", str(out)]
    proc = subprocess.run(bad, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: --images {tmp_path / 'nowhere'} does not exist"


# --------------------------------------------------------------------------- TogetherNet

@pytest.fixture(scope="module")
def togethernet():
    """(trainer, variables) of a random TogetherNet at the smoke size (its restored
    images are not dehazed, but have the geometry and range of real ones). Restoring a
    workdir is method-independent and tested above with YOLOX."""
    cfg = togethernet_scenes.get_config("smoke")
    cfg.model.conf_threshold = 0.0
    cfg.model.max_detections = 10
    tr = trainer_lib.Trainer(cfg)
    state = jax.device_put(_random_state(tr, seed=1), tr.replicated)
    return tr, state.eval_variables()


def test_togethernet_writes_restored_images(togethernet, images, tmp_path):
    folder, arrays = images
    names = ["scene1.png", "scene2.png", "scene0.png"]  # wide, tall, square
    paths = [os.path.join(folder, n) for n in names]
    tr, variables = togethernet
    predictor = predict.Predictor(tr, variables, score_threshold=0.0)
    out = str(tmp_path / "tn")
    summary = predict.predict_files(predictor, paths, out, progress=False)
    assert summary["restored"] is True and summary["images"] == 3

    # The decoder outputs of the letterboxed images, un-letterboxed here by hand.
    boxed = [augment.letterbox({"image": arrays[n]}, 96) for n in names]
    batch = {"image": np.zeros((8, 96, 96, 3), np.uint8), "valid": np.zeros((8,), bool)}
    for i, b in enumerate(boxed):
        batch["image"][i] = b["image"]
    direct = predictor.run(batch)["restored"]
    assert direct.shape == (8, 96, 96, 3) and -1 <= direct.min() < direct.max() <= 1
    for i, name in enumerate(names):
        im = arrays[name]
        h, w = im.shape[:2]
        stem = os.path.splitext(name)[0]
        restored = np.asarray(Image.open(os.path.join(out, f"{stem}_restored.png")))
        assert restored.shape == im.shape and restored.dtype == np.uint8
        assert restored.std() > 1  # an image, not a constant
        assert len(_load(out, stem)["detections"]) > 0
        dx, dy = boxed[i]["offset"].astype(int)
        nh, nw = round(h * float(boxed[i]["scale"])), round(w * float(boxed[i]["scale"]))
        assert (nh, nw) != (96, 96) or name == "scene0.png"
        window = np.clip(np.round((direct[i, dy:dy + nh, dx:dx + nw] + 1) * 127.5), 0, 255)
        expected = np.asarray(Image.fromarray(window.astype(np.uint8)).resize((w, h), Image.BICUBIC))
        assert np.abs(restored.astype(int) - expected).max() <= 1

    # Without restoration (--norestore) the decoder is not run: no "restored" output.
    assert not predict.Predictor(tr, variables, restore=False).restores
    shapes = jax.eval_shape(predict.predict_fn(tr, restore=False), variables, batch)
    assert "restored" not in shapes and shapes["boxes"].shape == (8, 10, 4)


# --------------------------------------------------------------------------- any method

@methods.register("predict_test_mix")
class _MixMethod(methods.Method):
    """A method without a network, read through the prediction hooks only: it pairs an
    infrared image with each visible one, makes their mean (its grey output) and, when
    asked to restore, the inverted visible image; it does not detect."""

    datasets = {"scenes": catalog.scenes}
    predict_inputs = ("thermal",)
    restores = True

    def init_variables(self, rng):
        del rng
        return {"params": {"gain": jnp.ones(())}}

    def predict(self, variables, batch, restore=False):
        grey = batch["image"].astype(jnp.float32).mean(-1, keepdims=True)
        mix = (grey + batch["thermal"].astype(jnp.float32)) / 510.0
        out = {"mix": mix * variables["params"]["gain"]}
        if restore:
            out["inverted"] = 1.0 - batch["image"].astype(jnp.float32) / 255.0
        return out

    def predict_fn(self, restore):
        return functools.partial(self.predict, restore=restore)

    def prediction_images(self, outputs, i, to_original):
        images = {"_mix.png": to_original(outputs["mix"][i], value_range=(0.0, 1.0))}
        if "inverted" in outputs:
            images["_inverted.png"] = to_original(outputs["inverted"][i], value_range=(0.0, 1.0))
        return images


@methods.register("predict_test_mix_boxes")
class _MixBoxesMethod(_MixMethod):
    """Also detects: one fixed box per image, drawn on the inverted image (its canvas)."""

    @property
    def detects(self):
        return True

    def predict(self, variables, batch, restore=False):
        out = super().predict(variables, batch, restore=True)
        b = batch["image"].shape[0]
        out.update(boxes=jnp.tile(jnp.asarray([[[4.0, 4.0, 20.0, 20.0]]]), (b, 1, 1)),
                   scores=jnp.full((b, 1), 0.9), classes=jnp.zeros((b, 1), jnp.int32),
                   valid=jnp.ones((b, 1), bool))
        return out

    def prediction_images(self, outputs, i, to_original):
        images = super().prediction_images(outputs, i, to_original)
        images["canvas"] = images.pop("_inverted.png")
        return images


@methods.register("predict_test_silent")
class _SilentMethod(methods.Method):
    """Neither detects nor makes images."""

    datasets = {"scenes": catalog.scenes}


def _trainer(name, image_size=32):
    cfg = methods.config(name)
    cfg.image_size = image_size
    return trainer_lib.Trainer(cfg)


def test_any_method_predicts_through_its_hooks(tmp_path):
    """A method registered outside the package: its extra input is read from --infrared
    (paired by stem), its images are written at the original size under its suffixes,
    --norestore leaves the restoration out, and nothing of detection is written."""
    tr = _trainer("predict_test_mix")
    variables = {"params": {"gain": np.ones((), np.float32)}}
    vis, ir = tmp_path / "vis", tmp_path / "ir"
    vis.mkdir()
    ir.mkdir()
    rng = np.random.default_rng(0)
    pairs = {}
    for stem, (h, w) in {"square": (32, 32), "wide": (20, 50), "alone": (30, 30)}.items():
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(vis / f"{stem}.png")
        if stem != "alone":
            thermal = rng.integers(0, 256, (h, w), dtype=np.uint8)
            Image.fromarray(thermal).save(ir / f"{stem}.png")
            pairs[stem] = (rgb, thermal)
    paths = predict.list_images(str(vis))
    infrared = predict.infrared_pairs(paths, str(ir))

    predictor = predict.Predictor(tr, variables, batch_size=8)
    assert predictor.inputs == ("thermal",) and predictor.restores and not predictor.detects
    with pytest.raises(ValueError, match=r"'predict_test_mix' reads infrared images.*--infrared"):
        predict.predict_files(predictor, paths, str(tmp_path / "none"), progress=False)
    summary = predict.predict_files(predictor, paths, str(tmp_path / "out"), progress=False,
                                    infrared=infrared)
    assert summary["images"] == 2 and summary["detections"] == 0 and summary["restored"] is True
    assert [p for p, _ in summary["skipped"]] == [str(vis / "alone.png")]
    assert "no infrared image with the stem of" in summary["skipped"][0][1]
    assert sorted(os.listdir(tmp_path / "out")) == [
        "square_inverted.png", "square_mix.png", "wide_inverted.png", "wide_mix.png"]
    rgb, thermal = pairs["square"]  # at the trained size: no resampling, exact values
    expected = np.round((rgb.astype(np.float32).mean(-1) + thermal) / 510.0 * 255.0)
    mix = np.asarray(Image.open(tmp_path / "out" / "square_mix.png"))
    assert mix.shape == (32, 32) and np.abs(mix.astype(int) - expected).max() <= 1
    inverted = np.asarray(Image.open(tmp_path / "out" / "square_inverted.png"))
    np.testing.assert_array_equal(inverted, 255 - rgb)
    assert np.asarray(Image.open(tmp_path / "out" / "wide_mix.png")).shape == (20, 50)
    assert np.asarray(Image.open(tmp_path / "out" / "wide_inverted.png")).shape == (20, 50, 3)

    plain = predict.Predictor(tr, variables, restore=False)
    summary = predict.predict_files(plain, paths, str(tmp_path / "plain"), progress=False,
                                    infrared=infrared)
    assert summary["restored"] is False
    assert sorted(os.listdir(tmp_path / "plain")) == ["square_mix.png", "wide_mix.png"]


def test_detections_are_drawn_on_the_canvas_a_method_gives(tmp_path):
    tr = _trainer("predict_test_mix_boxes")
    path = tmp_path / "a.png"
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "a_ir.png")
    predictor = predict.Predictor(tr, {"params": {"gain": np.ones((), np.float32)}},
                                  score_threshold=0.5)
    out = tmp_path / "out"
    summary = predict.predict_files(predictor, [str(path)], str(out), progress=False,
                                    infrared=[str(tmp_path / "a_ir.png")])
    assert summary["detections"] == 1
    assert sorted(os.listdir(out)) == ["a.json", "a_boxes.jpg", "a_mix.png"]  # canvas not written
    assert [d["box"] for d in _load(str(out), "a")["detections"]] == [[4.0, 4.0, 20.0, 20.0]]
    drawn = np.asarray(Image.open(out / "a_boxes.jpg")).astype(float)
    on_canvas = draw_lib.draw_detections(255 - rgb, [[4, 4, 20, 20]], [0], [0.9],
                                         tr.cfg.data.class_names)
    assert np.abs(drawn - on_canvas).mean() < 10 < np.abs(drawn - rgb).mean()


def test_method_without_prediction_is_refused_in_one_line():
    """A method that neither detects nor makes images, and a DN-HL run without a
    denoiser, have nothing for predict to write: one readable error before anything
    runs."""
    for tr, message in ((_trainer("predict_test_silent"),
                         r"method 'predict_test_silent' has no prediction for image files"),
                        (trainer_lib.Trainer(dnhl_scenes_cls.get_config("tiny,high")),
                         r"a DN-HL 'high' stage run has no denoiser")):
        with pytest.raises(ValueError, match=message) as err:
            predict.Predictor(tr, {})
        assert "\n" not in str(err.value)


def test_unknown_extra_input_is_refused(monkeypatch):
    tr = _trainer("predict_test_mix")
    monkeypatch.setattr(_MixMethod, "predict_inputs", ("depth",))
    with pytest.raises(ValueError, match=r"reads \['depth'\] with each image.*'thermal'"):
        predict.Predictor(tr, {})
