r"""Where a compiled program's time goes: seconds per stage of the network, forward and
backward, the loss and the optimiser, from a trace of the program's own operations.

  python -m adverse_vision.breakdown --config CONFIG [--config.key=value ...] \
      [--infer_batch 1 --infer_size 640] [--calls 3] [--depth 1] [--tasks ...] \
      [--official CHECKOUT] [--json out.json]

The run's train step and its prediction (``predict_fn(restore=True)``), the programs
``bench`` and ``versus`` time, are compiled once, run twice untimed, ``--calls`` times
under ``jax.profiler``, then ``--calls`` times more untraced for the reference wall
time.
Every operation XLA ran (a thunk: a fusion, a convolution, a copy) is an event of the
trace, named as in the compiled HLO, whose metadata holds the JAX name stack that made
it: the Flax module path (``jvp(Net)/Net.features/backbone/dark3/...``),
``transpose(...)`` for the backward pass, and the trainer's ``loss`` and ``optimizer``
scopes. An operation's stage is the first ``--depth`` submodule names of its path
(``backbone``; at depth 2 ``backbone/dark3``), ``(Net)`` for the root module's own
operations, ``loss`` for the loss's own, ``optimizer`` for the update and ``other`` for
the rest (the gradient norm and metrics); its phase is forward, backward or update.
Operations XLA added without a name stack (layout copies and transposes) count for the
operation they feed.

Wall-clock, not summed work: operations that run at the same time (XLA:CPU runs
independent thunks concurrently) share each instant equally, so the stages add up to
the time some operation was running, and the rest of each traced call is reported on
its own line. An operation's span runs from its start to its completion (the trace's
``end:`` event of an asynchronous thunk); control flow (while, conditional, call) is
left to the operations inside it. Two limits, both printed with each table: where
operations overlap most of the time, an operation waiting for a core is charged like
one running, so a small stage beside a large one can look larger than it is; and the
profiler itself can slow a program (the traced and the untraced seconds per call are
both given). The profiler keeps the whole trace in memory (a denoiser's train step at
batch 64: 5.9 GB peak with one call), so ``--calls`` is best kept small. An executable
that JAX's persistent compilation cache served carries the names of the program it
was first compiled from.

``--official CHECKOUT`` splits the official implementation's tasks the same way
(:mod:`adverse_vision.breakdown_torch`), on the inputs ``versus`` gives it.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import glob
import json
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax

from adverse_vision import cli, parallel, storage, timing, versus, xla_options
from adverse_vision.trainer import LOSS_SCOPE, OPTIMIZER_SCOPE

#: The stage of operations outside every module and scope (metrics, step counter).
OTHER = "other"
#: What a call's wall time holds beside its operations.
OUTSIDE = "rest of the call (dispatch, gaps)"

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=")
_OP_NAME = re.compile(r'op_name="(?P<op_name>[^"]*)"')
_CONTROL = re.compile(r"\s(?:while|conditional|call)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_OPERAND = re.compile(r"%(?P<name>[\w.\-]+)")
_CALLS = re.compile(r"\bcalls=%?(?P<name>[\w.\-]+)")
_MODULE = re.compile(r"^HloModule\s+(?P<name>[\w.\-]+)", re.MULTILINE)
# A submodule's name in a name stack (not a method scope, a transformation or a named
# operation such as an einsum's spec).
_SUBMODULE = re.compile(r"^[A-Za-z_][\w\-]*$")
# A Flax module's root in a name stack: its class name, inside transformations'
# parentheses (``jvp(Net)``, ``transpose(jvp(Net))``, ``Net``).
_ROOT = re.compile(r"^\(?(?:[a-z_]\w*\()*(?P<cls>_*[A-Z]\w*)\)*$")


@dataclasses.dataclass(frozen=True)
class Program:
    """What the trace's events are matched against: the compiled module's name, each
    instruction's JAX name stack, and the control-flow instructions."""
    module: str
    op_names: Mapping[str, str]
    control: frozenset

    @property
    def trains(self) -> bool:
        """Whether it is a train step (it has the trainer's loss scope)."""
        return any(n.split("/")[1:2] == [LOSS_SCOPE] for n in self.op_names.values())

    @classmethod
    def from_hlo(cls, hlo_text: str) -> "Program":
        """From a compiled program's HLO text (``compiled.as_text()``)."""
        found = _MODULE.search(hlo_text)
        if found is None:
            raise ValueError("breakdown: the text is not an HLO module (no 'HloModule' line)")
        op_names, control, calls = {}, set(), {}
        operands: dict[str, list[str]] = {}
        computation_names: dict[str, str] = {}  # a computation's first name stack
        computation = None
        for line in hlo_text.splitlines():
            opened = _COMPUTATION.match(line)
            if opened:
                computation = opened.group("name")
                continue
            head = _INSTRUCTION.match(line)
            if head is None:
                continue
            name = head.group("name")
            meta = _OP_NAME.search(line)
            # An argument's name ("state.params[...]" on a copy of a parameter) is no
            # name stack: such an instruction is named after its neighbours, below.
            if meta and meta.group("op_name").startswith("jit("):
                op_names.setdefault(name, meta.group("op_name"))
                if computation is not None:
                    computation_names.setdefault(computation, meta.group("op_name"))
            body = line[head.end():].split("metadata=")[0].split("calls=")[0]
            operands[name] = [m for m in _OPERAND.findall(body) if m != name]
            called = _CALLS.search(line)
            if called:
                calls[name] = called.group("name")
            if _CONTROL.search(line.split("metadata=")[0]):
                control.add(name)
        # A fusion (or a wrapped operation) without metadata of its own: that of the
        # computation it runs.
        for name, called in calls.items():
            if name not in op_names and called in computation_names:
                op_names[name] = computation_names[called]
        _inherit(op_names, operands)
        return cls(found.group("name"), op_names, frozenset(control))


