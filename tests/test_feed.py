"""Feeding the devices: the entries a step reads, prefetching, the saved position."""

import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision import feed, parallel


def _batches():
    ds = grain.MapDataset.range(1000).map(
        lambda i: {"valid": np.bool_(i % 5 != 0), "x": np.full((2,), i, np.float32),
                   "unused": np.zeros((64,), np.float32)})
    return iter(ds.batch(8).to_iter_dataset())


def test_read_keys_counts_only_values_taken():
    batch = {"a": jnp.zeros(3), "b": jnp.zeros(3), "c": jnp.zeros(3)}

    def step(_, b):
        names = list(b)  # names only
        assert "c" in b and "z" not in b
        return b["a"] + b.get("missing", 0.0) + len(names)

    assert feed.read_keys(step, None, batch) == ("a", "c")
    assert feed.read_keys(lambda _, b: dict(b), None, batch) == ("a", "b", "c")


def test_prefetcher_sends_the_keys_in_order_and_saves_the_taken_position():
    mesh = parallel.make_mesh()
    keys_asked = []

    def keys(step, local):
        keys_asked.append(step)
        return ("valid", "x")

    prefetcher = feed.DevicePrefetcher(_batches(), mesh, keys, first_step=5, ahead=2)
    try:
        taken = [next(prefetcher) for _ in range(3)]
        view = prefetcher.checkpoint_view()
    finally:
        prefetcher.close()
    for k, (batch, invalid) in enumerate(taken):
        assert sorted(batch) == ["valid", "x"]
        assert isinstance(batch["x"], jax.Array) and batch["x"].sharding == parallel.data_sharding(mesh)
        np.testing.assert_array_equal(np.asarray(batch["x"])[:, 0], np.arange(8 * k, 8 * k + 8))
        assert invalid == sum(i % 5 == 0 for i in range(8 * k, 8 * k + 8))
    assert keys_asked[:3] == [5, 6, 7] and len(keys_asked) <= 3 + 2 + 1
    # The position saved is after the third batch, not after those prefetched.
    plain = _batches()
    for _ in range(3):
        next(plain)
    assert json.loads(view.get_state()) == plain.get_state()


def test_a_data_error_reaches_the_loop():
    def broken():
        yield {"valid": np.ones(8, bool), "x": np.zeros((8, 2), np.float32)}
        raise ValueError("cannot decode image broken.jpg")

    class Iterator:
        def __init__(self):
            self.it = broken()

        def __next__(self):
            return next(self.it)

        def get_state(self):
            return {}

    prefetcher = feed.DevicePrefetcher(Iterator(), parallel.make_mesh(),
                                       lambda step, local: ("valid", "x"), first_step=0)
    try:
        next(prefetcher)
        with pytest.raises(ValueError, match="broken.jpg"):
            next(prefetcher)
    finally:
        prefetcher.close()


def _keys_per_step(cfg, steps):
    import contextlib  # pylint: disable=import-outside-toplevel
    from adverse_vision.data import factory  # pylint: disable=import-outside-toplevel
    from adverse_vision.trainer import Trainer  # pylint: disable=import-outside-toplevel
    trainer = Trainer(cfg)
    data = factory.DataBundle(cfg, per_host_batch=cfg.batch_size, method=trainer.method)
    with contextlib.closing(data.train_iterator()) as batches:
        local = next(batches)
    return local, {s: trainer.batch_keys(s, local) for s in steps}


def test_bdlf_sends_its_upper_batch_only_on_upper_steps():
    from tests.helpers import bdlf_smoke_config  # pylint: disable=import-outside-toplevel
    cfg = bdlf_smoke_config("")
    local, keys = _keys_per_step(cfg, (0, 1))
    upper = [k for k in keys[0] if k.startswith("upper/")]
    assert "upper/image" in upper and "upper/thermal" in upper
    assert not [k for k in keys[1] if k.startswith("upper/")]
    assert "image" in keys[1] and "thermal" in keys[1] and "clean" not in keys[1]
    assert sum(local[k].nbytes for k in keys[1]) < sum(v.nbytes for v in local.values()) / 3


def test_a_detector_is_sent_neither_the_clean_image_nor_the_depth():
    from tests.helpers import smoke_config  # pylint: disable=import-outside-toplevel
    _, keys = _keys_per_step(smoke_config(), (0,))
    assert keys[0] == ("box_mask", "boxes", "classes", "image", "valid")
