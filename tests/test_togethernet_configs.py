"""The TogetherNet config files: every variant validates, the VOC-FOG recipe builds a
fogged VOC pipeline, and a few smoke steps train and evaluate on 8 devices."""

import json
import os

import jax
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from adverse_vision import config as config_lib
from adverse_vision import methods
from adverse_vision import trainer as trainer_lib
from adverse_vision.data import factory
from configs import togethernet_scenes, togethernet_vocfog
from tests.data.test_voc import make_voc

VARIANTS = {
    togethernet_scenes: ("", "tiny", "smoke", "s", "nano,bf16", "tiny,clear", "smoke,m", "tiny,bf16,clear"),
    togethernet_vocfog: ("", "rtts", "tiny", "bf16", "rtts,s", "clear"),
}


@pytest.mark.parametrize("module,arg", [(m, a) for m, args in VARIANTS.items() for a in args])
def test_every_variant_validates(module, arg):
    cfg = module.get_config(arg)
    assert methods.validate(cfg) is cfg
    assert cfg.method == "togethernet" and cfg.model.loss == "togethernet"
    assert (cfg.model.det_weight, cfg.model.restore_weight) == (0.2, 0.8)
    assert cfg.model.restore_target == "signed"


def test_scenes_variants():
    cfg = togethernet_scenes.get_config("")
    assert cfg.model.size == "s" and cfg.optimizer.name == "sgd" and cfg.optimizer.ema_decay == 0
    tiny = togethernet_scenes.get_config("tiny,bf16")
    assert (tiny.model.size, tiny.image_size, tiny.batch_size) == ("tiny", 160, 16)
    assert tiny.total_steps == togethernet_scenes.TINY_STEPS and tiny.optimizer.name == "adamw"
    assert tiny.model.dtype == "bfloat16"
    smoke = togethernet_scenes.get_config("smoke,clear")
    assert (smoke.model.depth, smoke.model.width, smoke.image_size) == (0.33, 0.125, 96)
    assert smoke.data.degrade.name == "none" and smoke.data.val_degrade.name == "none"
    with pytest.raises(config_lib.ConfigError, match="'smokey'.*did you mean 'smoke'"):
        togethernet_scenes.get_config("smokey")


def test_vocfog_recipe():
    cfg = togethernet_vocfog.get_config()
    assert cfg.data.name == "voc" and tuple(cfg.data.class_names) == (
        "person", "bicycle", "car", "motorbike", "bus")
    assert (cfg.image_size, cfg.batch_size) == (640, 8)
    assert cfg.total_steps == round(100 * 9578 / 8) == 119_725
    opt = cfg.optimizer
    assert (opt.name, opt.momentum, opt.nesterov, opt.weight_decay, opt.base_lr) == (
        "sgd", 0.937, True, 5e-4, 0.01)
    assert (opt.warmup_fraction, opt.final_hold_fraction, opt.min_lr_ratio, opt.ema_decay) == (
        0.03, 0.15, 0.01, 0.0)
    for spec in (cfg.data.degrade, cfg.data.val_degrade):
        assert spec.to_dict() == {"name": "haze", "A": (0.5, 0.5), "beta": (0.05, 0.14)}
    assert (cfg.data.train_split, cfg.data.val_split) == ("train", "val")
    rtts = togethernet_vocfog.get_config("rtts")  # a second evaluation, on real haze
    real = rtts.evals.rtts
    assert real.split == "test" and real.data.class_map.to_dict() == {"motorcycle": "motorbike"}
    assert real.data.val_degrade.name == "none" and real.data.val_split == "test"
    assert rtts.data.degrade.name == "haze" and rtts.data.val_degrade.name == "haze"
    assert sorted(rtts.evals) == ["rtts", "val"] and rtts.best_eval == "val"


