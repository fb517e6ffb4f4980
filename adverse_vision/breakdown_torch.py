"""The same per-stage split of a PyTorch callable's time (an official implementation's
train step or inference, as ``versus`` runs it), for ``python -m
adverse_vision.breakdown --official CHECKOUT``.

While the calls run under ``torch.profiler``, global module hooks mark every module
call at the stage depth: a module called by no other module is a root (the network, a
loss module), and its stage is the first ``depth`` attribute names below it
(``backbone``; ``backbone/dark3``); the root's own operations are ``(ClassName)``.
Forward: each stage's marked span. Backward: each autograd function's run
(``autograd::engine::evaluate_function``) counts for the stage of the forward operation
that recorded it (the same sequence number); gradient accumulation into the leaves and
backward functions of operations outside every module have no stage (``None``). The optimiser's
``step`` (global optimiser hooks) is ``optimizer``. PyTorch on the CPU runs one
operation at a time on the calling thread, so these spans do not overlap.
"""

from __future__ import annotations

import collections
import importlib
import time
from typing import Any, Callable, Mapping

from adverse_vision import versus
from adverse_vision.trainer import OPTIMIZER_SCOPE

_STAGE = "stage:"
_ROOT = "root:"
_UPDATE = "update:"
_BACKWARD = "autograd::engine::evaluate_function: "


class _Marks:
    """Global module and optimiser hooks that open a ``record_function`` per stage."""

    def __init__(self, torch, depth: int, networks: Mapping[str, Any]):
        self.torch, self.depth = torch, depth
        # Every submodule's path in its network: (label, attribute, attribute, ...).
        self.paths: dict[int, tuple[str, ...]] = {}
        self.first = next(iter(networks), None)
        for label, network in networks.items():
            for name, module in network.named_modules():
                self.paths.setdefault(id(module), (label, *filter(None, name.split("."))))
        self.stack: list[tuple[Any, tuple[str, ...], Any]] = []  # (module, path, mark)
        self.handles: list[Any] = []

    def _path(self, module) -> tuple[str, ...]:
        """Its path in a named network; else below the module that called it; else a
        root of its own, named by its class."""
        if id(module) in self.paths:
            return self.paths[id(module)]
        if self.stack and self.stack[-1][1]:
            parent, path, _ = self.stack[-1]
            children = getattr(parent, "named_children", lambda: ())()
            name = next((n for n, c in children if c is module), type(module).__name__)
            return (*path, name)
        return (type(module).__name__,)

    def _open(self, label: str):
        mark = self.torch.autograd.profiler.record_function(label)
        mark.__enter__()
        return mark

    def _pre(self, module, args):  # pylint: disable=unused-argument
        path = self._path(module)
        marks = [m for _, _, m in self.stack if m is not None]
        in_stage = any(m.name.startswith(_STAGE) for m in marks)
        mark = None
        if len(path) == 1 and not marks:
            mark = self._open(_ROOT + path[0])
        elif len(path) > 1 and not in_stage:
            # The first module called at or below the stage depth (containers whose
            # forward is called directly pass no hook).
            # Stages of the first network go by their own names, those of the others
            # (a loss module's parts) under their network's.
            start = 1 if path[0] == self.first else 0
            mark = self._open(_STAGE + "/".join(path[start:1 + self.depth]))
        self.stack.append((module, path, mark))

    def _post(self, module, args, output):  # pylint: disable=unused-argument
        if not self.stack or self.stack[-1][0] is not module:
            return
        _, _, mark = self.stack.pop()
        if mark is not None:
            mark.__exit__(None, None, None)

    def _step_pre(self, optimizer, args, kwargs):  # pylint: disable=unused-argument
        self.stack.append((optimizer, (), self._open(_UPDATE + OPTIMIZER_SCOPE)))

    def __enter__(self):
        modules = importlib.import_module("torch.nn.modules.module")
        optim = importlib.import_module("torch.optim.optimizer")
        self.handles = [modules.register_module_forward_pre_hook(self._pre),
                        modules.register_module_forward_hook(self._post),
                        optim.register_optimizer_step_pre_hook(self._step_pre),
                        optim.register_optimizer_step_post_hook(
                            lambda opt, a, k: self._post(opt, a, None))]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.stack.clear()


def _stage_of_event(event) -> tuple[str, bool]:
    """The stage of a forward operation's event: its nearest marked ancestor's
    (``(stage, True)``), or ``(None, False)``."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(_STAGE):
            return parent.name[len(_STAGE):], True
        if parent.name.startswith(_ROOT):
            return f"({parent.name[len(_ROOT):]})", True
        parent = parent.cpu_parent
    return None, False


def seconds_by_stage(events) -> dict[tuple[Any, str], float]:
    """Seconds per ``(stage, phase)`` of a profiler's events (see the module
    docstring), summed over every call they hold; ``None`` is no stage."""
    out: dict[tuple[Any, str], float] = collections.defaultdict(float)
    forward_stage: dict[int, str] = {}
    for e in events:
        span = (e.time_range.end - e.time_range.start) * 1e-6  # microseconds
        if e.name.startswith(_STAGE):
            out[(e.name[len(_STAGE):], "forward")] += span
        elif e.name.startswith(_ROOT):
            out[(f"({e.name[len(_ROOT):]})", "forward")] += span
        elif e.name.startswith(_UPDATE):
            out[(e.name[len(_UPDATE):], "update")] += span
        elif e.sequence_nr >= 0 and not e.name.startswith(_BACKWARD):
            stage, marked = _stage_of_event(e)
            if marked:
                forward_stage.setdefault(e.sequence_nr, stage)
    for e in events:
        if e.name.startswith(_BACKWARD) and (e.cpu_parent is None or not
                                             e.cpu_parent.name.startswith(_BACKWARD)):
            span = (e.time_range.end - e.time_range.start) * 1e-6
            out[(forward_stage.get(e.sequence_nr), "backward")] += span
    # A root's span holds the spans of its stages: its own time is what they leave.
    for e in events:
        if not e.name.startswith(_STAGE):
            continue
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith((_ROOT, _STAGE)):
            parent = parent.cpu_parent
        if parent is not None and parent.name.startswith(_ROOT):
            out[(f"({parent.name[len(_ROOT):]})", "forward")] -= (
                e.time_range.end - e.time_range.start) * 1e-6
    return dict(out)


def profile(call: Callable[[], Any], networks: Mapping[str, Any], calls: int = 3,
            depth: int = 1, warmup: int = 1) -> tuple[float, dict[tuple[Any, str], float]]:
    """Runs ``call`` ``warmup`` times, then ``calls`` times under ``torch.profiler``
    with the stage marks: ``(wall seconds per call, {(stage, phase): seconds per
    call})`` (see the module docstring)."""
    if calls < 1:
        raise ValueError(f"breakdown: calls must be at least 1, got {calls}")
    torch = versus.import_torch()
    for _ in range(warmup):
        call()
    from torch.profiler import ProfilerActivity  # pylint: disable=import-outside-toplevel
    with _Marks(torch, depth, networks), torch.profiler.profile(
            activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            call()
        wall = time.perf_counter() - start
    return wall / calls, {k: v / calls for k, v in seconds_by_stage(prof.events()).items()
                          if v > 0}
