r"""Benchmark a config's train step and inference on the local devices.

  python -m adverse_vision.bench --config configs/yolox_scenes.py:s \
      --config.batch_size=4 --config.image_size=320

Prints train-step images/s, inference images/s, compile seconds, the device memory
one train step needs (XLA's buffer assignment of the compiled program), peak host
memory and the achieved FLOP/s from XLA's cost analysis (with MFU where the device's
peak is known). Timings exclude compilation and use a fixed batch already on the
devices; every program is compiled once, ahead of time, and that executable is timed.
DN-HL configs add the denoiser alone (megapixels/s); BDLF configs add the fusion
network alone (megapixels/s) and the bi-level step with and without the
hypergradient against a plain step on the fusion loss (the hypergradient's overhead).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
import sys
import time
from typing import Any, Optional

import jax
from absl import flags

from adverse_vision import cli
from adverse_vision import config as config_lib
from adverse_vision import parallel

_CONFIG = cli.define_config_flag()
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps (after one warm-up step).")
_INFER_STEPS = flags.DEFINE_integer("infer_steps", 10, "Timed inference batches.")
_INFER_BATCH = flags.DEFINE_integer("infer_batch", 0, "Inference batch (0: the config's).")
_INFER_SIZE = flags.DEFINE_integer("infer_size", 0, "Inference image size (0: the config's).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
flags.mark_flags_as_required(["config"])

# Dense peak FLOP/s per device, by (device_kind substring, dtype). Sources: vendor sheets.
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 67e12,
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 67e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 19.5e12,
    ("TPU v4", "bfloat16"): 275e12, ("TPU v5 lite", "bfloat16"): 197e12,
    ("TPU v5e", "bfloat16"): 197e12, ("TPU v5p", "bfloat16"): 459e12,
    ("TPU v6", "bfloat16"): 918e12,
}


def peak_flops(device_kind: str, dtype: str) -> Optional[float]:
    for (kind, dt), value in PEAK_FLOPS.items():
        if kind.lower() in device_kind.lower() and dt == dtype:
            return value
    return None


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _time(fn, args, steps: int) -> float:
    """Seconds per call of ``fn`` (results blocked on), after one warm-up call."""
    out = fn(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / steps


def _setup(cfg):
    """(trainer, state, one global batch of the config's training data)."""
    from adverse_vision.data import factory  # pylint: disable=import-outside-toplevel
    from adverse_vision.trainer import Trainer  # pylint: disable=import-outside-toplevel
    trainer = Trainer(cfg)
    data = factory.DataBundle(cfg, per_host_batch=parallel.per_host_batch_size(
        cfg.batch_size, trainer.mesh))
    with contextlib.closing(data.train_iterator()) as batches:
        batch = parallel.global_batch(next(batches), trainer.mesh)
    return trainer, trainer.init_state(), batch


@dataclasses.dataclass
class _Program:
    """A program compiled ahead of time: the executable and XLA's figures for it."""
    fn: Any
    compile_s: float
    flops: float
    memory_bytes: int  # device memory of one call: arguments, outputs and temporaries


def _memory_bytes(compiled) -> int:
    """Arguments, outputs (less those that reuse a donated argument's buffer) and
    temporaries of one call. (``peak_memory_in_bytes`` leaves out the temporaries on
    XLA:CPU.)"""
    stats = compiled.memory_analysis()
    if stats is None:
        return 0
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def _compile(fn, *args, **kwargs) -> _Program:
    t0 = time.perf_counter()
    compiled = fn.lower(*args, **kwargs).compile()
    return _Program(compiled, time.perf_counter() - t0, _flops(compiled),
                    _memory_bytes(compiled))


def _time_train(program: _Program, state, batch, steps: int) -> float:
    """Seconds per train step of a compiled step, each call on the state the last one
    returned (its input state is donated)."""
    holder = {"state": state}

    def step(b):
        holder["state"], metrics = program.fn(holder["state"], b)
        return metrics

    return _time(step, (batch,), steps)


def run(cfg, steps: int = 10, infer_steps: int = 10, infer_batch: int = 0,
        infer_size: int = 0) -> dict[str, Any]:
    """Times the train step at the config's batch and size, and inference at
    ``infer_batch`` x ``infer_size`` (0: the config's)."""
    trainer, state, batch = _setup(cfg)
    train = _compile(trainer.train_step, state, batch)
    extra = {}
    if cfg.method == "bdlf" and cfg.bdlf.mode == "bilevel":
        # The program compiled above is the iteration at step 0 (the hypergradient one);
        # time, FLOPs and memory are those of both variants over one fusion period.
        extra = _bilevel_steps(cfg, trainer, state, batch, steps, train)
        train_s = extra["bilevel_mean_step_s"]
        train_flops = extra["bilevel_mean_flops_per_step"]
        train_memory = max(extra["bilevel_hyper_memory_bytes"],
                           extra["bilevel_lower_memory_bytes"])
    else:
        train_s = _time_train(train, state, batch, steps)
        train_flops, train_memory = train.flops, train.memory_bytes
    result = {
        "config": {"model": dict(cfg.model), "image_size": cfg.image_size,
                   "batch_size": cfg.batch_size},
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "train_step_s": train_s, "train_images_per_s": cfg.batch_size / train_s,
        "train_compile_s": train.compile_s, "train_flops_per_step": train_flops,
        "train_flops_per_s": train_flops / train_s,
        "train_memory_gib": train_memory / 2**30, **extra,
    }

    infer_cfg = cfg.copy_and_resolve_references()
    infer_cfg.batch_size = infer_batch or cfg.batch_size
    infer_cfg.image_size = infer_size or cfg.image_size
    if (infer_cfg.batch_size, infer_cfg.image_size) != (cfg.batch_size, cfg.image_size):
        trainer, _, batch = _setup(infer_cfg)
    variables = trainer.init_state().eval_variables()  # the timed steps donated theirs
    infer = _compile(trainer.predict, variables, batch)
    infer_s = _time(infer.fn, (variables, batch), infer_steps)
    result.update({
        "infer_batch": infer_cfg.batch_size, "infer_image_size": infer_cfg.image_size,
        "infer_batch_s": infer_s, "infer_images_per_s": infer_cfg.batch_size / infer_s,
        "infer_compile_s": infer.compile_s, "infer_flops_per_batch": infer.flops,
        "infer_flops_per_s": infer.flops / infer_s,
        "infer_memory_gib": infer.memory_bytes / 2**30,
        "peak_host_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    })
    if cfg.method == "dnhl" and infer_cfg.dnhl.stage != "high":
        result.update(_denoiser_rate(trainer, variables, batch, infer_steps))
    if cfg.method == "bdlf":
        result.update(_fusion_rate(trainer, variables, batch, infer_steps))
    peak = peak_flops(jax.devices()[0].device_kind, cfg.model.dtype)
    if peak:
        total = peak * jax.device_count()
        result["train_mfu"] = result["train_flops_per_s"] / total
        result["infer_mfu"] = result["infer_flops_per_s"] / total
    return result


def _denoiser_rate(trainer, variables, batch, steps: int) -> dict[str, Any]:
    """DN-HL: the denoiser alone on the inference batch, in megapixels per second."""
    method = trainer.method
    den, _ = method.split_variables(variables)
    x = batch["image"].astype("float32") / 255.0
    denoiser = _compile(jax.jit(lambda d, x: method.denoiser.apply(d, x, train=False)), den, x)
    seconds = _time(denoiser.fn, (den, x), steps)
    pixels = x.shape[0] * x.shape[1] * x.shape[2]
    return {"denoiser_batch_s": seconds, "denoiser_megapixels_per_s": pixels / seconds / 1e6}


def _fusion_rate(trainer, variables, batch, steps: int) -> dict[str, Any]:
    """BDLF: the fusion network alone on the inference batch, in megapixels per second."""
    from adverse_vision.ops.color import luminance  # pylint: disable=import-outside-toplevel
    method = trainer.method
    if not method.fuses:
        return {}
    theta = {"params": variables["params"]["fusion"]}
    ir = batch["thermal"].astype("float32") / 255.0
    y = luminance(batch["image"].astype("float32") / 255.0)
    fusion = _compile(jax.jit(lambda t, ir, y: method.fusion.apply(t, ir, y)), theta, ir, y)
    seconds = _time(fusion.fn, (theta, ir, y), steps)
    pixels = ir.shape[0] * ir.shape[1] * ir.shape[2]
    return {"fusion_batch_s": seconds, "fusion_megapixels_per_s": pixels / seconds / 1e6,
            "fusion_flops_per_pixel": fusion.flops / pixels}


def _bilevel_steps(cfg, trainer, state, batch, steps: int, hyper: _Program
                   ) -> dict[str, Any]:
    """BDLF: the iteration with the hypergradient (``hyper``, compiled at step 0), the one
    without, their average over ``upper_every`` iterations, and a plain step of the same
    networks with the fusion network on the fusion loss alone (mode "fusion_loss"), all
    at the same batch size. Each variant keeps its own program whatever the state's step."""
    k = int(cfg.bdlf.upper_every)
    hyper_s = _time_train(hyper, state, batch, steps)
    lower, lower_s = hyper, hyper_s
    if k > 1:
        state = trainer.init_state()
        lower = _compile(trainer.train_step, state, batch, step=1)
        lower_s = _time_train(lower, state, batch, steps)
    plain_cfg = cfg.copy_and_resolve_references()
    plain_cfg.bdlf.mode = "fusion_loss"
    plain_trainer, plain_state, plain_batch = _setup(plain_cfg)
    plain = _compile(plain_trainer.train_step, plain_state, plain_batch)
    plain_s = _time_train(plain, plain_state, plain_batch, steps)
    mean = (hyper_s + (k - 1) * lower_s) / k
    return {"bilevel_hyper_step_s": hyper_s, "bilevel_lower_step_s": lower_s,
            "bilevel_hyper_flops_per_step": hyper.flops,
            "bilevel_lower_flops_per_step": lower.flops,
            "bilevel_mean_flops_per_step": (hyper.flops + (k - 1) * lower.flops) / k,
            "bilevel_hyper_memory_bytes": hyper.memory_bytes,
            "bilevel_lower_memory_bytes": lower.memory_bytes,
            "plain_fusion_memory_bytes": plain.memory_bytes,
            "bilevel_mean_step_s": mean, "plain_fusion_step_s": plain_s,
            "hyper_over_plain": hyper_s / plain_s, "mean_over_plain": mean / plain_s}


def format_result(r: dict[str, Any]) -> str:
    lines = [
        f"devices               {r['devices']}",
        f"model                 {r['config']['model'].get('size')} "
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
    if "denoiser_megapixels_per_s" in r:
        lines.append(f"denoiser alone         {r['denoiser_batch_s'] * 1e3:9.1f} ms   "
                     f"{r['denoiser_megapixels_per_s']:8.2f} megapixels/s")
    if "fusion_megapixels_per_s" in r:
        lines.append(f"fusion network alone  {r['fusion_batch_s'] * 1e3:9.1f} ms   "
                     f"{r['fusion_megapixels_per_s']:8.2f} megapixels/s   "
                     f"({r['fusion_flops_per_pixel'] / 1e3:.0f} kFLOP per pixel)")
    if "bilevel_hyper_step_s" in r:
        lines += [
            f"bi-level step, hyper  {r['bilevel_hyper_step_s'] * 1e3:9.1f} ms   "
            f"(critic, task networks and the fusion network's hypergradient; "
            f"{r['bilevel_hyper_memory_bytes'] / 2**30:.2f} GiB)",
            f"bi-level step, lower  {r['bilevel_lower_step_s'] * 1e3:9.1f} ms   "
            f"(critic and task networks only; "
            f"{r['bilevel_lower_memory_bytes'] / 2**30:.2f} GiB)",
            f"bi-level mean step    {r['bilevel_mean_step_s'] * 1e3:9.1f} ms   "
            f"(over one fusion period)",
            f"plain fusion step     {r['plain_fusion_step_s'] * 1e3:9.1f} ms   "
            f"(fusion loss alone, same networks; "
            f"{r['plain_fusion_memory_bytes'] / 2**30:.2f} GiB)",
            f"hypergradient overhead  hyper step {r['hyper_over_plain']:.2f}x, "
            f"mean step {r['mean_over_plain']:.2f}x the plain step",
        ]
    if "train_mfu" in r:
        lines.append(f"MFU                   train {r['train_mfu']:.1%}, "
                     f"inference {r['infer_mfu']:.1%}")
    else:
        lines.append("MFU                   n/a (peak FLOP/s of this device unknown)")
    return "\n".join(lines)


def main() -> int:
    if _JSON.value is not None:
        cli.check_path(_JSON.value, "--json", kind="file")
    cfg = config_lib.validate(_CONFIG.value)
    parallel.maybe_initialize_distributed()
    result = run(cfg, _STEPS.value, _INFER_STEPS.value, _INFER_BATCH.value, _INFER_SIZE.value)
    print(format_result(result))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=2, default=str)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    cli.run(main)
