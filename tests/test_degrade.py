"""Tests for the image degradations."""

import math

import numpy as np
import pytest

from adverse_vision import degrade


def _image(shape=(24, 32, 3), seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def test_vocfog_depth_by_hand():
    d = degrade.vocfog_depth(16, 16)
    assert d.shape == (16, 16) and d.dtype == np.float32
    assert d[8, 8] == pytest.approx(4.0)  # centre: sqrt(16)
    assert d[0, 0] == pytest.approx(4.0 - 0.04 * math.sqrt(8**2 + 8**2))
    assert d[15, 15] == pytest.approx(4.0 - 0.04 * math.sqrt(7**2 + 7**2))
    d = degrade.vocfog_depth(10, 20)
    assert d[5, 10] == pytest.approx(math.sqrt(20))
    assert d[9, 0] == pytest.approx(math.sqrt(20) - 0.04 * math.sqrt(4**2 + 10**2))
    assert d.max() == d[5, 10]


def test_haze_reproduces_the_scattering_model():
    image = _image((16, 16, 3))
    out = degrade.haze(image, np.random.default_rng(0), A=0.6, beta=0.1)
    for (y, x), d in {(8, 8): 4.0, (0, 0): 4.0 - 0.04 * math.sqrt(128), (5, 12): 4.0 - 0.04 * 5.0}.items():
        t = math.exp(-0.1 * d)
        np.testing.assert_allclose(out[y, x], image[y, x] * t + 0.6 * (1 - t), rtol=1e-5)


def test_haze_draws_beta_from_the_range():
    image = _image((16, 16, 3))
    gray = np.full((16, 16, 3), 0.2, np.float32)
    betas = []
    for seed in range(30):
        out = degrade.haze(gray, np.random.default_rng(seed), A=1.0, beta=(0.05, 0.14))
        t = (1.0 - out[8, 8, 0]) / 0.8  # J = 0.2, A = 1 at the centre where d = 4
        betas.append(-math.log(t) / 4.0)
    assert 0.05 - 1e-4 <= min(betas) < 0.07 and 0.12 < max(betas) <= 0.14 + 1e-4
    assert degrade.haze(image, np.random.default_rng(1)).dtype == np.float32


def test_haze_edge_cases():
    image = _image()
    np.testing.assert_allclose(degrade.haze(image, np.random.default_rng(0), beta=0.0), image, atol=1e-7)
    out = degrade.haze(image, np.random.default_rng(0), A=1.0, beta=50.0)
    np.testing.assert_allclose(out, 1.0, atol=1e-6)
    out = degrade.haze(image, np.random.default_rng(0), A=0.3, beta=50.0)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_haze_with_depth_fogs_farther_pixels_more():
    h, w = 20, 12
    depth = np.repeat(np.geomspace(2.0, 200.0, h)[:, None], w, axis=1).astype(np.float32)
    gray = np.full((h, w, 3), 0.1, np.float32)
    out = degrade.haze(gray, np.random.default_rng(0), depth=depth, A=0.9, beta=0.1)
    column = out[:, 3, 0]
    assert np.all(np.diff(column) > 0)  # closer to the airlight with distance
    # The nearest row gets the fog of a VOC-FOG corner, the farthest that of the centre.
    d = degrade.vocfog_depth(h, w)
    for row, expected_d in ((0, d.min()), (h - 1, d.max())):
        t = math.exp(-0.1 * expected_d)
        assert column[row] == pytest.approx(0.1 * t + 0.9 * (1 - t), rel=1e-5)
    # The depth unit does not matter.
    again = degrade.haze(gray, np.random.default_rng(0), depth=depth * 1000.0, A=0.9, beta=0.1)
    np.testing.assert_allclose(again, out, rtol=1e-5)


def test_haze_distance_range_and_flat_depth():
    depth = np.random.default_rng(0).uniform(1.0, 50.0, (3, 10, 14)).astype(np.float32)
    d = degrade.haze_distance(depth)
    lo = math.sqrt(14) - 0.04 * math.hypot(5, 7)
    assert d.shape == depth.shape
    np.testing.assert_allclose(d.min(axis=(1, 2)), lo, rtol=1e-5)
    np.testing.assert_allclose(d.max(axis=(1, 2)), math.sqrt(14), rtol=1e-5)
    np.testing.assert_allclose(degrade.haze_distance(np.full((4, 4), 7.0)), 2.0)


def test_haze_batch_draws_per_image_and_checks_depth():
    image = np.stack([_image()] * 2)
    out = degrade.haze(image, np.random.default_rng(0), beta=(0.05, 0.14))
    assert out.shape == image.shape and not np.allclose(out[0], out[1])
    out = degrade.haze(image, np.random.default_rng(0), beta=0.1)
    np.testing.assert_array_equal(out[0], out[1])
    depth = np.ones((2, 24, 32), np.float32)
    assert degrade.haze(image, np.random.default_rng(0), depth=depth).shape == image.shape
    with pytest.raises(ValueError, match="depth shape"):
        degrade.haze(image, np.random.default_rng(0), depth=np.ones((24, 31)))
    with pytest.raises(ValueError, match="> 0"):
        degrade.haze(image, np.random.default_rng(0), depth=np.zeros((24, 32)))


def test_transmission():
    np.testing.assert_allclose(
        degrade.transmission(np.array([0.0, 2.0]), 0.5), [1.0, math.exp(-1.0)], rtol=1e-6
    )


def test_noise_std_matches_sigma():
    image = np.full((128, 128, 3), 0.5, np.float32)
    out = degrade.gaussian_noise(image, np.random.default_rng(0), 25.0, clip=False)
    assert out.dtype == np.float32
    assert np.std(out - image) == pytest.approx(25.0 / 255.0, rel=0.02)
    assert abs(np.mean(out - image)) < 0.002
    big = degrade.gaussian_noise(image, np.random.default_rng(0), 200.0, clip=False)
    assert big.min() < 0.0 and big.max() > 1.0
    clipped = degrade.gaussian_noise(image, np.random.default_rng(0), 200.0)
    assert clipped.min() == 0.0 and clipped.max() == 1.0


def test_blind_noise_draws_one_sigma_from_the_list():
    image = np.full((64, 64, 3), 0.5, np.float32)
    seen = set()
    for seed in range(12):
        std = np.std(degrade.gaussian_noise(image, np.random.default_rng(seed), [5, 50], clip=False) - image)
        level = min((5, 50), key=lambda s: abs(std - s / 255.0))
        assert std == pytest.approx(level / 255.0, rel=0.05)
        seen.add(level)
    assert seen == {5, 50}
    with pytest.raises(ValueError, match="sigma"):
        degrade.gaussian_noise(image, np.random.default_rng(0), "high")


def test_low_light_darkens_with_the_documented_model():
    image = _image((32, 32, 3))
    out = degrade.low_light(image, np.random.default_rng(0))
    assert out.mean() < 0.5 * image.mean()
    clean = degrade.low_light(image, np.random.default_rng(0), gamma=2.0, gain=0.5, shot=0.0, read=0.0)
    np.testing.assert_allclose(clean, 0.5 * image**2, rtol=1e-5)
    # Shot noise grows with the signal.
    bright = np.full((64, 64, 3), 1.0, np.float32)
    dim = np.full((64, 64, 3), 0.2, np.float32)
    params = {"gamma": 1.0, "gain": 1.0, "shot": 0.01, "read": 0.0}
    std_bright = np.std(degrade.low_light(bright * 0.5, np.random.default_rng(0), **params))
    std_dim = np.std(degrade.low_light(dim * 0.5, np.random.default_rng(0), **params))
    assert std_bright == pytest.approx(math.sqrt(0.01 * 0.5), rel=0.05)
    assert std_dim == pytest.approx(math.sqrt(0.01 * 0.1), rel=0.05)


@pytest.mark.parametrize("name", ["rain", "snow"])
def test_weather_changes_the_image_deterministically(name):
    image = _image((48, 64, 3)) * 0.6
    fn = getattr(degrade, name)
    out = fn(image, np.random.default_rng(3))
    assert out.shape == image.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.mean(np.abs(out - image)) > 0.01
    assert out.mean() > image.mean()  # streaks and flakes are bright
    np.testing.assert_array_equal(out, fn(image, np.random.default_rng(3)))
    assert not np.array_equal(out, fn(image, np.random.default_rng(4)))


def test_rain_never_darkens_and_follows_the_angle():
    black = np.zeros((64, 64, 3), np.float32)
    out = degrade.rain(black, np.random.default_rng(0), density=0.002, length=20, angle=0.0, intensity=1.0)
    assert np.all(out >= 0.0) and out.max() > 0.5
    layer = out[..., 0]
    # Vertical streaks: neighbouring rows correlate far more than neighbouring columns.
    vertical = np.corrcoef(layer[1:].ravel(), layer[:-1].ravel())[0, 1]
    horizontal = np.corrcoef(layer[:, 1:].ravel(), layer[:, :-1].ravel())[0, 1]
    assert vertical > 0.8 and vertical > horizontal + 0.2


def test_snow_flake_size_and_veil():
    black = np.zeros((64, 64, 3), np.float32)
    veil_only = degrade.snow(black, np.random.default_rng(0), density=0.0, veil=0.2)
    np.testing.assert_allclose(veil_only, 0.18, rtol=1e-5)
    small = degrade.snow(black, np.random.default_rng(0), density=0.002, size=1.0, veil=0.0)
    large = degrade.snow(black, np.random.default_rng(0), density=0.002, size=4.0, veil=0.0)
    assert (large > 0.5).mean() > 4 * (small > 0.5).mean() > 0


@pytest.mark.parametrize("name", degrade.DEGRADATIONS)
def test_every_degradation_keeps_shape_and_input(name):
    for shape in ((20, 24, 3), (2, 20, 24, 3)):
        image = _image(shape)
        before = image.copy()
        out = degrade.apply(name, image, np.random.default_rng(0))
        assert out.shape == shape and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        np.testing.assert_array_equal(image, before)
        if name != "none":
            assert not np.allclose(out, image)
    np.testing.assert_array_equal(degrade.apply("none", image, np.random.default_rng(0)), image)


def test_apply_passes_parameters_and_reports_errors():
    image = _image()
    direct = degrade.gaussian_noise(image, np.random.default_rng(5), sigma=15)
    np.testing.assert_array_equal(degrade.apply("noise", image, np.random.default_rng(5), sigma=15), direct)
    with pytest.raises(ValueError, match=r"unknown degradation 'fog'.*'haze'"):
        degrade.apply("fog", image, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"'rain' has no parameter.*'sigma'"):
        degrade.apply("rain", image, np.random.default_rng(0), sigma=3)


def test_bad_inputs_get_clear_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="float in"):
        degrade.haze(np.zeros((8, 8, 3), np.uint8), rng)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        degrade.rain(np.zeros((8, 8), np.float32), rng)
    with pytest.raises(ValueError, match="'beta'.*above"):
        degrade.haze(_image(), rng, beta=(0.2, 0.1))
    with pytest.raises(ValueError, match="'gamma'"):
        degrade.low_light(_image(), rng, gamma=(1, 2, 3))
    with pytest.raises(ValueError, match="'size'"):
        degrade.snow(_image(), rng, size=0.0)


