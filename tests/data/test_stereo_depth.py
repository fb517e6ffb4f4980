"""Depth from a stereo pair's disparity, and scikit-image's real stereo photograph."""

import numpy as np
import pytest

from adverse_vision.data.stereo_depth import (
    MOTORCYCLE_CALIBRATION,
    disparity_to_depth,
    motorcycle_depth,
    normalized_depth,
)


def test_depth_is_inverse_disparity_with_occlusions_filled_from_the_far_side():
    disparity = np.array([[10.0, np.inf, np.nan, 40.0, 20.0],
                          [np.inf, np.inf, 5.0, -3.0, np.inf],
                          [np.nan, np.nan, np.nan, np.nan, np.nan]])
    depth = disparity_to_depth(disparity, focal=100.0, baseline=2.0, doffs=0.0)
    assert depth.shape == (3, 5) and np.isfinite(depth).all()
    assert depth[0, 0] == pytest.approx(20.0) and depth[0, 3] == pytest.approx(5.0)
    # Between 20 (left) and 5 (right): the farther one, 20.
    assert depth[0, 1] == depth[0, 2] == pytest.approx(20.0)
    # One side only: that side; a negative disparity is unusable too.
    assert depth[1, 0] == depth[1, 1] == depth[1, 3] == depth[1, 4] == pytest.approx(40.0)
    # A row without any valid pixel: the farthest depth of the image.
    np.testing.assert_allclose(depth[2], 40.0)
    # doffs shifts the disparity first.
    assert disparity_to_depth(disparity, 100.0, 2.0, doffs=10.0)[0, 0] == pytest.approx(10.0)
    unit = normalized_depth(disparity, 100.0, 2.0)
    assert unit.dtype == np.float32 and unit.max() == 1.0
    np.testing.assert_allclose(unit, depth / 40.0, rtol=1e-6)
    with pytest.raises(ValueError, match="no pixel has a usable"):
        disparity_to_depth(np.full((2, 2), np.inf), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"expected a disparity map \(H, W\)"):
        disparity_to_depth(np.ones((2, 2, 3)), 1.0, 1.0)
    with pytest.raises(ValueError, match="focal and baseline must be positive"):
        disparity_to_depth(np.ones((2, 2)), 0.0, 1.0)


def test_the_motorcycle_photograph_gets_a_plausible_depth():
    from skimage import data as skdata

    left, depth = motorcycle_depth()
    _, _, disparity = skdata.stereo_motorcycle()
    assert left.shape == (500, 741, 3) and left.dtype == np.uint8
    assert depth.shape == (500, 741) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and depth.min() > 0 and depth.max() == 1.0
    known = np.isfinite(disparity)
    assert (~known).sum() > 1000  # the map really has holes to fill
    # Where the disparity is known, depth is exactly f B / (d + doffs), normalised.
    c = MOTORCYCLE_CALIBRATION
    metric = c["focal"] * c["baseline"] / (disparity[known] + c["doffs"])
    np.testing.assert_allclose(depth[known], metric / metric.max(), rtol=1e-5)
    _, millimetres = motorcycle_depth(normalize=False)
    np.testing.assert_allclose(millimetres[known], metric, rtol=1e-6)  # float32 disparity
    np.testing.assert_allclose(millimetres / millimetres.max(), depth, rtol=1e-6)
    # Fogged with the scattering model, farther pixels move more towards the airlight.
    t = np.exp(-2.0 * depth)[..., None]
    fogged = left / 255.0 * t + 0.9 * (1 - t)
    lift = (fogged - left / 255.0).mean(axis=-1)
    far, near = depth > np.quantile(depth, 0.8), depth < np.quantile(depth, 0.2)
    assert lift[far].mean() > lift[near].mean() + 0.05