def _is_update(op_name: Any) -> bool:
    return isinstance(op_name, str) and op_name.split("/")[1:2] == [OPTIMIZER_SCOPE]


def _is_aside(op_name: Any) -> bool:
    """The optimiser's update, or an operation outside every module and scope (the
    gradient norm, metrics)."""
    return isinstance(op_name, str) and (_is_update(op_name) or stage_of(op_name)[0] == OTHER)


def _inherit(op_names: dict[str, str], operands: Mapping[str, list[str]]) -> None:
    """Names the instructions XLA added without a name stack (layout copies and
    transposes, wrapped pads, copies of parameters, a kernel gradient whose first user
    is the gradient norm) after the first of their users that has one and is neither
    the optimiser's update nor outside every module (a copy made for a convolution is
    that convolution's), else after their first named operand, else after such a user;
    repeated along chains of them."""
    users: dict[str, list[str]] = collections.defaultdict(list)
    for name, args in operands.items():
        for arg in args:
            users[arg].append(name)
    for take_aside in (False, True):  # such users only where nothing else names it
        changed = True
        while changed:
            changed = False
            for name, args in operands.items():
                if name in op_names:
                    continue
                near_users = users.get(name, [])
                aside = [u for u in near_users if _is_aside(op_names.get(u))]
                near = [u for u in near_users if u not in aside] + args
                for other in near + (aside if take_aside else []):
                    if other in op_names:
                        op_names[name] = op_names[other]
                        changed = True
                        break


def stage_of(op_name: str, depth: int = 1, train: bool = True) -> tuple[str, str]:
    """``(stage, phase)`` of an operation made under the JAX name stack ``op_name``
    (see the module docstring). ``depth`` >= 1 submodule names make the stage; method
    scopes (``Net.features``) are skipped, and the last component (the primitive) is
    never one. Outside every module and scope, an operation of a ``train`` step that
    no derivative made is part of the update (gradient norm, metrics); of a
    prediction, of its forward pass (decoding, NMS)."""
    parts = op_name.split("/")[1:]  # drop the jit(...) of the program itself
    backward = any(p.startswith("transpose(") for p in parts)
    if OPTIMIZER_SCOPE in parts[:1]:
        return OPTIMIZER_SCOPE, "update"
    phase = "backward" if backward else "forward"
    for i, part in enumerate(parts[:-1]):
        root = _ROOT.match(part)
        if root is None:
            continue
        cls = root.group("cls")
        # Method scopes (Net.features), transformations (remat's) and named operations
        # (an einsum's "bhwc,hH->bHwc") are not submodules.
        path = [p for p in parts[i + 1:-1] if _SUBMODULE.match(p)]
        return ("/".join(path[:depth]) if path else f"({cls})"), phase
    if LOSS_SCOPE in parts[:1]:
        return LOSS_SCOPE, phase
    return OTHER, ("update" if train and not backward and "jvp(" not in op_name else phase)