def test_patchy_haze_is_haze_with_a_varying_density_and_tinted_airlight():
    image = _image((32, 48, 3))
    depth = np.repeat(np.linspace(2.0, 60.0, 48, dtype=np.float32)[None], 32, 0)
    even = degrade.haze(image, np.random.default_rng(0), depth=depth, A=0.8, beta=0.1)
    flat = degrade.patchy_haze(image, np.random.default_rng(0), depth=depth, A=0.8, beta=0.1,
                               variation=0.0, tint=0.0)
    np.testing.assert_allclose(flat, even, atol=1e-6)
    # banks and gaps: at one depth, on a black image, the fog varies over the image
    black, at_10m = np.zeros((64, 64, 3), np.float32), np.full((64, 64), 10.0, np.float32)
    kw = dict(depth=at_10m, A=0.8, beta=0.1)
    assert degrade.haze(black, np.random.default_rng(1), **kw)[..., 0].std() < 1e-6
    patchy = degrade.patchy_haze(black, np.random.default_rng(1), variation=0.8, cells=3,
                                 tint=0.0, **kw)
    assert patchy[..., 0].std() > 0.02
    # dense fog shows the airlight, each channel within the tint of A
    veil = degrade.patchy_haze(black, np.random.default_rng(2), A=0.8, beta=5.0, variation=0.0,
                               tint=0.05)
    channels = veil.reshape(-1, 3).mean(0)
    assert np.all(np.abs(channels / 0.8 - 1.0) <= 0.05 + 1e-6) and np.ptp(channels) > 0
    with pytest.raises(ValueError, match="'tint'"):
        degrade.patchy_haze(image, np.random.default_rng(0), tint=1.5)
    with pytest.raises(ValueError, match="patchy_haze: depth shape"):
        degrade.patchy_haze(image, np.random.default_rng(0), depth=np.ones((3, 3)))
