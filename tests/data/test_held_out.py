"""The held-out split of bi-level training and the paired iterator's resumable state."""

import grain
import numpy as np
import pytest

from adverse_vision.data.held_out import PairedIterator, Subset, split_indices


def test_split_is_disjoint_deterministic_and_sized():
    lower, upper = split_indices(50, 0.1, seed=3)
    assert len(upper) == 5 and len(lower) == 45
    assert not set(lower) & set(upper) and set(lower) | set(upper) == set(range(50))
    again = split_indices(50, 0.1, seed=3)
    np.testing.assert_array_equal(again[1], upper)
    assert not np.array_equal(split_indices(50, 0.1, seed=4)[1], upper)
    assert len(split_indices(3, 0.01, 0)[1]) == 1 and len(split_indices(3, 0.99, 0)[0]) == 1
    with pytest.raises(ValueError, match="at least 2"):
        split_indices(1, 0.5, 0)
    with pytest.raises(ValueError, match="fraction"):
        split_indices(10, 1.0, 0)


def test_subset_reads_through():
    s = Subset(list(range(100, 110)), np.asarray([2, 7]))
    assert len(s) == 2 and s[0] == 102 and s[1] == 107


def _stream(offset):
    ds = grain.MapDataset.range(offset, offset + 1000).map(lambda x: {"x": np.asarray(x)})
    return iter(ds.to_iter_dataset())


def _take(it, n):
    return [(int(b["x"]), int(b["upper/x"])) for b in (next(it) for _ in range(n))]


def test_upper_batch_changes_every_k_and_resumes_exactly():
    full = _take(PairedIterator(_stream(0), _stream(5000), every=3), 12)
    assert [u for _, u in full] == [5000] * 3 + [5001] * 3 + [5002] * 3 + [5003] * 3
    assert [x for x, _ in full] == list(range(12))
    for cut in (0, 1, 3, 4, 8):
        it = PairedIterator(_stream(0), _stream(5000), every=3)
        head = _take(it, cut)
        state = it.get_state()
        resumed = PairedIterator(_stream(0), _stream(5000), every=3)
        resumed.set_state(state)
        assert head + _take(resumed, 12 - cut) == full, cut
    with pytest.raises(ValueError, match="unreadable"):
        PairedIterator(_stream(0), _stream(0), 2).set_state(b"{}")
