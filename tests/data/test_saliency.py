"""Global-contrast saliency, fusion weights and the fusion target."""

import numpy as np
import pytest

from adverse_vision.data.saliency import (
    fusion_target,
    fusion_weight,
    luma,
    saliency_map,
)


def brute_force(image, normalize="minmax"):
    """Direct O(N^2) sum of |I_p - I_q| over all pixel pairs, then normalised."""
    values = np.rint(np.asarray(image, np.float64)).ravel()
    v = np.abs(values[:, None] - values[None, :]).sum(axis=1)
    lo = v.min() if normalize == "minmax" else 0.0
    if v.max() == lo:
        return np.zeros(np.shape(image))
    return ((v - lo) / (v.max() - lo)).reshape(np.shape(image))


@pytest.mark.parametrize("normalize", ["minmax", "max"])
def test_matches_brute_force_on_random_images(normalize):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (13, 17), dtype=np.uint8)
    out = saliency_map(image, normalize)
    assert out.dtype == np.float32 and out.shape == (13, 17)
    np.testing.assert_allclose(out, brute_force(image, normalize), atol=1e-6)
    # A float image on the 0-255 scale is rounded to grey levels first.
    noisy = np.clip(image + rng.uniform(-0.45, 0.45, image.shape), 0, 255)
    np.testing.assert_allclose(saliency_map(noisy, normalize), out, atol=1e-6)
    # Few levels, many ties.
    coarse = rng.integers(0, 4, (9, 11)) * 60
    np.testing.assert_allclose(saliency_map(coarse, normalize), brute_force(coarse, normalize),
                               atol=1e-6)


def test_hand_computed_values():
    # Levels 0, 0, 10: sums 10, 10, 20.
    image = np.array([[0, 0, 10]], np.uint8)
    np.testing.assert_allclose(saliency_map(image), [[0.0, 0.0, 1.0]])
    np.testing.assert_allclose(saliency_map(image, "max"), [[0.5, 0.5, 1.0]])
    # Levels 0, 100, 100, 250: sums 0 -> 100 + 100 + 250 = 450, 100 -> 100 + 150 = 250,
    # 250 -> 250 + 150 + 150 = 550.
    image = np.array([[0.0, 100.0], [250.0, 100.0]])
    np.testing.assert_allclose(saliency_map(image), [[2 / 3, 0.0], [1.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(saliency_map(image, "max"),
                               [[450 / 550, 250 / 550], [1.0, 250 / 550]], rtol=1e-6)


def test_constant_and_equally_salient_images_give_zeros():
    for value in (0, 128, 255):
        for normalize in ("minmax", "max"):
            out = saliency_map(np.full((5, 6), value, np.uint8), normalize)
            assert out.dtype == np.float32
            np.testing.assert_array_equal(out, 0.0)
    # Two levels with equal counts: every pixel has the same contrast sum.
    half = np.array([[0, 255], [255, 0]], np.uint8)
    np.testing.assert_array_equal(saliency_map(half), 0.0)
    np.testing.assert_array_equal(saliency_map(half, "max"), 1.0)


def test_fusion_weight_range_and_symmetry():
    rng = np.random.default_rng(1)
    ir = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    vis = rng.uniform(0, 255, (20, 24))
    s = fusion_weight(ir, vis)
    assert s.dtype == np.float32 and s.shape == (20, 24)
    assert s.min() >= 0.0 and s.max() <= 1.0
    s_ir, s_vis = brute_force(ir), brute_force(vis)
    total = s_ir + s_vis
    expected = np.where(total > 0, s_ir / np.where(total > 0, total, 1), 0.5)
    np.testing.assert_allclose(s, expected, atol=1e-6)
    # Same image on both sides: 0.5 everywhere (also where both saliencies are 0).
    np.testing.assert_array_equal(fusion_weight(ir, ir), 0.5)
    flat = np.full((4, 4), 9, np.uint8)
    np.testing.assert_array_equal(fusion_weight(flat, flat), 0.5)


def test_bright_object_on_dark_infrared_background():
    rng = np.random.default_rng(2)
    ir = np.full((32, 40), 20, np.uint8)
    ir[10:18, 12:20] = 230  # a warm object
    vis = rng.integers(60, 200, (32, 40)).astype(np.uint8)  # textured daylight scene
    s = fusion_weight(ir, vis)
    obj = np.zeros(ir.shape, bool)
    obj[10:18, 12:20] = True
    # The object is the most salient infrared content: weight >= 0.5 there.
    assert s[obj].min() >= 0.5
    assert s[obj].mean() > 0.6
    # The background has the smallest infrared saliency (0 after min-max): the visible
    # image wins (s = 0) except at its own least salient level (0 / 0 -> 0.5).
    bg = s[~obj]
    assert np.all((bg == 0) | (bg == 0.5)) and (bg == 0).mean() > 0.9
    target = fusion_target(ir.astype(np.float32), vis.astype(np.float32), s)
    # The target keeps the object's heat and the visible texture elsewhere.
    assert target[obj].mean() > 0.5 * (230 + vis[obj].mean())
    zero = ~obj & (s == 0)
    np.testing.assert_allclose(target[zero], vis[zero], atol=1e-3)


def test_fusion_target_blend():
    ir = np.array([[200.0, 0.0, 10.0]])
    vis = np.array([[100.0, 50.0, 10.0]])
    s = np.array([[0.25, 1.0, 0.5]])
    np.testing.assert_allclose(fusion_target(ir, vis, s), [[125.0, 0.0, 10.0]])
    # Broadcasts over a batch with channel axis.
    batch = fusion_target(np.ones((2, 3, 4, 1)), np.zeros((2, 3, 4, 1)), np.full((2, 3, 4, 1), 0.3))
    np.testing.assert_allclose(batch, 0.3)


def test_luma_weights():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [10, 20, 30]]],
                   np.uint8)
    np.testing.assert_allclose(
        luma(rgb), [[76.245, 149.685, 29.07, 255.0, 2.99 + 11.74 + 3.42]], rtol=1e-6
    )
    assert luma(rgb).dtype == np.float32


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"grayscale image \(H, W\)"):
        saliency_map(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        saliency_map(np.array([[0.0, 300.0]]))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        saliency_map(np.array([[-3, 4]]))
    with pytest.raises(ValueError, match="non-finite"):
        saliency_map(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="normalize"):
        saliency_map(np.zeros((2, 2)), "mean")
    with pytest.raises(ValueError, match=r"ir \(2, 3\) and vis_y \(3, 2\)"):
        fusion_weight(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="RGB"):
        luma(np.zeros((2, 2)))
