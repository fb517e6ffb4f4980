"""Starting a run from pretrained weights (adverse_vision.convert.pretrained).

An official YOLOX checkpoint with 80 classes is synthesised at the smoke model's
size: random arrays in the flax layout, written under official key names by an
inverse of the converter's key rules written out independently here, saved as a
``.pth`` in the Megvii layout (weights under ``model``, here also with the
``module.`` prefix). Loaded into a 5-class model, everything but the class
predictions must arrive with the right values and layout, the class predictions
must keep their initialisation, and the log must say so.
"""

import collections
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision import parallel
from adverse_vision import trainer as trainer_lib
from adverse_vision.checkpoint import Checkpointer
from adverse_vision.convert import pretrained
from adverse_vision.convert.keys import flatten
from adverse_vision.data import factory
from adverse_vision.methods.detection import YOLOX_RULES
from adverse_vision.models.yolox import YOLOX
from tests.convert.test_togethernet_convert import _tensor, _write_pth
from tests.helpers import smoke_config

SMOKE_SIZE = (0.33, 0.125)

# flax module path prefix -> official key prefix (the converter's rules, inverted).
_INVERSE = (
    (r"^backbone/stem/", "backbone.backbone.stem."),
    (r"^backbone/dark5/conv/", "backbone.backbone.dark5.0."),
    (r"^backbone/dark5/spp/", "backbone.backbone.dark5.1."),
    (r"^backbone/dark5/csp/", "backbone.backbone.dark5.2."),
    (r"^backbone/dark([234])/conv/", r"backbone.backbone.dark\1.0."),
    (r"^backbone/dark([234])/csp/", r"backbone.backbone.dark\1.1."),
    (r"^neck/", "backbone."),
    (r"^head/stems_(\d+)/", r"head.stems.\1."),
    (r"^head/(cls|reg)_convs_(\d+)_(\d+)/", r"head.\1_convs.\2.\3."),
    (r"^head/(cls|reg|obj)_preds_(\d+)/", r"head.\1_preds.\2."),
)
_LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
           ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
           ("batch_stats", "var"): "running_var"}


def official_key(coll, path):
    """The official state-dict key of the flax variable ``(coll, *path)``."""
    module = "/".join(path[:-1]) + "/"
    for pattern, repl in _INVERSE:
        if re.match(pattern, module):
            module = re.sub(pattern, repl, module, count=1)
            break
    else:
        raise AssertionError(f"no inverse rule for {module}")
    module = re.sub(r"m_(\d+)/", r"m.\1.", module).replace("/", ".")
    return module + _LEAVES[(coll, path[-1])]


def official_yolox(num_classes, size=SMOKE_SIZE, seed=0):
    """(official state dict, {(coll, *path): flax-layout array}) of a random YOLOX."""
    model = YOLOX(num_classes=num_classes, size=size)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                               train=False))
    rng = np.random.default_rng(seed)
    expected, sd = {}, collections.OrderedDict()
    for coll in shapes:
        for path, leaf in flatten(shapes[coll]).items():
            value = rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)  # > 0 for "var"
            expected[(coll,) + path] = value
            key = official_key(coll, path)
            sd[key] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
            if key.endswith("bn.running_var"):
                sd[key[:-len("running_var")] + "num_batches_tracked"] = np.array(9, np.int64)
    return sd, expected


def _variables(state):
    return {(coll,) + p: v for coll, tree in
            {"params": state.params, **state.model_state}.items()
            for p, v in flatten(jax.device_get(tree)).items()}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def init_from(tr, state, path, report=None):
    """The state a run of ``tr``'s config starts from with ``model.init_from=path``, as
    ``Trainer.start_state`` builds it from ``state``."""
    filled = pretrained.load_into(state, path, tr.method.init_rules, tr.cfg.method,
                                  report=report)
    return tr.with_variables(state, filled.pop("params"), model_state=filled)


@pytest.fixture(scope="module")
def fresh():
    cfg = smoke_config()
    tr = trainer_lib.Trainer(cfg)
    state = tr.init_state()
    return cfg, tr, state, _variables(state)


