"""The training program's log: the project's own lines by default, the libraries' INFO
lines (orbax, absl, jax, grain) only with --verbose."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# absl's prefix of an INFO line: "I1204 21:43:49.137190 139861086964608 file.py:701] ..."
_LIBRARY_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]")


def _library_info_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if _LIBRARY_INFO.match(line)]


def test_library_info_logs_only_with_verbose(tmp_path):
    cmd = [sys.executable, "-m", "adverse_vision.train",
           "--config", "configs/yolox_scenes.py:smoke", "--config.total_steps=2",
           "--config.eval_every=2", "--config.checkpoint_every=2",
           "--config.data.num_workers=0", "--workdir", str(tmp_path / "run"), "--progress", "off"]
    quiet = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "adverse_vision: step 2: val/mAP" in quiet.stderr  # the project's own log stays
    assert _library_info_lines(quiet.stderr) == []

    # The same command again resumes at the last step: orbax restores, nothing compiles.
    verbose = subprocess.run(cmd + ["--verbose"], cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "adverse_vision: resumed from step 2" in verbose.stderr
    assert any("checkpoint_manager.py" in line or "orbax" in line
               for line in _library_info_lines(verbose.stderr)), verbose.stderr[-3000:]
