"""DN-HL as a trainer method: stages, the frozen network, stage loading, evaluation."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision import trainer as trainer_lib
from adverse_vision import methods
from adverse_vision.methods import dnhl
from tests.helpers import dnhl_smoke_config as smoke
from configs import dnhl_imagenet_vgg16, dnhl_scenes_cls, dnhl_scenes_seg, dnhl_voc12_deeplab


@pytest.mark.parametrize("module,tokens", [
    (dnhl_scenes_cls, ("high", "denoise", "joint", "tiny,high", "tiny,official,joint")),
    (dnhl_scenes_seg, ("high", "denoise", "joint", "tiny,denoise", "tiny,official,joint")),
    (dnhl_imagenet_vgg16, ("high", "denoise", "joint", "official,joint")),
    (dnhl_voc12_deeplab, ("high", "denoise", "joint")),
])
def test_configs_build(module, tokens):
    for token in tokens:
        cfg = module.get_config(token)
        assert cfg.method == "dnhl"
        assert cfg.dnhl.stage == token.split(",")[-1]
        dnhl.DNHLMethod.check_config(cfg)
    assert module.get_config("").dnhl.stage == "joint"


def test_bad_values_are_named():
    cfg = smoke("denoise")
    cfg.dnhl.sigmas = ()
    with pytest.raises(ValueError, match="dnhl.sigmas"):
        methods.validate(cfg)
    cfg = smoke("denoise")
    cfg.image_size = 34
    with pytest.raises(ValueError, match="image_size"):
        methods.validate(cfg)


def test_eval_noise_is_fixed_per_index():
    clean = jnp.full((3, 8, 8, 3), 0.5)
    a = dnhl.eval_noise(clean, 25.0, jnp.asarray([0, 1, 2]))
    b = dnhl.eval_noise(clean[::-1], 25.0, jnp.asarray([2, 1, 0]))
    np.testing.assert_array_equal(a, b[::-1])
    assert float(jnp.std(a - clean)) == pytest.approx(25 / 255, rel=0.15)


def _batch(cfg, method, rng):
    s = cfg.image_size
    batch = {"image": rng.integers(0, 256, (cfg.batch_size, s, s, 3), dtype=np.uint8),
             "valid": np.ones((cfg.batch_size,), bool),
             "index": np.arange(cfg.batch_size, dtype=np.int32)}
    if method.task == "classification":
        batch["label"] = rng.integers(0, method.num_classes, (cfg.batch_size,)).astype(np.int32)
    else:
        batch["mask"] = rng.integers(0, method.num_classes, (cfg.batch_size, s, s)).astype(np.uint8)
    return batch


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_joint_step_updates_only_the_denoiser(task):
    cfg = smoke("joint", task)
    trainer = trainer_lib.Trainer(cfg)
    state = trainer.init_state()
    frozen_before = jax.device_get(state.model_state["frozen"])
    # two pytrees: the optimiser state holds moments of the denoiser's parameters only
    n_params = len(jax.tree.leaves(state.params))
    moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    assert len(moments) == 2 * n_params
    assert "frozen" not in jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(state.opt_state)[0][0][0])
    batch = _batch(cfg, trainer.method, np.random.default_rng(0))
    params_before = jax.device_get(state.params)
    for _ in range(2):
        state, metrics = trainer.train_step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    assert float(metrics["high"]) > 0 and float(metrics["mse_255"]) > 0
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(jax.device_get(state.model_state["frozen"]))):
        np.testing.assert_array_equal(a, b)
    moved = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(params_before), jax.tree.leaves(jax.device_get(state.params)))]
    assert all(moved)


def test_loss_is_high_plus_weighted_reconstruction():
    cfg = smoke("joint", **{"dnhl.rec_weight": 0.5})
    method = dnhl.DNHLMethod(cfg)
    variables = method.init_variables(jax.random.key(0))
    params = variables.pop("params")
    batch = jax.tree.map(jnp.asarray, _batch(cfg, method, np.random.default_rng(1)))
    loss, (_, metrics) = method.loss_fn(params, variables, batch, jax.random.key(3), 0)
    np.testing.assert_allclose(float(loss), float(metrics["high"]) + 0.5 * float(metrics["mse_255"]),
                               rtol=1e-6)
    # an untrained denoiser is the identity: its MSE is the noise power (sigma 50)
    assert float(metrics["mse_255"]) == pytest.approx(50.0 ** 2, rel=0.1)


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory):
    """The three stages of the classification smoke recipe, run one after another."""
    root = tmp_path_factory.mktemp("dnhl")
    runs = {name: str(root / name) for name in ("high", "mse", "joint")}
    trainer_lib.train_and_evaluate(smoke("high"), runs["high"], progress=False)
    trainer_lib.train_and_evaluate(smoke("denoise"), runs["mse"], progress=False)
    joint = smoke("joint", **{"model.init_from": runs["mse"], "dnhl.high_from": runs["high"]})
    trainer_lib.train_and_evaluate(joint, runs["joint"], progress=False)
    return runs


def test_stages_chain_and_joint_starts_from_them(stage_runs):
    _, high_vars, _ = trainer_lib.restore_for_eval(stage_runs["high"])
    _, joint_vars, _ = trainer_lib.restore_for_eval(stage_runs["joint"])
    # the frozen network is exactly the high-level run's
    for a, b in zip(jax.tree.leaves(high_vars), jax.tree.leaves(joint_vars["frozen"])):
        np.testing.assert_array_equal(a, b)
    summary = json.load(open(os.path.join(stage_runs["joint"], "summary.json")))
    assert {"top1", "top5", "psnr", "ssim"} <= set(summary["val"])


def test_missing_or_unfit_stage_is_a_clear_error(stage_runs, tmp_path):
    cfg = smoke("joint", **{"model.init_from": str(tmp_path / "nope"), "dnhl.high_from": stage_runs["high"]})
    with pytest.raises(FileNotFoundError, match="model.init_from"):
        trainer_lib.train_and_evaluate(cfg, str(tmp_path / "a"), progress=False)
    cfg = smoke("joint", **{"model.init_from": stage_runs["mse"], "dnhl.high_from": ""})
    with pytest.raises(ValueError, match="dnhl.high_from"):
        trainer_lib.train_and_evaluate(cfg, str(tmp_path / "b"), progress=False)
    cfg = smoke("joint", **{"model.init_from": stage_runs["high"], "dnhl.high_from": stage_runs["high"]})
    with pytest.raises(ValueError, match="expected a DN-HL 'denoise/joint' run"):
        trainer_lib.train_and_evaluate(cfg, str(tmp_path / "c"), progress=False)
    cfg = smoke("joint", **{"model.init_from": stage_runs["mse"], "dnhl.high_from": stage_runs["high"],
                            "dnhl.denoiser_width": 0.25})
    with pytest.raises(ValueError, match="dnhl.denoiser_width"):
        trainer_lib.train_and_evaluate(cfg, str(tmp_path / "d"), progress=False)


def test_evaluate_prints_the_three_way_comparison(stage_runs, tmp_path):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from adverse_vision.data import factory  # pylint: disable=import-outside-toplevel
    from adverse_vision.methods.dnhl import comparison  # pylint: disable=import-outside-toplevel
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(50, 70), (30, 30)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    trainer, variables, _ = trainer_lib.restore_for_eval(stage_runs["joint"])
    data = factory.DataBundle(trainer.cfg, per_host_batch=trainer.cfg.batch_size)
    rows, text = comparison.report(trainer, variables, data, "val", images=str(folder))
    table_rows = [r for r in rows if "images_folder" not in r]
    assert [(r["sigma"], r["input"]) for r in table_rows] == [
        (s, name) for s in (25.0, 50.0) for name in ("noisy", "MSE-only denoiser", "joint denoiser")]
    assert all({"top1", "top5", "psnr", "ssim"} <= set(r) for r in table_rows)
    # noisier input scores lower
    assert table_rows[0]["psnr"] > table_rows[3]["psnr"]
    assert "joint denoiser" in text and "top-1 %" in text and "whole images" in text
    image_rows = [r for r in rows if "images_folder" in r]
    assert len(image_rows) == 6 and all(np.isfinite(r["psnr"]) for r in image_rows)
