"""Depth-guided self-supervised dehazing as a method: its config, the haze it makes on the
device, the two stages chained, evaluation on real pairs at native size, prediction."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from adverse_vision import degrade, methods, parallel, predict
from adverse_vision import trainer as trainer_lib
from adverse_vision.data import factory
from adverse_vision.methods.depth_dehaze.method import DepthDehazeMethod, colorize_depth
from configs import sdg_reside, sdg_scenes


@pytest.mark.parametrize("tokens", ["", "tiny", "tiny,depth", "smoke,noguide", "smoke,oracle",
                                    "densenet121,bf16"])
def test_configs_build(tokens):
    cfg = sdg_scenes.get_config(tokens)
    assert methods.validate(cfg) is cfg and cfg.method == "depth_dehaze"


@pytest.mark.parametrize("key,value,match", [
    ("data.degrade", {"name": "haze"}, "synthesised on the device"),
    ("sdg.perceptual_weight", 0.1, "needs ImageNet VGG-16 weights"),
    ("sdg.beta", (0.2, 0.1), "sdg.beta"),
    ("sdg.guidance", "stereo", "sdg.guidance"),
])
def test_bad_values_are_named(key, value, match):
    cfg = sdg_scenes.get_config("smoke")
    parent, _, leaf = key.rpartition(".")
    node = cfg
    for part in parent.split("."):
        node = node[part]
    if leaf == "degrade":
        del node[leaf]
    node[leaf] = value
    with pytest.raises(ValueError, match=match):
        methods.validate(cfg)


def test_clear_photographs_need_a_depth_teacher():
    cfg = sdg_scenes.get_config("smoke")
    cfg.data.name, cfg.data.root = "image_folder", "/photos"
    with pytest.raises(ValueError, match="no true depth"):
        methods.validate(cfg)
    cfg.sdg.teacher_from = "runs/depth"
    methods.validate(cfg)


def _batch(cfg):
    bundle = factory.DataBundle(cfg, per_host_batch=cfg.batch_size)
    return next(bundle.train_iterator())


def test_training_haze_is_the_host_haze_of_the_teacher_depth():
    """The exact teacher (the scenes' true depth) fogs the batch as the host-side haze
    does with the same A and beta: one scattering model for training and validation."""
    cfg = sdg_scenes.get_config("smoke")
    method = DepthDehazeMethod(cfg)
    batch = _batch(cfg)
    clear = batch["clean"].astype(np.float32) / 255.0
    inv = np.asarray(method.true_inv_depth(batch))
    np.testing.assert_allclose(inv[..., 0], np.minimum(1.0, 2.0 / batch["depth"]), rtol=1e-6)
    from adverse_vision.ops import haze  # pylint: disable=import-outside-toplevel
    n = clear.shape[0]
    A, beta = np.full(n, 0.8, np.float32), np.full(n, 0.1, np.float32)
    ours = np.asarray(haze.scatter(jnp.asarray(clear), jnp.asarray(1.0 / inv[..., 0]),
                                   jnp.asarray(A), jnp.asarray(beta)))
    for i in range(2):
        host = degrade.haze(clear[i], np.random.default_rng(0), depth=batch["depth"][i],
                            A=0.8, beta=0.1)
        # min(1, near / z) caps the nearest pixels, the rest is the same depth map up to
        # its unit, which the haze's normalisation ignores.
        near = batch["depth"][i] < 2.0
        np.testing.assert_allclose(ours[i][~near], host[~near], atol=3e-6)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """A depth run, then a dehazing run taught by it (smoke sizes)."""
    root = tmp_path_factory.mktemp("sdg")
    depth_cfg = sdg_scenes.get_config("smoke,depth")
    depth = trainer_lib.train_and_evaluate(depth_cfg, str(root / "depth"), progress=False)
    cfg = sdg_scenes.get_config("smoke")
    cfg.sdg.teacher_from = str(root / "depth")
    dehaze = trainer_lib.train_and_evaluate(cfg, str(root / "dehaze"), progress=False)
    return root, depth, dehaze


def test_depth_stage_learns_the_scenes_depth(stages):
    _, depth, _ = stages
    assert set(depth["val"]) == {"l1", "delta1"} and 0.0 <= depth["val"]["delta1"] <= 1.0


def test_dehazing_stage_starts_from_its_teacher_and_keeps_it_frozen(stages):
    root, _, dehaze = stages
    assert dehaze["final_step"] == 4
    assert {"psnr", "ssim", "psnr_input", "ssim_input"} <= set(dehaze["val"])
    _, teacher, _ = trainer_lib.restore_for_eval(str(root / "depth"), "best")
    tr, variables, _ = trainer_lib.restore_for_eval(str(root / "dehaze"), "latest")
    frozen = jax.device_get(variables["teacher"]["params"])
    for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(jax.device_get(teacher["params"]))):
        np.testing.assert_array_equal(a, b)
    # The student's depth net started from the teacher and was trained on (distillation).
    student = jax.device_get(variables["params"]["depth"])
    moved = [float(np.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(student), jax.tree.leaves(frozen["depth"]))]
    assert max(moved) > 0 and np.median(moved) < 1.0


def test_loss_terms_and_gradients():
    cfg = sdg_scenes.get_config("smoke")
    tr = trainer_lib.Trainer(cfg)
    state = tr.init_state()
    batch = parallel.global_batch(_batch(cfg), tr.mesh)
    (loss, (model_state, metrics)), grads = jax.jit(jax.value_and_grad(
        lambda p: tr.method.loss_fn(p, state.model_state, batch, jax.random.key(0), 0),
        has_aux=True))(state.params)
    assert np.isfinite(float(loss)) and set(metrics) == {"rec", "distill"}
    assert jax.tree.structure(model_state) == jax.tree.structure(state.model_state)
    for group in ("depth", "mix", "dehazer"):
        norm = float(jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads[group]))))
        assert np.isfinite(norm) and norm > 0, group
    # Without depth guidance there is no depth net and no distillation term.
    cfg = sdg_scenes.get_config("smoke,noguide")
    tr = trainer_lib.Trainer(cfg)
    state = tr.init_state()
    assert set(state.params) == {"mix", "dehazer"}
    loss, (model_state, metrics) = jax.jit(lambda p: tr.method.loss_fn(
        p, state.model_state, batch, jax.random.key(0), 0))(state.params)
    assert set(metrics) == {"rec"}
    # The state keeps its structure (a checkpoint of it restores into a fresh state).
    assert jax.tree.structure(model_state) == jax.tree.structure(state.model_state)


def _write_pairs(root):
    """Two RESIDE-outdoor pairs of odd sizes (``gt/<id>``, ``hazy/<id>_<A>_<beta>``)."""
    rng = np.random.default_rng(0)
    for folder in ("hazy", "gt"):
        os.makedirs(root / folder)
    for i, (h, w) in enumerate([(45, 67), (70, 52)]):
        clear = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        hazy = (clear * 0.5 + 100).astype(np.uint8)
        Image.fromarray(clear).save(root / "gt" / f"{i:04d}.png")
        Image.fromarray(hazy).save(root / "hazy" / f"{i:04d}_0.8_0.1.png")


def test_real_pairs_are_scored_at_native_size(stages, tmp_path):
    """An evaluation entry of real pairs: every pair at its own (odd) size, and the
    released protocol's scores beside the native ones."""
    root, _, _ = stages
    _write_pairs(tmp_path / "pairs")
    from adverse_vision import evaluate  # pylint: disable=import-outside-toplevel
    from adverse_vision.config import eval_entry  # pylint: disable=import-outside-toplevel
    workdir = str(root / "dehaze")
    cfg = trainer_lib.load_workdir_config(workdir)
    tr, variables, _ = trainer_lib.restore_for_eval(workdir)
    with cfg.unlocked():
        cfg.evals.real = eval_entry("val", name="dehaze_pairs", root=str(tmp_path / "pairs"))
    bundle = factory.DataBundle(cfg, per_host_batch=8, method=tr.method)
    metrics, table = tr.method.report(tr, variables, bundle, "real", {})
    assert metrics["images"] == 2
    assert {"psnr", "ssim", "psnr_input", "psnr_official", "ssim_official"} <= set(metrics)
    assert "released protocol" in table and "native size" in table
    del evaluate


def test_prediction_writes_dehazed_and_depth_images_at_the_input_size(stages, tmp_path):
    root, _, _ = stages
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
                    ).save(folder / "odd.png")
    summary = predict.predict_folder(str(root / "dehaze"), str(folder), str(tmp_path / "out"))
    assert summary["images"] == 1
    for suffix in ("_dehazed.png", "_depth.png"):
        assert np.asarray(Image.open(tmp_path / "out" / f"odd{suffix}")).shape == (37, 53, 3)
    assert not os.path.exists(tmp_path / "out" / "odd.json")


