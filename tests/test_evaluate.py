"""``python -m adverse_vision.evaluate``: every evaluation of a workdir's config, each
on its own data, one header, table and JSON line apiece; the overrides of the
command line."""

import json

import ml_collections
import pytest

from adverse_vision import config as config_lib
from adverse_vision import evaluate
from adverse_vision import methods
from adverse_vision import trainer as trainer_lib
from adverse_vision import workdir as workdir_lib
from adverse_vision.data import factory
from tests.helpers import dnhl_smoke_config, smoke_config

HAZE = {"name": "haze", "A": (0.5, 0.5), "beta": (0.05, 0.14)}


def two_evals(**overrides):
    """The smoke config with a foggy and a clear evaluation of the scenes."""
    cfg = smoke_config(**overrides)
    cfg.evals = ml_collections.ConfigDict({
        "foggy": config_lib.eval_entry(),
        "clear": config_lib.eval_entry(val_degrade={"name": "none"}),
    })
    cfg.best_eval = "foggy"
    return cfg


def write_workdir(path, cfg):
    """A workdir of ``cfg`` holding its untrained state as step 0."""
    tr = trainer_lib.Trainer(cfg)
    ckpt = workdir_lib.checkpointer(path, cfg, tr.method)
    try:
        ckpt.save(0, tr.init_state())
    finally:
        ckpt.close()
    workdir_lib.save_config(cfg, path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return write_workdir(str(tmp_path_factory.mktemp("two_evals")), two_evals())


@pytest.fixture
def pipelines(monkeypatch):
    """(evaluation, split, degradation) of every evaluation pipeline built."""
    built = []
    original = factory.DataBundle.eval_pipeline

    def spy(self, eval_name):
        built.append((eval_name, self.cfg.evals[eval_name].split,
                      evaluate.degradations(self.data_config(eval_name))))
        return original(self, eval_name)

    monkeypatch.setattr(factory.DataBundle, "eval_pipeline", spy)
    return built


def test_every_evaluation_on_its_own_data(workdir, pipelines):
    lines = []
    records = evaluate.evaluate_workdir(workdir, "latest", write=lines.append)
    assert [r["eval"] for r in records] == ["clear", "foggy"]  # a config's key order
    for r in records:
        assert r["step"] == 0 and r["split"] == "val" and 0.0 <= r["mAP"] <= 1.0
    assert pipelines == [("clear", "val", "none"), ("foggy", "val", "haze")]
    headers = [line for line in lines if line.startswith("checkpoint step")]
    assert headers == ["checkpoint step 0 (latest), evaluation clear: split val, degradation none",
                       "checkpoint step 0 (latest), evaluation foggy: split val, degradation haze"]
    assert sum("person" in line and "bus" in line for line in lines) == 2  # the per-class tables
    jsons = [json.loads(line) for line in lines if line.startswith("{")]
    assert jsons == records

    # One evaluation, on another split and degradation.
    pipelines.clear()
    records = evaluate.evaluate_workdir(workdir, "best", eval_name="foggy", split="test",
                                        degrade="none", write=lambda line: None)
    assert [(r["eval"], r["split"]) for r in records] == [("foggy", "test")]
    assert pipelines == [("foggy", "test", "none")]


def test_overrides_reach_every_selected_evaluation():
    cfg = two_evals()
    with cfg.unlocked():
        cfg.evals.mixed = config_lib.eval_entry(val_degrade=(HAZE, {"name": "none"}))
    methods.validate(cfg)
    assert evaluate.select_evals(cfg) == ["clear", "foggy", "mixed"]  # a config's key order
    bundle = factory.DataBundle(cfg, per_host_batch=cfg.batch_size)
    assert evaluate.degradations(bundle.data_config("mixed")) == "haze or none"

    assert evaluate.select_evals(cfg, split="test", degrade="rain") == ["clear", "foggy", "mixed"]
    methods.validate(cfg)
    assert [cfg.evals[n].split for n in cfg.evals] == ["test"] * 3
    for name in cfg.evals:  # the run's degradation, and the entries' own mixture and spec
        assert evaluate.degradations(bundle.data_config(name)) == "rain"
    assert "val_degrade" not in cfg.evals.foggy.data

    cfg = two_evals()
    assert evaluate.select_evals(cfg, "clear", degrade="haze") == ["clear"]
    assert cfg.evals.clear.data.val_degrade.name == "haze"
    assert cfg.evals.foggy.split == "val"
    with pytest.raises(ValueError, match=r"--eval 'val': the workdir's config has no such "
                                         r"evaluation; its evaluations: clear, foggy"):
        evaluate.select_evals(cfg, "val")
    with pytest.raises(ValueError, match=r"--degrade 'fog' is not a degradation; choose one of "
                                         r"none, haze, noise"):
        evaluate.select_evals(cfg, degrade="fog")


def test_a_method_with_a_report_of_its_own(tmp_path):
    """DN-HL's comparison table: its rows are the JSON line's."""
    path = write_workdir(str(tmp_path), dnhl_smoke_config("high"))
    lines = []
    (record,) = evaluate.evaluate_workdir(path, write=lines.append)
    assert set(record) == {"eval", "step", "split", "rows"}
    assert (record["eval"], record["step"], record["split"]) == ("val", 0, "val")
    assert [(r["sigma"], r["input"]) for r in record["rows"]] == [
        (0.0, "clean"), (25.0, "noisy"), (50.0, "noisy")]
    assert lines[0].startswith("checkpoint step 0 (best), evaluation val: split val")
    assert lines[1].startswith("DN-HL stage high\n") and "top-1 %" in lines[1]
    assert json.loads(lines[2]) == record


def test_voc_format_data_also_gets_the_official_tools_number(tmp_path):
    """On VOC-format data, evaluate reports TogetherNet's official tool's mAP beside ours
    (integer boxes, truncated predictions) and prints its table; other data does not."""
    from tests.data.test_voc import make_voc  # pylint: disable=import-outside-toplevel
    root = make_voc(tmp_path / "voc", {
        "000001": ((64, 48), [("person", 0, (11, 6, 40, 45)), ("car", 1, (1, 1, 60, 30))]),
        "000002": ((48, 64), [("bus", 0, (5, 5, 40, 60))])}, image_set="test")
    cfg = smoke_config()
    cfg.evals = ml_collections.ConfigDict({
        "voc": config_lib.eval_entry(split="test", name="voc", root=root, val_degrade={"name": "none"}),
        "scenes": config_lib.eval_entry()})
    cfg.best_eval = "scenes"
    path = write_workdir(str(tmp_path / "run"), cfg)
    lines = []
    records = {r["eval"]: r for r in evaluate.evaluate_workdir(path, "latest", write=lines.append)}
    official = records["voc"]["mAP_official_tool"]  # an untrained network: any value, or none
    assert official is None or 0.0 <= official <= 1.0
    assert "mAP_official_tool" not in records["scenes"]
    assert sum("official tool" in line for line in lines) == 1
