"""The atmospheric scattering model on the device, for haze synthesised from a depth
that a network estimates during training.

The same model and the same depth-to-distance mapping as the host-side
:func:`adverse_vision.degrade.haze` (``I = J t + A (1 - t)``, ``t = exp(-beta d)``, ``d``
from :func:`adverse_vision.degrade.haze_distance`: depth normalised per image on a log
scale onto the VOC-FOG distance range of the image size), written in jax so that a
batch can be fogged with the depth of a frozen network inside the jitted step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from adverse_vision.degrade import MIN_RELATIVE_DEPTH


def haze_distance(depth: jax.Array) -> jax.Array:
    """(B, H, W) depth (any unit, larger = farther, > 0) -> the distance ``d`` of the
    scattering model, as :func:`adverse_vision.degrade.haze_distance` computes it."""
    z = depth.astype(jnp.float32)
    height, width = z.shape[-2:]
    d_hi = math.sqrt(max(height, width))
    d_lo = max(d_hi - 0.04 * math.hypot(height // 2, width // 2), 0.0)
    z_max = jnp.max(z, axis=(-2, -1), keepdims=True)
    z = jnp.maximum(z, z_max * MIN_RELATIVE_DEPTH)
    z_min = jnp.min(z, axis=(-2, -1), keepdims=True)
    span = jnp.log(z_max / z_min)
    flat = span < 1e-9
    r = jnp.where(flat, 1.0, jnp.log(z / z_min) / jnp.where(flat, 1.0, span))
    return d_lo + (d_hi - d_lo) * r


def scatter(clear: jax.Array, depth: jax.Array, airlight: jax.Array, beta: jax.Array) -> jax.Array:
    """Hazy images ``clear t + A (1 - t)`` in [0, 1]: ``clear`` (B, H, W, C) in [0, 1],
    ``depth`` (B, H, W), ``airlight`` and ``beta`` (B,) per image."""
    t = jnp.exp(-beta[:, None, None, None] * haze_distance(depth)[..., None])
    return jnp.clip(clear * t + airlight[:, None, None, None] * (1.0 - t), 0.0, 1.0)


def draw(key: jax.Array, n: int, low_high) -> jax.Array:
    """``n`` values uniform in ``low_high`` (a number or a (low, high) pair)."""
    low, high = (low_high, low_high) if not isinstance(low_high, (tuple, list)) else low_high
    return jax.random.uniform(key, (n,), minval=float(low), maxval=float(high))