@dataclasses.dataclass(frozen=True)
class Span:
    """One operation's run in the trace: its HLO instruction and nanoseconds."""
    name: str
    start: float
    end: float


def spans(xspace_path: str, module: str) -> list[Span]:
    """The operations of HLO module ``module`` in a trace file (``*.xplane.pb``): from
    each thunk's start to its completion."""
    from jax.profiler import ProfileData  # pylint: disable=import-outside-toplevel
    data = ProfileData.from_file(xspace_path)
    starts: dict[Any, list] = {}
    ends: dict[Any, float] = {}
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                end = event.start_ns + event.duration_ns
                if event.name.startswith("end: ") and "_c" in stats:
                    ends[stats["_c"]] = max(end, ends.get(stats["_c"], end))
                elif stats.get("hlo_module") == module and "hlo_op" in stats:
                    key = stats.get("_p", (line.name, event.start_ns))
                    starts[key] = [stats["hlo_op"], event.start_ns, end]
    return [Span(name, start, max(end, ends.get(key, end)))
            for key, (name, start, end) in starts.items()]


@dataclasses.dataclass(frozen=True)
class Shares:
    """:func:`wall_shares`' result: nanoseconds per instruction name, the time any
    operation was running, and the part of it when more than one was."""
    per_name: dict
    busy_ns: float
    overlapped_ns: float


def wall_shares(found: Iterable[Span]) -> Shares:
    """Each instant shared equally among the operations running at it, so the shares
    add up to the time any was running."""
    points = []
    for i, s in enumerate(found):
        if s.end > s.start:
            points.append((s.start, 1, i, s.name))
            points.append((s.end, -1, i, s.name))
    points.sort(key=lambda p: (p[0], p[1]))
    shares: dict[str, float] = collections.defaultdict(float)
    running: dict[int, str] = {}
    busy = overlapped = 0.0
    last = None
    for t, kind, i, name in points:
        if running and last is not None and t > last:
            busy += t - last
            if len(running) > 1:
                overlapped += t - last
            each = (t - last) / len(running)
            for n in running.values():
                shares[n] += each
        last = t
        if kind > 0:
            running[i] = name
        else:
            running.pop(i, None)
    return Shares(dict(shares), busy, overlapped)


@dataclasses.dataclass
class Breakdown:
    """Seconds per call of one program, by ``(stage, phase)``, and its wall time."""
    task: str
    calls: int
    wall_s: float  # per call, as the host saw it
    seconds: dict[tuple[str, str], float]  # per call
    overlapped_s: float = 0.0  # per call: when more than one operation was running
    untraced_s: float = 0.0  # per call, the same calls without the profiler

    @property
    def outside_s(self) -> float:
        return max(0.0, self.wall_s - sum(self.seconds.values()))

    @property
    def phases(self) -> dict[str, float]:
        """Seconds per call per phase (forward, backward, update)."""
        totals: dict[str, float] = collections.defaultdict(float)
        for (_, phase), v in self.seconds.items():
            totals[phase] += v
        return dict(totals)

    def summary(self) -> dict[str, Any]:
        return {"task": self.task, "calls": self.calls, "wall_s": self.wall_s,
                "outside_s": self.outside_s, "overlapped_s": self.overlapped_s,
                "untraced_s": self.untraced_s, "phases": self.phases,
                "stages": [{"stage": s, "phase": p, "seconds": v}
                           for (s, p), v in sorted(self.seconds.items(), key=lambda kv: -kv[1])]}


def attribute(program: Program, found: Iterable[Span], depth: int = 1
              ) -> tuple[dict[tuple[str, str], float], float]:
    """Seconds per ``(stage, phase)`` of ``found`` spans of ``program`` (control flow
    left out; instructions without a name stack count as ``other``), and the seconds
    when more than one operation was running."""
    shares = wall_shares(s for s in found if s.name not in program.control)
    out: dict[tuple[str, str], float] = collections.defaultdict(float)
    for name, ns in shares.per_name.items():
        op_name = program.op_names.get(name)
        key = stage_of(op_name, depth, program.trains) if op_name else (OTHER, "forward")
        out[key] += ns * 1e-9
    return dict(out), shares.overlapped_ns * 1e-9