@pytest.fixture
def records():
    logger = logging.getLogger("adverse_vision.convert")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_coco_yolox_into_five_classes(fresh, records, tmp_path):
    _, tr, state, init = fresh
    sd, expected = official_yolox(80)
    sd["backbone.decoder.conv_4.1.weight"] = np.zeros((3, 8, 7, 7), np.float32)  # no counterpart
    path = tmp_path / "yolox_coco.pth"
    _write_pth(path, {"start_epoch": 300, "model": collections.OrderedDict(
        ("module." + k, _tensor(v)) for k, v in sd.items())})
    reports = []
    new = init_from(tr, state, str(path), report=reports)
    got = _variables(new)
    assert set(got) == set(init)
    cls = sorted(p for p in init if p[2].startswith("cls_preds_"))
    assert [p[2:] for p in cls] == [(f"cls_preds_{i}", leaf) for i in range(3)
                                    for leaf in ("bias", "kernel")]
    for p, value in got.items():
        if p in cls:  # another class count: left as initialised
            np.testing.assert_array_equal(value, init[p], err_msg=str(p))
            assert value.shape[-1] == 5
        else:
            np.testing.assert_array_equal(value, expected[p], err_msg=str(p))
    # Layout spot checks against the official arrays themselves.
    p = jax.device_get(new.params)
    np.testing.assert_array_equal(p["backbone"]["dark3"]["csp"]["m_2"]["conv2"]["conv"]["kernel"],
                                  sd["backbone.backbone.dark3.1.m.2.conv2.conv.weight"]
                                  .transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        jax.device_get(new.model_state)["batch_stats"]["neck"]["C3_n4"]["m_0"]["conv1"]["bn"]["var"],
        sd["backbone.C3_n4.m.0.conv1.bn.running_var"])

    (rep,) = reports
    assert len(rep.loaded) == len(init) - 6 and len(rep.kept) == 6
    assert sorted(rep.kept) == sorted("/".join(c) for c in cls)
    assert sorted(m[0] for m in rep.mismatched) == sorted(
        f"head.cls_preds.{i}.{leaf}" for i in range(3) for leaf in ("weight", "bias"))
    assert ("head.cls_preds.0.weight", "params/head/cls_preds_0/kernel", (80, 32, 1, 1),
            (1, 1, 32, 5)) in rep.mismatched
    assert rep.unused == ["backbone.decoder.conv_4.1.weight"]
    text = "\n".join(records)
    assert f"loaded {len(init) - 6} of {len(init)} model variables" in text
    assert "kept at initialisation (6): params/head/cls_preds_0/bias" in text
    assert "head.cls_preds.0.weight (80, 32, 1, 1) vs (1, 1, 32, 5)" in text
    assert "without a counterpart (1): backbone.decoder.conv_4.1.weight" in text
    # A fresh optimiser state for the new parameters, on the state's shardings.
    fresh_opt = jax.device_get(tr.tx.init(new.params))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(new.opt_state), fresh_opt)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state)):
        assert a.sharding == b.sharding and a.shape == b.shape and a.dtype == b.dtype
    assert int(new.step) == 0 and new.ema_params is None


def test_ema_starts_at_the_loaded_params(fresh, tmp_path):
    _, tr, state, _ = fresh
    # The state an EMA config starts from (the same as a plain one, plus EMA parameters).
    state = state.replace(ema_params=jax.tree.map(jnp.copy, state.params))
    sd, expected = official_yolox(5, seed=1)
    path = tmp_path / "yolox.npz"
    np.savez(path, **sd)
    new = init_from(tr, state, str(path))
    ema = flatten(jax.device_get(new.ema_params))
    assert len(ema) == len(flatten(jax.device_get(new.params)))
    for p, v in ema.items():
        np.testing.assert_array_equal(v, expected[("params",) + p], err_msg=str(p))
    # In buffers of their own: the train step donates the state, and one buffer cannot
    # be donated twice.
    pointers = {x.addressable_shards[0].data.unsafe_buffer_pointer()
                for x in jax.tree.leaves(new.params)}
    assert not pointers & {x.addressable_shards[0].data.unsafe_buffer_pointer()
                           for x in jax.tree.leaves(new.ema_params)}


