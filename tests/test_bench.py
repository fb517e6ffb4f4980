"""The benchmark program measures a real train step and inference."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from adverse_vision import bench, methods, timing
from adverse_vision.data import catalog
from configs import yolox_scenes
from tests.helpers import dnhl_smoke_config


def test_bench_reports_rates_and_flops():
    cfg = yolox_scenes.get_config("smoke")
    r = bench.run(cfg, steps=2, infer_steps=2, infer_batch=8, infer_size=128)
    assert r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0
    assert r["train_flops_per_step"] > 3 * r["infer_flops_per_batch"] * 96**2 / 128**2 * 0.5
    assert r["infer_image_size"] == 128 and r["peak_host_memory_gib"] > 0.1
    assert r["host"].endswith(" cores")
    # At least the parameters, optimizer state and batch; less than the host has.
    assert 0.01 < r["train_memory_gib"] < 8 and 0 < r["infer_memory_gib"] < r["train_memory_gib"]
    text = bench.format_result(r)
    assert "images/s" in text and "GFLOP/s" in text and "MFU" in text
    assert "model                 detection nano (float32)" in text


def test_host_names_the_processor_and_its_cores(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\nflags\t: x\n"
                       "processor\t: 1\nmodel name\t: Some CPU @ 2.0GHz\n")
    assert timing.host(str(cpuinfo)) == f"Some CPU @ 2.0GHz, {os.cpu_count()} cores"
    assert timing.host(str(tmp_path / "missing")).endswith(f", {os.cpu_count()} cores")


def test_peak_flops_table():
    assert bench.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert bench.peak_flops("cpu", "float32") is None


def test_bench_rejects_unknown_key():
    proc = subprocess.run([sys.executable, "-m", "adverse_vision.bench", "--config",
                           "configs/yolox_scenes.py:smoke", "--config.model.sise=s"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "model.sise" in proc.stderr and "model.size" in proc.stderr


def test_bench_dnhl_joint_reports_the_denoiser_alone():
    r = bench.run(dnhl_smoke_config("joint"), steps=2, infer_steps=2, infer_batch=8, infer_size=64)
    assert r["train_images_per_s"] > 0 and r["denoiser_megapixels_per_s"] > 0
    assert "megapixels/s" in bench.format_result(r)


def test_bench_bdlf_reports_fusion_rate_and_hypergradient_overhead():
    from tests.helpers import bdlf_smoke_config  # pylint: disable=import-outside-toplevel
    r = bench.run(bdlf_smoke_config(), steps=1, infer_steps=1)
    assert r["fusion_megapixels_per_s"] > 0 and r["fusion_flops_per_pixel"] > 0
    assert r["bilevel_hyper_step_s"] > 0 and r["bilevel_lower_step_s"] > 0
    assert r["plain_fusion_step_s"] > 0 and r["hyper_over_plain"] > 0
    # FLOPs are those of the two variants averaged like the time, and the hypergradient
    # iteration does more work than the one without it.
    hyper, lower = r["bilevel_hyper_flops_per_step"], r["bilevel_lower_flops_per_step"]
    assert hyper > lower > 0
    # The memory XLA assigns: the hypergradient iteration holds more activations.
    assert r["bilevel_hyper_memory_bytes"] > r["bilevel_lower_memory_bytes"] > 0
    assert r["train_memory_gib"] * 2**30 == r["bilevel_hyper_memory_bytes"]
    assert r["train_flops_per_step"] == r["bilevel_mean_flops_per_step"] == (hyper + lower) / 2
    text = bench.format_result(r)
    assert "fusion network alone" in text and "hypergradient overhead" in text


@methods.register("bench_test_gain")
class _GainMethod(methods.Method):
    """One gain on clean scene images, registered outside the package: the benchmark
    reaches its train timing, its own entries and its report line through the hooks."""

    datasets = {"scenes": catalog.scenes_segmentation}

    def init_variables(self, rng):
        del rng
        return {"params": {"gain": jnp.ones(())}}

    def make_pipeline(self, bundle, source, *, train, seed, data_cfg):
        return catalog.dense_pipeline(bundle, source, train=train, seed=seed,
                                      data_cfg=data_cfg, task="denoise")

    def loss_fn(self, params, model_state, batch, rng, step):
        del rng, step
        x = batch["image"].astype(jnp.float32) / 255.0
        loss = jnp.mean((params["gain"] * x - x) ** 2)
        return loss, (model_state, {})

    def predict(self, variables, batch):
        return {"out": variables["params"]["gain"] * batch["image"].astype(jnp.float32)}

    def bench_train(self, bench, trainer, state, batch, steps):
        measured, entries = super().bench_train(bench, trainer, state, batch, steps)
        return measured, dict(entries, gain_train_steps=steps)

    def bench_extra(self, bench, variables, batch, steps):
        gain = bench.measure(jax.jit(lambda v, x: v["params"]["gain"] * x),
                             (variables, batch["image"].astype(jnp.float32)), steps)
        return {"gain_batch_s": gain.seconds, "gain_flops": gain.flops}

    @staticmethod
    def bench_lines(result):
        return [f"gain alone  {result['gain_batch_s'] * 1e3:.2f} ms"]


def test_bench_reads_any_method_through_its_hooks():
    cfg = methods.config("bench_test_gain")
    cfg.image_size, cfg.batch_size = 32, 8
    cfg.data.num_train, cfg.data.num_val, cfg.data.scene_size = 8, 4, 64
    cfg.data.num_workers = 0
    r = bench.run(cfg, steps=1, infer_steps=1, infer_size=16)
    assert r["config"]["method"] == "bench_test_gain" and r["gain_train_steps"] == 1
    assert r["gain_batch_s"] > 0 and r["gain_flops"] > 0
    assert r["train_flops_per_step"] > 0 and r["infer_image_size"] == 16
    lines = bench.format_result(r).splitlines()
    assert lines[-2].startswith("gain alone") and lines[-1].startswith("MFU")


def test_bench_depth_dehaze_reports_the_network_at_vga():
    from configs import sdg_scenes  # pylint: disable=import-outside-toplevel
    r = bench.run(sdg_scenes.get_config("smoke"), steps=1, infer_steps=1)
    assert r["train_images_per_s"] > 0 and r["dehaze_vga_megapixels_per_s"] > 0
    assert r["dehaze_vga_flops"] > 0 and r["dehaze_vga_memory_gib"] > 0
    text = bench.format_result(r)
    assert "dehazing 480x640" in text and "model                 depth_dehaze (float32)" in text


def test_suite_times_each_entry_with_and_without_remat_and_tabulates_them(tmp_path):
    # A suite file of its own: the detection entry with its remat rows too.
    suite_file = tmp_path / "suite.py"
    suite_file.write_text(f"ENTRIES = (('detection', {os.path.abspath('configs/yolox_scenes.py')!r},"
                          " '', 'smoke', True),)\n")
    assert [e[0] for e in bench.suite_entries()] == [
        "detection", "togethernet", "dnhl", "bdlf", "depth_dehaze"]
    results = bench.suite("small", ["detection"], dtypes=("bfloat16",), steps=1, infer_steps=1,
                          suite_file=str(suite_file))
    assert [(r["config"]["model"]["dtype"], r["config"]["model"]["remat"]) for r in results] == [
        ("bfloat16", False), ("bfloat16", True)]
    assert all(r["train_images_per_s"] > 0 and r["train_compile_s"] > 0 for r in results)
    table = bench.suite_table(results + [{
        "suite_entry": "bdlf", "config": {"model": {"dtype": "float32"}, "image_size": 640,
                                          "batch_size": 16},
        "error": "JaxRuntimeError: RESOURCE_EXHAUSTED: out of memory"}])
    lines = table.splitlines()
    assert lines[0].startswith("| entry | dtype | remat | train px x batch | train images/s")
    assert lines[2].startswith("| detection | bfloat16 | no | 96 x 8 | ")
    assert lines[3].startswith("| detection | bfloat16 | yes | 96 x 8 | ")
    assert "RESOURCE_EXHAUSTED" in lines[4] and lines[-1] == f"devices: {results[0]['devices']}"


def test_suite_refuses_unknown_entries_and_a_config():
    import pytest  # pylint: disable=import-outside-toplevel
    with pytest.raises(ValueError, match="unknown suite entries"):
        bench.suite("small", ["yolo"])
    with pytest.raises(FileNotFoundError, match="suite file nowhere.py not found"):
        bench.suite("small", suite_file="nowhere.py")
    # Every entry names a config file that is there, with both variants.
    for _, path, full, small, _ in bench.suite_entries():
        assert os.path.isfile(path), path
        assert isinstance(full, str) and small
    proc = subprocess.run([sys.executable, "-m", "adverse_vision.bench", "--suite", "--config",
                           "configs/yolox_scenes.py:smoke"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "leave out --config" in proc.stderr
