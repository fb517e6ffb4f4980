"""TogetherNet as a trainer method: joint loss, gradients, targets, evaluation.

One narrow model at 64 px, compiled once for the loss and its gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from adverse_vision import config as config_lib
from adverse_vision import methods
from adverse_vision.data import factory
from adverse_vision.methods.detection import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from adverse_vision.methods.togethernet import (
    MAX_PSNR,
    TogetherNetEvaluator,
    TogetherNetMethod,
    real_region,
)
from configs import togethernet_scenes

BATCH = 6  # any batch size: no hazy/clear split of the batch


def _cfg(**model):
    cfg = togethernet_scenes.get_config("smoke")
    cfg.image_size = 64
    cfg.data.scene_size = 64
    cfg.data.num_train = 16
    cfg.data.num_val = 8
    for key, value in model.items():
        cfg.model[key] = value
    return cfg


@pytest.fixture(scope="module")
def setup():
    cfg = _cfg()
    method = methods.build(cfg)
    assert isinstance(method, TogetherNetMethod)
    variables = jax.jit(method.init_variables)(jax.random.key(0, impl="rbg"))
    params = variables.pop("params")
    batch = dict(next(factory.DataBundle(cfg, per_host_batch=BATCH).train_iterator()))
    batch["valid"] = np.array([True] * (BATCH - 1) + [False])  # the last one is "undecodable"
    assert np.abs(batch["image"].astype(int) - batch["clean"]).mean() > 5  # foggy input

    @jax.jit
    def run(params, batch, rng):
        grad_fn = jax.value_and_grad(method.loss_fn, has_aux=True)
        (loss, (model_state, metrics)), grads = grad_fn(params, variables, batch, rng, jnp.int32(0))
        # The decoder output of the same forward pass (same statistics and dropout draw).
        out, _ = method.model.apply({"params": params, **variables}, normalize_images(batch["image"]),
                                    train=True, restore=True, mutable=list(variables),
                                    rngs={"dropout": rng})
        return loss, model_state, metrics, grads, out["restored"]

    rng = jax.random.key(1)
    result = jax.device_get(run(params, batch, rng))
    return dict(cfg=cfg, method=method, variables=variables, params=params, batch=batch,
                run=run, rng=rng, result=result)


def _norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


def test_loss_is_finite_and_gradient_reaches_decoder_and_detector(setup):
    loss, model_state, metrics, grads, _ = setup["result"]
    assert np.isfinite(loss) and loss > 0
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert set(grads) == {"backbone", "dtfe", "neck", "head", "decoder"}
    for part in grads:  # the restoration trains the encoder too, the detection the head
        assert _norm(grads[part]) > 1e-6, part
    assert set(metrics) >= {"det", "restore_mse", "iou", "obj", "cls", "l1", "num_fg"}
    assert metrics["num_fg"] > 0
    # BatchNorm statistics of the decoder were updated as well.
    assert jax.tree.structure(model_state) == jax.tree.structure(setup["variables"])
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(model_state["batch_stats"]["decoder"]),
                                                  jax.tree.leaves(setup["variables"]["batch_stats"]["decoder"]))]
    assert max(moved) > 0


def test_loss_is_weighted_sum_and_mse_targets_the_clear_image(setup):
    loss, _, metrics, _, restored = setup["result"]
    batch = setup["batch"]
    valid = batch["valid"]
    target = batch["clean"].astype(np.float64) / 255.0 * 2.0 - 1.0
    per_image = np.mean(np.square(restored - target), axis=(1, 2, 3))
    expected = per_image[valid].mean()  # the invalid sample does not count
    assert metrics["restore_mse"] == pytest.approx(expected, rel=1e-5)
    assert abs(per_image.mean() - expected) > 1e-4  # so excluding it matters
    hazy = batch["image"].astype(np.float64) / 255.0 * 2.0 - 1.0
    against_hazy = np.mean(np.square(restored - hazy), axis=(1, 2, 3))[valid].mean()
    assert abs(against_hazy - expected) > 1e-3
    assert loss == pytest.approx(0.2 * metrics["det"] + 0.8 * metrics["restore_mse"], rel=1e-5)
    assert restored.min() >= -1.0 and restored.max() <= 1.0  # tanh


def test_dropout_draws_from_the_rng(setup):
    run, params, batch = setup["run"], setup["params"], setup["batch"]
    same = jax.device_get(run(params, batch, setup["rng"]))[0]
    other = jax.device_get(run(params, batch, jax.random.key(7)))[0]
    assert same == setup["result"][0]
    assert other != same


def test_restore_weight_zero_gives_no_decoder_gradient(setup):
    method0 = TogetherNetMethod(_cfg(restore_weight=0.0))
    params, variables, batch = setup["params"], setup["variables"], setup["batch"]

    @jax.jit
    def decoder_grad(decoder):
        def loss(dec):
            value, (_, metrics) = method0.loss_fn(dict(params, decoder=dec), variables, batch,
                                                   setup["rng"], jnp.int32(0))
            return value, metrics
        return jax.grad(loss, has_aux=True)(decoder)

    grads, metrics = jax.device_get(decoder_grad(params["decoder"]))
    assert jax.tree.leaves(grads) and all(np.all(g == 0) for g in jax.tree.leaves(grads))
    assert "restore_mse" not in metrics
    # The detection term is the one of the joint loss (same parameters, same rng).
    assert metrics["det"] == pytest.approx(setup["result"][2]["det"], rel=1e-5)


def test_targets_and_restored_image_mapping(setup):
    clean = np.array([[[[0, 128, 255]]]], np.uint8)
    signed = np.asarray(setup["method"].restore_target(jnp.asarray(clean)))
    np.testing.assert_allclose(signed, [[[[-1.0, 128 / 255 * 2 - 1, 1.0]]]], atol=1e-6)
    imagenet = TogetherNetMethod(_cfg(restore_target="imagenet"))
    target = np.asarray(imagenet.restore_target(jnp.asarray(clean)))
    expected = (clean / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(target, expected, atol=1e-5)
    # The restored image in [-1, 1] inverts the target map (clipped to the image range).
    back = np.asarray(imagenet.restored_image(jnp.asarray(target)))
    np.testing.assert_allclose(back, signed, atol=1e-5)
    np.testing.assert_allclose(np.asarray(setup["method"].restored_image(jnp.asarray(signed))), signed)


def test_predict_restores_only_when_needed(setup):
    method, variables = setup["method"], {"params": setup["params"], **setup["variables"]}
    batch = {"image": jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.uint8)}
    assert method.eval_restore  # foggy validation: the clear twin is a reference
    out = jax.eval_shape(method.predict, variables, batch)
    assert out["restored"].shape == (2, 64, 64, 3) and out["restored"].dtype == jnp.float32
    assert set(out) == {"boxes", "scores", "classes", "valid", "restored"}
    assert "restored" not in jax.eval_shape(lambda v, b: method.predict(v, b, restore=False),
                                            variables, batch)
    cfg = _cfg()
    cfg.data.val_degrade = {"name": "none"}  # as the ``clear`` and ``rtts`` variants
    clear = TogetherNetMethod(cfg)
    assert not clear.eval_restore
    # A foggy evaluation entry beside a clear validation, or a mixture of specs: restored.
    cfg.evals.foggy = config_lib.eval_entry("val", val_degrade={"name": "haze"})
    assert TogetherNetMethod(cfg).eval_restore
    cfg = _cfg()
    config_lib.set_degrade_mixture(cfg, "val_degrade", [config_lib.degrade_spec("none"),
                                                        config_lib.degrade_spec("haze")])
    assert TogetherNetMethod(cfg).eval_restore
    assert "restored" in jax.eval_shape(clear.predict_with_restoration, variables, batch)


def _letterboxed(rng, size=32, h=16, w=32):
    """A (1, size, size, 3) batch of one image placed at rows 8..24 (grey padding)."""
    clean = np.full((1, size, size, 3), 114, np.uint8)
    clean[0, 8:8 + h] = rng.integers(0, 256, (h, w, 3))
    hazy = clean.copy()
    hazy[0, 8:8 + h] = np.clip(clean[0, 8:8 + h] * 0.6 + 100, 0, 255).astype(np.uint8)
    restored = clean / 127.5 - 1.0
    restored[0, 8:8 + h] += rng.normal(0, 0.05, (h, w, 3))
    restored[0, :8] = 1.0  # padding rows: errors that must not count
    batch = {"image": hazy, "clean": clean, "valid": np.array([True]),
             "scale": np.array([0.5], np.float32), "offset": np.array([[0, 8]], np.float32),
             "orig_size": np.array([[h * 2, w * 2]], np.int32),
             "boxes": np.zeros((1, 2, 4), np.float32), "classes": np.zeros((1, 2), np.int32),
             "box_mask": np.zeros((1, 2), bool), "difficult": np.zeros((1, 2), bool)}
    detections = {"boxes": np.zeros((1, 3, 4), np.float32), "scores": np.zeros((1, 3), np.float32),
                  "classes": np.zeros((1, 3), np.int32), "valid": np.zeros((1, 3), bool)}
    return batch, detections, restored


def test_evaluator_psnr_over_real_pixels():
    rng = np.random.default_rng(0)
    batch, detections, restored = _letterboxed(rng)
    assert real_region(0.5, (0, 8), (32, 64), 32) == (slice(8, 24), slice(0, 32))
    ev = TogetherNetEvaluator(("person", "car"))
    ev.add(dict(detections, restored=restored), batch)
    # A padding sample (invalid) is ignored.
    pad = {k: (np.ones_like(v) if k in ("scale", "orig_size") else np.zeros_like(v))
           for k, v in batch.items()}
    ev.add(dict(detections, restored=np.zeros_like(restored)), pad)
    result = ev.compute()
    clean01 = batch["clean"][0, 8:24] / 255.0
    expected_restored = peak_signal_noise_ratio(clean01, (restored[0, 8:24] + 1) / 2, data_range=1.0)
    expected_input = peak_signal_noise_ratio(clean01, batch["image"][0, 8:24] / 255.0, data_range=1.0)
    assert set(result) == {"mAP", "psnr_restored", "psnr_input"}
    assert result["psnr_restored"] == pytest.approx(expected_restored, abs=1e-9)
    assert result["psnr_input"] == pytest.approx(expected_input, abs=1e-9)
    assert 20 < expected_restored < 40 and expected_input < expected_restored
    assert "PSNR" in ev.table()


def test_evaluator_without_restoration_reports_map_only_and_caps_identical():
    rng = np.random.default_rng(1)
    batch, detections, restored = _letterboxed(rng)
    ev = TogetherNetEvaluator(("person", "car"))
    ev.add(detections, batch)
    assert set(ev.compute()) == {"mAP"}
    ev = TogetherNetEvaluator(("person", "car"))
    same = dict(batch, image=batch["clean"])
    ev.add(dict(detections, restored=restored), same)
    assert ev.compute()["psnr_input"] == MAX_PSNR  # identical images: capped, not inf


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="model.restore_weight"):
        methods.validate(_cfg(restore_weight=-1.0))
    with pytest.raises(ValueError, match="model.dropout"):
        methods.validate(_cfg(dropout=1.0))
