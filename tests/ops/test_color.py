"""YCrCb conversions and the fused colour image."""

import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.ops.color import fused_color, luminance, rgb_to_ycrcb, ycrcb_to_rgb


def test_known_colours_and_round_trip():
    rgb = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
    ycc = np.asarray(rgb_to_ycrcb(rgb))
    np.testing.assert_allclose(ycc[:, 0], [0.299, 0.587, 0.114, 0.5], atol=1e-6)
    np.testing.assert_allclose(ycc[0, 1], 0.713 * (1 - 0.299) + 0.5, atol=1e-6)
    np.testing.assert_allclose(ycc[3, 1:], [0.5, 0.5], atol=1e-6)  # grey has no chroma
    x = np.random.default_rng(0).random((4, 5, 6, 3)).astype(np.float32)
    back = np.asarray(ycrcb_to_rgb(rgb_to_ycrcb(jnp.asarray(x))))
    assert np.abs(back - x).max() < 3e-3  # the rounded BT.601 constants
    np.testing.assert_allclose(np.asarray(luminance(x))[..., 0], x @ [0.299, 0.587, 0.114], rtol=1e-5)


def test_fused_color_modes():
    rng = np.random.default_rng(1)
    vis = jnp.asarray(rng.random((2, 8, 8, 3)), jnp.float32)
    y = jnp.asarray(rng.random((2, 8, 8, 1)) * 0.5, jnp.float32)
    per_image = np.asarray(fused_color(y, vis, "image"))
    for i in range(2):
        assert per_image[i].min() == pytest.approx(0.0, abs=1e-6)
        assert per_image[i].max() == pytest.approx(1.0, abs=1e-6)
    batch = np.asarray(fused_color(y, vis, "batch"))
    assert batch.min() == pytest.approx(0.0, abs=1e-6) and batch.max() == pytest.approx(1.0, abs=1e-6)
    # Per-image normalisation does not depend on the other images of the batch.
    alone = np.asarray(fused_color(y[:1], vis[:1], "image"))
    np.testing.assert_allclose(alone[0], per_image[0], atol=1e-6)
    clipped = np.asarray(fused_color(y + 2.0, vis, "none"))
    assert clipped.max() <= 1.0 and clipped.min() >= 0.0
    with pytest.raises(ValueError, match="minmax"):
        fused_color(y, vis, "global")
