"""Optimisers and learning-rate schedules built from the ``optimizer`` config.

``sgd`` is the YOLOX / TogetherNet recipe: SGD with Nesterov momentum 0.937, weight decay 5e-4 on
convolution and linear weights only (never on BatchNorm parameters or biases), the
learning rate 1e-2 scaled by batch / 64, a quadratic warm-up from 0.1 x lr, a cosine
decay to 0.01 x lr, and the last 15 % of training held at that minimum. ``adamw``
(decoupled weight decay, same mask and schedule) converges faster in the short CPU
recipes.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def peak_lr(cfg: ml_collections.ConfigDict) -> float:
    return cfg.optimizer.base_lr * cfg.batch_size / 64.0


def warmup_cosine_schedule(peak: float, total_steps: int, warmup_fraction: float,
                           warmup_start: float, min_lr_ratio: float,
                           final_hold_fraction: float) -> optax.Schedule:
    """Quadratic warm-up, cosine decay, then a hold at the minimum (YOLOX ``yoloxwarmcos``)."""
    warmup = int(round(total_steps * warmup_fraction))
    hold = int(round(total_steps * final_hold_fraction))
    decay = max(total_steps - warmup - hold, 1)
    start = max(warmup_start * peak, 1e-6) if warmup else peak
    low = min_lr_ratio * peak

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = (peak - start) * (step / max(warmup, 1)) ** 2 + start
        t = jnp.clip((step - warmup) / decay, 0.0, 1.0)
        cosine = low + 0.5 * (peak - low) * (1.0 + jnp.cos(math.pi * t))
        return jnp.where(step < warmup, ramp, cosine)

    return schedule


def decay_mask(params: Any) -> Any:
    """True for convolution / linear kernels (ndim >= 2), False for norms and biases."""
    def is_weight(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        return name == "kernel" and x.ndim >= 2
    return jax.tree_util.tree_map_with_path(is_weight, params)


def make_optimizer(cfg: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    o = cfg.optimizer
    schedule = warmup_cosine_schedule(peak_lr(cfg), cfg.total_steps, o.warmup_fraction,
                                      o.warmup_start, o.min_lr_ratio, o.final_hold_fraction)
    parts = []
    if o.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip))
    if o.name == "sgd":
        if o.weight_decay > 0:
            # Added to the gradient before momentum, as torch.optim.SGD does.
            parts.append(optax.add_decayed_weights(o.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov))
    elif o.name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=o.weight_decay, mask=decay_mask))
    else:
        raise ValueError(f"config key 'optimizer.name' is {o.name!r}; expected 'sgd' or 'adamw'")
    return optax.chain(*parts), schedule


def ema_update(ema: Any, params: Any, decay: float, step: jax.Array) -> Any:
    """YOLOX's ramped EMA: d = decay * (1 - exp(-step / 2000))."""
    d = decay * (1.0 - jnp.exp(-jnp.asarray(step, jnp.float32) / 2000.0))
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
