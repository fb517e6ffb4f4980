"""Fusion metrics against the CDDFuse evaluator's values and hand-computed cases."""

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from adverse_vision.metrics.fusion import (
    FUSION_METRICS,
    QABF_CONSTANTS,
    FusionMeter,
    average_gradient,
    entropy,
    fusion_metrics,
    fusion_mi,
    fusion_ssim,
    fusion_vif,
    mutual_information,
    qabf,
    scd,
    spatial_frequency,
    standard_deviation,
    vif,
)
from tests.helpers import reference

NAME = "fusion_metrics_cddfuse_seed0.npz"


def _triple(i):
    with np.load(reference(NAME)) as z:
        images = tuple(z[f"{i}/{k}"] for k in ("fused", "ir", "vis"))
        expected = {k: float(z[f"{i}/{k}"]) for k in FUSION_METRICS}
    return images, expected


def _noise_triple(seed, shape=(48, 56)):
    """A fused image and two sources with some texture, 0-255 integer values."""
    rng = np.random.default_rng(seed)
    ir = np.round(np.clip(rng.normal(120, 40, shape), 0, 255))
    vis = np.round(np.clip(np.linspace(0, 200, shape[1])[None] + rng.normal(0, 20, shape), 0, 255))
    return np.round((ir + vis) / 2), ir, vis


# ------------------------------------------------------------------- reference values

@pytest.mark.parametrize("i", [0, 1, 2])
def test_reproduces_cddfuse_evaluator(i):
    (fused, ir, vis), expected = _triple(i)
    got = fusion_metrics(fused, ir, vis)
    assert tuple(got) == FUSION_METRICS
    for key in FUSION_METRICS:
        assert got[key] == pytest.approx(expected[key], rel=1e-4), key
    # The same integer-valued images as uint8, and with a trailing channel axis.
    as_uint8 = fusion_metrics(fused.astype(np.uint8), ir.astype(np.uint8)[..., None],
                              vis.astype(np.uint8))
    for key in FUSION_METRICS:
        assert as_uint8[key] == pytest.approx(expected[key], rel=1e-4), key
    # The single-figure functions give the same numbers.
    singles = {"EN": entropy(fused), "SD": standard_deviation(fused),
               "SF": spatial_frequency(fused), "AG": average_gradient(fused),
               "MI": fusion_mi(fused, ir, vis), "SCD": scd(fused, ir, vis),
               "VIF": fusion_vif(fused, ir, vis), "Qabf": qabf(fused, ir, vis),
               "SSIM": fusion_ssim(fused, ir, vis)}
    for key in FUSION_METRICS:
        assert singles[key] == pytest.approx(expected[key], rel=1e-4), key


def test_other_conventions_convert_from_the_default():
    (fused, ir, vis), expected = _triple(0)
    h, w = fused.shape
    got = fusion_metrics(fused, ir, vis, mi_base=2, ssim_reduce="mean", ag_norm="vifb")
    assert got["MI"] == pytest.approx(expected["MI"] / math.log(2), rel=1e-9)
    assert got["SSIM"] == pytest.approx(expected["SSIM"] / 2, rel=1e-9)
    assert got["AG"] == pytest.approx(expected["AG"] * h * w / ((h - 1) * (w - 1)), rel=1e-9)
    for key in ("EN", "SD", "SF", "SCD", "VIF", "Qabf"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4), key
    # data_range 255 against scikit-image directly.
    f64, a64, b64 = (x.astype(np.float64) for x in (fused, ir, vis))
    sk = (structural_similarity(f64, a64, data_range=255.0)
          + structural_similarity(f64, b64, data_range=255.0))
    got255 = fusion_metrics(fused, ir, vis, ssim_data_range=255.0)["SSIM"]
    assert got255 == pytest.approx(sk, abs=1e-6)
    assert got255 > expected["SSIM"] + 0.1  # the tiny constants of range 2 score lower


# ---------------------------------------------------------------- hand-computed cases

