"""The command-line programs end a user error, or running out of device memory, with one
readable line."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from adverse_vision import cli
from configs import yolox_scenes

# 256 TiB: more than any host's address space, so the allocation fails whatever the
# kernel's overcommit policy.
_TOO_MANY = 2**46


def _exhaust():
    return jax.block_until_ready(jax.jit(lambda x: jnp.zeros((_TOO_MANY,), jnp.float32) + x)(1.0))


def test_out_of_memory_message_names_batch_size_and_amount():
    with pytest.raises(jax.errors.JaxRuntimeError) as info:
        _exhaust()
    cfg = yolox_scenes.get_config("smoke")
    message = cli.out_of_memory_message(info.value, cfg)
    assert f"batch {cfg.batch_size} and {cfg.image_size} px" in message
    assert "262144.0 GiB" in message and "--config.batch_size" in message
    assert "batch size" in cli.out_of_memory_message(info.value)  # no --config
    assert cli.out_of_memory_message(ValueError("RESOURCE_EXHAUSTED"), cfg) is None


_PROGRAM = """
from adverse_vision import cli
from tests.test_cli import _exhaust
cli.define_config_flag()
cli.run(_exhaust)
"""


def test_program_out_of_memory_is_one_line():
    proc = subprocess.run([sys.executable, "-c", _PROGRAM, "--config",
                           "configs/yolox_scenes.py:smoke", "--config.batch_size=6"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "out of device memory" in lines[0] and "batch 6" in lines[0]
    assert "Traceback" not in proc.stderr
