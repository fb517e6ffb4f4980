r"""Benchmark a config's train step and inference on the local devices.

  python -m adverse_vision.bench --config CONFIG_FILE[:VARIANTS] \
      --config.batch_size=4 --config.image_size=320 [--json result.json]

Prints train-step images/s, inference images/s, compile seconds, the device memory
one train step needs (XLA's buffer assignment of the compiled program), peak host
memory, the achieved FLOP/s from XLA's cost analysis (with MFU where the device's
peak is known) and the bytes the train step's cross-device collectives move. Timings exclude compilation and use a fixed batch already on the
devices; every program is compiled once, ahead of time, and that executable is timed
(:mod:`adverse_vision.timing`). A method times its train step its own way where one
compiled program is not the whole story (``Method.bench_train``), and adds timings of
its parts (``Method.bench_extra``) with their report lines (``Method.bench_lines``).
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import json
import os
import resource
import sys
from typing import Any, Optional, Sequence

import jax
from absl import flags

from adverse_vision import cli
from adverse_vision import methods as methods_lib
from adverse_vision import parallel, storage, timing
from adverse_vision.timing import peak_flops

_CONFIG = cli.define_config_flag()
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps (after one warm-up step).")
_INFER_STEPS = flags.DEFINE_integer("infer_steps", 10, "Timed inference batches.")
_INFER_BATCH = flags.DEFINE_integer("infer_batch", 0, "Inference batch (0: the config's).")
_INFER_SIZE = flags.DEFINE_integer("infer_size", 0, "Inference image size (0: the config's).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
#: The file listing the suite's entries (``ENTRIES``: name, config file of its folder,
#: variant of the full-size run, variant for a CPU).
SUITE_FILE = "configs/suite.py"

_SUITE = flags.DEFINE_boolean("suite", False, "Benchmark every method's default config in "
                              "float32 and bfloat16 (instead of --config) and print a table.")
_SUITE_SIZE = flags.DEFINE_enum("suite_size", "full", ["full", "small"],
                                "full: the default (full-size) configs; small: the smallest "
                                "variants, for a CPU.")
_SUITE_METHODS = flags.DEFINE_list("suite_methods", None, "Only these entries of the suite.")
_SUITE_FILE = flags.DEFINE_string("suite_file", SUITE_FILE,
                                  "The suite's entries (see configs/suite.py).")


def setup(cfg):
    """(trainer, state, one global batch of the config's training data)."""
    from adverse_vision.trainer import Trainer  # pylint: disable=import-outside-toplevel
    trainer = Trainer(cfg)
    batch = parallel.global_batch(trainer.first_batch(), trainer.mesh)
    return trainer, trainer.init_state(), batch


def run(cfg, steps: int = 10, infer_steps: int = 10, infer_batch: int = 0,
        infer_size: int = 0) -> dict[str, Any]:
    """Times the train step at the config's batch and size, and inference at
    ``infer_batch`` x ``infer_size`` (0: the config's)."""
    tools = timing.BenchTools(setup)
    trainer, state, batch = setup(cfg)
    train, extra = trainer.method.bench_train(tools, trainer, state, batch, steps)
    result = {
        "config": {"method": cfg.method, "model": dict(cfg.model),
                   "image_size": cfg.image_size, "batch_size": cfg.batch_size},
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "host": timing.host(),
        "train_step_s": train.seconds, "train_images_per_s": cfg.batch_size / train.seconds,
        "train_compile_s": train.compile_s, "train_flops_per_step": train.flops,
        "train_flops_per_s": train.flops / train.seconds,
        "train_memory_gib": train.memory_bytes / 2**30,
        "train_collective_bytes": train.collective_bytes, **extra,
    }

    infer_cfg = cfg.copy_and_resolve_references()
    infer_cfg.batch_size = infer_batch or cfg.batch_size
    infer_cfg.image_size = infer_size or cfg.image_size
    if (infer_cfg.batch_size, infer_cfg.image_size) != (cfg.batch_size, cfg.image_size):
        trainer, _, batch = setup(infer_cfg)
    variables = trainer.init_state().eval_variables()  # the timed steps donated theirs
    infer = tools.measure(trainer.predict, (variables, batch), infer_steps)
    result.update({
        "infer_batch": infer_cfg.batch_size, "infer_image_size": infer_cfg.image_size,
        "infer_batch_s": infer.seconds, "infer_images_per_s": infer_cfg.batch_size / infer.seconds,
        "infer_compile_s": infer.compile_s, "infer_flops_per_batch": infer.flops,
        "infer_flops_per_s": infer.flops / infer.seconds,
        "infer_memory_gib": infer.memory_bytes / 2**30,
        "peak_host_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    })
    result.update(trainer.method.bench_extra(tools, variables, batch, infer_steps))
    peak = peak_flops(jax.devices()[0].device_kind, cfg.model.dtype)
    if peak:
        total = peak * jax.device_count()
        result["train_mfu"] = result["train_flops_per_s"] / total
        result["infer_mfu"] = result["infer_flops_per_s"] / total
    return result


def _model_label(config: dict[str, Any]) -> str:
    """The method, and its model size where the config has one ("detection s")."""
    size = config["model"].get("size")
    return f"{config['method']} {size}" if size else str(config["method"])


def format_result(r: dict[str, Any]) -> str:
    """The report of :func:`run`'s result (its method's own lines included)."""
    lines = [
        f"devices               {r['devices']} (host: {r.get('host', '?')})",
        f"model                 {_model_label(r['config'])} "
        f"({r['config']['model'].get('dtype')}), train {r['config']['image_size']} px "
        f"batch {r['config']['batch_size']}",
        f"train step            {r['train_step_s'] * 1e3:9.1f} ms   "
        f"{r['train_images_per_s']:8.2f} images/s   compile {r['train_compile_s']:.1f} s",
        f"train FLOP/s          {r['train_flops_per_s'] / 1e9:9.1f} GFLOP/s "
        f"({r['train_flops_per_step'] / 1e9:.1f} GFLOP per step)",
        f"inference             {r['infer_batch_s'] * 1e3:9.1f} ms   "
        f"{r['infer_images_per_s']:8.2f} images/s   compile {r['infer_compile_s']:.1f} s "
        f"({r['infer_image_size']} px, batch {r['infer_batch']})",
        f"inference FLOP/s      {r['infer_flops_per_s'] / 1e9:9.1f} GFLOP/s "
        f"({r['infer_flops_per_batch'] / 1e9:.1f} GFLOP per batch)",
        f"device memory         train step {r['train_memory_gib']:.2f} GiB, "
        f"inference {r['infer_memory_gib']:.2f} GiB (XLA's buffer assignment)",
        f"peak host memory      {r['peak_host_memory_gib']:9.2f} GiB",
    ]
    if "train_collective_bytes" in r:
        lines.append(f"collectives           train step {r['train_collective_bytes'] / 2**20:.2f} MiB "
                     f"per device over the {r['devices']} (gradients, BatchNorm statistics)")
    method = r["config"].get("method")
    if method:
        lines += methods_lib.get(method).bench_lines(r)
    if "train_mfu" in r:
        lines.append(f"MFU                   train {r['train_mfu']:.1%}, "
                     f"inference {r['infer_mfu']:.1%}")
    else:
        lines.append("MFU                   n/a (peak FLOP/s of this device unknown)")
    return "\n".join(lines)


SUITE_DTYPES = ("float32", "bfloat16")


def suite_entries(path: str = SUITE_FILE) -> tuple[tuple[str, str, str, str, bool], ...]:
    """The ``ENTRIES`` of a suite file ``(name, config file, full variant, small variant,
    remat rows too)``, their config files joined to its folder."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"suite file {path} not found (run from the repository root "
                                "or give --suite_file)")
    spec = importlib.util.spec_from_file_location("_adverse_vision_suite", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = os.path.dirname(path)
    return tuple((name, os.path.join(folder, config), full, small, bool(remat))
                 for name, config, full, small, remat in module.ENTRIES)


def suite(size: str = "full", entries: Optional[Sequence[str]] = None,
          dtypes: Sequence[str] = SUITE_DTYPES, steps: int = 10, infer_steps: int = 10,
          suite_file: str = SUITE_FILE) -> list[dict[str, Any]]:
    """:func:`run` for every entry of the suite file in each of ``dtypes`` (and with
    ``model.remat`` too where the entry asks): the default config (``size="full"``) or
    the smallest variant (``"small"``). An entry that fails (out of device memory, say)
    is recorded with its error and the suite goes on."""
    listed = suite_entries(suite_file)
    known = [name for name, *_ in listed]
    unknown = sorted(set(entries or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown suite entries {unknown}; the suite has {known}")
    results = []
    for name, path, full, small, with_remat in listed:
        if entries and name not in entries:
            continue
        for dtype, remat in itertools.product(dtypes, (False, True) if with_remat else (False,)):
            cfg = cli.load_config_file(f"{path}:{full if size == 'full' else small}")
            with cfg.unlocked():
                cfg.model.dtype = dtype
                cfg.model.remat = remat
            try:
                result = run(cfg, steps, infer_steps)
            except Exception as e:  # noqa: BLE001 - one entry's failure is its row
                result = {"config": {"method": cfg.method, "model": dict(cfg.model),
                                     "image_size": cfg.image_size, "batch_size": cfg.batch_size},
                          "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            result["suite_entry"] = name
            results.append(result)
            jax.clear_caches()
            gc.collect()
    return results


def suite_table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`suite`'s results, for README."""
    rows = ["| entry | dtype | remat | train px x batch | train images/s | train MFU "
            "| train memory GiB | compile s | inference images/s | inference memory GiB |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["config"]
        head = (f"| {r['suite_entry']} | {c['model'].get('dtype')} "
                f"| {'yes' if c['model'].get('remat') else 'no'} "
                f"| {c['image_size']} x {c['batch_size']} ")
        if "error" in r:
            rows.append(head + f"| {r['error']} | | | | | |")
            continue
        mfu = f"{r['train_mfu']:.1%}" if "train_mfu" in r else "n/a"
        rows.append(head + f"| {r['train_images_per_s']:.2f} | {mfu} | {r['train_memory_gib']:.2f} "
                    f"| {r['train_compile_s']:.1f} | {r['infer_images_per_s']:.2f} "
                    f"| {r['infer_memory_gib']:.2f} |")
    devices = next((r["devices"] for r in results if "devices" in r), "?")
    return "\n".join(rows + ["", f"devices: {devices}"])


def _report(text: str, record: Any) -> None:
    """Prints ``text`` and writes ``record`` to ``--json``, on process 0 only (every
    process times the same global steps)."""
    if jax.process_index() != 0:
        return
    print(text)
    if _JSON.value:
        storage.write_text(_JSON.value, json.dumps(record, indent=2, default=str))
    sys.stdout.flush()


def main() -> int:
    if _JSON.value is not None:
        cli.check_path(_JSON.value, "--json", kind="file")
    if _SUITE.value:
        if _CONFIG.value is not None:
            raise ValueError("--suite benchmarks every method's config: leave out --config")
        parallel.maybe_initialize_distributed()
        results = suite(_SUITE_SIZE.value, _SUITE_METHODS.value, steps=_STEPS.value,
                        infer_steps=_INFER_STEPS.value, suite_file=_SUITE_FILE.value)
        _report(suite_table(results), results)
        return 0 if all("error" not in r for r in results) else 1
    if _CONFIG.value is None:
        raise ValueError("give --config (or --suite)")
    cfg = _CONFIG.value  # validated by the trainer, before anything is built
    parallel.maybe_initialize_distributed()
    result = run(cfg, _STEPS.value, _INFER_STEPS.value, _INFER_BATCH.value, _INFER_SIZE.value)
    _report(format_result(result), result)
    return 0


if __name__ == "__main__":
    cli.run(main)
