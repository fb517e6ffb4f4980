"""Tests for adverse_vision.data.pipeline: the grain pipeline and its batch contract."""

import time

import numpy as np
import pytest

from adverse_vision.data import augment as aug
from adverse_vision.data import pipeline as pl
from adverse_vision.data.saliency import fusion_weight

S = 64  # letterbox side
M = 4  # max boxes


class ListSource:
    """A list-backed grain RandomAccessDataSource of small records.

    Record i is (40 + 8 * (i % 3)) x 64 pixels with 1 + i % 3 boxes; its mask marks
    each box with class + 1, depth is 5 inside boxes and 1 elsewhere.
    """

    def __init__(self, n, with_hazy=False, far_right=False, colour=None):
        self._records = []
        for i in range(n):
            rng = np.random.default_rng(i)
            h, w = 40 + 8 * (i % 3), 64
            if colour is None:
                image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            else:
                image = np.full((h, w, 3), colour, np.uint8)
            k = 1 + i % 3
            x1 = rng.integers(0, 30, k)
            y1 = rng.integers(0, h // 2, k)
            boxes = np.stack([x1, y1, x1 + 10 + 4 * np.arange(k), y1 + 12], 1).astype(np.float32)
            mask = np.zeros((h, w), np.uint8)
            depth = np.ones((h, w), np.float32)
            for c, (a, b, cc, d) in enumerate(boxes.astype(int)):
                mask[b:d, a:cc] = c + 1
                depth[b:d, a:cc] = 5.0
            if far_right:
                depth[:] = 1.0
                depth[:, w // 2 :] = 100.0
            rec = {
                "image": image,
                "boxes": boxes,
                "classes": np.arange(k, dtype=np.int32),
                "difficult": np.zeros((k,), bool),
                "depth": depth,
                "mask": mask,
                "thermal": np.full((h, w, 1), 30 + i, np.uint8),
                "id": f"list/{i}",
                "valid": True,
            }
            if with_hazy:
                rec["hazy"] = (255 - image).astype(np.uint8)
            self._records.append(rec)

    def __len__(self):
        return len(self._records)

    def __getitem__(self, i):
        return self._records[i]

    def __repr__(self):
        return f"ListSource(n={len(self._records)})"


HAZE = {"name": "haze", "A": (0.5, 0.5), "beta": (0.05, 0.14)}


def _make(source, **kw):
    args = dict(
        batch_size=4,
        image_size=S,
        max_boxes=M,
        train=True,
        seed=0,
        degrade=None,
        augment=None,
        num_workers=0,
        process_index=0,
        process_count=1,
    )
    args.update(kw)
    return pl.make_pipeline(source, **args)


def _take(ds, k):
    it = iter(ds)
    return [next(it) for _ in range(k)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batch_contract_shapes_and_dtypes():
    batch = _take(_make(ListSource(8), degrade=HAZE), 1)[0]
    expected = {
        "image": ((4, S, S, 3), np.uint8),
        "clean": ((4, S, S, 3), np.uint8),
        "boxes": ((4, M, 4), np.float32),
        "classes": ((4, M), np.int32),
        "box_mask": ((4, M), np.bool_),
        "difficult": ((4, M), np.bool_),
        "depth": ((4, S, S), np.float32),
        "mask": ((4, S, S), np.uint8),
        "thermal": ((4, S, S, 1), np.uint8),
        "valid": ((4,), np.bool_),
        "scale": ((4,), np.float32),
        "offset": ((4, 2), np.float32),
        "orig_size": ((4, 2), np.int32),
        "index": ((4,), np.int32),
    }
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape, key
        assert batch[key].dtype == dtype, key
    assert batch["valid"].all()
    # Padded box slots are zero and masked out; real ones are inside the image.
    assert np.all(batch["boxes"][~batch["box_mask"]] == 0)
    real = batch["boxes"][batch["box_mask"]]
    assert np.all(real[:, 2] > real[:, 0]) and np.all(real[:, 3] > real[:, 1])
    assert np.all(real >= 0) and np.all(real <= S)
    # Haze changed the image.
    assert not np.array_equal(batch["image"], batch["clean"])


def test_eval_boxes_follow_letterbox_and_masks():
    src = ListSource(6)
    batches = list(_make(src, train=False))
    for batch in batches:
        for j in range(4):
            if not batch["valid"][j]:
                continue
            rec = src[int(batch["index"][j])]
            h, w = rec["image"].shape[:2]
            s = S / max(h, w)
            dx, dy = (S - round(w * s)) // 2, (S - round(h * s)) // 2
            k = len(rec["boxes"])
            assert batch["box_mask"][j].sum() == k
            np.testing.assert_allclose(batch["scale"][j], s, rtol=1e-6)
            np.testing.assert_array_equal(batch["offset"][j], [dx, dy])
            np.testing.assert_array_equal(batch["orig_size"][j], [h, w])
            np.testing.assert_allclose(
                batch["boxes"][j, :k], rec["boxes"] * s + [dx, dy, dx, dy], atol=1e-4
            )
            np.testing.assert_array_equal(batch["classes"][j, :k], rec["classes"])
            # The mask region of the last box (drawn on top) follows it.
            ys, xs = np.nonzero(batch["mask"][j] == k)
            np.testing.assert_allclose(
                [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], batch["boxes"][j, k - 1], atol=1.5
            )
            assert np.all(batch["mask"][j, :dy] == 255) and np.all(batch["thermal"][j, :dy] == 0)
            assert np.all(batch["thermal"][j, dy : dy + round(h * s)] == 30 + batch["index"][j])


def test_degrade_none_keeps_image_equal_to_clean():
    for train in (True, False):
        for batch in _take(_make(ListSource(8), train=train, degrade={"name": "none"}), 2):
            np.testing.assert_array_equal(batch["image"], batch["clean"])


def test_haze_follows_scattering_model_and_uses_depth():
    # Constant colour J = 230 / 255, A = 0.5: I = J t + A (1 - t), t = exp(-beta d).
    src = ListSource(4, far_right=True, colour=230)
    batch = _take(_make(src, train=False, degrade=HAZE), 1)[0]
    for j in range(4):
        clean = batch["clean"][j].astype(np.float64) / 255
        hazy = batch["image"][j].astype(np.float64) / 255
        dy = int(batch["offset"][j, 1])
        rows = slice(dy + 2, S - dy - 2)
        t = (hazy[rows] - 0.5) / (clean[rows] - 0.5)
        assert np.all(t > np.exp(-0.14 * np.sqrt(S)) - 0.02) and np.all(t < 1.0 + 0.02)
        # Same transmission in the three channels (up to uint8 rounding).
        assert np.abs(t - t.mean(-1, keepdims=True)).max() < 0.03
        # The record's depth is used: near left half, far right half. With depths 1 and
        # 100 the fog distance is d_lo on the left and d_hi on the right (the VOC-FOG
        # corner and centre values for the content size), so log t_near / log t_far
        # = d_lo / d_hi.
        t_near, t_far = t[:, : S // 2 - 2].mean(), t[:, S // 2 + 2 :].mean()
        assert t[:, : S // 2 - 2].std() < 0.01 and t[:, S // 2 + 2 :].std() < 0.01
        h, w = (np.round(batch["orig_size"][j] * batch["scale"][j])).astype(int)
        d_hi = np.sqrt(max(h, w))
        d_lo = d_hi - 0.04 * np.hypot(h // 2, w // 2)
        assert t_far < t_near
        np.testing.assert_allclose(np.log(t_near) / np.log(t_far), d_lo / d_hi, atol=0.05)
        # Padding is untouched grey in both images.
        if dy > 0:
            np.testing.assert_array_equal(batch["image"][j, :dy], aug.PAD_VALUE)
            np.testing.assert_array_equal(batch["clean"][j, :dy], aug.PAD_VALUE)


def test_patchy_haze_uses_the_record_depth_too():
    """Without variation or tint, patchy haze is the scattering model above: the same
    images, so the record's depth reached it."""
    src = ListSource(4, far_right=True, colour=230)
    even = _take(_make(src, train=False, degrade=dict(HAZE, beta=0.1)), 1)[0]
    patchy = _take(_make(src, train=False, degrade=dict(
        HAZE, name="patchy_haze", beta=0.1, variation=0.0, tint=0.0)), 1)[0]
    np.testing.assert_array_equal(patchy["image"], even["image"])


def test_paired_augmentation_keeps_twins_aligned():
    # A source with its own degraded twin (255 - image): used as is, moved with image.
    nohsv = _take(_make(ListSource(8, with_hazy=True), augment={"hsv": None}), 2)
    for batch in nohsv:
        for j in range(4):
            diff = batch["clean"][j].astype(int) + batch["image"][j].astype(int) - 255
            grey = (batch["clean"][j] == aug.PAD_VALUE).all(-1) & (
                batch["image"][j] == aug.PAD_VALUE
            ).all(-1)
            assert np.abs(diff[~grey]).max() <= 2
    # Synthetic haze on an augmented record: aligned with its clean twin.
    src = ListSource(8, colour=230)
    for batch in _take(_make(src, degrade=HAZE, augment={"hsv": None}), 2):
        clean = batch["clean"].astype(np.float64) / 255
        hazy = batch["image"].astype(np.float64) / 255
        content = (batch["clean"] == 230).all(-1)
        t = (hazy - 0.5) / (clean - 0.5)
        assert np.all(np.abs(t - t.mean(-1, keepdims=True))[content] < 0.03)
        assert np.all(t[content] > 0.2) and np.all(t[content] < 1.02)


def test_max_boxes_keeps_largest():
    src = ListSource(1)
    rec = src[0]
    rec["boxes"] = np.array(
        [[0, 0, 4, 4], [0, 0, 20, 20], [0, 0, 8, 8], [0, 0, 30, 30], [0, 0, 10, 10], [0, 0, 2, 2]],
        np.float32,
    )
    rec["classes"] = np.arange(6, dtype=np.int32)
    rec["difficult"] = np.zeros(6, bool)
    ds = _make(src, batch_size=1, train=False)
    batch = _take(ds, 1)[0]
    np.testing.assert_array_equal(batch["classes"][0], [1, 2, 3, 4])  # the 4 largest, in order
    assert batch["box_mask"].all()
    # Reported once (the source has no collector of its own: the pipeline's).
    assert ds.problems.count("too_many_boxes") == 1
    assert ds.problems.records[0].reason == "6 boxes, more than data.max_boxes=4"
    s = float(batch["scale"][0])
    np.testing.assert_allclose(
        batch["boxes"][0, 0], np.array([0, 0, 20, 20]) * s + np.tile(batch["offset"][0], 2)
    )


def test_determinism_across_identical_pipelines():
    a = _take(_make(ListSource(10), degrade=HAZE, seed=3), 3)
    b = _take(_make(ListSource(10), degrade=HAZE, seed=3), 3)
    _assert_batches_equal(a, b)
    c = _take(_make(ListSource(10), degrade=HAZE, seed=4), 3)
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    # Each epoch is a new permutation of all samples.
    batches = _take(_make(ListSource(8), batch_size=4), 4)
    e1 = np.concatenate([b["index"] for b in batches[:2]])
    e2 = np.concatenate([b["index"] for b in batches[2:]])
    assert sorted(e1) == list(range(8)) and sorted(e2) == list(range(8))
    assert not np.array_equal(e1, e2)


def test_eval_covers_each_index_once_with_padded_tail():
    src = ListSource(10)
    ds = _make(src, train=False, degrade=HAZE)
    first = list(ds)
    assert len(first) == 3 == pl.num_eval_batches(10, 4)
    idx = np.concatenate([b["index"] for b in first])
    valid = np.concatenate([b["valid"] for b in first])
    np.testing.assert_array_equal(idx, list(range(10)) + [-1, -1])
    np.testing.assert_array_equal(valid, [True] * 10 + [False] * 2)
    assert not first[-1]["box_mask"][2:].any()
    # Same fog in every evaluation pass.
    _assert_batches_equal(first, list(ds))
    # Two hosts: same number of batches each, disjoint samples covering the set.
    seen = []
    for p in range(2):
        host = list(_make(src, train=False, process_index=p, process_count=2))
        assert len(host) == 2
        for b in host:
            seen += list(b["index"][b["valid"]])
    assert sorted(seen) == list(range(10))
    # An eval sample's fog does not depend on the host split.
    host1 = list(_make(src, train=False, degrade=HAZE, process_index=1, process_count=2))
    np.testing.assert_array_equal(host1[0]["index"][0], 1)
    np.testing.assert_array_equal(host1[0]["image"][0], first[0]["image"][1])


def test_hosts_share_the_global_batches_of_one_host():
    """Two hosts with batch 3 each read disjoint halves of each global batch of 6 and,
    concatenated, get exactly the batches (samples, augmentation, fog) of one host with
    batch 6: a multi-host run trains on the same data as a one-host run."""
    src = ListSource(12)
    augment = dict(aug.DEFAULT_AUGMENT)
    one = _take(_make(src, batch_size=6, degrade=HAZE, augment=augment), 4)
    hosts = [_take(_make(src, batch_size=3, degrade=HAZE, augment=augment, process_index=p,
                         process_count=2), 4) for p in range(2)]
    for k in range(4):
        assert not set(hosts[0][k]["index"]) & set(hosts[1][k]["index"])
        for key in one[k]:
            np.testing.assert_array_equal(
                np.concatenate([hosts[0][k][key], hosts[1][k][key]]), one[k][key],
                err_msg=f"batch {k} {key}")
    # Every epoch still covers the set once.
    assert sorted(np.concatenate([b["index"] for b in one[:2]])) == list(range(12))


def test_mixed_degradations_pick_per_sample():
    specs = [{"name": "none"}, HAZE]
    batches = _take(_make(ListSource(16), batch_size=8, degrade=specs), 2)
    same = [np.array_equal(b["image"][j], b["clean"][j]) for b in batches for j in range(8)]
    assert 2 <= sum(same) <= 14


def test_iterator_state_round_trip():
    ds = _make(ListSource(10), degrade=HAZE, seed=1)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = pl.get_state(it)
    assert isinstance(state, bytes)
    a = [next(it) for _ in range(2)]
    it2 = iter(_make(ListSource(10), degrade=HAZE, seed=1))
    pl.set_state(it2, state)
    b = [next(it2) for _ in range(2)]
    _assert_batches_equal(a, b)
    with pytest.raises(ValueError, match="JSON"):
        pl.set_state(it2, b"not json")


def test_multiprocess_workers_match_and_restore():
    t0 = time.time()
    src = ListSource(10)
    ref = _take(_make(src, degrade=HAZE, seed=2), 5)
    ds = _make(src, degrade=HAZE, seed=2, num_workers=2)
    it = iter(ds)
    head = [next(it) for _ in range(3)]
    state = pl.get_state(it)
    a = [next(it) for _ in range(2)]
    it.close()
    # Same batches as in-process loading: independent of the worker count.
    _assert_batches_equal(head + a, ref)
    it2 = iter(_make(src, degrade=HAZE, seed=2, num_workers=2))
    pl.set_state(it2, state)
    b = [next(it2) for _ in range(2)]
    it2.close()
    _assert_batches_equal(a, b)
    assert time.time() - t0 < 45


def test_bad_config_errors():
    src = ListSource(4)
    with pytest.raises(ValueError, match="fog"):
        _make(src, degrade={"name": "fog"})
    with pytest.raises(ValueError, match="betta"):
        _make(src, degrade={"name": "haze", "betta": 0.1})
    with pytest.raises(ValueError, match="name"):
        _make(src, degrade={"A": 0.5})
    with pytest.raises(ValueError, match="unknown key"):
        _make(src, augment={"rotate": 10})
    with pytest.raises(ValueError, match="batch_size"):
        _make(src, batch_size=0)
    with pytest.raises(ValueError, match="process_index"):
        _make(src, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="do not fill one global batch"):
        _make(ListSource(3), num_epochs=1, process_index=0, process_count=2)


def test_scenes_source_integration():
    from adverse_vision.data import scenes  # pylint: disable=import-outside-toplevel
    src = scenes.ScenesSource("val", num_samples=5, image_size=(48, 64), seed=0)
    batches = list(_make(src, train=False, degrade=HAZE, max_boxes=50))
    assert len(batches) == 2
    b = batches[0]
    assert {"depth", "mask", "thermal"} <= set(b)
    np.testing.assert_array_equal(
        np.concatenate([x["valid"] for x in batches]), [True] * 5 + [False] * 3
    )
    rec = src[0]
    k = len(rec["boxes"])
    assert b["box_mask"][0].sum() == k > 0
    # 48 x 64 -> 64 x 64: scale 1, 8 px of padding above.
    np.testing.assert_allclose(b["boxes"][0, :k], rec["boxes"] + [0, 8, 0, 8], atol=1e-4)
    np.testing.assert_array_equal(b["clean"][0, 8:56], rec["image"])
    assert not np.array_equal(b["image"][0], b["clean"][0])
    train = _take(_make(src, degrade=HAZE), 1)[0]
    assert train["image"].shape == (4, S, S, 3) and train["valid"].all()


def test_invalid_record_keeps_static_shapes():
    src = ListSource(4)
    # An undecodable image: small zero image, no boxes, no aligned extras.
    src._records[2] = {
        "image": np.zeros((8, 8, 3), np.uint8),
        "boxes": np.zeros((0, 4), np.float32),
        "classes": np.zeros((0,), np.int32),
        "difficult": np.zeros((0,), bool),
        "id": "list/2",
        "valid": False,
    }
    for train in (True, False):
        batch = _take(_make(src, train=train, degrade=HAZE), 1)[0]
        j = int(np.nonzero(batch["index"] == 2)[0][0])
        assert not batch["valid"][j] and batch["valid"].sum() == 3
        assert not batch["box_mask"][j].any()
        assert np.all(batch["mask"][j] == 255) and np.all(batch["depth"][j] == 1.0)
        assert batch["image"].shape == (4, S, S, 3)


# -- saliency ---------------------------------------------------------------------


class EditedSource:
    """Wraps a source and edits each record with ``edit(index, record)``."""

    def __init__(self, base, edit):
        self.base = base
        self.edit = edit

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.edit(i, dict(self.base[i]))


def _scenes(n):
    from adverse_vision.data import scenes  # pylint: disable=import-outside-toplevel
    return scenes.ScenesSource("val", num_samples=n, image_size=(48, 64), seed=0)


def _luma(rgb):
    return (rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.float32)


def test_saliency_from_thermal_and_degraded_luma():
    src = _scenes(5)
    batches = list(_make(src, train=False, degrade=HAZE, saliency=True))
    assert len(batches) == 2
    changed = 0
    for b in batches:
        assert b["saliency"].shape == (4, S, S, 1) and b["saliency"].dtype == np.float32
        for j in range(4):
            got = b["saliency"][j, ..., 0]
            if not b["valid"][j]:  # padding sample
                np.testing.assert_array_equal(got, 0.0)
                continue
            # 48 x 64 -> 64 x 64: rows 8..55 hold real pixels, the rest is padding.
            expected = np.zeros((S, S), np.float32)
            expected[8:56] = fusion_weight(b["thermal"][j, 8:56, :, 0], _luma(b["image"][j, 8:56]))
            np.testing.assert_allclose(got, expected, atol=1e-6)
            assert got[8:56].max() > 0.5 and got[8:56].min() < 0.5
            on_clean = fusion_weight(b["thermal"][j, 8:56, :, 0], _luma(b["clean"][j, 8:56]))
            changed += not np.allclose(got[8:56], on_clean, atol=1e-3)
    # The degraded image, not the clean one, is the visible input.
    assert changed >= 3
    # Training batches (augmented) also get it, inside [0, 1].
    train = _take(_make(src, degrade=HAZE, saliency=True), 1)[0]
    assert train["saliency"].shape == (4, S, S, 1)
    assert 0.0 <= train["saliency"].min() and train["saliency"].max() <= 1.0


def test_saliency_off_keeps_batches_unchanged():
    src = _scenes(6)

    def add_map(i, rec):
        rec["saliency"] = np.full(rec["image"].shape[:2], 0.3, np.float32)
        return rec

    with_map = EditedSource(src, add_map)
    for train in (True, False):
        a = _take(_make(src, train=train, degrade=HAZE, seed=5), 2)
        b = _take(_make(with_map, train=train, degrade=HAZE, seed=5), 2)
        assert "saliency" not in a[0]
        _assert_batches_equal(a, b)
        # Turning saliency on adds the key and changes nothing else.
        c = _take(_make(src, train=train, degrade=HAZE, seed=5, saliency=True), 2)
        for x, y in zip(a, c):
            assert set(y) == set(x) | {"saliency"}
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("shape", ["hw", "hw1"])
def test_precomputed_saliency_moves_with_thermal(shape):
    # Left half hot (thermal 200) with saliency 1, right half cold with saliency 0: after
    # any flip / scale / crop / letterbox, saliency must still equal thermal / 200.
    def split_halves(i, rec):
        h, w = rec["image"].shape[:2]
        thermal = np.zeros((h, w, 1), np.uint8)
        thermal[:, : w // 2] = 200
        rec["thermal"] = thermal
        sal_map = (thermal[..., 0] / 200.0).astype(np.float32)
        rec["saliency"] = sal_map[..., None] if shape == "hw1" else sal_map
        return rec

    src = EditedSource(_scenes(4), split_halves)
    b = _take(_make(src, train=False, degrade=HAZE, saliency=True), 1)[0]
    # Eval: letterboxed into rows 8..55, used as is (not recomputed), zero padding.
    np.testing.assert_array_equal(b["saliency"][:, 8:56, :32], 1.0)
    np.testing.assert_array_equal(b["saliency"][:, 8:56, 32:], 0.0)
    np.testing.assert_array_equal(b["saliency"][:, :8], 0.0)
    np.testing.assert_array_equal(b["saliency"][:, 56:], 0.0)
    for batch in _take(_make(src, degrade=HAZE, saliency=True, seed=3), 3):
        np.testing.assert_allclose(
            batch["saliency"], batch["thermal"].astype(np.float32) / 200.0, atol=0.01
        )
        assert batch["saliency"].dtype == np.float32
        assert (batch["saliency"] > 0.9).any() and (batch["saliency"][batch["valid"]] == 0).any()


def test_saliency_needs_thermal():
    def drop_thermal(i, rec):
        rec.pop("thermal")
        return rec

    with pytest.raises(ValueError, match=r"scenes/val/0.*thermal"):
        _make(EditedSource(_scenes(4), drop_thermal), train=False, saliency=True)

    def drop_third(i, rec):
        return drop_thermal(i, rec) if i == 2 else rec

    ds = _make(EditedSource(_scenes(4), drop_third), train=False, saliency=True)
    with pytest.raises(ValueError, match=r"scenes/val/2.*thermal"):
        list(ds)

    # An invalid record (undecodable image) without thermal gets zeros.
    def invalid_third(i, rec):
        if i != 2:
            return rec
        return {"image": np.zeros((8, 8, 3), np.uint8), "id": rec["id"], "valid": False}

    batch = next(iter(_make(EditedSource(_scenes(4), invalid_third), train=False,
                            saliency=True)))
    assert not batch["valid"][2] and batch["valid"].sum() == 3
    np.testing.assert_array_equal(batch["saliency"][2], 0.0)
    assert batch["saliency"][0].max() > 0
    with pytest.raises(ValueError, match="saliency must be a bool"):
        _make(_scenes(4), saliency="yes")
