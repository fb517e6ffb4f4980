"""PSNR and SSIM against scikit-image, on random and real images, single and batched."""

import numpy as np
import pytest
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from adverse_vision.metrics.image import psnr, ssim


def _noisy(image, sigma, seed, peak):
    rng = np.random.default_rng(seed)
    out = np.asarray(image, np.float64) + rng.normal(0.0, sigma, np.shape(image))
    return np.clip(out, 0, peak)


def _sk_ssim(a, b, data_range):
    channel_axis = -1 if np.ndim(a) == 3 else None
    return structural_similarity(a, b, data_range=data_range, channel_axis=channel_axis)


@pytest.mark.parametrize("shape", [(7, 7, 3), (9, 13, 3), (31, 24, 1), (40, 33, 4), (20, 17)])
def test_random_images_match_skimage(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.random(shape)
    b = np.clip(a + 0.2 * rng.standard_normal(shape), 0, 1)
    assert ssim(a, b, 1.0) == pytest.approx(_sk_ssim(a, b, 1.0), abs=1e-6)
    assert psnr(a, b, 1.0) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-6)
    # Unrelated images score far lower than a noisy copy.
    c = rng.random(shape)
    assert ssim(a, c, 1.0) == pytest.approx(_sk_ssim(a, c, 1.0), abs=1e-6)
    assert ssim(a, c, 1.0) < ssim(a, b, 1.0)


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_real_colour_images_match_skimage(name):
    clean = getattr(skdata, name)()[:160, :200]  # uint8 RGB
    noisy = _noisy(clean, 25.0, 0, 255).astype(np.uint8)
    expected_ssim = _sk_ssim(clean, noisy, 255)
    expected_psnr = peak_signal_noise_ratio(clean, noisy, data_range=255)
    assert 0.2 < expected_ssim < 0.9 and 15 < expected_psnr < 30  # a real, non-trivial pair
    assert ssim(clean, noisy, 255) == pytest.approx(expected_ssim, abs=1e-6)
    assert psnr(clean, noisy, 255) == pytest.approx(expected_psnr, abs=1e-6)
    # The same pair in [0, 1] floats (float32, as a network outputs).
    a, b = (clean / 255.0).astype(np.float32), (noisy / 255.0).astype(np.float32)
    assert ssim(a, b, 1.0) == pytest.approx(_sk_ssim(a, b, 1.0), abs=1e-6)
    assert psnr(a, b, 1.0) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-6)


def test_grey_real_image_matches_skimage():
    camera = skdata.camera()[::2, ::2]
    blurred = ((camera[:-1].astype(np.float64) + camera[1:]) / 2).round().astype(np.uint8)
    a, b = camera[:-1], blurred
    assert ssim(a, b, 255) == pytest.approx(structural_similarity(a, b, data_range=255), abs=1e-6)
    assert psnr(a, b, 255) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-6)


def test_batch_gives_one_value_per_image():
    rng = np.random.default_rng(3)
    clean = np.stack([skdata.astronaut()[:64, :80], skdata.chelsea()[:64, :80],
                      skdata.coffee()[:64, :80]]).astype(np.float64) / 255.0
    noisy = np.clip(clean + rng.normal(0, [[[[0.02]]], [[[0.1]]], [[[0.3]]]], clean.shape), 0, 1)
    p, s = psnr(clean, noisy, 1.0), ssim(clean, noisy, 1.0)
    assert p.shape == (3,) and s.shape == (3,)
    for i in range(3):
        assert p[i] == pytest.approx(peak_signal_noise_ratio(clean[i], noisy[i], data_range=1.0), abs=1e-6)
        assert s[i] == pytest.approx(_sk_ssim(clean[i], noisy[i], 1.0), abs=1e-6)
    assert p[0] > p[1] > p[2] and s[0] > s[1] > s[2]  # more noise, lower scores


def test_hand_values():
    a = np.zeros((8, 8, 3))
    b = np.full((8, 8, 3), 0.1)
    assert psnr(a, b, 1.0) == pytest.approx(20.0)  # MSE 0.01
    assert psnr(a * 255, b * 255, 255) == pytest.approx(20.0)
    assert psnr(a, a, 1.0) == np.inf
    assert ssim(a, a, 1.0) == pytest.approx(1.0)
    # Constant images: SSIM reduces to the luminance term (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    c1 = (0.01 * 1.0) ** 2
    assert ssim(a, b, 1.0) == pytest.approx(c1 / (0.01 + c1))


def test_border_crops_each_side():
    rng = np.random.default_rng(0)
    a = rng.random((2, 20, 24, 3))
    b = a.copy()
    b[:, :3] = 0.0  # errors only in the top 3 rows
    b[:, :, -3:] = 1.0  # and the right 3 columns
    assert np.all(np.isinf(psnr(a, b, 1.0, border=3)))
    c = b.copy()
    c[:, 10, 10] += 0.5
    inner = peak_signal_noise_ratio(a[0, 3:-3, 3:-3], c[0, 3:-3, 3:-3], data_range=1.0)
    assert psnr(a, c, 1.0, border=3)[0] == pytest.approx(inner, abs=1e-9)
    assert psnr(a, c, 1.0)[0] < inner


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)), 1.0)
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(np.zeros((6, 8, 3)), np.zeros((6, 8, 3)), 1.0)
    with pytest.raises(ValueError, match="data_range"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), 0)
    with pytest.raises(ValueError, match="expected an image"):
        psnr(np.zeros(8), np.zeros(8), 1.0)
    with pytest.raises(ValueError, match="border"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), 1.0, border=4)