def test_entropy_hand_cases():
    assert entropy(np.full((5, 6), 17.0)) == 0.0
    half = np.zeros((4, 6))
    half[:2] = 200
    assert entropy(half) == pytest.approx(1.0, abs=1e-12)
    # Levels 0, 1, 2, 3 with probabilities 1/2, 1/4, 1/8, 1/8: 1.75 bits.
    four = np.array([0.0] * 4 + [1.0] * 2 + [2.0, 3.0])
    assert entropy(four.reshape(2, 4)) == pytest.approx(1.75, abs=1e-12)
    # Rounded first: 0.4 -> 0, 0.6 -> 1, 2.5 -> 2 (halves to even).
    assert entropy(np.array([[0.4, 0.6], [2.5, 2.0]])) == pytest.approx(1.5, abs=1e-12)
    # Out of [0, 255]: every level its own bin, 0 and 256 not merged by a uint8 wrap.
    assert entropy(np.array([[0.0, 256.0], [0.0, 256.0]])) == pytest.approx(1.0, abs=1e-12)
    assert entropy(np.array([[-1.0, 300.0], [-1.0, 300.0]])) == pytest.approx(1.0, abs=1e-12)


def test_standard_deviation_hand_case():
    # mean 3, squared deviations 9, 1, 1, 9: population variance 5.
    assert standard_deviation(np.array([[0.0, 2.0], [4.0, 6.0]])) == pytest.approx(math.sqrt(5))


def test_spatial_frequency_and_average_gradient_of_a_ramp():
    i, j = np.mgrid[0:5, 0:7].astype(np.float64)
    ramp = 2 * i + 3 * j
    assert spatial_frequency(ramp) == pytest.approx(math.sqrt(2 ** 2 + 3 ** 2))
    assert spatial_frequency(3 * j) == pytest.approx(3.0)
    # A plane has the same gradient everywhere, border included.
    assert average_gradient(ramp) == pytest.approx(math.sqrt((4 + 9) / 2))
    assert average_gradient(ramp, "vifb") == pytest.approx(math.sqrt(6.5) * 35 / 24)


def test_average_gradient_borders_are_one_sided():
    # Gradients: +-4 one-sided at the four neighbours of the centre, 0 elsewhere
    # (central differences vanish at the centre): four terms sqrt(16 / 2).
    peak = np.zeros((3, 3))
    peak[1, 1] = 4
    assert average_gradient(peak) == pytest.approx(4 * math.sqrt(8) / 9)
    assert average_gradient(peak, "vifb") == pytest.approx(4 * math.sqrt(8) / 4)


def test_mutual_information_hand_cases():
    # Levels with probabilities 1/2, 1/4, 1/8, 1/8: entropy 1.75 bits.
    a = np.array([10.0] * 4 + [20.0] * 2 + [30.0, 40.0]).reshape(2, 4)
    assert mutual_information(a, a) == pytest.approx(1.75 * math.log(2), abs=1e-12)
    assert mutual_information(a, a, base=2) == pytest.approx(1.75, abs=1e-12)
    # A one-to-one relabelling keeps all the information; non-integer values are labels.
    assert mutual_information(a, 255 - 0.3 * a) == pytest.approx(1.75 * math.log(2), abs=1e-12)
    # Values that would share a rounded bin are still two labels.
    b = np.array([[0.2, 0.4], [0.2, 0.4]])
    assert mutual_information(b, b) == pytest.approx(math.log(2), abs=1e-12)
    # Independent patterns (rows vs columns parity): joint uniform over 4 cells.
    i, j = np.mgrid[0:6, 0:8]
    assert mutual_information(100.0 * (i % 2), 100.0 * (j % 2)) == pytest.approx(0.0, abs=1e-12)
    assert mutual_information(np.full((2, 4), 5.0), a) == 0.0  # a constant tells nothing
    # Summed over both sources.
    assert fusion_mi(a, a, a) == pytest.approx(2 * 1.75 * math.log(2), abs=1e-12)
    assert fusion_mi(a, a, a, base=2) == pytest.approx(3.5, abs=1e-12)


def test_scd_hand_cases():
    i, j = np.mgrid[0:6, 0:8]
    ir = 100.0 * (i % 2)
    vis = 60.0 * (j % 2) + 10
    # fused - vis = ir and fused - ir = vis: both correlations are 1.
    assert scd(ir + vis, ir, vis) == pytest.approx(2.0, abs=1e-12)
    # Uncorrelated sources of equal variance (scaled to 1):
    # corr(ir, vis - ir) = -1/sqrt2, corr(vis, 2 vis - 2 ir) = +1/sqrt2.
    a, b = (i % 2) * 1.0, (j % 2) * 1.0
    assert scd(2 * b - a, a, b) == pytest.approx(0.0, abs=1e-12)
    assert scd(b + a, a, b) == pytest.approx(2.0, abs=1e-12)
    # fused == vis: the difference fused - vis is constant, the correlation undefined.
    assert math.isnan(scd(vis, ir, vis))


