"""Dehazing scores at native size against scikit-image, on real photographs at odd
sizes, and the released protocol's resizing beside them."""

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from adverse_vision.metrics.dehaze import (
    DehazeMeter,
    dehaze_scores,
    official_resize,
    official_size,
)


def _sk(clear, other):
    a = clear.astype(np.float64) / 255.0 if clear.dtype == np.uint8 else clear
    b = other.astype(np.float64) / 255.0 if other.dtype == np.uint8 else other
    return (peak_signal_noise_ratio(a, b, data_range=1.0),
            structural_similarity(a, b, data_range=1.0, channel_axis=-1))


def _fogged(clear, seed):
    """The photograph under scattering-model fog, ``J t + A (1 - t)``, denser towards
    the top (float32 in [0, 1])."""
    h, w = clear.shape[:2]
    beta = np.random.default_rng(seed).uniform(1.0, 2.0)
    t = np.exp(-beta * np.linspace(1.0, 0.2, h))[:, None, None]
    return (clear / 255.0 * t + 0.8 * (1 - t)).astype(np.float32)


def _released_resize(path_or_image):
    """What the released test script does to a file: Lanczos to its size on 8 bits."""
    im = Image.fromarray(path_or_image)
    w, h = im.size
    if h > w and h > 1024:
        w, h = int(np.ceil(w * 1024 / h)), 1024
    elif h <= w and w > 1024:
        w, h = 1024, int(np.ceil(h * 1024 / w))
    return np.asarray(im.resize((32 * (w // 32), 32 * (h // 32)), Image.Resampling.LANCZOS))


def test_official_size():
    assert official_size(620, 460) == (608, 448)  # SOTS outdoor-like
    assert official_size(640, 480) == (640, 480)
    assert official_size(1600, 1200) == (1024, 768)
    assert official_size(1200, 1601) == (768, 1024)  # ceil(1200 * 1024 / 1601) = 768
    assert official_size(2833, 4657) == (608, 1024)  # ceil(622.9) = 623 -> 608
    assert official_size(1918, 3072) == (640, 1024)  # ceil(639.3) = 640 (rounding: 608)
    assert official_size(3072, 1918) == (1024, 640)
    assert official_size(1025, 1025) == (1024, 1024)
    with pytest.raises(ValueError, match="a 31x100 image has a side under 32 pixels"):
        official_size(31, 100)


@pytest.mark.parametrize("name,crop", [("astronaut", (301, 417)), ("chelsea", (299, 451)),
                                        ("coffee", (397, 583))])
def test_native_scores_match_skimage_on_real_photographs(name, crop):
    clear = getattr(skdata, name)()[: crop[0], : crop[1]]
    hazy = _fogged(clear, 0)
    dehazed = np.clip(clear / 255.0 + np.random.default_rng(1).normal(0, 0.03, clear.shape),
                      0, 1)
    scores = dehaze_scores(clear, dehazed, hazy)
    psnr_in, ssim_in = _sk(clear, hazy.astype(np.float64))
    psnr_out, ssim_out = _sk(clear, dehazed)
    assert scores["psnr_input"] == pytest.approx(psnr_in, abs=1e-6)
    assert scores["ssim_input"] == pytest.approx(ssim_in, abs=1e-6)
    assert scores["psnr"] == pytest.approx(psnr_out, abs=1e-6)
    assert scores["ssim"] == pytest.approx(ssim_out, abs=1e-6)
    assert scores["psnr"] > scores["psnr_input"] and scores["ssim"] > scores["ssim_input"]
    # The released protocol: both images resized (uint8 files exactly as the script).
    hazy8 = np.round(hazy * 255).astype(np.uint8)
    scores8 = dehaze_scores(clear, hazy=hazy8)
    small_clear, small_hazy = _released_resize(clear), _released_resize(hazy8)
    assert small_clear.shape[0] % 32 == 0 and small_clear.shape[1] % 32 == 0
    expected = _sk(small_clear, small_hazy)
    assert scores8["psnr_input_official"] == pytest.approx(expected[0], abs=1e-6)
    assert scores8["ssim_input_official"] == pytest.approx(expected[1], abs=1e-6)
    assert scores8["psnr_input_official"] != pytest.approx(scores8["psnr_input"], abs=1e-3)


def test_the_official_output_is_scored_at_the_official_size():
    clear = skdata.chelsea()  # 300 x 451 -> 288 x 448
    dehazed = np.clip(clear / 255.0 + 0.02, 0, 1)
    small_clear = _released_resize(clear)
    official = np.clip(small_clear / 255.0 + 0.05, 0, 1)
    scores = dehaze_scores(clear, dehazed, official=official)
    assert set(scores) == {"psnr", "ssim", "psnr_official", "ssim_official"}
    expected = _sk(small_clear, official)
    assert scores["psnr_official"] == pytest.approx(expected[0], abs=1e-6)
    assert scores["ssim_official"] == pytest.approx(expected[1], abs=1e-6)
    with pytest.raises(ValueError, match=r"official-protocol output is 451x300 but the protocol "
                                         r"resizes this 451x300 image to 448x288"):
        dehaze_scores(clear, dehazed, official=dehazed)
    with pytest.raises(ValueError, match="needs the native dehazed image"):
        dehaze_scores(clear, hazy=dehazed, official=official)
    with pytest.raises(ValueError, match="and official_protocol=True"):
        dehaze_scores(clear, dehazed, official=official, official_protocol=False)
    # Without it, the native output is resized (floats channel by channel).
    resized = official_resize(dehazed)
    assert resized.shape == (288, 448, 3) and resized.dtype == np.float32
    assert np.abs(resized - small_clear / 255.0 - 0.02).max() < 0.03


def test_inputs_are_checked_and_outputs_clipped():
    clear = skdata.coffee()[:64, :80]
    over = clear / 255.0 * 1.2 - 0.1  # overshoots both ends
    scores = dehaze_scores(clear, over, official_protocol=False)
    assert set(scores) == {"psnr", "ssim"}
    assert scores["psnr"] == pytest.approx(_sk(clear, np.clip(over, 0, 1))[0], abs=1e-9)
    with pytest.raises(ValueError, match="dehazed image is 80x63 but the clear image is 80x64"):
        dehaze_scores(clear, over[:63])
    with pytest.raises(ValueError, match=r"hazy image: expected an RGB image \(H, W, 3\)"):
        dehaze_scores(clear, hazy=over[..., 0])
    with pytest.raises(ValueError, match="non-finite"):
        dehaze_scores(clear, np.full(over.shape, np.nan))
    with pytest.raises(ValueError, match="give a dehazed image, a hazy image or both"):
        dehaze_scores(clear)


def test_meter_means_rows_and_table():
    meter = DehazeMeter()
    photos = [skdata.astronaut()[:97, :131], skdata.chelsea()[:75, :66]]
    per_image = []
    for k, clear in enumerate(photos):
        hazy = _fogged(clear, k)
        dehazed = np.clip(0.5 * hazy + 0.5 * clear / 255.0, 0, 1)
        per_image.append(meter.add(clear, dehazed, hazy, image_id=f"p{k}"))
    result = meter.compute()
    assert result["images"] == 2 and meter.count == 2
    for key in ("psnr", "ssim", "psnr_input", "ssim_input", "psnr_official", "ssim_official",
                "psnr_input_official", "ssim_input_official"):
        assert result[key] == pytest.approx(np.mean([s[key] for s in per_image]))
    assert [r["id"] for r in meter.rows] == ["p0", "p1"]
    table = meter.table()
    assert "Dehazing, 2 images" in table
    assert "dehazed, native size" in table and "hazy input, native size" in table
    assert "resized to multiples of 32 (released protocol)" in table
    assert f"{result['psnr']:.2f}" in table and f"{result['ssim_input']:.4f}" in table
    with pytest.raises(ValueError, match=r"DehazeMeter.add \(p2\): scores .* differ"):
        meter.add(photos[0], hazy=_fogged(photos[0], 5), image_id="p2")
    native = DehazeMeter(official_protocol=False)
    native.add(photos[1], hazy=_fogged(photos[1], 0))
    assert set(native.compute()) == {"psnr_input", "ssim_input", "images"}
    assert "released protocol" not in native.table()
    native.reset()
    with pytest.raises(ValueError, match="no image has been added yet"):
        native.compute()
