r"""Train a config.

  python -m adverse_vision.train --config configs/yolox_scenes.py:tiny --workdir runs/tiny \
      [--config.total_steps=1000 ...]

Rerunning the same command on the same workdir resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import logging

from absl import flags

from adverse_vision import cli
from adverse_vision import parallel

_CONFIG = cli.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")
_PROGRESS = flags.DEFINE_enum("progress", "auto", ["auto", "on", "off"],
                              "Progress bar: auto shows it on a terminal.")
flags.mark_flags_as_required(["config", "workdir"])


def main() -> int:
    # A bad workdir or config ends the program before anything is built.
    cli.check_path(_WORKDIR.value, "--workdir")
    cfg = _CONFIG.value  # validated by the trainer, before anything is built
    parallel.maybe_initialize_distributed()
    from adverse_vision import trainer  # pylint: disable=import-outside-toplevel
    trainer.log_to_stderr(logging.INFO)
    progress = {"auto": None, "on": True, "off": False}[_PROGRESS.value]
    summary = trainer.train_and_evaluate(cfg, _WORKDIR.value, progress=progress)
    print(json.dumps({k: summary[k] for k in ("final_step", "val", "best_step", "preempted")},
                     default=str))
    return 0


if __name__ == "__main__":
    cli.run(main)
