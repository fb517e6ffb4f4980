"""Box drawing: class colours on the border, labels with a filled background, clipping."""

import itertools

import numpy as np
import pytest

from adverse_vision import draw

GREY = 100
NAMES = ("person", "bicycle", "car", "motorbike", "bus")


def _grey(h=80, w=120):
    return np.full((h, w, 3), GREY, np.uint8)


def test_box_border_takes_the_class_colour_and_nothing_else_changes():
    image = _grey()
    out = draw.draw_detections(image, [[10, 20, 50, 60]], [2], line_width=2, labels=False)
    color = np.array(draw.class_color(2))
    # Continuous box [10, 50) x [20, 60): border pixels columns 10, 11 and 48, 49, rows
    # 20, 21 and 58, 59.
    for y in (20, 21, 58, 59):
        assert (out[y, 10:50] == color).all(), y
    for x in (10, 11, 48, 49):
        assert (out[20:60, x] == color).all(), x
    changed = np.any(out != image, axis=-1)
    border = np.zeros_like(changed)
    border[20:60, 10:50] = True
    border[22:58, 12:48] = False
    assert (changed == border).all()
    assert (image == GREY).all()  # the input is not modified
    assert out.dtype == np.uint8 and out.shape == image.shape


def test_label_has_a_filled_background_in_the_class_colour_and_readable_text():
    image = _grey(100, 160)
    out = draw.draw_detections(image, [[40, 50, 120, 90]], [0], [0.87], NAMES, line_width=1,
                               font_size=12)
    color = np.array(draw.class_color(0))
    # The label sits above the box, starting at its left edge.
    above = out[30:50, 40:120]
    filled = np.all(above == color, axis=-1)
    assert filled.sum() > 100
    rows = np.flatnonzero(filled.any(axis=1))
    assert rows.max() == 19  # ends right above the box's top edge at y = 50
    # Text pixels: neither the class colour nor the grey image.
    label = above[rows.min():rows.max() + 1]
    text = ~np.all(label == color, axis=-1) & ~np.all(label == GREY, axis=-1)
    assert text.sum() > 20
    # Text is white on this dark red (luma < 140); black on a light colour.
    assert np.abs(label[text].astype(int) - 255).mean() < np.abs(label[text].astype(int)).mean()
    # The label is wider for a longer text.
    longer = draw.draw_detections(image, [[40, 50, 120, 90]], [3], [0.87], NAMES,
                                  line_width=1, font_size=12)
    def width(im, c):
        return np.ptp(np.flatnonzero(np.all(im[30:50] == c, axis=-1).any(axis=0)))

    assert width(longer, draw.class_color(3)) > width(out, color) + 10


def test_label_moves_inside_when_the_box_touches_the_top_and_stays_in_the_image():
    image = _grey(60, 90)
    out = draw.draw_detections(image, [[70, 0, 90, 30]], [1], [0.5], NAMES, font_size=10)
    color = np.array(draw.class_color(1))
    filled = np.all(out == color, axis=-1)
    # "bicycle 0.50" is wider than the box's 20 px: shifted left to fit the image.
    cols = np.flatnonzero(filled[2:8].any(axis=0))
    assert cols.max() == 89 and cols.min() < 70
    assert filled[0].sum() > 20  # the label is drawn from row 0 down, inside the box


def test_boxes_outside_the_image_are_clipped_or_skipped():
    image = _grey(50, 50)
    color = np.array(draw.class_color(4))
    out = draw.draw_detections(image, [[-20, -10, 30, 80]], [4], line_width=1, labels=False)
    # Left, top and bottom edges are beyond the image: drawn along its border.
    assert (out[:, 0] == color).all()
    assert (out[0, :30] == color).all() and (out[49, :30] == color).all()
    assert (out[:, 29] == color).all()  # the right edge, x2 = 30 -> column 29
    assert (out[5:45, 31:] == GREY).all()
    # Entirely outside, empty or non-finite: nothing drawn.
    for box in ([60, 0, 80, 20], [-30, -30, -5, -5], [10, 10, 10, 30], [np.nan, 0, 5, 5]):
        same = draw.draw_detections(image, [box], [0], [0.9], NAMES)
        assert (same == image).all(), box


def test_classes_get_distinct_stable_colours():
    colors = [draw.class_color(i) for i in range(40)]
    assert colors == [draw.class_color(i) for i in range(40)]
    assert len(set(colors)) == 40
    for a, b in itertools.combinations(colors[:10], 2):
        assert np.abs(np.subtract(a, b)).sum() > 60, (a, b)
    for c in colors:
        assert all(0 <= v <= 255 for v in c)


def test_higher_scores_are_drawn_on_top_and_names_fall_back_to_ids():
    image = _grey(60, 60)
    boxes = [[10, 10, 40, 40], [10, 10, 40, 40]]
    out = draw.draw_detections(image, boxes, [0, 1], [0.9, 0.2], labels=False)
    assert (out[25, 10] == draw.class_color(0)).all()
    out = draw.draw_detections(image, boxes, [0, 1], [0.2, 0.9], labels=False)
    assert (out[25, 10] == draw.class_color(1)).all()
    # Class 7 has no name: labelled "7 0.50", still in its own colour.
    out = draw.draw_detections(image, [[5, 30, 50, 55]], [7], [0.5], NAMES)
    assert np.all(out == draw.class_color(7), axis=-1).sum() > 50
    # No detections: an unchanged copy.
    none = draw.draw_detections(image, np.zeros((0, 4)), np.zeros((0,), int))
    assert (none == image).all() and none is not image


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
        draw.draw_detections(np.zeros((10, 10), np.uint8), [[0, 0, 5, 5]], [0])
    with pytest.raises(ValueError, match="1 boxes but 2 classes"):
        draw.draw_detections(_grey(), [[0, 0, 5, 5]], [0, 1])
    with pytest.raises(ValueError, match="1 boxes but 2 scores"):
        draw.draw_detections(_grey(), [[0, 0, 5, 5]], [0], [0.1, 0.2])
    with pytest.raises(ValueError, match="class ids must be >= 0"):
        draw.draw_detections(_grey(), [[0, 0, 5, 5]], [-1])
    with pytest.raises(ValueError, match="class id must be >= 0"):
        draw.class_color(-2)