def _voc_root(tmp_path):
    root = tmp_path / "VOC2007"
    make_voc(root, {
        "000001": ((96, 64), [("person", 0, (11, 6, 40, 60)), ("car", 0, (50, 20, 95, 60))]),
        "000002": ((80, 80), [("bus", 0, (5, 5, 70, 70)), ("dog", 0, (2, 2, 10, 10))]),
    }, image_set="train")
    make_voc(root, {
        "000003": ((64, 96), [("motorcycle", 0, (4, 10, 60, 90)), ("bicycle", 1, (3, 4, 17, 44))]),
        "000004": ((64, 64), [("Car", 0, (10, 10, 50, 50))]),
    }, image_set="val")
    make_voc(root, {"000005": ((64, 96), [("motorcycle", 0, (4, 10, 60, 90))])}, image_set="test")
    return str(root)


def _small(cfg, root):
    cfg.data.root = root
    cfg.image_size = 64
    cfg.batch_size = 2
    cfg.data.num_workers = 0
    cfg.data.max_boxes = 4
    return methods.validate(cfg)


def test_vocfog_trains_without_difficult_objects_and_evaluates_with_them(tmp_path):
    root = tmp_path / "VOC2007"
    objects = [("person", 0, (11, 6, 40, 60)), ("car", 1, (50, 20, 95, 60))]
    for image_set in ("train", "val"):
        make_voc(root, {"000001": ((96, 64), objects)}, image_set=image_set)
    cfg = _small(togethernet_vocfog.get_config(), str(root))
    assert cfg.data.train_difficult is False
    data = factory.DataBundle(cfg, per_host_batch=2)
    train, val = data.source("train")[0], data.source("val")[0]
    assert train["classes"].tolist() == [0] and train["difficult"].tolist() == [False]
    assert val["classes"].tolist() == [0, 2] and val["difficult"].tolist() == [False, True]
    cfg.data.train_difficult = True  # the project's default elsewhere
    train = factory.DataBundle(cfg, per_host_batch=2).source("train")[0]
    assert train["classes"].tolist() == [0, 2] and train["difficult"].tolist() == [False, True]


def _real(batch, i):
    """The real (unpadded) pixels of sample ``i`` of a letterboxed batch."""
    ox, oy = (int(v) for v in batch["offset"][i])
    h, w = (int(round(s * batch["scale"][i])) for s in batch["orig_size"][i])
    return batch["image"][i, oy:oy + h, ox:ox + w], batch["clean"][i, oy:oy + h, ox:ox + w]


def test_vocfog_builds_a_fogged_voc_pipeline(tmp_path):
    cfg = _small(togethernet_vocfog.get_config(), _voc_root(tmp_path))
    data = factory.DataBundle(cfg, per_host_batch=2)
    batch = next(data.train_iterator())
    assert batch["image"].shape == batch["clean"].shape == (2, 64, 64, 3)
    assert batch["valid"].all() and batch["box_mask"].sum() == 3  # "dog" is not a class
    for i in range(2):  # fog added on the fly (to the image part of the augmented canvas)
        changed = np.abs(batch["image"][i].astype(int) - batch["clean"][i]).max(-1) > 2
        assert changed.mean() > 0.1

    val = list(data.val_pipeline())
    assert len(val) == 1 and val[0]["valid"].all()
    # Validation: "motorcycle" is not a class name without the class map; the same fog each pass.
    assert sorted(val[0]["classes"][val[0]["box_mask"]].tolist()) == [1, 2]
    again = next(iter(data.val_pipeline()))
    np.testing.assert_array_equal(again["image"], val[0]["image"])
    hazy, clean = _real(val[0], 0)
    assert np.abs(hazy.astype(int) - clean).mean() > 3

    rtts = _small(togethernet_vocfog.get_config("rtts"), cfg.data.root)
    with pytest.raises(ValueError, match="config key 'evals.rtts.data.root' is empty"):
        factory.DataBundle(rtts, per_host_batch=2).eval_pipeline("rtts")
    rtts.evals.rtts.data.root = cfg.data.root
    test = next(iter(factory.DataBundle(rtts, per_host_batch=2).eval_pipeline("rtts")))
    assert test["valid"].tolist() == [True, False]  # one image, padded
    assert test["classes"][0][test["box_mask"][0]].tolist() == [3]  # motorcycle -> motorbike
    np.testing.assert_array_equal(test["image"], test["clean"])  # real haze: nothing added