def test_vif_limits():
    fused, ir, vis = _noise_triple(0)
    assert vif(ir, ir) == pytest.approx(1.0, abs=1e-6)
    assert vif(ir, ir + 37.0) == pytest.approx(1.0, abs=1e-6)  # a shift loses nothing
    assert vif(ir, np.full_like(ir, 90.0)) == 0.0  # a flat copy keeps nothing
    assert vif(np.full_like(ir, 90.0), ir) == 1.0  # nothing to lose: 0 / 0 taken as 1
    assert vif(ir, 2 * ir) > 1.2  # contrast stretch scores above 1
    assert 0.0 < vif(ir, fused) < 1.0
    assert fusion_vif(ir, ir, ir) == pytest.approx(2.0, abs=1e-6)
    assert fusion_vif(fused, ir, vis) == pytest.approx(vif(ir, fused) + vif(vis, fused))


def test_qabf_perfect_fusion_ceiling():
    # Every edge of the sources kept: orientation term at alignment 1, strength term at
    # the evaluator's ratio (the strength itself where source and fused are equal, here
    # >= 10, so the sigmoid is saturated at Tg).
    j = np.mgrid[0:12, 0:15][1]
    ramp = 10.0 * j + 5
    tg, _, _ = QABF_CONSTANTS["strength"]
    ta, ka, da = QABF_CONSTANTS["orientation"]
    ceiling = tg * ta / (1 + math.exp(ka * (1 - da)))
    assert qabf(ramp, ramp, ramp) == pytest.approx(ceiling, rel=1e-9)
    assert qabf(ramp, ramp, np.zeros_like(ramp)) == pytest.approx(ceiling, rel=1e-9)
    # A flat fused image keeps almost nothing; flat sources leave it undefined.
    assert qabf(np.zeros_like(ramp), ramp, ramp) < 0.01
    assert math.isnan(qabf(ramp, np.zeros_like(ramp), np.zeros_like(ramp)))


def test_ssim_identity_and_reduction():
    fused, ir, vis = _noise_triple(1)
    assert fusion_ssim(ir, ir, ir) == pytest.approx(2.0, abs=1e-12)
    assert fusion_ssim(ir, ir, ir, reduce="mean") == pytest.approx(1.0, abs=1e-12)
    total = fusion_ssim(fused, ir, vis)
    assert fusion_ssim(fused, ir, vis, reduce="mean") == pytest.approx(total / 2, rel=1e-12)
    sk = (structural_similarity(fused, ir, data_range=2.0)
          + structural_similarity(fused, vis, data_range=2.0))
    assert total == pytest.approx(sk, abs=1e-6)


def test_options_change_only_their_metric():
    fused, ir, vis = _noise_triple(2)
    base = fusion_metrics(fused, ir, vis)
    h, w = fused.shape
    got = fusion_metrics(fused, ir, vis, mi_base=2, ssim_reduce="mean", ag_norm="vifb")
    assert got["MI"] == pytest.approx(base["MI"] / math.log(2), rel=1e-12)
    assert got["SSIM"] == pytest.approx(base["SSIM"] / 2, rel=1e-12)
    assert got["AG"] == pytest.approx(base["AG"] * h * w / ((h - 1) * (w - 1)), rel=1e-12)
    for key in ("EN", "SD", "SF", "SCD", "VIF", "Qabf"):
        assert got[key] == base[key], key


# ---------------------------------------------------------------------------- meter

