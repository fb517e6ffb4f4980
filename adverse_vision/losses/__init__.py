"""Losses shared by the methods, and the mean over a batch's valid images they end in."""

import jax
import jax.numpy as jnp


def masked_mean(per_image: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of (N,) values over the valid images (0 when none is)."""
    w = valid.astype(jnp.float32)
    return jnp.sum(per_image * w) / jnp.maximum(jnp.sum(w), 1.0)