def test_errors(fresh, tmp_path):
    _, tr, state, _ = fresh
    missing = tmp_path / "nothing_here.pth"
    with pytest.raises(FileNotFoundError, match="nothing_here.pth not found"):
        init_from(tr, state, str(missing))
    path = tmp_path / "other.npz"
    np.savez(path, **{"encoder.layer1.weight": np.zeros((4, 3, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"other\.npz: none of its 1 tensors matches a variable "
                                         r"of the 'detection' model.*encoder\.layer1\.weight"):
        init_from(tr, state, str(path))
    sd, _ = official_yolox(5, seed=2)  # the right names, every shape another
    path = tmp_path / "stacked.npz"
    np.savez(path, **{k: np.stack([v, v]) for k, v in sd.items()})
    with pytest.raises(ValueError, match=r"stacked\.npz: none of its \d+ tensors.*another shape.*"
                                         r"another model size"):
        init_from(tr, state, str(path))
    (tmp_path / "somedir").mkdir()
    with pytest.raises(ValueError, match="not a training workdir"):
        init_from(tr, state, str(tmp_path / "somedir"))


class _Stop(Exception):
    pass


def test_workdir_to_workdir(fresh, tmp_path, monkeypatch):
    """Train 2 steps, then start a new run (through the trainer's ``model.init_from``)
    from that workdir: at step 0 its variables equal the trained ones."""
    cfg, tr, _, init = fresh
    first = tmp_path / "first"
    data = factory.DataBundle(cfg, per_host_batch=cfg.batch_size)
    batches = data.train_iterator()
    state = tr.init_state()
    for _ in range(2):
        state, metrics = tr.train_step(state, parallel.global_batch(next(batches), tr.mesh))
    assert np.isfinite(float(metrics["loss"]))
    os.makedirs(first)
    trainer_lib.save_config(cfg, str(first))
    ckpt = Checkpointer(str(first / "checkpoints"))
    ckpt.save(2, state, batches)
    ckpt.close()
    trained = _variables(state)
    # Two steps moved the weights (so the comparisons below mean something).
    key = ("params", "head", "obj_preds_0", "kernel")
    assert not np.array_equal(trained[key], init[key])

    # A new run with model.init_from = that workdir: what the trainer starts from.
    captured = {}
    load_into, start_state = pretrained.load_into, trainer_lib.Trainer.start_state

    def load_spy(state, path, rules, method="", report=None):
        reports = []
        filled = load_into(state, path, rules, method, report=reports)
        captured.update(path=path, report=reports[0])
        return filled

    def start_spy(self):
        captured["state"] = start_state(self)
        raise _Stop  # the start is all this checks

    monkeypatch.setattr(pretrained, "load_into", load_spy)
    monkeypatch.setattr(trainer_lib.Trainer, "start_state", start_spy)
    second = tmp_path / "second"
    with pytest.raises(_Stop):
        trainer_lib.train_and_evaluate(smoke_config(**{"model.init_from": str(first)}),
                                       str(second), progress=False)
    new, rep = captured["state"], captured["report"]
    assert captured["path"] == str(first) and int(new.step) == 0
    got = _variables(new)
    assert set(got) == set(trained)
    for p, value in got.items():
        np.testing.assert_array_equal(value, trained[p], err_msg=str(p))
    assert rep.step == 2 and not rep.kept and not rep.unused and len(rep.loaded) == len(trained)
    # The new state trains in the trainer's jitted, donating step.
    new, metrics = tr.train_step(new, parallel.global_batch(next(batches), tr.mesh))
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))

    # A checkpoints/<step> folder picks that step; a 3-class model keeps its class head.
    cfg3 = smoke_config(**{"data.class_names": ("person", "car", "bus")})
    model3 = YOLOX(num_classes=3, size=SMOKE_SIZE)
    shapes3 = jax.eval_shape(lambda: model3.init(jax.random.key(0), jnp.zeros((1, 96, 96, 3)),
                                                 train=False))
    filled, rep3 = pretrained.load_pretrained(str(first / "checkpoints" / "2"), shapes3,
                                              YOLOX_RULES, cfg3.method)
    assert rep3.step == 2 and len(rep3.kept) == 6 and len(rep3.mismatched) == 6
    assert all("cls_preds" in k for k in rep3.kept)
    assert ("params/head/cls_preds_1/kernel", "params/head/cls_preds_1/kernel", (1, 1, 32, 5),
            (1, 1, 32, 3)) in rep3.mismatched
    assert len(filled) == len(trained) - 6
    for p, value in filled.items():
        np.testing.assert_array_equal(value, trained[p], err_msg=str(p))
