"""host_memory: freed host memory stays in the process for the next step."""

import os
import subprocess
import sys

import pytest

from adverse_vision import host_memory

#: Allocates and frees 256 MB twice; prints the page faults of the second time.
PROBE = """
import resource, sys
import numpy as np
from adverse_vision import host_memory
if sys.argv[1] == "keep":
    assert host_memory.keep_freed_memory()

def faults(n):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(n, np.uint8)
    a.fill(1)
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults(256 << 20)
print(faults(256 << 20))
"""


def _second_faults(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1])


def test_freed_memory_is_reused_without_page_faults():
    assert _second_faults("plain") > 50  # glibc gave the block back and faults it in again
    assert _second_faults("keep") == 0


def test_it_can_be_left_alone(monkeypatch):
    monkeypatch.setenv("ADVERSE_VISION_KEEP_HOST_MEMORY", "0")
    assert not host_memory.keep_freed_memory()


def test_arena_count_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("ADVERSE_VISION_MALLOC_ARENAS", raising=False)
    assert host_memory.arenas() == host_memory.ARENAS
    monkeypatch.setenv("ADVERSE_VISION_MALLOC_ARENAS", "2")
    assert host_memory.arenas() == 2
    for bad in ("0", "-1", "four", "1.5"):
        monkeypatch.setenv("ADVERSE_VISION_MALLOC_ARENAS", bad)
        with pytest.raises(ValueError, match=f"ADVERSE_VISION_MALLOC_ARENAS: .*{bad!r}"):
            host_memory.arenas()


def test_a_bad_arena_count_ends_a_program_with_one_line(tmp_path):
    env = dict(os.environ, ADVERSE_VISION_MALLOC_ARENAS="four")
    proc = subprocess.run([sys.executable, "-m", "adverse_vision.train", "--config",
                           "configs/yolox_scenes.py:tiny", "--workdir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: ADVERSE_VISION_MALLOC_ARENAS: expected a whole number of at least 1, got 'four'")
