r"""Tables of finished runs: one row per arm, mean +- sample std over its seeds.

  python -m adverse_vision.tabulate --arm "visible only=runs/visible_*" \
      --arm "infrared only=runs/infrared_*" --columns night/mAP,day_clear/mAP,val/EN \
      [--paired "infrared only-visible only"] [--percent mAP]

Each ``--arm NAME=PATTERN`` names the workdirs of one arm (a glob of folders, one
per seed). A column ``ENTRY/METRIC`` is the metric of evaluation ``ENTRY`` at the end
of each run (``summary.json``'s ``evals``). Cells are ``mean ± std (each run)`` over
the arm's runs in seed order; a metric listed in ``--percent`` (default mAP) is shown
x100. ``--paired A-B`` adds, per column, A's value minus B's for each seed both arms
ran (matched by ``config.json``'s ``seed``), with their mean ± std: the comparison a
seed-to-seed spread does not blur. A cell is n/a where a run lacks the metric (one
arm's only); a column no run has, a workdir without a summary, or one whose run
stopped before its last step is an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from typing import Any, Optional, Sequence

from adverse_vision import cli, storage


@dataclasses.dataclass
class Run:
    workdir: str
    seed: int
    evals: dict[str, dict[str, Any]]


def load_runs(pattern: str) -> list[Run]:
    """The finished runs whose workdirs match ``pattern``, in seed order."""
    folder, name = os.path.split(pattern.rstrip("/"))
    workdirs = [p for p in storage.glob(folder or ".", name) if storage.isdir(p)]
    if not workdirs:
        raise ValueError(f"no workdir matches {pattern!r}")
    runs = []
    for workdir in workdirs:
        summary_path = storage.join(workdir, "summary.json")
        if not storage.exists(summary_path):
            raise ValueError(f"{workdir}: no summary.json (the run has not ended)")
        summary = json.loads(storage.read_text(summary_path))
        config = json.loads(storage.read_text(storage.join(workdir, "config.json")))
        total = int(config.get("total_steps", 0))
        if summary.get("preempted") or int(summary.get("final_step", -1)) < total:
            raise ValueError(f"{workdir}: the run stopped at step {summary.get('final_step')} "
                             f"of {total}; rerun it to finish")
        runs.append(Run(workdir, int(config.get("seed", 0)), summary.get("evals", {})))
    seeds = [r.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{pattern!r}: several workdirs of the same seed ({seeds})")
    return sorted(runs, key=lambda r: r.seed)


def _split(column: str) -> tuple[str, str]:
    entry, _, metric = column.partition("/")
    if not metric:
        raise ValueError(f"column {column!r} must be ENTRY/METRIC, e.g. val/mAP")
    return entry, metric


def value(run: Run, column: str) -> float:
    """``ENTRY/METRIC`` of one run; NaN when the run did not compute it (a metric of
    one arm only, such as a restored image's PSNR)."""
    entry, metric = _split(column)
    v = run.evals.get(entry, {}).get(metric)
    return math.nan if v is None else float(v)


def _check_columns(runs: Sequence[Run], columns: Sequence[str]) -> None:
    """Every column is computed by at least one run (else it is a typo, named)."""
    for column in columns:
        entry, metric = _split(column)
        if not any(metric in r.evals.get(entry, {}) for r in runs):
            entries = sorted({e for r in runs for e in r.evals})
            metrics = sorted({m for r in runs for m in r.evals.get(entry, {})})
            where = (f"its metrics: {', '.join(metrics)}" if metrics
                     else f"the evaluations: {', '.join(entries) or 'none'}")
            raise ValueError(f"no run has {column!r} ({where})")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN when any is NaN."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(x: float, digits: int) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def _cell(values: Sequence[float], digits: int) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "n/a"
    each = " / ".join(_fmt(v, digits) for v in values)
    return f"{_fmt(m, digits)} ± {_fmt(s, digits)} ({each})" if len(values) > 1 else each


def table(arms: Sequence[tuple[str, Sequence[Run]]], columns: Sequence[str],
          percent: Sequence[str] = ("mAP",), digits: int = 2) -> str:
    """A markdown table: the arms' rows, the columns' ``mean ± std (each seed)``."""
    def scale(column):
        return 100.0 if column.partition("/")[2] in percent else 1.0

    lines = ["| arm | seeds | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for name, runs in arms:
        cells = [_cell([value(r, c) * scale(c) for r in runs], digits) for c in columns]
        lines.append(f"| {name} | {', '.join(str(r.seed) for r in runs)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(a: Sequence[Run], b: Sequence[Run], columns: Sequence[str],
           percent: Sequence[str] = ("mAP",), digits: int = 2) -> dict[str, str]:
    """Per column, ``mean ± std (each seed)`` of a's value minus b's over the seeds
    both have."""
    by_seed = {r.seed: r for r in b}
    pairs = [(r, by_seed[r.seed]) for r in a if r.seed in by_seed]
    if not pairs:
        raise ValueError("--paired: the two arms share no seed")
    out = {}
    for c in columns:
        k = 100.0 if c.partition("/")[2] in percent else 1.0
        out[c] = _cell([(value(x, c) - value(y, c)) * k for x, y in pairs], digits)
    return out


def _parse_arm(text: str) -> tuple[str, str]:
    name, sep, pattern = text.partition("=")
    if not sep or not name.strip() or not pattern.strip():
        raise ValueError(f"--arm {text!r} must be NAME=PATTERN")
    return name.strip(), pattern.strip()


def report(arm_specs: Sequence[str], columns: Sequence[str],
           paired_specs: Sequence[str] = (), percent: Sequence[str] = ("mAP",),
           digits: int = 2) -> str:
    """The text ``python -m adverse_vision.tabulate`` prints."""
    arms = [(name, load_runs(pattern)) for name, pattern in map(_parse_arm, arm_specs)]
    _check_columns([r for _, runs in arms for r in runs], columns)
    names = dict(arms)
    if len(names) != len(arms):
        raise ValueError("--arm: two arms of the same name")
    text = [table(arms, columns, percent, digits)]
    for spec in paired_specs:
        splits = [(spec[:i], spec[i + 1:]) for i, ch in enumerate(spec) if ch == "-"]
        a, b = next(((x, y) for x, y in splits if x in names and y in names), ("", ""))
        if not a:
            raise ValueError(f"--paired {spec!r} must be A-B with two arm names (arms: "
                             f"{', '.join(names)})")
        cells = paired(names[a], names[b], columns, percent, digits)
        text.append(f"\n{a} minus {b}, per seed: " + "; ".join(
            f"{c} {v}" for c, v in cells.items()))
    return "\n".join(text)


def _define_flags():
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_multi_string("arm", None, "NAME=PATTERN: the workdirs of one arm (a glob "
                              "of folders).")
    flags.DEFINE_list("columns", None, "ENTRY/METRIC columns, e.g. val/mAP,night/mAP.")
    flags.DEFINE_multi_string("paired", [], "A-B: per-seed differences of two arms.")
    flags.DEFINE_list("percent", ["mAP"], "Metrics shown x100.")
    flags.DEFINE_integer("digits", 2, "Decimals.")
    flags.mark_flags_as_required(["arm", "columns"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    del argv
    from absl import flags  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    print(report(f.arm, f.columns, f.paired, f.percent, f.digits))
    return 0


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
