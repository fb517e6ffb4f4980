"""Losses of infrared-visible fusion (BDLF): the fusion loss, its SSIM and the critic's losses.

* :func:`gaussian_ssim`: SSIM with an 11x11 Gaussian window (sigma 1.5), constants
  ``(0.01 L)^2`` and ``(0.03 L)^2`` for data range ``L``, the window sums taken with
  zero padding at the borders ("same" output size) and the SSIM map averaged per
  image: the form of the ``pytorch_ssim`` package BDLF trains with (not
  scikit-image's evaluation SSIM of :mod:`adverse_vision.metrics.image`).
* :func:`fusion_loss`: ``|u - M|_1 + 1.1 (1 - SSIM(u, M))`` per image, against the
  saliency-weighted target ``M = s IR + (1 - s) Y_vis``
  (:func:`adverse_vision.data.saliency.fusion_target`).
* :func:`critic_loss` / :func:`generator_loss`: the Wasserstein-style losses of the
  pixel critic: the critic lowers ``0.5 (E D(fake) - E D(real))`` (real = the target
  M, fake = the fused image), the fusion network lowers ``-E D(fused)``.

Every loss takes ``valid`` (N,) and averages over the valid images only (0 when
none is valid), so padded samples of a batch contribute nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adverse_vision.losses import masked_mean

__all__ = ["SSIM_SIGMA", "SSIM_WEIGHT", "SSIM_WINDOW", "critic_loss", "fusion_loss",
           "gaussian_ssim", "gaussian_window", "generator_loss", "masked_mean"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
#: Weight of ``1 - SSIM`` in the fusion loss.
SSIM_WEIGHT = 1.1


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> jax.Array:
    """Normalised 1-D Gaussian taps centred on ``size // 2``."""
    x = jnp.arange(size, dtype=jnp.float32) - size // 2
    taps = jnp.exp(-jnp.square(x) / (2.0 * sigma * sigma))
    return taps / jnp.sum(taps)


def _blur(x: jax.Array, taps: jax.Array) -> jax.Array:
    """Separable zero-padded "same" filtering of every channel of (N, H, W, C)."""
    c, k = x.shape[-1], taps.shape[0]
    pad = k // 2
    dn = ("NHWC", "HWIO", "NHWC")
    col = jnp.tile(taps.reshape(k, 1, 1, 1), (1, 1, 1, c))
    row = jnp.tile(taps.reshape(1, k, 1, 1), (1, 1, 1, c))
    x = jax.lax.conv_general_dilated(x, col, (1, 1), ((pad, pad), (0, 0)), dimension_numbers=dn,
                                     feature_group_count=c)
    return jax.lax.conv_general_dilated(x, row, (1, 1), ((0, 0), (pad, pad)), dimension_numbers=dn,
                                        feature_group_count=c)


def gaussian_ssim(a: jax.Array, b: jax.Array, data_range: float = 1.0,
                  window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> jax.Array:
    """Per-image SSIM (N,) of two (N, H, W, C) batches (the mean of the SSIM map over
    pixels and channels)."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"gaussian_ssim: expected two (N, H, W, C) batches of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    c = a.shape[-1]
    stats = _blur(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1), gaussian_window(window, sigma))
    mu_a, mu_b = stats[..., :c], stats[..., c:2 * c]
    var_a = stats[..., 2 * c:3 * c] - mu_a * mu_a
    var_b = stats[..., 3 * c:4 * c] - mu_b * mu_b
    cov = stats[..., 4 * c:] - mu_a * mu_b
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return jnp.mean(ssim_map, axis=(1, 2, 3))


def fusion_loss(fused: jax.Array, target: jax.Array, valid: jax.Array,
                ssim_weight: float = SSIM_WEIGHT) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(loss, {"l1", "ssim"})``: ``|u - M|_1 + ssim_weight (1 - SSIM(u, M))``, mean over
    valid images (the L1 term a mean over pixels)."""
    l1 = jnp.mean(jnp.abs(fused.astype(jnp.float32) - target.astype(jnp.float32)),
                  axis=tuple(range(1, fused.ndim)))
    ssim = gaussian_ssim(fused, target)
    loss = masked_mean(l1 + ssim_weight * (1.0 - ssim), valid)
    return loss, {"l1": masked_mean(l1, valid), "ssim": masked_mean(ssim, valid)}


def _image_means(x: jax.Array) -> jax.Array:
    return jnp.mean(x.astype(jnp.float32), axis=tuple(range(1, x.ndim)))


def critic_loss(d_fake: jax.Array, d_real: jax.Array, valid: jax.Array) -> jax.Array:
    """``0.5 (E D(fake) - E D(real))`` over valid images: the critic's Wasserstein loss."""
    return 0.5 * (masked_mean(_image_means(d_fake), valid)
                  - masked_mean(_image_means(d_real), valid))


def generator_loss(d_fake: jax.Array, valid: jax.Array) -> jax.Array:
    """``-E D(fused)`` over valid images: the fusion network's adversarial loss."""
    return -masked_mean(_image_means(d_fake), valid)
