"""Shared test fixtures' building blocks."""

import os
import signal
import socket
import struct

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from adverse_vision import logs
from configs import dnhl_scenes_cls, dnhl_scenes_seg, yolox_scenes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The reference outputs of the official implementations: ``../shared/reference``
#: beside the repository.
REFERENCE_DIR = os.path.normpath(os.path.join(ROOT, os.pardir, "shared", "reference"))


def reference(name: str) -> str:
    """The path of the reference file ``name`` (in :data:`REFERENCE_DIR`).

    A missing file skips the calling test, or fails it when the environment
    variable ``CI`` is ``true``: continuous integration must have the reference.
    """
    path = os.path.join(REFERENCE_DIR, name)
    if not os.path.isfile(path):
        message = f"reference file {path} not found"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{message} (CI=true: the reference data must be present)", pytrace=False)
        pytest.skip(message)
    return path


def signal_at_step(monkeypatch, signum: signal.Signals, at: int):
    """Makes the trainer's progress update send ``signum`` to this process after step
    ``at`` (a run preempted there); returns the original update."""
    original_update = logs.Progress.update

    def update_then_signal(self, step):
        original_update(self, step)
        if step == at:
            signal.raise_signal(signum)

    monkeypatch.setattr(logs.Progress, "update", update_then_signal)
    return original_update


def fill_variables(shapes, seed=0):
    """Concrete variables for a shape tree, without compiling ~150 initialisers.

    Kernels are uniform with variance 1.5 / fan_in: the signal neither dies out
    over the depth in eval mode (as it does at PyTorch's default scale, 1/3 /
    fan_in) nor turns chaotic (He scale). BatchNorm statistics start at 0 / 1.
    """
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = path[-1].key
        if name in ("kernel", "in_proj_kernel"):
            bound = np.sqrt(4.5 / np.prod(x.shape[:-1]))
            return rng.uniform(-bound, bound, x.shape).astype(x.dtype)
        if name in ("scale", "var"):
            return np.ones(x.shape, x.dtype)
        if name == "mean":
            return np.zeros(x.shape, x.dtype)
        return rng.uniform(-0.1, 0.1, x.shape).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def smoke_config(**overrides):
    """A 6-step smoke YOLOX config; ``overrides`` map dotted keys to values.

    Tests that train share this config, so their compiled programs are shared too
    (through the test run's compilation cache)."""
    cfg = yolox_scenes.get_config("smoke")
    cfg.total_steps = 6
    cfg.eval_every = 6
    cfg.checkpoint_every = 2
    cfg.log_every = 1
    cfg.data.num_train = 64
    cfg.data.num_val = 8
    return _override(cfg, overrides)


def _override(cfg, overrides):
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"no config key {key}")
        node[leaf] = value
    return cfg


def dnhl_smoke_config(stage: str, task: str = "classification", **overrides):
    """A very small DN-HL config of ``stage`` (32 px, batch 8, 4 steps); ``overrides``
    map dotted keys to values."""
    module = dnhl_scenes_cls if task == "classification" else dnhl_scenes_seg
    cfg = module.get_config(f"tiny,{stage}")
    cfg.image_size = 32
    cfg.batch_size = 8
    cfg.total_steps = 4
    cfg.eval_every = cfg.checkpoint_every = 4
    cfg.log_every = 2
    cfg.data.num_train = 64
    cfg.data.num_val = 16
    cfg.data.scene_size = 64 if task == "classification" else 32
    cfg.dnhl.denoiser_width = 0.125
    cfg.dnhl.high_width = 0.0625
    cfg.dnhl.high_fc = 32
    cfg.dnhl.eval_sigmas = (25.0, 50.0)
    return _override(cfg, overrides)


def bdlf_smoke_config(tokens: str = "", **overrides):
    """A very small BDLF config (64 px, batch 8, 4 steps, narrow networks) with the
    variant ``tokens`` (e.g. "fusion", "seg"); ``overrides`` map dotted keys to values."""
    from configs import bdlf_scenes  # pylint: disable=import-outside-toplevel
    cfg = bdlf_scenes.get_config(",".join(t for t in ("smoke", tokens) if t))
    return _override(cfg, overrides)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a JAX coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(devices: int, **extra: str) -> dict[str, str]:
    """This environment for a child JAX process of ``devices`` CPU devices: without the
    launch variables of this one (JAX_*, TPU_*, SLURM_*, OMPI_*, ADVERSE_VISION_*),
    plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "TPU_", "SLURM_", "OMPI_", "ADVERSE_VISION_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               **extra)
    return env


def tensorboard_events(data: bytes) -> list:
    """The Event records of a TensorBoard event file's bytes (TFRecord framing)."""
    out, i = [], 0
    while i < len(data):
        (length,) = struct.unpack("Q", data[i:i + 8])
        out.append(event_pb2.Event.FromString(data[i + 12:i + 12 + length]))
        i += 12 + length + 4
    return out
