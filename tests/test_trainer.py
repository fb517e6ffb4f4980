"""The generic trainer: sharding equivalence, exact resume, SIGTERM, non-finite loss."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision import config as config_lib, logs, parallel, trainer as trainer_lib
from adverse_vision.data import factory
from adverse_vision.data.problems import DataError
from adverse_vision.methods import detection
from tests.helpers import signal_at_step, smoke_config, tensorboard_events


_cfg = smoke_config


def _params(workdir):
    _, variables, _ = trainer_lib.restore_for_eval(workdir, "latest")
    return jax.device_get(variables)


def test_one_step_on_eight_devices_equals_one_device():
    """Same global batch, same init: one step on a 1-device and an 8-device mesh agree to
    float32 tolerance (reductions run in another order, and BatchNorm's backward pass
    amplifies that a little). SGD keeps the update linear in the gradient; Adam's first
    step, ~lr * sign(g), would flip on gradients that are zero up to rounding."""
    cfg = _cfg(**{"optimizer.name": "sgd", "optimizer.base_lr": 0.08, "optimizer.weight_decay": 5e-4})
    local = next(factory.DataBundle(cfg, per_host_batch=cfg.batch_size).train_iterator())
    runs = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(devices)
        tr = trainer_lib.Trainer(cfg, mesh=mesh)
        state, metrics = tr.train_step(tr.init_state(), parallel.global_batch(local, mesh))
        runs.append((jax.device_get(state), float(metrics["loss"])))
    (one, loss1), (eight, loss8) = runs
    assert len(jax.devices()) == 8
    np.testing.assert_allclose(loss1, loss8, rtol=1e-5)
    init = jax.device_get(trainer_lib.Trainer(cfg).init_state())
    update_errors = []
    for p0, p1, p8 in zip(jax.tree.leaves(init.params), jax.tree.leaves(one.params),
                          jax.tree.leaves(eight.params)):
        assert np.linalg.norm(p8 - p1) <= 5e-4 * np.linalg.norm(p1) + 1e-7
        update_errors.append(np.linalg.norm((p8 - p0) - (p1 - p0)) / np.linalg.norm(p1 - p0))
    assert len(update_errors) > 50
    assert np.median(update_errors) < 1e-3 and max(update_errors) < 3e-2
    for a, b in zip(jax.tree.leaves(one.model_state), jax.tree.leaves(eight.model_state)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # BatchNorm statistics


def test_sigterm_saves_and_rerun_resumes_exactly(tmp_path, monkeypatch):
    cfg = _cfg()
    straight = tmp_path / "straight"
    summary = trainer_lib.train_and_evaluate(cfg, str(straight), progress=False)
    assert summary["final_step"] == 6 and not summary["preempted"]

    interrupted = tmp_path / "interrupted"
    original_update = signal_at_step(monkeypatch, signal.SIGTERM, 3)
    summary = trainer_lib.train_and_evaluate(cfg, str(interrupted), progress=False)
    assert summary["preempted"] and summary["final_step"] == 3
    assert summary["latest_step"] == 3  # saved on SIGTERM, off the checkpoint_every grid
    monkeypatch.setattr(logs.Progress, "update", original_update)

    summary = trainer_lib.train_and_evaluate(cfg, str(interrupted), progress=False)
    assert summary["start_step"] == 3 and summary["final_step"] == 6
    a, b = _params(str(straight)), _params(str(interrupted))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    steps = [r["step"] for r in logs.read_metrics(str(interrupted)) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert os.path.exists(interrupted / "config.json")
    assert any(name.startswith("events") for name in os.listdir(interrupted / "tensorboard"))


def test_a_finished_run_started_again_keeps_its_results(tmp_path, caplog):
    """Started again after its last step, a run leaves its summary.json as it is; where
    it was killed before writing one, it evaluates its last state again."""
    workdir = tmp_path / "w"
    first = trainer_lib.train_and_evaluate(_cfg(), str(workdir), progress=False)
    assert first["final_step"] == 6 and first["evals"]["val"]
    written = (workdir / "summary.json").read_text()
    with caplog.at_level("INFO", logger="adverse_vision"):
        again = trainer_lib.train_and_evaluate(_cfg(), str(workdir), progress=False)
    assert "had finished at step 6; its summary.json stands" in caplog.text
    assert (workdir / "summary.json").read_text() == written
    assert again["start_step"] == again["final_step"] == 6 and again["evals"] == first["evals"]
    os.remove(workdir / "summary.json")  # killed between the last checkpoint and the summary
    again = trainer_lib.train_and_evaluate(_cfg(), str(workdir), progress=False)
    assert not again["preempted"] and again["best_step"] == first["best_step"]
    assert set(again["evals"]) == set(first["evals"])
    for name, metrics in first["evals"].items():
        for key, value in metrics.items():
            assert again["evals"][name][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key)
    rewritten = json.loads((workdir / "summary.json").read_text())
    assert rewritten["final_step"] == 6 and not rewritten["preempted"]
    assert rewritten["evals"].keys() == first["evals"].keys()
    steps = [r["step"] for r in logs.read_metrics(str(workdir)) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # nothing trained or logged twice


def test_non_finite_loss_stops_naming_the_step(tmp_path, monkeypatch):
    original = detection.DetectionMethod.loss_fn

    def poisoned(self, params, model_state, batch, rng, step):
        loss, aux = original(self, params, model_state, batch, rng, step)
        return loss * jax.numpy.where(step >= 3, jax.numpy.nan, 1.0), aux

    monkeypatch.setattr(detection.DetectionMethod, "loss_fn", poisoned)
    workdir = tmp_path / "w"
    with pytest.raises(trainer_lib.NonFiniteLossError,
                       match=r"loss is nan at step 4; stopping\. the last good checkpoint is step 2"):
        trainer_lib.train_and_evaluate(_cfg(), str(workdir), progress=False)
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [2]


def test_resolved_config_is_saved_and_reloaded(tmp_path):
    cfg = _cfg()
    os.makedirs(tmp_path, exist_ok=True)
    trainer_lib.save_config(cfg, str(tmp_path))
    loaded = trainer_lib.load_workdir_config(str(tmp_path))
    assert loaded.to_dict() == cfg.to_dict()
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["model"]["width"] == 0.125


def test_config_of_an_older_workdir_gets_the_new_defaults(tmp_path):
    """A workdir saved by an older version still loads: keys added since (here the
    evaluations) get their defaults, and the groups of other methods that older versions
    saved with every run are dropped."""
    cfg = _cfg()
    trainer_lib.save_config(cfg, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    del saved["evals"], saved["best_eval"]
    del saved["data"]["on_empty"]  # saved at its default
    saved["bdlf"] = {"mode": "bilevel", "upper_every": 10}
    saved["model"]["det_weight"] = 0.2
    with open(tmp_path / "config.json", "w") as f:
        json.dump(saved, f)
    loaded = trainer_lib.load_workdir_config(str(tmp_path))
    assert loaded.to_dict() == cfg.to_dict()
    assert loaded.data.degrade.to_dict() == cfg.data.degrade.to_dict()  # specs not padded


def test_bfloat16_compute_with_float32_parameters_and_ema():
    cfg = _cfg(**{"model.dtype": "bfloat16", "optimizer.ema_decay": 0.9998})
    tr = trainer_lib.Trainer(cfg)
    local = next(factory.DataBundle(cfg, per_host_batch=cfg.batch_size).train_iterator())
    init = tr.init_state()
    init_params = jax.device_get(init.params)
    state, metrics = tr.train_step(init, parallel.global_batch(local, tr.mesh))
    assert np.isfinite(float(metrics["loss"]))
    params = jax.device_get(state.params)
    ema = jax.device_get(state.ema_params)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(params) + jax.tree.leaves(ema))
    # the ramped EMA: d = 0.9998 * (1 - exp(-1 / 2000)) after one step
    d = 0.9998 * (1 - np.exp(-1 / 2000))
    for p0, p1, e in zip(jax.tree.leaves(init_params), jax.tree.leaves(params), jax.tree.leaves(ema)):
        np.testing.assert_allclose(e, d * p0 + (1 - d) * p1, rtol=1e-5, atol=1e-7)
    assert state.eval_variables()["params"] is state.ema_params


def test_non_finite_gradients_with_a_finite_loss_stop_before_saving(tmp_path, monkeypatch):
    """A term that is 0 in value but NaN in its gradient from the 4th step on: the loss
    stays finite, and the run stops at the next check before the NaN parameters are
    logged or saved."""
    original = detection.DetectionMethod.loss_fn

    def poisoned(self, params, model_state, batch, rng, step):
        loss, aux = original(self, params, model_state, batch, rng, step)
        first = jax.tree.leaves(params)[0]
        at_zero = jnp.sum(first) * 0.0 + jnp.where(step >= 3, 0.0, 1.0)
        return loss + 0.0 * jnp.sqrt(at_zero), aux  # d/dx sqrt(x) at 0: 0 * inf = NaN

    monkeypatch.setattr(detection.DetectionMethod, "loss_fn", poisoned)
    workdir = tmp_path / "w"
    with pytest.raises(trainer_lib.NonFiniteLossError,
                       match=r"gradient norm is nan at step 4; stopping\. the last good "
                             r"checkpoint is step 2"):
        trainer_lib.train_and_evaluate(_cfg(), str(workdir), progress=False)
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [2]
    with open(workdir / "summary.json") as f:
        summary = json.load(f)
    assert summary["final_step"] == 4 and "gradient norm is nan" in summary["stopped"]
    assert [r["step"] for r in logs.read_metrics(str(workdir)) if "train/loss" in r] == [1, 2, 3]


def test_all_finite_sees_one_nan_parameter():
    tr = trainer_lib.Trainer(_cfg(**{"optimizer.ema_decay": 0.999}))
    state = tr.init_state()
    assert bool(tr.all_finite(state))
    ema = jax.tree.map(np.array, jax.device_get(state.ema_params))
    jax.tree.leaves(ema)[-1].flat[0] = np.inf
    assert not bool(tr.all_finite(state.replace(ema_params=ema)))


def test_restarting_from_loaded_variables_keeps_ema_buffers_apart():
    """EMA parameters equal to loaded parameters get buffers of their own: the donated
    train step would otherwise stop with 'Attempt to donate the same buffer twice'."""
    cfg = _cfg(**{"optimizer.ema_decay": 0.999})
    tr = trainer_lib.Trainer(cfg)
    state = tr.init_state()
    loaded = jax.tree.map(np.array, jax.device_get(state.params))
    state = tr.with_variables(state, loaded)
    local = next(factory.DataBundle(cfg, per_host_batch=cfg.batch_size).train_iterator())
    new, metrics = tr.train_step(state, parallel.global_batch(local, tr.mesh))
    assert np.isfinite(float(metrics["loss"])) and int(new.step) == 1


def test_every_training_image_corrupt_stops_with_one_line(tmp_path):
    from tests.data.test_voc import make_voc  # pylint: disable=import-outside-toplevel
    samples = {f"{i:06d}": ((64, 48), [("car", 0, (4, 4, 40, 30))]) for i in range(8)}
    root = make_voc(tmp_path / "voc", samples)
    for stem in samples:
        with open(tmp_path / "voc" / "JPEGImages" / f"{stem}.jpg", "wb") as f:
            f.write(b"not a jpeg")
    cfg = _cfg(**{"data.name": "voc", "data.root": root})
    workdir = tmp_path / "w"
    with pytest.raises(DataError, match=r"no valid training sample in steps 1-1 \(1 batches\): "
                                        r"every image failed to load; stopping "
                                        r"\(corrupt_image=\d+\)"):
        trainer_lib.train_and_evaluate(cfg, str(workdir), progress=False)
    assert not [d for d in os.listdir(workdir / "checkpoints") if d.isdigit()]


def test_logs_and_summary_are_strict_json(tmp_path):
    writer = logs.MetricWriter(str(tmp_path))
    writer.write(3, {"val/mAP": float("nan"), "val/loss": 1.5, "val/x": float("inf")})
    writer.close()
    with open(tmp_path / "metrics.jsonl") as f:
        line = f.read()
    assert "NaN" not in line and "Infinity" not in line
    assert logs.read_metrics(str(tmp_path)) == [{"step": 3, "val/mAP": None, "val/loss": 1.5,
                                                  "val/x": None}]
    # TensorBoard has no "undefined": such a figure is left out of its events.
    tags = set()
    for name in os.listdir(tmp_path / "tensorboard"):
        with open(tmp_path / "tensorboard" / name, "rb") as f:
            tags |= {v.tag for e in tensorboard_events(f.read()) for v in e.summary.value}
    assert tags == {"val/loss"}
    trainer_lib.write_json(str(tmp_path / "s.json"),
                           {"val": {"mAP": np.float32("nan")}, "n": np.int64(2), "t": (1.0,)})
    with open(tmp_path / "s.json") as f:
        assert json.loads(f.read(), parse_constant=pytest.fail) == {
            "val": {"mAP": None}, "n": 2, "t": [1.0]}


def test_sigint_saves_and_exits_like_sigterm(tmp_path, monkeypatch):
    # The handler the run found is put back: Python's default_int_handler in a terminal,
    # SIG_IGN when the tests were started as a background job.
    before = signal.getsignal(signal.SIGINT)
    signal_at_step(monkeypatch, signal.SIGINT, 3)
    summary = trainer_lib.train_and_evaluate(_cfg(), str(tmp_path / "w"), progress=False)
    assert summary["preempted"] and summary["final_step"] == 3 and summary["latest_step"] == 3
    assert signal.getsignal(signal.SIGINT) is before


def test_rerun_with_a_changed_config_is_refused_unless_it_only_changes_the_schedule(tmp_path, caplog):
    workdir = str(tmp_path / "w")
    trainer_lib.train_and_evaluate(_cfg(), workdir, progress=False)
    changed = _cfg(**{"model.width": 0.25, "optimizer.base_lr": 0.5})
    with pytest.raises(config_lib.ConfigError,
                       match=r"holds checkpoints of another config \(model\.width: 0\.125 -> 0\.25; "
                             r"optimizer\.base_lr: .* -> 0\.5\)"):
        trainer_lib.train_and_evaluate(changed, workdir, progress=False)
    assert trainer_lib.load_workdir_config(workdir).model.width == 0.125  # not overwritten
    assert trainer_lib.check_config_change(_cfg(total_steps=9), workdir) == ["total_steps: 6 -> 9"]
    with caplog.at_level("WARNING", logger="adverse_vision"):
        summary = trainer_lib.train_and_evaluate(_cfg(log_every=3), workdir, progress=False)
    assert summary["start_step"] == 6 and summary["final_step"] == 6
    assert "resumed with a changed config: log_every: 1 -> 3" in caplog.text
    assert trainer_lib.load_workdir_config(workdir).log_every == 3


@pytest.mark.parametrize("name", ["voc", "coco", "m3fd"])
def test_an_unset_dataset_root_is_named(name):
    from tests.helpers import bdlf_smoke_config  # pylint: disable=import-outside-toplevel
    cfg = bdlf_smoke_config() if name == "m3fd" else _cfg()
    cfg.data.name = name
    with pytest.raises(ValueError, match=rf"config key 'data.root' is empty; data.name '{name}'"):
        factory.DataBundle(cfg, per_host_batch=8)


def test_a_step_that_changes_the_state_structure_is_refused(monkeypatch):
    """A loss that adds a model-state entry would recompile every step and leave
    checkpoints that no fresh state restores: the step refuses it, naming the method."""
    original = detection.DetectionMethod.loss_fn

    def grows(self, params, model_state, batch, rng, step):
        loss, (state, metrics) = original(self, params, model_state, batch, rng, step)
        return loss, ({**state, "extra": {}, "counter": jnp.zeros(())}, metrics)

    monkeypatch.setattr(detection.DetectionMethod, "loss_fn", grows)
    tr = trainer_lib.Trainer(_cfg())
    state = tr.init_state()
    batch = parallel.global_batch(
        next(factory.DataBundle(tr.cfg, per_host_batch=tr.cfg.batch_size).train_iterator()), tr.mesh)
    with pytest.raises(ValueError, match="method 'detection': its train step returns a model "
                                         "state of another structure"):
        tr.train_step(state, batch)
