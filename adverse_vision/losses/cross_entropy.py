"""Cross-entropy losses of classifiers and segmenters, over valid images only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adverse_vision.losses import masked_mean
from adverse_vision.models.dnhl import upsample_logits

#: Mask label of pixels without a class (VOC's boundaries and "void").
IGNORE_LABEL = 255


def cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """Classification cross-entropy, mean over valid images."""
    return masked_mean(
        optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels), valid)


def pixel_cross_entropy(logits: jax.Array, mask: jax.Array, valid: jax.Array) -> jax.Array:
    """Per-pixel cross-entropy of stride-8 ``logits`` upsampled to the mask's size, mean
    over the labelled pixels (label 255 ignored) of valid images."""
    logits = upsample_logits(logits, mask.shape[1], mask.shape[2]).astype(jnp.float32)
    labels = mask.astype(jnp.int32)
    keep = (labels != IGNORE_LABEL) & valid[:, None, None]
    per = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(keep, labels, 0))
    w = keep.astype(jnp.float32)
    return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)
