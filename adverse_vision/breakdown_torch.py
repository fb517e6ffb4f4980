"""The same per-stage split of a PyTorch callable's time (an official implementation's
train step or inference, as ``versus`` runs it), for ``python -m
adverse_vision.breakdown --official CHECKOUT``.

While the calls run under ``torch.profiler``, global module hooks mark module calls:
a module's path is its attribute path in the networks the official side names (its
first network's stages go by that path alone, another's, such as a loss module's,
under the network's label), else the path below the module that called it, else its
class name as a root of its own. Each module call whose path, cut to ``depth`` names
(``backbone``; ``backbone/dark3``), differs from the innermost open mark's opens a
mark of its own: marks nest down to that depth, and a container whose ``forward`` is
called directly (no hook) leaves its children to open them. Forward: each mark's span
less the marks nested in it; a root's own operations are ``(ClassName)``. Backward:
each autograd function's run (``autograd::engine::evaluate_function``) counts for the
mark around the forward operation that recorded it (the same sequence number);
gradient accumulation into the leaves and backward functions of operations outside
every module have no stage (``None``). The optimiser's ``step`` (global optimiser
hooks) is ``optimizer``. PyTorch on the CPU runs one operation at a time on the
calling thread, so these spans do not overlap.
"""

from __future__ import annotations

import collections
import importlib
import time
from typing import Any, Callable, Mapping, Optional

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
        marks = [m.name for _, _, m in self.stack if m is not None]
        if len(path) == 1:
            label = None if marks else _ROOT + path[0]
        else:
            start = 1 if path[0] == self.first else 0
            label = _STAGE + "/".join(path[start:1 + self.depth])
            if marks and marks[-1] == label:  # below the stage depth: the stage's own
                label = None
        self.stack.append((module, path, self._open(label) if label else None))

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


def _label(event) -> Optional[str]:
    """The stage a mark's event stands for (``(ClassName)`` for a root's); None for
    an event that is no mark."""
    if event.name.startswith(_STAGE):
        return event.name[len(_STAGE):]
    if event.name.startswith(_ROOT):
        return f"({event.name[len(_ROOT):]})"
    return None


def _enclosing_mark(event):
    """The nearest mark around an event, or None."""
    parent = event.cpu_parent
    while parent is not None and _label(parent) is None:
        parent = parent.cpu_parent
    return parent


def _seconds(event) -> float:
    return (event.time_range.end - event.time_range.start) * 1e-6  # microseconds


def seconds_by_stage(events) -> dict[tuple[Any, str], float]:
    """Seconds per ``(stage, phase)`` of a profiler's events (see the module
    docstring), summed over every call they hold; ``None`` is no stage."""
    out: dict[tuple[Any, str], float] = collections.defaultdict(float)
    forward_stage: dict[int, Any] = {}
    for e in events:
        label = _label(e)
        if label is not None:
            out[(label, "forward")] += _seconds(e)
            # The mark around it holds its span: each counts its own time.
            outer = _enclosing_mark(e)
            if outer is not None:
                out[(_label(outer), "forward")] -= _seconds(e)
        elif e.name.startswith(_UPDATE):
            out[(e.name[len(_UPDATE):], "update")] += _seconds(e)
        elif e.sequence_nr >= 0 and not e.name.startswith(_BACKWARD):
            outer = _enclosing_mark(e)
            if outer is not None:
                forward_stage.setdefault(e.sequence_nr, _label(outer))
    for e in events:
        if e.name.startswith(_BACKWARD) and (e.cpu_parent is None or not
                                             e.cpu_parent.name.startswith(_BACKWARD)):
            out[(forward_stage.get(e.sequence_nr), "backward")] += _seconds(e)
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