def profile(task: str, call: Callable[[], Any], hlo_text: str, calls: int = 3,
            depth: int = 1, warmup: int = 2) -> Breakdown:
    """Runs ``call`` (one call of the compiled program of ``hlo_text``, waited for)
    ``warmup`` times, then ``calls`` times under the profiler, then ``calls`` times
    untraced (the reference wall time), and splits the traced calls' time by stage
    (see the module docstring)."""
    if calls < 1:
        raise ValueError(f"breakdown: calls must be at least 1, got {calls}")
    program = Program.from_hlo(hlo_text)
    for _ in range(warmup):
        call()
    with tempfile.TemporaryDirectory(prefix="breakdown_") as folder:
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0  # no Python frames: XLA's operations are enough
        options.enable_hlo_proto = False
        jax.profiler.start_trace(folder, profiler_options=options)
        try:
            start = time.perf_counter()
            for _ in range(calls):
                call()
            wall = time.perf_counter() - start
        finally:
            jax.profiler.stop_trace()
        files = glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True)
        if not files:
            raise RuntimeError(f"breakdown: the profiler wrote no trace under {folder}")
        found = spans(max(files, key=os.path.getmtime), program.module)
    untraced = untraced_seconds(call, calls, warmup=0)
    if not found:
        raise RuntimeError(f"breakdown: the trace holds no operation of {program.module}")
    seconds, overlapped = attribute(program, found, depth)
    return Breakdown(task, calls, wall / calls, {k: v / calls for k, v in seconds.items()},
                     overlapped / calls, untraced)


