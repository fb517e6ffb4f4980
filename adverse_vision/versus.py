r"""Time an official implementation and ours side by side, interleaved, in one process.

  python -m adverse_vision.versus --config CONFIG [--config.key=value ...] \
      --official CHECKOUT [--infer_batch 1 --infer_size 640] [--rounds 7] [--warmup 2] \
      [--json out.json]

Given a checkout of the method's official repository and an installed PyTorch, the
run's method builds the official network (and its loss and optimiser, for a train
step) from that checkout at run time (``Method.official_contenders``: nothing of it
is part of this project), on the very inputs ours gets: the first training batch of
the config's data and an inference batch at ``--infer_batch`` x ``--infer_size``.
The tasks are the method's: by default ``train step`` (our side: the run's jitted
train step) and ``inference`` (its ``predict_fn``); a method whose official code
differs in what it trains names its own tasks and builds our side of them
(``Method.own_contenders``, e.g. one network of the method alone), and one without
official training code has no train step.
Each task is timed in rounds after ``--warmup``
untimed calls of each side: in every round each side runs once, the order swapped
from one round to the next (ABBA), so a drift of the machine (heat, another process)
falls on both, and ``--settle`` seconds (1) of untimed rest come before every timed
call, so that the thread pools of the side that ran last are idle when the next starts. Reported per task: the median and the range of each side's seconds
and the ratio official / ours of the medians with the range of the per-round ratios
(above 1: ours is faster). Absolute times are for the record; the ratio is the result.

Both sides compute in the config's ``model.dtype``: for ``bfloat16`` (the ``bf16``
token) every official call runs under ``torch.autocast`` on the CPU in bfloat16, as our
side computes in bfloat16 with float32 parameters (:func:`official_precision`).

Without PyTorch or without the checkout, one line says what is missing. Our side runs
exactly as ``bench`` times it: the jitted train step (its state carried from call to
call) and the method's prediction (``predict_fn(restore=True)``), each waited for.
Each method's official side lives beside the method (README lists them).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from adverse_vision import cli, parallel, storage, timing, xla_options
from adverse_vision.errors import OfficialUnavailable

#: The tasks timed unless a method names its own: our side of them is the run's train
#: step and its prediction.
TASKS = ("train step", "inference")
#: The entry of an official side's ``info`` naming its networks (``{label: torch
#: module}``, the loss modules too), for ``adverse_vision.breakdown``'s stage names;
#: ``compare`` leaves it out of what it reports.
NETWORKS = "networks"


def import_torch():
    """``torch``, or :class:`OfficialUnavailable` saying how to install it."""
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise OfficialUnavailable(
            "PyTorch is not installed, and the official implementation needs it: pip install "
            "torch torchvision (CPU wheels: --index-url https://download.pytorch.org/whl/cpu)"
        ) from None
    return torch


def official_precision(fns: Mapping[str, Callable[[], Any]], dtype: str
                       ) -> tuple[dict[str, Callable[[], Any]], str]:
    """The official side's tasks computing in our ``model.dtype``, and its name: float32
    as they are; bfloat16 with each call under ``torch.autocast("cpu", torch.bfloat16)``
    (PyTorch's mixed precision: products and convolutions in bfloat16, parameters and
    reductions in float32)."""
    if dtype == "float32":
        return dict(fns), "float32"
    if dtype != "bfloat16":
        raise ValueError(f"versus: no official counterpart of model.dtype={dtype!r}")
    torch = import_torch()

    def autocast(fn):
        def call():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn()
        return call
    return {name: autocast(fn) for name, fn in fns.items()}, "torch.autocast(bfloat16)"


def official_side(method, checkout: str, batches: Mapping[str, Any], dtype: str
                  ) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The method's official tasks (``Method.official_contenders``) computing in our
    ``model.dtype`` (:func:`official_precision`), and their info naming that precision
    (``official_precision``): what ``compare`` and ``breakdown --official`` time."""
    fns, info = method.official_contenders(checkout, batches)
    fns, info["official_precision"] = official_precision(fns, dtype)
    return fns, info


def torch_images(torch, images: np.ndarray, mean: Any = 0.0, std: Any = 1.0):
    """A batch of NHWC 0-255 images as the float NCHW tensor official networks take:
    ``(images / 255 - mean) / std``."""
    x = (np.asarray(images, np.float32) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.astype(np.float32).transpose(0, 3, 1, 2)))