def test_depth_colours_go_from_near_to_far():
    inv = np.linspace(1.0, 0.01, 50, dtype=np.float32).reshape(5, 10, 1)
    rgb = colorize_depth(inv)
    assert rgb.shape == (5, 10, 3) and rgb.min() >= 0 and rgb.max() <= 1
    # near is warm (red > blue), far is dark and cool
    assert rgb[0, 0, 0] > rgb[0, 0, 2] and rgb[-1, -1].sum() < rgb[0, 0].sum()


def _torchvision_vgg16(path, rng):
    """A torchvision-layout VGG-16 checkpoint (``features.N.*`` and ``classifier.*``) with
    random weights, as ``.npz``."""
    widths = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
              (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    state = {}
    for i, (cin, cout) in zip(indices, widths):
        state[f"features.{i}.weight"] = rng.normal(0, 0.05, (cout, cin, 3, 3)).astype(np.float32)
        state[f"features.{i}.bias"] = rng.normal(0, 0.05, (cout,)).astype(np.float32)
    state["classifier.6.weight"] = np.zeros((1000, 4096), np.float32)
    np.savez(path, **state)
    return state


def test_perceptual_loss_reads_torchvision_vgg16(tmp_path):
    """``sdg.vgg_from``: the torchvision VGG-16's first seven convolutions (OIHW) land in
    the frozen feature net (HWIO), the rest of the checkpoint is left, and the
    perceptual term joins the loss; a checkpoint of the wrong shape is named."""
    state = _torchvision_vgg16(tmp_path / "vgg16.npz", np.random.default_rng(0))
    cfg = sdg_scenes.get_config("smoke")
    cfg.sdg.perceptual_weight, cfg.sdg.vgg_from = 0.1, str(tmp_path / "vgg16.npz")
    tr = trainer_lib.Trainer(methods.validate(cfg))
    start = tr.start_state()
    vgg = jax.device_get(start.model_state["vgg"]["params"])
    np.testing.assert_array_equal(vgg["conv1_1"]["kernel"],
                                  state["features.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(vgg["conv3_3"]["bias"], state["features.14.bias"])
    batch = parallel.global_batch(_batch(cfg), tr.mesh)
    loss, (_, metrics) = jax.jit(lambda p: tr.method.loss_fn(
        p, start.model_state, batch, jax.random.key(0), 0))(start.params)
    assert set(metrics) == {"rec", "distill", "perceptual"}
    assert float(metrics["perceptual"]) > 0 and np.isfinite(float(loss))

    state["features.2.weight"] = state["features.2.weight"][:32]
    np.savez(tmp_path / "bad.npz", **state)
    cfg.sdg.vgg_from = str(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="bad.npz"):
        trainer_lib.Trainer(methods.validate(cfg)).start_state()


def test_clear_photographs_train_with_a_dehazing_run_as_teacher(stages, tmp_path):
    """``configs/sdg_reside.py`` at smoke sizes: a folder of clear photographs, the depth
    net of a depth-guided dehazing run as the teacher, real pairs scored at their
    native size during training (the ranking evaluation)."""
    root, _, _ = stages
    rng = np.random.default_rng(2)
    (tmp_path / "photos" / "GT").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (50 + i, 70, 3), dtype=np.uint8)).save(
            tmp_path / "photos" / "GT" / f"{i}.png")
    _write_pairs(tmp_path / "sots")
    cfg = sdg_reside.get_config("smoke")
    cfg.data.root = str(tmp_path / "photos")
    cfg.sdg.teacher_from = str(root / "dehaze")
    cfg.evals.sots.data.root = str(tmp_path / "sots")
    summary = trainer_lib.train_and_evaluate(cfg, str(tmp_path / "run"), progress=False)
    assert summary["final_step"] == 2 and summary["val"]["images"] == 2
    assert {"psnr", "psnr_input", "psnr_official"} <= set(summary["val"])
    _, variables, _ = trainer_lib.restore_for_eval(str(tmp_path / "run"), "latest")
    _, taught_by, _ = trainer_lib.restore_for_eval(str(root / "dehaze"), "best")
    for a, b in zip(jax.tree.leaves(jax.device_get(variables["teacher"]["params"])),
                    jax.tree.leaves(jax.device_get(taught_by["params"]["depth"]))):
        np.testing.assert_array_equal(a, b)


def test_stereo_check_fogs_the_real_photograph_by_its_depth(stages):
    """The motorcycle photograph is fogged more where its stereo depth is larger, and a
    dehazing run is scored on it against the clear photograph."""
    from adverse_vision.methods.depth_dehaze import stereo_check  # pylint: disable=import-outside-toplevel
    clear, foggy, depth_m = stereo_check.foggy_photograph(0.1, A=0.8, beta=0.1)
    assert clear.shape == foggy.shape == (50, 74, 3) and depth_m.shape == (50, 74)
    assert 0.5 < depth_m.min() < depth_m.max() < 20.0  # a room-sized scene, in metres
    change = np.abs(foggy.astype(np.float32) - clear).mean(-1)
    far = depth_m > np.median(depth_m)
    assert change[far].mean() > change[~far].mean()
    root, _, _ = stages
    (row,) = stereo_check.check([str(root / "dehaze")], scale=0.1)
    assert row["guidance"] == "learned" and np.isfinite(row["psnr"])
    assert row["psnr_gain"] == pytest.approx(row["psnr"] - row["psnr_input"])
    assert "(foggy input)" in stereo_check.table([row], 0.1, 0.8, 0.1)
    with pytest.raises(ValueError, match="--scale"):
        stereo_check.foggy_photograph(0.0, 0.8, 0.1)