def test_smoke_trains_and_evaluates_on_eight_devices(tmp_path):
    """One image per device: the clear twins are targets only, so any batch works."""
    assert jax.device_count() == 8
    cfg = togethernet_scenes.get_config("smoke")
    batch_size = cfg.batch_size = 8
    cfg.image_size = 64
    cfg.data.scene_size = 64
    cfg.data.num_train = 32
    cfg.data.num_val = 12  # 2 batches, the last one padded
    cfg.total_steps = 2
    cfg.eval_every = 2
    cfg.checkpoint_every = 2
    cfg.log_every = 1
    summary = trainer_lib.train_and_evaluate(cfg, str(tmp_path), progress=False)
    assert summary["final_step"] == 2
    val = summary["val"]
    assert set(val) == {"mAP", "psnr_restored", "psnr_input"}
    assert 0.0 <= val["mAP"] <= 1.0 and 0 < val["psnr_restored"] < 60

    # The input PSNR is that of the validation fog, image by image.
    data = factory.DataBundle(cfg, per_host_batch=batch_size)
    scores = []
    for batch in data.val_pipeline():
        for i in np.flatnonzero(batch["valid"]):
            hazy, clean = _real(batch, i)
            scores.append(peak_signal_noise_ratio(clean / 255.0, hazy / 255.0, data_range=1.0))
    assert len(scores) == 12
    assert val["psnr_input"] == pytest.approx(np.mean(scores), abs=1e-6)

    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if "train/restore_mse" in r]
    assert len(train) == 2 and all(np.isfinite(r["train/loss"]) for r in train)
    assert {"train/det", "train/obj", "train/num_fg"} <= set(train[0])
    assert any("val/psnr_restored" in r for r in records)


def test_heldout_fog_and_nodecoder_variants():
    from configs import yolox_scenes  # pylint: disable=import-outside-toplevel
    for cfg in (togethernet_scenes.get_config("tiny,heldout"),
                yolox_scenes.get_config("tiny,heldout")):
        methods.validate(cfg)
        spec = cfg.evals.heldout_fog.data.val_degrade
        assert spec.name == "patchy_haze" and tuple(spec.A) == (0.7, 1.0)
        assert cfg.data.val_degrade.name == "haze"  # training's own fog stays on val
    joint = methods.build(togethernet_scenes.get_config("smoke,heldout"))
    bare = methods.build(togethernet_scenes.get_config("smoke,heldout,nodecoder"))
    assert joint.eval_restore and bare.cfg.model.restore_weight == 0.0
    assert not bare.eval_restore  # an untrained decoder is not scored


def test_a_pretrained_yolox_fills_togethernet_but_its_new_modules():
    """``model.init_from`` loads by name and shape: every YOLOX variable has its
    namesake in TogetherNet, which adds only the DTFE, the SC blocks and the decoder."""
    from configs import yolox_scenes  # pylint: disable=import-outside-toplevel

    def shapes(cfg):
        method = methods.build(cfg)
        tree = jax.eval_shape(method.init_variables, jax.random.key(0))
        return {"/".join(str(k.key) for k in path): leaf.shape
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    yolox = shapes(yolox_scenes.get_config("smoke"))
    together = shapes(togethernet_scenes.get_config("smoke"))
    assert all(together.get(name) == shape for name, shape in yolox.items())
    new = {name.split("/")[1] if name.split("/")[1] != "neck" else "/".join(name.split("/")[1:3])
           for name in set(together) - set(yolox)}
    assert new == {"dtfe", "decoder", "neck/sc1", "neck/sc2", "neck/sc3"}, new
