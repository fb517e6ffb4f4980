"""Where one step's time goes, stage by stage: ours from XLA's per-operation trace, an
official PyTorch side from ``torch.profiler``.

Ours (:func:`xla_stage_seconds`): one call of a compiled function is traced with
``jax.profiler``, in which XLA:CPU reports every operation (thunk) it runs; each
operation is named back to the code that made it by its HLO metadata (``op_name``: the flax module path under the transforms,
e.g. ``jit(step)/transpose(jvp(Model))/backbone/stage3/...``), and a method's
``stage_of(path, direction)`` turns the module path and the direction (``forward``
inside ``jvp``, ``backward`` inside ``transpose``, ``update`` outside both: the
optimiser) into a stage name. Operations XLA runs side by side are both counted, so the
seconds are operation time, not wall time; their shares are what compare.

The official side (:func:`torch_stage_seconds`): one call of a PyTorch step under
``torch.profiler``, with each stage's modules' ``forward`` wrapped in a named range;
the backward work of an operation is attributed to the stage whose forward made it
(autograd's sequence numbers), and ranges the step itself names (the loss, the
optimiser) are stages of their own.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
from typing import Any, Callable, Iterable, Mapping

import jax

_METADATA = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name="([^"]*)"')


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its ``op_name`` metadata, from a compiled module's text."""
    names = {}
    for line in hlo_text.splitlines():
        m = _METADATA.match(line)
        if m:
            names.setdefault(m.group(1), m.group(2))
    return names


def split_op_name(op_name: str) -> tuple[str, tuple[str, ...]]:
    """``(direction, module path)`` of an ``op_name``: ``backward`` under a
    ``transpose(...)``, ``forward`` under a ``jvp(...)``, ``update`` otherwise; the path
    is the module names: the components without parentheses (transforms) or dots
    (method scopes such as ``Model.features``), the last (the primitive) dropped."""
    parts = op_name.split("/")
    direction = ("backward" if any(p.startswith("transpose(") for p in parts) else
                 "forward" if any(p.startswith("jvp(") for p in parts) else "update")
    path = tuple(p for p in parts[:-1] if p and "(" not in p and "." not in p)
    return direction, path


def xla_stage_seconds(compiled: Any, make_args: Callable[[], Iterable[Any]],
                      stage_of: Callable[[str, tuple[str, ...]], str]) -> dict[str, float]:
    """Seconds of XLA operations per stage for one call of ``compiled(*make_args())`` (a
    ``jax.jit(...).lower(...).compile()``; run once untraced first; fresh arguments for
    each call, since a train step donates its state).

    Raises:
      RuntimeError: the trace has no operation of the program (a backend that does not
        report them)."""
    from jax.profiler import ProfileData  # pylint: disable=import-outside-toplevel
    names = op_names(compiled.as_text())
    jax.block_until_ready(compiled(*make_args()))
    args = tuple(make_args())
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            jax.block_until_ready(compiled(*args))
        (path,) = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
        data = ProfileData.from_file(path)
    seconds: dict[str, float] = collections.defaultdict(float)
    found = 0
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                op_name = names.get(event.name)
                if op_name is None:
                    continue
                found += 1
                direction, module_path = split_op_name(op_name)
                seconds[stage_of(direction, module_path)] += event.duration_ns / 1e9
    if not found:
        raise RuntimeError("the profiler trace has no operation of the program: this "
                           f"backend ({jax.default_backend()}) does not report them")
    return dict(seconds)


def torch_stage_seconds(torch, step: Callable[[], Any],
                        stage_modules: Mapping[str, Iterable[Any]]) -> dict[str, float]:
    """Seconds per stage of one call of a PyTorch ``step`` (see the module docstring):
    ``<stage> forward`` and ``<stage> backward`` for each of ``stage_modules``; for each
    ``torch.profiler.record_function("user::<name>")`` range that ``step`` opens itself,
    ``<name>`` (its time less that of the stages inside it) and ``<name> backward``;
    ``other`` for the rest."""
    originals = []
    for stage, modules in stage_modules.items():
        for module in modules:
            originals.append((module, module.forward))
            module.forward = _in_range(torch, f"stage::{stage}", module.forward)
    try:
        step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
    finally:
        for module, forward in originals:
            module.forward = forward
    events = list(prof.events())
    owner: dict[int, str] = {}
    seconds: dict[str, float] = collections.defaultdict(float)
    for prefix in ("stage::", "user::"):  # a stage's operations first, then the step's ranges
        for e in events:
            if e.name.startswith(prefix):
                stage = e.name[len(prefix):]
                if prefix == "stage::":
                    seconds[f"{stage} forward"] += e.cpu_time_total / 1e6
                for child in _descendants(e):
                    if child.sequence_nr >= 0:
                        owner.setdefault(child.sequence_nr, stage)
    total = 0.0
    for e in events:
        if e.cpu_parent is None:
            total += e.cpu_time_total / 1e6
        if e.name.startswith("autograd::engine::evaluate_function") and e.sequence_nr in owner:
            seconds[f"{owner[e.sequence_nr]} backward"] += e.cpu_time_total / 1e6
        elif e.name.startswith("user::") and e.cpu_parent is None:
            inner = sum(c.cpu_time_total for c in _descendants(e)
                        if c.name.startswith("stage::")) / 1e6
            seconds[e.name[len("user::"):]] += e.cpu_time_total / 1e6 - inner
    seconds["other"] = max(0.0, total - sum(seconds.values()))
    return dict(seconds)


def _in_range(torch, name: str, forward: Callable) -> Callable:
    def wrapped(*args, **kwargs):
        with torch.profiler.record_function(name):
            return forward(*args, **kwargs)
    return wrapped


def _descendants(event) -> Iterable[Any]:
    stack = list(event.cpu_children)
    while stack:
        e = stack.pop()
        yield e
        stack.extend(e.cpu_children)


def table(sides: Mapping[str, Mapping[str, float]], order: Iterable[str]) -> str:
    """A Markdown table: one row per stage (``order`` first, then the rest), seconds and
    share of each side's total."""
    totals = {k: sum(v.values()) for k, v in sides.items()}
    stages = list(order) + sorted({s for v in sides.values() for s in v} - set(order))
    rows = ["| stage | " + " | ".join(f"{k} s (share)" for k in sides) + " |",
            "|---|" + "---|" * len(sides)]
    for stage in stages:
        if not any(stage in v for v in sides.values()):
            continue
        cells = [f"{v.get(stage, 0.0):.3f} ({v.get(stage, 0.0) / totals[k]:.0%})"
                 for k, v in sides.items()]
        rows.append(f"| {stage} | " + " | ".join(cells) + " |")
    rows.append("| total | " + " | ".join(f"{t:.3f}" for t in totals.values()) + " |")
    return "\n".join(rows)
