"""Mesh, global batches, and when a launch asks for jax.distributed."""

import jax
import numpy as np
import pytest

from adverse_vision import parallel


def test_mesh_spans_the_eight_fake_devices():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.devices.size == jax.device_count() == 8


def test_global_batch_is_split_over_devices():
    mesh = parallel.make_mesh()
    local = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    batch = parallel.global_batch(local, mesh)
    assert batch["x"].shape == (16, 3)
    assert len(batch["x"].addressable_shards) == 8
    assert batch["x"].addressable_shards[1].data.shape == (2, 3)
    np.testing.assert_array_equal(parallel.to_host(batch)["x"], local["x"])


def test_batch_must_divide_over_devices():
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        parallel.per_host_batch_size(12, parallel.make_mesh())
    assert parallel.per_host_batch_size(16, parallel.make_mesh()) == 16


@pytest.mark.parametrize("env,wanted", [
    ({}, False),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, True),
    ({"SLURM_NTASKS": "1"}, False),
    ({"SLURM_NTASKS": "4"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"SLURM_NTASKS": "4", "ADVERSE_VISION_DISTRIBUTED": "0"}, False),
    ({"ADVERSE_VISION_DISTRIBUTED": "1"}, True),
])
def test_distributed_only_when_the_launch_asks(env, wanted):
    assert parallel._launch_wants_distributed(env) is wanted  # pylint: disable=protected-access


def test_no_distributed_initialize_in_a_plain_process(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS",
              "OMPI_COMM_WORLD_SIZE", "ADVERSE_VISION_DISTRIBUTED"):
        monkeypatch.delenv(k, raising=False)
    called = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: called.append(1))
    assert parallel.maybe_initialize_distributed() is False
    assert not called
