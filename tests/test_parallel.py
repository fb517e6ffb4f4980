"""Mesh, global batches, and when a launch asks for jax.distributed."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from adverse_vision import parallel
from tests.helpers import free_port, process_env


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


@pytest.mark.parametrize("env,match", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_NUM_PROCESSES and JAX_PROCESS_ID are not"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "JAX_PROCESS_ID is not"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES must be a whole number"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     r"outside 0..1"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
      "JAX_LOCAL_DEVICE_IDS": "0;1"}, "JAX_LOCAL_DEVICE_IDS must be"),
])
def test_an_incomplete_explicit_launch_is_named(env, match):
    with pytest.raises(ValueError, match=match):
        parallel._initialize_arguments(env)  # pylint: disable=protected-access


def test_an_explicit_launch_passes_its_variables_on():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3", "JAX_LOCAL_DEVICE_IDS": "0,1"}
    assert parallel._initialize_arguments(env) == {  # pylint: disable=protected-access
        "coordinator_address": "10.0.0.2:1234", "num_processes": 4, "process_id": 3,
        "local_device_ids": [0, 1]}
    # A TPU slice or SLURM launch: JAX's own cluster detection fills the arguments.
    assert parallel._initialize_arguments({"SLURM_NTASKS": "4"}) == {}  # pylint: disable=protected-access


_WORKER = """
import jax, jax.numpy as jnp, numpy as np
from adverse_vision import parallel
assert parallel.maybe_initialize_distributed()
mesh = parallel.make_mesh()
i = jax.process_index()
batch = parallel.global_batch({"x": np.full((2, 3), i + 1, np.float32)}, mesh)
total = jax.jit(lambda b: jnp.sum(b["x"]))(batch)
print("RESULT", i, jax.process_count(), jax.device_count(), batch["x"].shape[0], float(total))
"""


def test_two_processes_join_by_the_documented_variables():
    """Two processes on this machine, launched as ``launch/gpu.sh`` documents (the three
    JAX_* variables), form one 4-device mesh and reduce a global batch together."""
    base = process_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
                       JAX_NUM_PROCESSES="2")
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER], env={**base, "JAX_PROCESS_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    results = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=180)
        finally:
            p.kill()
        assert p.returncode == 0, out[-2000:]
        results.append(next(line for line in out.splitlines() if line.startswith("RESULT")))
    # Process i holds two rows of value i + 1: 2 * 3 * (1 + 2) = 18 over 4 devices.
    assert sorted(results) == ["RESULT 0 2 4 4 18.0", "RESULT 1 2 4 4 18.0"]
