"""Timing compiled programs: ahead-of-time compilation, seconds per call, FLOPs (XLA's
count, every loop iteration and every device included) and device memory, and the
dense peak FLOP/s of known devices.

Every program is compiled once, ahead of time, and that executable is timed on
arguments already on the devices, so the timings leave compilation and transfers out.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import time
from typing import Any, Callable, Optional

import jax
from jax.extend import core as jax_core

# Dense peak FLOP/s per device, by (device_kind substring, dtype). Sources: vendor sheets.
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 67e12,
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 67e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 19.5e12,
    ("TPU v4", "bfloat16"): 275e12, ("TPU v5 lite", "bfloat16"): 197e12,
    ("TPU v5e", "bfloat16"): 197e12, ("TPU v5p", "bfloat16"): 459e12,
    ("TPU v6", "bfloat16"): 918e12,
}


def host(cpuinfo: str = "/proc/cpuinfo") -> str:
    """This machine's processor and its core count, as a timing's record names it
    (``"Intel(R) Xeon(R) Processor, 2 cores"``): the first ``model name`` of
    ``cpuinfo`` where there is one, else ``platform.processor()``."""
    model = ""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown processor"
    return f"{model}, {os.cpu_count()} cores"


def peak_flops(device_kind: str, dtype: str) -> Optional[float]:
    """The dense peak FLOP/s of one device of ``device_kind`` in ``dtype``; None when
    unknown."""
    for (kind, dt), value in PEAK_FLOPS.items():
        if kind.lower() in device_kind.lower() and dt == dtype:
            return value
    return None


@dataclasses.dataclass(frozen=True)
class Measured:
    """One call of a compiled program: its seconds, and XLA's figures for it."""
    seconds: float
    compile_s: float
    flops: float
    memory_bytes: int  # device memory of one call: arguments, outputs and temporaries
    collective_bytes: int = 0  # summed over the program's cross-device collectives


@dataclasses.dataclass(frozen=True)
class Collective:
    """One cross-device collective of a compiled program, as XLA's HLO states it."""
    op: str  # all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute
    shape: str  # its result, e.g. "f32[3,3,16,32]" or a tuple "(f32[16], f32[])"
    bytes: int  # of that result, on one device


_COLLECTIVE = re.compile(r"= (?P<shape>\([^()]*\)|[^\s(]+) (?P<op>all-reduce|all-gather|reduce-scatter|"
                         r"all-to-all|collective-permute)(?:-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")
_ITEM_BYTES = {"pred": 1, "s4": 1, "u4": 1}


def _shape_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        size = _ITEM_BYTES.get(dtype)
        if size is None:
            bits = re.search(r"[0-9]+", dtype)
            size = int(bits.group()) // 8 if bits else 4
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return total


def collectives(compiled) -> list[Collective]:
    """The cross-device collectives of a compiled program (its optimised HLO): on a
    batch-sharded train step, parameter-gradient and BatchNorm-statistic all-reduces
    are expected; anything whose size grows with the global batch means the
    partitioner replicated a batch-sized tensor."""
    return collectives_in(compiled.as_text())


def collectives_in(hlo_text: str) -> list[Collective]:
    """:func:`collectives` of an HLO module's text."""
    return [Collective(m["op"], m["shape"].strip(), _shape_bytes(m["shape"]))
            for m in _COLLECTIVE.finditer(hlo_text)]


def _cost_flops(program) -> float:
    """XLA's ``flops`` of a lowered or compiled program (0 when it has none)."""
    cost = program.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _body_flops(closed: "jax_core.ClosedJaxpr") -> float:
    """XLA's count for one run of a loop body (its jaxpr lowered on its own)."""
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
    return _cost_flops(jax.jit(jax_core.jaxpr_as_fun(closed)).lower(*avals))


