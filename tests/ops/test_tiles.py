"""Tile placement and tiled application: exact reconstruction, averaging, batching, padding."""

import jax
import numpy as np
import pytest

from adverse_vision.ops.tiles import tile_starts, tiled_apply

SIZES = [(1, 1), (5, 7), (16, 16), (16, 23), (37, 29), (2, 40), (45, 17)]


@pytest.mark.parametrize("size, tile, stride, expected", [
    (10, 4, 3, [0, 3, 6]),
    (10, 4, 2, [0, 2, 4, 6]),
    (11, 4, 3, [0, 3, 6, 7]),
    (3, 4, 2, [0]),
    (4, 4, 2, [0]),
    (5, 4, 4, [0, 1]),
    (9, 4, 4, [0, 4, 5]),
])
def test_tile_starts_cases(size, tile, stride, expected):
    assert tile_starts(size, tile, stride) == expected


def test_tile_starts_cover_every_pixel():
    for size in range(1, 40):
        for tile in range(1, 12):
            for stride in range(1, tile + 1):
                starts = tile_starts(size, tile, stride)
                assert starts[0] == 0 and starts == sorted(set(starts))
                covered = np.zeros(max(size, tile), bool)
                for s in starts:
                    covered[s:s + tile] = True
                assert covered[:size].all()
                assert starts[-1] + tile == max(size, tile)


def test_tile_starts_errors():
    with pytest.raises(ValueError, match="stride 5 is larger than tile 4"):
        tile_starts(10, 4, 5)
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        tile_starts(0, 4, 2)


def _image(h, w, c=3, seed=0):
    return np.random.default_rng(seed + h * 100 + w).random((h, w, c)).astype(np.float32)


@pytest.mark.parametrize("h, w", SIZES)
def test_identity_reconstructs_exactly(h, w):
    img = _image(h, w)
    out = tiled_apply(lambda x: x, img, tile=16, stride=6, batch=3)
    assert out.dtype == np.float32 and out.shape == (h, w, 3)
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("h, w", SIZES)
def test_crop_by_margin_reconstructs_exactly(h, w):
    m = 3
    img = _image(h, w)
    out = tiled_apply(lambda x: x[:, m:-m, m:-m], img, tile=16, stride=7, margin=m, batch=4)
    assert out.shape == (h, w, 3)
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("h, w", [(5, 7), (16, 16), (37, 29)])
def test_scaling_doubles(h, w):
    img = _image(h, w)
    out = tiled_apply(lambda x: 2.0 * x, img, tile=16, stride=5, batch=2)
    np.testing.assert_array_equal(out, 2.0 * img)


def test_output_channels_may_differ():
    img = _image(20, 31)
    out = tiled_apply(lambda x: x.sum(axis=-1, keepdims=True), img, tile=12, stride=5)
    assert out.shape == (20, 31, 1)
    np.testing.assert_allclose(out[..., 0], img.sum(axis=-1), rtol=1e-6)


def test_overlaps_are_averaged():
    h, w, tile, stride = 23, 30, 10, 4
    # every pixel value is unique, so a tile's top-left value names the tile
    img = (np.arange(h)[:, None] * 1000 + np.arange(w)[None, :]).astype(np.float32)[..., None]
    out = tiled_apply(lambda x: np.broadcast_to(x[:, :1, :1, :], x.shape), img,
                      tile=tile, stride=stride, batch=5)
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    for y in tile_starts(h, tile, stride):
        for x in tile_starts(w, tile, stride):
            total[y:y + tile, x:x + tile] += img[y, x, 0]
            count[y:y + tile, x:x + tile] += 1
    assert count.max() > 1  # there are overlaps
    np.testing.assert_allclose(out[..., 0], total / count, rtol=1e-6)


def test_fixed_batches_and_single_compilation():
    calls = []
    traces = []

    def record(x):
        calls.append(x.shape)
        return x

    @jax.jit
    def jitted(x):
        traces.append(x.shape)
        return x * 1.0

    img = _image(30, 25)
    ys, xs = tile_starts(30, 12, 5), tile_starts(25, 12, 5)
    n_tiles = len(ys) * len(xs)
    tiled_apply(record, img, tile=12, stride=5, batch=3)
    assert n_tiles % 3 != 0 and len(calls) == -(-n_tiles // 3)
    assert all(s == (3, 12, 12, 3) for s in calls)
    out = tiled_apply(jitted, img, tile=12, stride=5, batch=3)
    assert len(traces) == 1
    np.testing.assert_array_equal(out, img)


def test_small_images_are_reflect_padded_or_edge_padded():
    seen = []

    def record(x):
        seen.append(np.array(x))
        return x

    img = _image(3, 2, c=1)
    tiled_apply(record, img, tile=5, stride=5, batch=1)
    tile = seen[0][0, ..., 0]
    # rows: 3 pixels padded by 2 -> reflection (rows 1, 0); columns: 2 pixels padded by
    # 3 -> one reflection is not enough, the edge column is repeated.
    rows = np.pad(img[..., 0], ((0, 2), (0, 0)), mode="reflect")
    expected = np.pad(rows, ((0, 0), (0, 3)), mode="edge")
    np.testing.assert_array_equal(tile, expected)

    seen.clear()
    img = _image(8, 9, c=1)
    tiled_apply(lambda x: record(x)[:, 2:-2, 2:-2], img, tile=6, stride=2, margin=2, batch=64)
    padded = np.pad(img[..., 0], 2, mode="reflect")
    np.testing.assert_array_equal(seen[0][0, ..., 0], padded[:6, :6])


def test_bad_arguments():
    img = _image(10, 10)
    with pytest.raises(ValueError, match=r"image must have shape \(H, W, C\)"):
        tiled_apply(lambda x: x, img[..., 0])
    with pytest.raises(ValueError, match="stride 9 is larger than the output tile 8"):
        tiled_apply(lambda x: x[:, 1:-1, 1:-1], img, tile=10, stride=9, margin=1)
    with pytest.raises(ValueError, match="margin 5 leaves nothing"):
        tiled_apply(lambda x: x, img, tile=10, stride=1, margin=5)
    with pytest.raises(ValueError, match="fn returned shape"):
        tiled_apply(lambda x: x, img, tile=8, stride=4, margin=1)
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        tiled_apply(lambda x: x, img, batch=0)