def checkout_file(checkout: str, module: str) -> str:
    """The file of ``module`` in an official checkout.

    Raises:
      OfficialUnavailable: it is not there."""
    import os  # pylint: disable=import-outside-toplevel
    path = os.path.join(os.path.abspath(os.path.expanduser(checkout)), *module.split(".")) + ".py"
    if not os.path.isfile(path):
        raise OfficialUnavailable(f"{path} not found: --official must be a checkout of the "
                                  "method's official repository")
    return path


def import_from_checkout(checkout: str, module: str, names: Sequence[str]) -> list[Any]:
    """``names`` of ``module`` of an official checkout, imported with the checkout first
    on ``sys.path`` (its modules import each other by their top-level names).

    Raises:
      OfficialUnavailable: the module is not there or does not import, naming both.
    """
    import importlib  # pylint: disable=import-outside-toplevel
    import os  # pylint: disable=import-outside-toplevel
    path = checkout_file(checkout, module)
    checkout = os.path.abspath(os.path.expanduser(checkout))
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    try:
        loaded = importlib.import_module(module)
        return [getattr(loaded, n) for n in names]
    except (ImportError, AttributeError) as e:
        raise OfficialUnavailable(f"{path} does not import here ({type(e).__name__}: {e})") \
            from None


@dataclasses.dataclass(frozen=True)
class Compiled:
    """One of our contenders that runs one compiled program: ``call()`` runs it once
    and waits for it; ``hlo_text`` is the program's optimised HLO
    (``compiled.as_text()``), by which ``breakdown`` names its operations."""
    call: Callable[[], Any]
    hlo_text: str

    def __call__(self) -> Any:
        return self.call()


@dataclasses.dataclass
class TaskResult:
    """The seconds of one task's timed calls, per side, in the order they ran."""
    name: str
    official: list[float]
    ours: list[float]

    @property
    def round_ratios(self) -> list[float]:
        return [o / a for o, a in zip(self.official, self.ours)]

    def summary(self) -> dict[str, Any]:
        ratios = self.round_ratios
        return {
            "task": self.name,
            "official_s": self.official, "ours_s": self.ours,
            "official_median_s": statistics.median(self.official),
            "ours_median_s": statistics.median(self.ours),
            "ratio": statistics.median(self.official) / statistics.median(self.ours),
            "ratio_min": min(ratios), "ratio_max": max(ratios),
        }


def interleave(tasks: Mapping[str, tuple[Callable[[], Any], Callable[[], Any]]], rounds: int,
               warmup: int = 1, clock: Callable[[], float] = time.perf_counter,
               settle_s: float = 0.0, sleep: Callable[[float], None] = time.sleep
               ) -> list[TaskResult]:
    """Times each task's ``(official, ours)`` callables (each call must return only when
    its work is done) for ``rounds`` rounds, after ``warmup`` untimed calls of each;
    the two sides alternate A B, B A, A B ... from round to round. ``settle_s`` seconds
    pass, untimed, before each timed call: the thread pools of the side that ran last
    (OpenMP's and Eigen's spin a while after their work) are idle when the next starts.

    Raises:
      ValueError: ``rounds`` is below 2 (a spread needs two) or ``warmup`` negative.
    """
    if rounds < 2 or warmup < 0:
        raise ValueError(f"rounds must be at least 2 and warmup at least 0, got rounds="
                         f"{rounds}, warmup={warmup}")
    results = []
    for name, (official, ours) in tasks.items():
        for _ in range(warmup):
            official()
            ours()
        times: dict[str, list[float]] = {"official": [], "ours": []}
        for r in range(rounds):
            order = (("official", official), ("ours", ours))
            for side, fn in (order if r % 2 == 0 else order[::-1]):
                if settle_s > 0:
                    sleep(settle_s)
                start = clock()
                fn()
                times[side].append(clock() - start)
        results.append(TaskResult(name, times["official"], times["ours"]))
    return results


