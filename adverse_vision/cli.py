"""Shared pieces of the command-line programs: config and logging flags, checks of
path flags, and readable errors."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
import tempfile
import traceback
from typing import Any, Callable, Optional, Sequence

import jax
from absl import app, flags
from ml_collections import config_flags

from adverse_vision import checkpoint as ckpt_lib
from adverse_vision import config as config_lib
from adverse_vision import errors
from adverse_vision import host_memory
from adverse_vision import parallel


class PathError(ValueError):
    """A path flag that cannot be used; the message names the flag, the path and why."""


# Errors whose message is the whole story: printed as one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    config_lib.ConfigError, ckpt_lib.CheckpointError, errors.RunStopped,
    errors.OfficialUnavailable, FileNotFoundError, ValueError)

_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Also show the INFO log of the libraries (orbax, jax, grain, ...); "
    "the program's own log is shown either way.")

# Flags of this module that every program lists under --help, as its own.
_SHARED_FLAGS = ("config", "verbose")


def define_config_flag():
    """``--config file.py[:variant]`` plus ``--config.key=value`` overrides; the config is
    locked, so an override of an unknown key is refused when flags are parsed."""
    return config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/yolox_scenes.py:tiny; override keys with "
        "--config.key=value.", lock_config=True)


def load_config_file(spec: str):
    """``path.py[:arg]`` -> the config its ``get_config(arg)`` returns."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} not found")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isfile(os.path.join(folder, "__init__.py")):
        # A config in a package (configs/) imports its recipes from it (configs.common):
        # the package's parent goes on the path, wherever the program was started.
        parent = os.path.dirname(folder)
        if parent not in sys.path:
            sys.path.insert(0, parent)
    module_spec = importlib.util.spec_from_file_location("_adverse_vision_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise config_lib.ConfigError(f"config file {path} has no get_config(arg) function")
    return module.get_config(arg) if arg else module.get_config()


def _config_args(argv: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """The ``--config`` value and the override keys of a command line."""
    spec, keys = None, []
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
        elif token.startswith("--config="):
            spec = token.split("=", 1)[1]
        elif token.startswith("--config."):
            keys.append(token[len("--config."):].split("=", 1)[0])
    return spec, keys


def check_command_line(argv: Sequence[str]) -> None:
    """Loads the config file and checks every ``--config.key`` override exists in it,
    before absl parses the flags (whose own failure would be a long traceback)."""
    spec, keys = _config_args(argv)
    if spec is None:
        return
    config_lib.check_overrides(load_config_file(spec), keys)


def _write_problem(folder: str) -> Optional[str]:
    """None when a file can be created in ``folder``, otherwise why not. The permission
    bits are not the whole story (a read-only mount, root), so a file is created and
    removed."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_check_", dir=folder)
    except OSError as e:
        return (e.strerror or str(e)).lower()
    os.close(fd)
    os.remove(probe)
    return None


def check_path(path: Optional[str], flag: str, *, kind: str = "dir", write: bool = True) -> None:
    """Refuses a path flag that cannot work, with a :class:`PathError` naming the flag,
    the path and what is wrong, before anything is built.

    ``kind`` is ``"dir"`` or ``"file"``. An output (``write``) may be missing, to be
    created: then its nearest existing ancestor must be a folder this process can write
    in (for a file, its own folder must exist); an existing one must be of its kind and
    writable. An input (``write=False``) must exist and be of its kind. A URL
    (``gs://...``) is left to the storage library.
    """
    noun = {"dir": "folder", "file": "file"}[kind]
    if path is None or not str(path).strip():
        raise PathError(f"{flag} is empty: give a {noun}")
    path = os.fspath(path)
    if "://" in path:
        return
    if os.path.exists(path):
        if kind == "dir" and not os.path.isdir(path):
            raise PathError(f"{flag} {path} is a file, not a folder")
        if kind == "file" and os.path.isdir(path):
            raise PathError(f"{flag} {path} is a folder, not a file")
        if not write:
            return
        if kind == "dir":
            problem = _write_problem(path)
        else:
            problem = None if os.access(path, os.W_OK) else "permission denied"
        if problem:
            raise PathError(f"{flag} {path} is not writable ({problem})")
        return
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise PathError(f"{flag} {path} is inside {ancestor}, which is a file, not a folder")
    if not write:
        raise PathError(f"{flag} {path} does not exist")
    if kind == "file" and ancestor != os.path.dirname(os.path.abspath(path)):
        raise PathError(f"{flag} {path}: its folder does not exist")
    problem = _write_problem(ancestor)
    if problem:
        raise PathError(f"{flag} {path} cannot be created: {ancestor} is not writable "
                        f"({problem})")


def configure_logging(verbose: bool = False) -> None:
    """The project's log at INFO; the libraries' (orbax, absl, jax, grain, ...) at WARNING,
    or at INFO too when ``verbose``. An explicit ``--verbosity`` is left as given."""
    logging.getLogger("adverse_vision").setLevel(logging.INFO)
    if not flags.FLAGS["verbosity"].present:
        logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)


def out_of_memory_message(error: BaseException, cfg: Any = None) -> Optional[str]:
    """One line for XLA's RESOURCE_EXHAUSTED (a program needs more device memory than
    there is), naming the config's batch and image size; None for any other error."""
    text = str(error)
    if not isinstance(error, jax.errors.JaxRuntimeError) or "RESOURCE_EXHAUSTED" not in text:
        return None
    allocating = re.search(r"allocating (\d+) bytes", text)
    size = f" {int(allocating.group(1)) / 2**30:.1f} GiB" if allocating else " enough memory"
    at, lower = "", "the batch size or the image size"
    if cfg is not None and "batch_size" in cfg and "image_size" in cfg:
        at = f" at batch {cfg.batch_size} and {cfg.image_size} px"
        lower = "--config.batch_size or --config.image_size"
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    return (f"out of device memory on {device}{at}: XLA could not allocate{size}; lower "
            f"{lower}, or run on devices with more memory")


def _flag_config() -> Any:
    """The parsed ``--config`` of the running program, if it has one."""
    try:
        return flags.FLAGS["config"].value
    except KeyError:
        return None


def _list_shared_flags_in_help() -> None:
    """``--help`` lists the flags of the main module only: the flags of this module the
    program uses are made key flags of it, so that they are listed with its own."""
    for name in _SHARED_FLAGS:
        if name in flags.FLAGS:
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def _leave_run_now(code: int) -> None:
    """Ends a process of a multi-process run that failed, at once.

    A normal exit waits in ``jax.distributed``'s shutdown barrier for every process,
    while the others wait in their next collective (a checkpoint restore's barrier, a
    train step) for this one: both would hang until a timeout minutes later. Leaving
    without the barrier closes this process's connections, so the collectives of the
    others fail and they stop too."""
    print(f"process {jax.process_index()} of {jax.process_count()} failed (exit {code}); "
          "leaving the run so that the other processes stop too", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)  # pylint: disable=protected-access


def run(main: Callable[[], int]) -> None:
    """Runs a program body under absl; a user error, or running out of device memory,
    ends with one readable line. A process of a multi-process run that fails ends at
    once (see :func:`_leave_run_now`)."""
    def report(e: object) -> None:  # an exception, or the message itself
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    try:
        host_memory.keep_freed_memory()  # before the backend starts its threads
        check_command_line(sys.argv[1:])
    except USER_ERRORS as e:
        report(e)
    _list_shared_flags_in_help()

    def wrapped(argv: list[str]) -> None:
        try:
            body(argv)
        except SystemExit as e:
            if parallel.joined_distributed() and e.code not in (None, 0):
                _leave_run_now(e.code if isinstance(e.code, int) else 1)
            raise
        except BaseException:  # pylint: disable=broad-except
            if parallel.joined_distributed():
                traceback.print_exc()
                _leave_run_now(1)
            raise

    def body(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        configure_logging(_VERBOSE.value)
        try:
            code = main()
        except USER_ERRORS as e:
            report(e)
        except KeyboardInterrupt:
            print("error: interrupted; checkpoints saved before it are kept", file=sys.stderr)
            sys.exit(130)
        except jax.errors.JaxRuntimeError as e:
            message = out_of_memory_message(e, _flag_config())
            if message is None:
                raise
            report(message)
        sys.exit(code or 0)

    app.run(wrapped)


__all__ = ["PathError", "USER_ERRORS", "define_config_flag", "load_config_file",
           "check_command_line", "check_path", "configure_logging", "out_of_memory_message",
           "run", "flags"]