def untraced_seconds(call: Callable[[], Any], calls: int, warmup: int) -> float:
    """Seconds per call of ``calls`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def table(results: Sequence[Breakdown], min_share: float = 0.005) -> str:
    """A Markdown table per task: stage, phase, seconds per call and share of the wall
    time, largest first; stages below ``min_share`` of it are summed into one row."""
    out = []
    for r in results:
        rows = [f"**{r.task}**: {r.wall_s:.3f} s per call traced, {r.untraced_s:.3f} s "
                f"untraced ({r.calls} calls each; more than one operation running "
                f"{r.overlapped_s / r.wall_s:.1%} of the traced time)", "",
                "| stage | phase | s per call | share |", "|---|---|---|---|"]
        small = 0.0
        for (stage, phase), s in sorted(r.seconds.items(), key=lambda kv: -kv[1]):
            if s < min_share * r.wall_s:
                small += s
                continue
            rows.append(f"| {stage} | {phase} | {s:.4f} | {s / r.wall_s:.1%} |")
        if small:
            rows.append(f"| (each below {min_share:.1%}) | | {small:.4f} | "
                        f"{small / r.wall_s:.1%} |")
        rows.append(f"| {OUTSIDE} | | {r.outside_s:.4f} | {r.outside_s / r.wall_s:.1%} |")
        out.append("\n".join(rows))
    return "\n\n".join(out)


# --------------------------------------------------------------------------- our side

def method_tasks(method) -> tuple[str, ...]:
    """The tasks ``versus`` times for ``method``: its own (``Method.contender_tasks``)
    or the standard ``versus.TASKS``."""
    return tuple(method.contender_tasks or versus.TASKS)


def ours(trainers: Mapping[str, Any], batches: Mapping[str, Any], calls: int = 3,
         depth: int = 1, tasks: Optional[Sequence[str]] = None) -> list[Breakdown]:
    """:func:`profile` of the programs ``versus`` times for ``tasks`` (default: every
    task of the method, :func:`method_tasks`), on ``versus.sides``' trainers and
    batches: the run's train step and prediction (the programs ``bench`` times too),
    or the method's own program of a task (``Method.own_contenders``, e.g. one network
    of the method alone).

    Raises:
      ValueError: an own contender of a task is not one compiled program
        (``versus.Compiled``)."""
    results = []
    method = trainers["train"].method
    tasks = method_tasks(method) if tasks is None else tasks
    own = method.own_contenders(trainers, batches) if method.contender_tasks else {}
    for task in [t for t in tasks if t in own]:
        if not isinstance(own[task], versus.Compiled):
            raise ValueError(f"breakdown: our side of {task!r} is not one compiled program "
                             "(Method.own_contenders should return versus.Compiled)")
        results.append(profile(task, own[task], own[task].hlo_text, calls, depth))
    tasks = [t for t in tasks if t not in own]
    if "train step" in tasks:
        trainer = trainers["train"]
        batch = parallel.global_batch(batches["train"], trainer.mesh)
        state = [trainer.init_state()]
        compiled = trainer.train_step.lower(state[0], batch).compile()

        def train():
            state[0], metrics = compiled(state[0], batch)
            jax.block_until_ready(metrics)

        results.append(profile("train step", train, compiled.as_text(), calls, depth))
    if "inference" in tasks:
        trainer = trainers["infer"]
        batch = parallel.global_batch(batches["infer"], trainer.mesh)
        variables = trainer.init_state().eval_variables()
        compiled = xla_options.jit(trainer.method.predict_fn(restore=True)).lower(
            variables, batch).compile()
        results.append(profile("inference", lambda: jax.block_until_ready(
            compiled(variables, batch)), compiled.as_text(), calls, depth))
    return results


# --------------------------------------------------------------------------- official

def official(trainers: Mapping[str, Any], batches: Mapping[str, Any], checkout: str,
             calls: int = 3, depth: int = 1, tasks: Optional[Sequence[str]] = None
             ) -> tuple[list[Breakdown], dict[str, Any]]:
    """The same split of the official implementation's tasks, as ``versus`` builds them
    (``versus.official_side``: in our ``model.dtype``) on the same inputs
    (:mod:`breakdown_torch`).

    Raises:
      OfficialUnavailable: PyTorch or the checkout is missing, or no official side."""
    from adverse_vision import breakdown_torch  # pylint: disable=import-outside-toplevel
    train = trainers["train"]
    fns, info = versus.official_side(train.method, checkout, batches, str(train.cfg.model.dtype))
    results = []
    for task, fn in fns.items():
        if tasks is None or task in tasks:
            wall, seconds = breakdown_torch.profile(fn, info.get(versus.NETWORKS, {}), calls,
                                                    depth, warmup=2)
            untraced = untraced_seconds(fn, calls, warmup=0)
            results.append(Breakdown(f"{info.get('official_label', 'official')}: {task}",
                                     calls, wall, {(stage or OTHER, phase): v
                                                   for (stage, phase), v in seconds.items()},
                                     untraced_s=untraced))
    # The official side's networks and buffers are not needed for ours: let them go.
    info = {k: v for k, v in info.items() if k != versus.NETWORKS}
    del fns
    gc.collect()
    return results, info


# --------------------------------------------------------------------------- program

def _define_flags():
    from absl import flags  # pylint: disable=import-outside-toplevel
    cli.define_config_flag()
    flags.DEFINE_integer("calls", 3, "Traced calls of each program (after one untimed).")
    flags.DEFINE_integer("depth", 1, "Submodule names that make a stage (1: backbone; "
                         "2: backbone/dark3).")
    flags.DEFINE_integer("infer_batch", 0, "Inference batch (0: the config's).")
    flags.DEFINE_integer("infer_size", 0, "Inference image size (0: the config's).")
    flags.DEFINE_list("tasks", None, "Which programs to trace (default: every task versus "
                      "times for the method: train step, inference, or the method's own).")
    flags.DEFINE_string("official", None, "Also split the official implementation's "
                        "tasks (a checkout of its repository; PyTorch installed).")
    flags.DEFINE_string("json", None, "Also write every stage's seconds here.")
    flags.mark_flags_as_required(["config"])


def main() -> int:
    from absl import flags  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    if f.json is not None:
        cli.check_path(f.json, "--json", kind="file")
    if f.depth < 1:
        raise ValueError(f"--depth must be at least 1, got {f.depth}")
    if f.official is not None:
        cli.check_path(f.official, "--official", write=False)
    trainers, batches = versus.sides(f.config, f.infer_batch, f.infer_size)
    known = method_tasks(trainers["train"].method)
    tasks = f.tasks or list(known)
    unknown = sorted(set(tasks) - set(known))
    if unknown:  # before anything compiles
        raise ValueError(f"--tasks: unknown {unknown}; the tasks of method "
                         f"{f.config.method!r} are {list(known)}")
    theirs: list[Breakdown] = []
    if f.official is not None:  # first: what is missing shows before anything compiles
        # OfficialUnavailable ends the program with its one line (cli.USER_ERRORS).
        theirs, info = official(trainers, batches, f.official, f.calls, f.depth, tasks)
        print(" ".join(f"{k}={v}" for k, v in info.items()))
    results = ours(trainers, batches, f.calls, f.depth, tasks) + theirs
    print(f"host={timing.host()} date={time.strftime('%Y-%m-%d')}")
    print(table(results))
    if f.json:
        storage.write_text(f.json, json.dumps([r.summary() for r in results], indent=2))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