def _loop_flops(jaxpr: "jax_core.Jaxpr", runs: int = 1) -> float:
    """The FLOPs XLA's count leaves out of ``jaxpr``'s scans (``lax.map``, ``lax.scan``,
    ``fori_loop`` with static bounds): it counts a loop's body once, whatever its trip
    count, so each scan of ``length`` n adds n - 1 runs of its body, times the runs of
    the loops around it. ``while_loop``s, whose trip count is not known before they
    run, stay counted once."""
    extra = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            body, length = eqn.params["jaxpr"], int(eqn.params["length"])
            if length > 1:
                extra += runs * (length - 1) * _body_flops(body)
            extra += _loop_flops(body.jaxpr, runs * length)
        else:
            for sub in jax_core.jaxprs_in_params(eqn.params):
                extra += _loop_flops(sub, runs)
    return extra


def flops(traced, lowered=None) -> float:
    """The FLOPs of one call of a traced program (``jax.jit(f).trace(*args)``; its
    ``lowered`` form when already at hand), over all its devices: XLA's count of the
    lowered program, before partitioning (a compiled program's count is one device's
    share) and before optimisation (a loop XLA unrolls is not counted twice), with
    every scan counted its whole trip count (:func:`_loop_flops`; without that the
    attention in chunks read about half its FLOPs)."""
    lowered = traced.lower() if lowered is None else lowered
    return _cost_flops(lowered) + _loop_flops(traced.jaxpr.jaxpr)


def _memory_bytes(compiled) -> int:
    """Arguments, outputs (less those that reuse a donated argument's buffer) and
    temporaries of one call. (``peak_memory_in_bytes`` leaves out the temporaries on
    XLA:CPU.)"""
    stats = compiled.memory_analysis()
    if stats is None:
        return 0
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def _compile(fn, *args, **kwargs) -> tuple[Any, float, float]:
    """(the executable of ``fn.trace(*args, **kwargs)``, compile seconds (tracing
    included), its FLOPs by :func:`flops`)."""
    t0 = time.perf_counter()
    traced = fn.trace(*args, **kwargs)
    lowered = traced.lower()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    return compiled, compile_s, flops(traced, lowered)


def seconds_per_call(fn: Callable, args: tuple, steps: int) -> float:
    """Seconds per call of ``fn(*args)`` (results blocked on), after one warm-up call."""
    out = fn(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / steps


def measure(fn, args: tuple, steps: int) -> Measured:
    """Compiles the jitted ``fn`` for ``args`` and times ``steps`` calls of it."""
    compiled, compile_s, count = _compile(fn, *args)
    return Measured(seconds_per_call(compiled, args, steps), compile_s, count,
                    _memory_bytes(compiled), sum(c.bytes for c in collectives(compiled)))


def measure_train_step(train_step, state, batch, steps: int,
                       step: Optional[int] = None) -> Measured:
    """Compiles a trainer's ``train_step`` for ``(state, batch)`` (its variant for
    iteration ``step``; the state's step when None) and times ``steps`` calls, each on
    the state the last one returned: the input state is donated, so ``state`` is
    consumed."""
    compiled, compile_s, count = _compile(train_step, state, batch, step=step)
    holder = {"state": state}

    def one(b):
        holder["state"], metrics = compiled(holder["state"], b)
        return metrics

    return Measured(seconds_per_call(one, (batch,), steps), compile_s, count,
                    _memory_bytes(compiled), sum(c.bytes for c in collectives(compiled)))


class BenchTools:
    """What the benchmark hands a method's hooks (``Method.bench_train``,
    ``Method.bench_extra``): :func:`measure` and :func:`measure_train_step`, and
    ``setup(cfg) -> (trainer, fresh state, one global training batch)`` for another
    config (a control run of the same networks), so that a method needs neither the
    trainer nor the benchmark program."""

    measure = staticmethod(measure)
    measure_train_step = staticmethod(measure_train_step)

    def __init__(self, setup: Callable[[Any], tuple[Any, Any, dict[str, Any]]]):
        self.setup = setup
