"""A short run on the embedded foggy scenes lowers the loss and lifts mAP far above an
untrained model's (about a minute and a half on a 2-core CPU)."""

import json
import subprocess
import sys

from adverse_vision import logs, parallel, trainer as trainer_lib
from adverse_vision.data import factory
from configs import yolox_scenes


def test_short_run_learns_to_detect_in_fog(tmp_path):
    cfg = yolox_scenes.get_config("smoke")  # 400 steps of batch 8 at 96 px, foggy scenes
    tr = trainer_lib.Trainer(cfg)
    data = factory.DataBundle(cfg, per_host_batch=parallel.per_host_batch_size(cfg.batch_size, tr.mesh))
    untrained, _ = tr.evaluate(tr.init_state().eval_variables(), data.val_pipeline())

    summary = trainer_lib.train_and_evaluate(cfg, str(tmp_path), progress=False)
    losses = [r["train/loss"] for r in logs.read_metrics(str(tmp_path)) if "train/loss" in r]
    trained = summary["val"]["mAP"]
    print(f"untrained mAP {untrained['mAP']:.4f}, trained mAP {trained:.4f}, "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.8 * losses[0]
    assert untrained["mAP"] < 0.01
    assert trained > 0.10

    # The evaluate program restores the best checkpoint and reproduces the final mAP.
    proc = subprocess.run([sys.executable, "-m", "adverse_vision.evaluate", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "person" in proc.stdout and "bus" in proc.stdout  # the per-class table
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(result["mAP"] - trained) < 1e-6 and result["step"] == cfg.total_steps
