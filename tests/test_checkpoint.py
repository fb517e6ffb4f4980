"""Checkpoints: state and data iterator round-trip, latest N plus the best are kept."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision import checkpoint as ckpt_lib


def _iterator():
    return iter(grain.MapDataset.range(100).shuffle(seed=3).to_iter_dataset())


def _state(v):
    return {"w": jnp.full((3, 2), float(v)), "step": jnp.asarray(v, jnp.int32)}


def test_state_and_iterator_round_trip(tmp_path):
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "c"), keep=2)
    it = _iterator()
    [next(it) for _ in range(7)]
    ckpt.save(7, _state(7), it)
    expected = [next(it) for _ in range(5)]
    ckpt.close()

    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "c"), keep=2)
    it2 = _iterator()
    state, step = ckpt.restore(jax.tree.map(jnp.zeros_like, _state(0)), it2)
    assert step == 7
    np.testing.assert_array_equal(state["w"], np.full((3, 2), 7.0))
    assert [next(it2) for _ in range(5)] == expected
    ckpt.close()


def test_keeps_latest_and_best(tmp_path):
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "c"), keep=2, best_metric="val/mAP")
    metrics = {2: 0.5, 4: 0.9, 6: 0.3}
    for step in range(1, 9):
        m = {"val/mAP": metrics[step]} if step in metrics else None
        ckpt.save(step, _state(step), metrics=m)
    ckpt.wait()
    assert ckpt.best_step() == 4
    assert sorted(ckpt.all_steps()) == [4, 7, 8]
    state, step = ckpt.restore(_state(0), step=ckpt.best_step())
    assert step == 4 and float(state["w"][0, 0]) == 4.0
    ckpt.close()


def test_missing_and_mismatched_checkpoints_are_named(tmp_path):
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "c"))
    with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint in .*c"):
        ckpt.restore(_state(0))
    ckpt.save(1, _state(1))
    ckpt.wait()
    with pytest.raises(ckpt_lib.CheckpointError, match="does not fit"):
        ckpt.restore({"w": jnp.zeros((5, 5)), "step": jnp.zeros((), jnp.int32)})
    ckpt.close()


def test_small_replicated_arrays_are_saved_without_slicing_programs(tmp_path, caplog):
    """On 8 devices orbax would slice every replicated array into 8 parts on the devices,
    compiling a program per shape and device; small ones are written whole instead, and
    an array large enough is still split."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    assert len(jax.devices()) == 8
    small = {f"b{i}": jax.device_put(jnp.full((8 * (i + 1),), float(i)), replicated)
             for i in range(6)}
    big = jax.device_put(jnp.ones((8, ckpt_lib.MIN_REPLICA_SLICE_BYTES // 4)), replicated)
    ckpt_lib._write_small_arrays_whole.cache_clear()  # pylint: disable=protected-access
    with caplog.at_level("WARNING"):  # orbax's handler replaced quietly, once
        ckpt = ckpt_lib.Checkpointer(str(tmp_path / "c"))
        ckpt_lib.Checkpointer(str(tmp_path / "d")).close()
    assert not [r for r in caplog.records if "overriding" in r.getMessage()]
    with jax.log_compiles(), caplog.at_level("WARNING"):
        ckpt.save(1, {"small": small, "big": big})
        ckpt.wait()
    sliced = [r.getMessage() for r in caplog.records if "Compiling jit(slice)" in r.getMessage()]
    assert len(sliced) == 8 and all("[8,262144]" in m for m in sliced), sliced
    state, _ = ckpt.restore({"small": small, "big": big})
    np.testing.assert_array_equal(state["small"]["b5"], np.full((48,), 5.0))
    np.testing.assert_array_equal(state["big"], np.ones((8, 262144)))
    ckpt.close()
