r"""Evaluate a trained workdir.

  python -m adverse_vision.evaluate --workdir runs/tiny [--eval NAME] [--split test] \
      [--checkpoint latest] [--degrade none] [--images FOLDER]

The config saved in the workdir rebuilds the model and the data. Every evaluation of
its ``evals`` (``--eval NAME``: that one only) is run on the checkpoint: its split of
the configured dataset with the entry's own ``data`` keys, by the method's report
(``Method.report``), which gives the metrics and the table printed under a header
line. ``--split`` (``val`` or ``test``) replaces the entries' split, ``--degrade``
their evaluation degradation (``none``: clear images); options of a method's report
(``--images FOLDER``) are passed on to it. Each evaluation ends with one JSON line:
``{"eval", "step", "split", ...metrics}``.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

import jax
import ml_collections

from adverse_vision import cli
from adverse_vision import degrade as degrade_lib
from adverse_vision import parallel


def select_evals(cfg: ml_collections.ConfigDict, name: Optional[str] = None,
                 split: Optional[str] = None, degrade: Optional[str] = None) -> list[str]:
    """The evaluations to run (all of ``cfg.evals``, or ``name``), with ``cfg`` changed
    in place for the overrides: ``split`` replaces each entry's split, ``degrade`` the
    evaluation degradation (``data.val_degrade``, a single spec or a mixture) of the run
    and of the entries that set their own."""
    if name is not None and name not in cfg.evals:
        raise ValueError(f"--eval {name!r}: the workdir's config has no such evaluation; its "
                         f"evaluations: {', '.join(cfg.evals)}")
    if degrade is not None and degrade not in degrade_lib.DEGRADATIONS:
        raise ValueError(f"--degrade {degrade!r} is not a degradation; choose one of "
                         f"{', '.join(degrade_lib.DEGRADATIONS)}")
    names = [name] if name is not None else list(cfg.evals)
    with cfg.unlocked():
        if degrade is not None:  # the run's own too: a method may read it (cfg.data)
            own = [cfg.evals[n].data for n in names if "val_degrade" in cfg.evals[n].data]
            for data in [cfg.data] + own:
                del data["val_degrade"]  # it may hold a tuple of specs
                data.val_degrade = {"name": degrade}
        if split is not None:
            for n in names:
                cfg.evals[n].split = split
    return names


def degradations(data: ml_collections.ConfigDict) -> str:
    """The evaluation degradation of a data config: ``haze``, or ``haze or none`` for a
    mixture."""
    specs = data.val_degrade if isinstance(data.val_degrade, tuple) else (data.val_degrade,)
    return " or ".join(str(dict(s)["name"]) for s in specs)


def evaluate_workdir(workdir: str, checkpoint: str = "best", eval_name: Optional[str] = None,
                     split: Optional[str] = None, degrade: Optional[str] = None,
                     options: Optional[dict[str, Any]] = None,
                     write: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Runs the evaluations of a workdir's checkpoint (see the module docstring) and
    writes, per evaluation, the header line, the method's table and the JSON line (on
    process 0 only: every process evaluates its share, the results are gathered).
    Returns the JSON records."""
    from adverse_vision import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
    from adverse_vision.data import factory  # pylint: disable=import-outside-toplevel
    trainer, variables, step = trainer_lib.restore_for_eval(workdir, checkpoint)
    if jax.process_index() != 0:
        write = _silent
    cfg = trainer.cfg
    names = select_evals(cfg, eval_name, split, degrade)
    per_host = parallel.per_host_batch_size(cfg.eval_batch_size or cfg.batch_size, trainer.mesh)
    bundle = factory.DataBundle(cfg, per_host_batch=per_host, method=trainer.method)
    records = []
    for name in names:
        entry_split = cfg.evals[name].split
        metrics, table = trainer.method.report(trainer, variables, bundle, name,
                                               dict(options or {}))
        write(f"checkpoint step {step} ({checkpoint}), evaluation {name}: split {entry_split}, "
              f"degradation {degradations(bundle.data_config(name))}")
        write(table)
        records.append({"eval": name, "step": step, "split": entry_split, **metrics})
        write(json.dumps(records[-1]))
    return records


def _silent(_: str) -> None:
    pass


# --------------------------------------------------------------------------- program

def _define_flags():
    """The program's flags, defined only when it runs: ``workdir`` and ``checkpoint``
    are also flags of ``predict`` and ``train``, and absl refuses a second definition
    when those modules are imported together (e.g. by tests)."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("workdir", None, "A training workdir.")
    flags.DEFINE_string("eval", None, "The evaluation of the config's 'evals' to run "
                        "(default: all of them).")
    flags.DEFINE_enum("split", None, ["val", "test"], "Evaluate this split instead of each "
                      "evaluation's own.")
    flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                      "The best checkpoint by the validation metric, or the latest.")
    flags.DEFINE_string("degrade", None, "Override the evaluation degradation "
                        "(e.g. 'none' for clear images).")
    flags.DEFINE_string("images", None, "A folder of images that the method's report also "
                        "scores whole, by tiled inference (methods that do).")
    flags.mark_flags_as_required(["workdir"])


def main() -> int:
    from absl import flags  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    cli.check_path(f.workdir, "--workdir", write=False)
    parallel.maybe_initialize_distributed()
    evaluate_workdir(f.workdir, f.checkpoint, eval_name=f.eval, split=f.split,
                     degrade=f.degrade, options={"images": f.images})
    return 0


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
