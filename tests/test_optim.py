"""Learning-rate schedule and weight-decay mask of the YOLOX recipe."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adverse_vision import optim
from configs import yolox_scenes


def test_schedule_matches_the_recipe_by_hand():
    peak = 0.01
    sched = optim.warmup_cosine_schedule(peak, total_steps=100, warmup_fraction=0.03,
                                         warmup_start=0.1, min_lr_ratio=0.01,
                                         final_hold_fraction=0.15)
    # quadratic warm-up from 0.1 * peak over 3 steps
    np.testing.assert_allclose(float(sched(0)), 0.001, rtol=1e-6)
    np.testing.assert_allclose(float(sched(1)), (0.01 - 0.001) * (1 / 3) ** 2 + 0.001, rtol=1e-6)
    # cosine from step 3 to 85, then held at the minimum
    np.testing.assert_allclose(float(sched(3)), peak, rtol=1e-6)
    mid = 3 + 82 / 2
    np.testing.assert_allclose(float(sched(mid)), 0.0001 + 0.5 * (peak - 0.0001), rtol=1e-5)
    for s in (85, 90, 99):
        np.testing.assert_allclose(float(sched(s)), 0.0001, rtol=1e-5)


def test_peak_lr_scales_with_batch():
    cfg = yolox_scenes.get_config("smoke")
    cfg.batch_size = 128
    cfg.optimizer.base_lr = 0.01
    assert optim.peak_lr(cfg) == 0.02


def test_decay_mask_only_on_kernels():
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
              "pred": {"kernel": jnp.ones((1, 1, 4, 5)), "bias": jnp.ones(5)}}
    mask = optim.decay_mask(params)
    assert mask == {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False},
                    "pred": {"kernel": True, "bias": False}}


def test_sgd_matches_torch_semantics_by_hand():
    """torch.optim.SGD(nesterov, weight_decay): g' = g + wd p; b = m b + g'; p -= lr (g' + m b)."""
    cfg = yolox_scenes.get_config("")  # the official SGD recipe
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.nesterov
    cfg.optimizer.warmup_fraction = 0.0
    cfg.optimizer.final_hold_fraction = 0.0
    cfg.total_steps = 10**6  # lr ~ constant at the peak for two steps
    tx, _ = optim.make_optimizer(cfg)
    lr, m, wd = optim.peak_lr(cfg), cfg.optimizer.momentum, cfg.optimizer.weight_decay
    p = {"w": {"kernel": jnp.array([[1.0, -2.0]])}, "b": {"bias": jnp.array([0.5])}}
    g = {"w": {"kernel": jnp.array([[0.3, 0.1]])}, "b": {"bias": jnp.array([0.2])}}
    state = tx.init(p)
    ref_p = jax.tree.map(np.asarray, p)
    buf = jax.tree.map(np.zeros_like, ref_p)
    for _ in range(2):
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        for k, leaf in (("w", "kernel"), ("b", "bias")):
            gg = np.asarray(g[k][leaf]) + (wd * ref_p[k][leaf] if leaf == "kernel" else 0)
            buf[k][leaf] = m * buf[k][leaf] + gg
            ref_p[k][leaf] = ref_p[k][leaf] - lr * (gg + m * buf[k][leaf])
    for k, leaf in (("w", "kernel"), ("b", "bias")):
        np.testing.assert_allclose(np.asarray(p[k][leaf]), ref_p[k][leaf], rtol=1e-5)


def test_ema_ramp():
    ema = optim.ema_update({"a": jnp.zeros(())}, {"a": jnp.ones(())}, 0.9998, jnp.asarray(2000))
    d = 0.9998 * (1 - np.exp(-1.0))
    np.testing.assert_allclose(float(ema["a"]), 1 - d, rtol=1e-6)
