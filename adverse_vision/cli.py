"""Shared pieces of the command-line programs: config flags and readable errors."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

import jax
from absl import app, flags
from ml_collections import config_flags

from adverse_vision import checkpoint as ckpt_lib
from adverse_vision import config as config_lib

# Errors whose message is the whole story: printed as one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    config_lib.ConfigError, ckpt_lib.CheckpointError, FileNotFoundError, ValueError)


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
    cfg = load_config_file(spec)
    known = [path for path, _ in config_lib.walk(cfg)]
    for key in keys:
        if key not in known:
            raise config_lib.ConfigError(
                f"unknown config key '{key}' in --config.{key}"
                f"{config_lib.suggest(key, known)}")


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


def run(main: Callable[[], int]) -> None:
    """Runs a program body under absl; a user error, or running out of device memory,
    ends with one readable line."""
    def report(e: object) -> None:  # an exception, or the message itself
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    try:
        check_command_line(sys.argv[1:])
    except USER_ERRORS as e:
        report(e)

    def wrapped(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        logging.getLogger("adverse_vision").setLevel(logging.INFO)
        try:
            code = main()
        except USER_ERRORS as e:
            report(e)
        except jax.errors.JaxRuntimeError as e:
            message = out_of_memory_message(e, _flag_config())
            if message is None:
                raise
            report(message)
        sys.exit(code or 0)

    app.run(wrapped)


__all__ = ["define_config_flag", "load_config_file", "check_command_line",
           "out_of_memory_message", "run", "flags"]
