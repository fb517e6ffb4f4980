r"""Benchmark a config's train step and inference on the local devices.

  python -m adverse_vision.bench --config configs/yolox_scenes.py:s \
      --config.batch_size=4 --config.image_size=320

Prints train-step images/s, inference images/s, compile seconds, peak host memory and
the achieved FLOP/s from XLA's cost analysis (with MFU where the device's peak is
known). Timings exclude compilation and use a fixed batch already on the devices.
DN-HL configs add the denoiser alone (megapixels/s); BDLF configs add the fusion
network alone (megapixels/s) and the bi-level step with and without the
hypergradient against a plain step on the fusion loss (the hypergradient's overhead).
"""

from __future__ import annotations

import contextlib
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


def _compile(fn, *args):
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0, _flops(compiled)


def run(cfg, steps: int = 10, infer_steps: int = 10, infer_batch: int = 0,
        infer_size: int = 0) -> dict[str, Any]:
    """Times the train step at the config's batch and size, and inference at
    ``infer_batch`` x ``infer_size`` (0: the config's)."""
    trainer, state, batch = _setup(cfg)
    train, train_compile, train_flops = _compile(trainer.train_step, state, batch)
    holder = {"state": state}

    def step(b):
        holder["state"], metrics = train(holder["state"], b)
        return metrics

    extra = {}
    if cfg.method == "bdlf" and cfg.bdlf.mode == "bilevel":
        # The program compiled above is one of the two variants: it is not timed on its
        # own; time and FLOPs are both their average over one fusion period.
        extra = _bilevel_steps(cfg, trainer, holder.pop("state"), batch, steps, train_flops)
        holder["state"] = trainer.init_state()
        train_s = extra["bilevel_mean_step_s"]
        train_flops = extra["bilevel_mean_flops_per_step"]
    else:
        train_s = _time(step, (batch,), steps)
    result = {
        "config": {"model": dict(cfg.model), "image_size": cfg.image_size,
                   "batch_size": cfg.batch_size},
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "train_step_s": train_s, "train_images_per_s": cfg.batch_size / train_s,
        "train_compile_s": train_compile, "train_flops_per_step": train_flops,
        "train_flops_per_s": train_flops / train_s, **extra,
    }

    infer_cfg = cfg.copy_and_resolve_references()
    infer_cfg.batch_size = infer_batch or cfg.batch_size
    infer_cfg.image_size = infer_size or cfg.image_size
    if (infer_cfg.batch_size, infer_cfg.image_size) != (cfg.batch_size, cfg.image_size):
        trainer, state, batch = _setup(infer_cfg)
        holder["state"] = state
    variables = holder["state"].eval_variables()
    infer, infer_compile, infer_flops = _compile(trainer.predict, variables, batch)
    infer_s = _time(infer, (variables, batch), infer_steps)
    result.update({
        "infer_batch": infer_cfg.batch_size, "infer_image_size": infer_cfg.image_size,
        "infer_batch_s": infer_s, "infer_images_per_s": infer_cfg.batch_size / infer_s,
        "infer_compile_s": infer_compile, "infer_flops_per_batch": infer_flops,
        "infer_flops_per_s": infer_flops / infer_s,
        "peak_host_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    })
    if cfg.method == "dnhl" and infer_cfg.dnhl.stage != "high":
        result.update(_denoiser_rate(trainer, holder["state"], batch, infer_steps))
    if cfg.method == "bdlf":
        result.update(_fusion_rate(trainer, holder["state"], batch, infer_steps))
    peak = peak_flops(jax.devices()[0].device_kind, cfg.model.dtype)
    if peak:
        total = peak * jax.device_count()
        result["train_mfu"] = result["train_flops_per_s"] / total
        result["infer_mfu"] = result["infer_flops_per_s"] / total
    return result


def _denoiser_rate(trainer, state, batch, steps: int) -> dict[str, Any]:
    """DN-HL: the denoiser alone on the inference batch, in megapixels per second."""
    method = trainer.method
    den, _ = method.split_variables(state.eval_variables())
    x = batch["image"].astype("float32") / 255.0
    fn = jax.jit(lambda d, x: method.denoiser.apply(d, x, train=False))
    seconds = _time(fn, (den, x), steps)
    pixels = x.shape[0] * x.shape[1] * x.shape[2]
    return {"denoiser_batch_s": seconds, "denoiser_megapixels_per_s": pixels / seconds / 1e6}


def _fusion_rate(trainer, state, batch, steps: int) -> dict[str, Any]:
    """BDLF: the fusion network alone on the inference batch, in megapixels per second."""
    from adverse_vision.ops.color import luminance  # pylint: disable=import-outside-toplevel
    method = trainer.method
    if not method.fuses:
        return {}
    theta = {"params": state.eval_variables()["params"]["fusion"]}
    ir = batch["thermal"].astype("float32") / 255.0
    y = luminance(batch["image"].astype("float32") / 255.0)
    fn = jax.jit(lambda t, ir, y: method.fusion.apply(t, ir, y))
    seconds = _time(fn, (theta, ir, y), steps)
    pixels = ir.shape[0] * ir.shape[1] * ir.shape[2]
    return {"fusion_batch_s": seconds, "fusion_megapixels_per_s": pixels / seconds / 1e6}


def _step_at(trainer, state, batch, step: int, steps: int) -> float:
    """Seconds of the train step taken at iteration ``step`` every time."""
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    holder = {"state": state.replace(step=jnp.asarray(step, jnp.int32))}

    def call(b):
        new, metrics = trainer.train_step(holder["state"], b, step=step)
        holder["state"] = new.replace(step=jnp.asarray(step, jnp.int32))
        return metrics

    return _time(call, (batch,), steps)


def _bilevel_steps(cfg, trainer, state, batch, steps: int, hyper_flops: float
                   ) -> dict[str, Any]:
    """BDLF: the iteration with the hypergradient, the one without, their average over
    ``upper_every`` iterations, and a plain step of the same networks with the fusion
    network on the fusion loss alone (mode "fusion_loss"), all at the same batch size.
    ``hyper_flops``: XLA's count for the iteration at step 0 (the hypergradient one)."""
    k = int(cfg.bdlf.upper_every)
    hyper = _step_at(trainer, state, batch, 0, steps)
    lower, lower_flops = hyper, hyper_flops
    if k > 1:
        lower = _step_at(trainer, trainer.init_state(), batch, 1, steps)
        lower_flops = _flops(trainer.train_step.lower(state, batch, step=1).compile())
    plain_cfg = cfg.copy_and_resolve_references()
    plain_cfg.bdlf.mode = "fusion_loss"
    plain_trainer, plain_state, plain_batch = _setup(plain_cfg)
    plain = _step_at(plain_trainer, plain_state, plain_batch, 0, steps)
    mean = (hyper + (k - 1) * lower) / k
    return {"bilevel_hyper_step_s": hyper, "bilevel_lower_step_s": lower,
            "bilevel_hyper_flops_per_step": hyper_flops,
            "bilevel_lower_flops_per_step": lower_flops,
            "bilevel_mean_flops_per_step": (hyper_flops + (k - 1) * lower_flops) / k,
            "bilevel_mean_step_s": mean, "plain_fusion_step_s": plain,
            "hyper_over_plain": hyper / plain, "mean_over_plain": mean / plain}


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
        f"peak host memory      {r['peak_host_memory_gib']:9.2f} GiB",
    ]
    if "denoiser_megapixels_per_s" in r:
        lines.append(f"denoiser alone         {r['denoiser_batch_s'] * 1e3:9.1f} ms   "
                     f"{r['denoiser_megapixels_per_s']:8.2f} megapixels/s")
    if "fusion_megapixels_per_s" in r:
        lines.append(f"fusion network alone  {r['fusion_batch_s'] * 1e3:9.1f} ms   "
                     f"{r['fusion_megapixels_per_s']:8.2f} megapixels/s")
    if "bilevel_hyper_step_s" in r:
        lines += [
            f"bi-level step, hyper  {r['bilevel_hyper_step_s'] * 1e3:9.1f} ms   "
            f"(critic, task networks and the fusion network's hypergradient)",
            f"bi-level step, lower  {r['bilevel_lower_step_s'] * 1e3:9.1f} ms   "
            f"(critic and task networks only)",
            f"bi-level mean step    {r['bilevel_mean_step_s'] * 1e3:9.1f} ms   "
            f"(over one fusion period)",
            f"plain fusion step     {r['plain_fusion_step_s'] * 1e3:9.1f} ms   "
            f"(fusion loss alone, same networks)",
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