def test_meter_averages_valid_images():
    triples = [_noise_triple(s) for s in range(3)]
    singles = [fusion_metrics(*t) for t in triples]
    fused, ir, vis = (np.stack([t[k] for t in triples]) for k in range(3))
    meter = FusionMeter()
    with pytest.raises(ValueError, match="no image"):
        meter.compute()
    # First batch: images 0 and 1 plus a padding image (NaN, never looked at).
    pad = np.full_like(fused[:1], np.nan)
    meter.add(np.concatenate([fused[:2], pad]), np.concatenate([ir[:2], pad]),
              np.concatenate([vis[:2], pad]), valid=np.array([True, True, False]))
    assert meter.count == 2
    # Second batch: image 2 as uint8 with a channel axis.
    meter.add(fused[2:, ..., None].astype(np.uint8), ir[2:, ..., None].astype(np.uint8),
              vis[2:].astype(np.uint8))
    assert meter.count == 3
    got = meter.compute()
    assert tuple(got) == FUSION_METRICS
    for key in FUSION_METRICS:
        assert got[key] == pytest.approx(np.mean([s[key] for s in singles]), rel=1e-12), key
    meter.reset()
    assert meter.count == 0
    meter.add(fused, ir, vis, valid=np.zeros(3, bool))
    with pytest.raises(ValueError, match="no image"):
        meter.compute()


def test_meter_uses_its_conventions():
    fused, ir, vis = _noise_triple(4)
    meter = FusionMeter(mi_base=2, ssim_reduce="mean", ssim_data_range=255.0, ag_norm="vifb")
    meter.add(fused[None], ir[None], vis[None])
    expected = fusion_metrics(fused, ir, vis, mi_base=2, ssim_reduce="mean",
                              ssim_data_range=255.0, ag_norm="vifb")
    assert meter.compute() == pytest.approx(expected, rel=1e-12)


# -------------------------------------------------------------------------- bad input

def test_bad_images_are_named():
    fused, ir, vis = _noise_triple(5)
    with pytest.raises(ValueError, match=r"ir \(48, 50\)"):
        fusion_metrics(fused, ir[:, :50], vis)
    with pytest.raises(ValueError, match=r"fused must be a grayscale image .*\(48, 56, 3\)"):
        fusion_metrics(np.stack([fused] * 3, -1), ir, vis)
    bad = vis.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="vis contains NaN"):
        fusion_metrics(fused, ir, bad)
    with pytest.raises(ValueError, match="ir contains NaN or infinite"):
        fusion_metrics(fused, np.where(ir > 100, np.inf, ir), vis)
    with pytest.raises(ValueError, match=r"fused must be at least 41x41 pixels, got .*\(40, 56\)"):
        fusion_metrics(fused[:40], ir[:40], vis[:40])
    with pytest.raises(ValueError, match="image must hold real numbers"):
        entropy(np.array([["a", "b"]]))


def test_unknown_options_are_named():
    fused, ir, vis = _noise_triple(6)
    for kwargs, word in [({"mi_base": 10}, "mi_base"), ({"mi_base": "2"}, "mi_base"),
                         ({"ssim_reduce": "max"}, "ssim_reduce"),
                         ({"ssim_data_range": 0}, "ssim_data_range"),
                         ({"ag_norm": "matlab"}, "ag_norm")]:
        with pytest.raises(ValueError, match=word):
            fusion_metrics(fused, ir, vis, **kwargs)
        with pytest.raises(ValueError, match=word):
            FusionMeter(**kwargs)
    with pytest.raises(ValueError, match="unknown norm 'mean'"):
        average_gradient(fused, "mean")
    with pytest.raises(ValueError, match="unknown base 10"):
        mutual_information(fused, ir, base=10)
    with pytest.raises(ValueError, match="unknown reduce 'max'"):
        fusion_ssim(fused, ir, vis, reduce="max")
    with pytest.raises(ValueError, match="data_range must be a positive number"):
        fusion_ssim(fused, ir, vis, data_range=-1.0)


def test_meter_rejects_bad_batches():
    fused, ir, vis = _noise_triple(7)
    meter = FusionMeter()
    with pytest.raises(ValueError, match=r"vis \(1, 48, 55\)"):
        meter.add(fused[None], ir[None], vis[None, :, :55])
    with pytest.raises(ValueError, match="fused must be a batch"):
        meter.add(fused, ir, vis)
    with pytest.raises(ValueError, match=r"valid must have shape \(1,\)"):
        meter.add(fused[None], ir[None], vis[None], valid=[True, False])
    with pytest.raises(ValueError, match=r"image 0.*ir contains NaN"):
        meter.add(fused[None], np.full_like(ir, np.nan)[None], vis[None])
    assert meter.count == 0
