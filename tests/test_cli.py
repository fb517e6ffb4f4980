"""The command-line programs end a user error (a bad path flag, running out of device
memory) with one readable line, and list their own flags under --help."""

import errno
import os
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


_STOPPING = """
import os
from adverse_vision import cli, trainer

def main():
    if os.environ["STOP"] == "nan":
        raise trainer.NonFiniteLossError("loss is nan at step 4; stopping. no checkpoint")
    raise KeyboardInterrupt

cli.run(main)
"""


@pytest.mark.parametrize("kind,code,line", [
    ("nan", 2, "error: loss is nan at step 4; stopping. no checkpoint"),
    ("interrupt", 130, "error: interrupted; checkpoints saved before it are kept"),
])
def test_a_stopped_run_ends_with_one_line(kind, code, line):
    proc = subprocess.run([sys.executable, "-c", _STOPPING], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "STOP": kind})
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip().splitlines() == [line]


# --------------------------------------------------------------------------- path flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_check_path_accepts_usable_paths(tmp_path):
    cli.check_path(str(tmp_path), "--workdir")
    cli.check_path(str(tmp_path / "new" / "deeper"), "--workdir")  # to be created
    cli.check_path(str(tmp_path / "results.json"), "--json", kind="file")
    cli.check_path(str(tmp_path), "--workdir", write=False)
    cli.check_path("gs://bucket/runs/x", "--workdir")  # left to the storage library
    assert not (tmp_path / "new").exists()
    assert os.listdir(tmp_path) == []  # the write probe leaves nothing behind


@pytest.mark.parametrize("case, message", [
    ("empty", "--workdir is empty: give a folder"),
    ("blank", "--workdir is empty: give a folder"),
    ("file", "--workdir {tmp}/notes.txt is a file, not a folder"),
    ("inside_file", "--workdir {tmp}/notes.txt/run is inside {tmp}/notes.txt, which is a file"),
    ("missing_input", "--workdir {tmp}/missing does not exist"),
    ("folder_as_file", "--json {tmp} is a folder, not a file"),
    ("file_in_missing_folder", "--json {tmp}/new/r.json: its folder does not exist"),
])
def test_check_path_refuses_by_flag_and_path(tmp_path, case, message):
    (tmp_path / "notes.txt").write_text("x")
    path, kwargs = {
        "empty": ("", {}), "blank": ("  ", {}),
        "file": (f"{tmp_path}/notes.txt", {}),
        "inside_file": (f"{tmp_path}/notes.txt/run", {}),
        "missing_input": (f"{tmp_path}/missing", {"write": False}),
        "folder_as_file": (str(tmp_path), {"kind": "file"}),
        "file_in_missing_folder": (f"{tmp_path}/new/r.json", {"kind": "file"}),
    }[case]
    flag = "--json" if kwargs.get("kind") == "file" else "--workdir"
    with pytest.raises(cli.PathError) as info:
        cli.check_path(path, flag, **kwargs)
    assert str(info.value).startswith(message.format(tmp=tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a folder without write "
                    "permission, so such a folder is writable and passes")
def test_check_path_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(cli.PathError, match=f"--out {folder} is not writable"):
            cli.check_path(str(folder), "--out")
        with pytest.raises(cli.PathError, match=f"cannot be created: {folder} is not writable"):
            cli.check_path(str(folder / "run"), "--out")
    finally:
        folder.chmod(0o755)


def test_check_path_probes_by_writing(tmp_path, monkeypatch):
    """Permission bits that allow writing do not make a writable folder (a read-only
    mount, for instance): a file is created to find out."""
    def read_only_mount(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(cli.tempfile, "mkstemp", read_only_mount)
    with pytest.raises(cli.PathError, match=f"--workdir {tmp_path} is not writable "
                                            r"\(read-only file system\)"):
        cli.check_path(str(tmp_path), "--workdir")
    with pytest.raises(cli.PathError, match=f"cannot be created: {tmp_path} is not writable"):
        cli.check_path(str(tmp_path / "run"), "--workdir")


def _program(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a program that failed on a user error."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("program", ["train", "train_empty", "predict", "convert", "bench",
                                     "evaluate"])
def test_programs_refuse_bad_paths_in_one_line(tmp_path, program):
    taken = tmp_path / "taken"
    taken.write_text("a file where a folder should be")
    (tmp_path / "a.jpg").write_bytes(b"")
    smoke = ["--config", "configs/yolox_scenes.py:smoke"]
    args, expected = {
        "train": (["adverse_vision.train", *smoke, "--workdir", str(taken)],
                  f"error: --workdir {taken} is a file, not a folder"),
        "train_empty": (["adverse_vision.train", *smoke, "--workdir", ""],
                        "error: --workdir is empty: give a folder"),
        "predict": (["adverse_vision.predict", "--workdir", str(tmp_path), "--images",
                     str(tmp_path / "a.jpg"), "--out", str(taken / "preds")],
                    f"error: --out {taken}/preds is inside {taken}, which is a file"),
        "convert": (["adverse_vision.convert", "--from", str(tmp_path / "a.jpg"), "--method",
                     "yolox", "--out", str(taken)],
                    f"error: --out {taken} is a file, not a folder"),
        "bench": (["adverse_vision.bench", *smoke, "--json", str(tmp_path)],
                  f"error: --json {tmp_path} is a folder, not a file"),
        "evaluate": (["adverse_vision.evaluate", "--workdir", str(tmp_path / "missing")],
                     f"error: --workdir {tmp_path}/missing does not exist"),
    }[program]
    assert _error_line(_program(*args)).startswith(expected)
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", "taken"]  # nothing was written


# --------------------------------------------------------------------------- --help

@pytest.mark.parametrize("program, own_flags", [
    ("train", ["--config", "--workdir", "--progress", "--[no]verbose"]),
    ("evaluate", ["--workdir", "--split", "--checkpoint", "--[no]verbose"]),
    ("predict", ["--workdir", "--images", "--out", "--[no]verbose"]),
    ("bench", ["--config", "--steps", "--json", "--[no]verbose"]),
    ("convert", ["--config", "--from", "--method", "--out", "--[no]verbose"]),
    ("bilevel", ["--dim_theta", "--seeds"]),
])
def test_help_lists_the_programs_own_flags(program, own_flags):
    proc = _program(f"adverse_vision.{program}", "--help")
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    listed = {line.split(":")[0].split()[0] for line in proc.stdout.splitlines()
              if line.lstrip().startswith("--")}
    assert set(own_flags) <= listed, proc.stdout