def table(results: Sequence[TaskResult], official_label: str = "official") -> str:
    """A Markdown table of :func:`interleave`'s results."""
    rows = [f"| task | {official_label} s | adverse_vision s | ratio (official / ours) |",
            "|---|---|---|---|"]
    for r in results:
        s = r.summary()
        rows.append(f"| {r.name} | {s['official_median_s']:.3f} ({min(r.official):.3f}-"
                    f"{max(r.official):.3f}) | {s['ours_median_s']:.3f} ({min(r.ours):.3f}-"
                    f"{max(r.ours):.3f}) | {s['ratio']:.2f}x ({s['ratio_min']:.2f}-"
                    f"{s['ratio_max']:.2f}) |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- our side

def _ours(trainers: dict[str, Any], batches: dict[str, dict[str, np.ndarray]],
          names: Sequence[str]) -> dict[str, Callable[[], None]]:
    """Our side of the standard ``names`` (:data:`TASKS`): the train step (its state
    carried from call to call) and the prediction, as callables that wait for their
    results. Only what is named is built."""
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"versus: the method's official side has the tasks {unknown} but "
                         f"not our side of them (Method.own_contenders); the standard ones "
                         f"are {TASKS}")
    fns = {}
    if "train step" in names:
        trainer = trainers["train"]
        state = [trainer.init_state()]
        batch = parallel.global_batch(batches["train"], trainer.mesh)
        step = trainer.train_step

        def train():
            state[0], metrics = step(state[0], batch)
            jax.block_until_ready(metrics)

        fns["train step"] = train
    if "inference" in names:
        infer_trainer = trainers["infer"]
        infer_batch = parallel.global_batch(batches["infer"], infer_trainer.mesh)
        variables = infer_trainer.init_state().eval_variables()
        predict = xla_options.jit(infer_trainer.method.predict_fn(restore=True))

        def infer():
            jax.block_until_ready(predict(variables, infer_batch))

        fns["inference"] = infer
    return fns


def sides(cfg, infer_batch: int = 0, infer_size: int = 0):
    """The run's trainers at the train and the inference batch (``"train"``,
    ``"infer"``) and the first batch of each: the inputs both sides get."""
    from adverse_vision.trainer import Trainer  # pylint: disable=import-outside-toplevel
    infer_cfg = cfg.copy_and_resolve_references()
    infer_cfg.batch_size = infer_batch or cfg.batch_size
    infer_cfg.image_size = infer_size or cfg.image_size
    trainers = {"train": Trainer(cfg), "infer": Trainer(infer_cfg)}
    return trainers, {k: t.first_batch() for k, t in trainers.items()}


def compare(cfg, checkout: str, rounds: int = 7, warmup: int = 2, infer_batch: int = 0,
            infer_size: int = 0, settle_s: float = 1.0) -> tuple[list[TaskResult], dict[str, Any]]:
    """Builds both sides (see the module docstring) and times them interleaved.

    Raises:
      OfficialUnavailable: PyTorch or the checkout is missing, or the method has no
        official side (found before anything is compiled).
    """
    trainers, batches = sides(cfg, infer_batch, infer_size)
    method = trainers["train"].method
    official_fns, official_info = official_side(method, checkout, batches, str(cfg.model.dtype))
    ours_fns = dict(method.own_contenders(trainers, batches))
    ours_fns.update(_ours(trainers, batches, [t for t in official_fns if t not in ours_fns]))
    tasks = {name: (official_fns[name], ours_fns[name]) for name in official_fns}
    results = interleave(tasks, rounds, warmup, settle_s=settle_s)
    info = {"method": cfg.method, "model": dict(cfg.model), "batch_size": cfg.batch_size,
            "image_size": cfg.image_size, "infer_batch": infer_batch or cfg.batch_size,
            "infer_size": infer_size or cfg.image_size, "rounds": rounds, "warmup": warmup,
            "settle_s": settle_s,
            "jax_devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "host": timing.host(), "date": time.strftime("%Y-%m-%d"),
            **{k: v for k, v in official_info.items() if k != NETWORKS}}
    return results, info


# --------------------------------------------------------------------------- program

def _define_flags():
    from absl import flags  # pylint: disable=import-outside-toplevel
    cli.define_config_flag()
    flags.DEFINE_string("official", None, "A checkout of the method's official repository.")
    flags.DEFINE_integer("rounds", 7, "Timed rounds per task (each side once per round).")
    flags.DEFINE_integer("warmup", 2, "Untimed calls of each side before the rounds.")
    flags.DEFINE_integer("infer_batch", 0, "Inference batch (0: the config's).")
    flags.DEFINE_integer("infer_size", 0, "Inference image size (0: the config's).")
    flags.DEFINE_float("settle", 1.0, "Seconds of rest, untimed, before each timed call.")
    flags.DEFINE_string("json", None, "Also write every time and ratio here.")
    flags.mark_flags_as_required(["config", "official"])


def main() -> int:
    from absl import flags  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    if f.json is not None:
        cli.check_path(f.json, "--json", kind="file")
    cli.check_path(f.official, "--official", write=False)
    # OfficialUnavailable ends the program with its one line (cli.USER_ERRORS).
    results, info = compare(f.config, f.official, f.rounds, f.warmup, f.infer_batch,
                            f.infer_size, f.settle)
    print(" ".join(f"{k}={v}" for k, v in info.items() if k != "model"))
    print(table(results, info.get("official_label", "official")))
    if f.json:
        storage.write_text(f.json, json.dumps(
            {"info": info, "results": [r.summary() for r in results]}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
