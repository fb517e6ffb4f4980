"""``python -m adverse_vision.convert``: official checkpoints -> project workdirs.

The official TogetherNet-s of the reference archive, written as a ``.pth`` the way
a DataParallel training script saves it, becomes a workdir whose restored weights
reproduce the official head outputs; a synthetic 80-class YOLOX becomes a COCO
detection workdir; bad input ends with one line and exit status 2.
"""

import collections
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision import trainer as trainer_lib
from adverse_vision.convert import read_state_dict
from adverse_vision.convert.pretrained import COCO_CLASSES, export_workdir
from adverse_vision.convert.keys import flatten
from adverse_vision.models.togethernet import TogetherNet
from tests.convert.test_pretrained import official_yolox
from tests.convert.test_togethernet_convert import _tensor, _write_pth
from tests.helpers import reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _convert(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device is enough here
    return subprocess.run([sys.executable, "-m", "adverse_vision.convert", *map(str, args)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _rel(out, ref):
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def test_togethernet_checkpoint_to_workdir(tmp_path):
    archive = reference("togethernet_s_seed0.npz")
    sd = read_state_dict(archive)
    path = tmp_path / "togethernet_s.pth"
    _write_pth(path, {"model": collections.OrderedDict(
        ("module." + k, _tensor(v)) for k, v in sd.items()), "epoch": 100})
    out = tmp_path / "workdir"
    result = _convert("--from", path, "--method", "togethernet", "--out", out,
                      "--num_classes", 5, "--config", "configs/togethernet_scenes.py:s")
    assert result.returncode == 0, result.stderr[-3000:]
    n_tensors = sum(not k.endswith("num_batches_tracked") for k in sd)
    n_params = sum(v.size for k, v in sd.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert f"loaded {n_tensors} tensors, {n_params:,} parameters" in result.stdout
    assert f"wrote {out}/config.json and {out}/checkpoints/0" in result.stdout
    assert 15.9e6 < n_params < 16.1e6  # TogetherNet-s: 16.0 M

    with open(out / "config.json") as f:
        saved = json.load(f)
    assert saved["method"] == "togethernet" and saved["model"]["size"] == "s"
    assert saved["data"]["class_names"] == ["person", "bicycle", "car", "motorbike", "bus"]
    trainer, variables, step = trainer_lib.restore_for_eval(str(out), "latest")
    assert step == 0 and trainer.cfg.method == "togethernet"
    variables = jax.device_get(variables)
    np.testing.assert_array_equal(variables["params"]["neck"]["sc1"]["scconv"]["k2"]["kernel"],
                                  sd["backbone.sc1.scconv.k2.1.weight"].transpose(2, 3, 1, 0))

    with np.load(archive) as z:
        x = jnp.asarray(z["input_nchw"].transpose(0, 2, 3, 1))
        refs = [z[f"head{i}_nchw"].transpose(0, 2, 3, 1) for i in range(3)]
    model = TogetherNet(num_classes=5, size="s")
    heads = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)["heads"]
    errors = [_rel(np.asarray(h), r) for h, r in zip(heads, refs)]
    print("\nconverted workdir vs official TogetherNet-s heads, relative L2: "
          + ", ".join(f"{e:.2e}" for e in errors))
    assert max(errors) < 1e-3, errors


def test_coco_yolox_to_workdir(tmp_path):
    sd, expected = official_yolox(80, seed=3)
    path = tmp_path / "yolox_coco.npz"
    np.savez(path, **sd)
    out = tmp_path / "coco"
    summary = export_workdir(str(path), "yolox", str(out), config="configs/yolox_scenes.py:smoke")
    assert summary["method"] == "detection" and summary["num_classes"] == 80
    assert summary["tensors_loaded"] == len(expected)
    assert summary["parameters"] == sum(v.size for p, v in expected.items() if p[0] == "params")
    trainer, variables, step = trainer_lib.restore_for_eval(str(out), "best")  # falls back
    assert step == 0
    assert tuple(trainer.cfg.data.class_names) == COCO_CLASSES
    got = {(c,) + p: v for c in variables for p, v in flatten(jax.device_get(variables[c])).items()}
    assert set(got) == set(expected)
    for p, value in got.items():
        np.testing.assert_array_equal(value, expected[p], err_msg=str(p))

    with pytest.raises(ValueError, match="already holds checkpoints"):
        export_workdir(str(path), "yolox", str(out), config="configs/yolox_scenes.py:smoke")
    fresh = str(tmp_path / "fresh")
    with pytest.raises(ValueError, match=r"class head \(head\.cls_preds\.0\.weight\) has 80 "
                                         r"classes, --num_classes is 5"):
        export_workdir(str(path), "yolox", fresh, num_classes=5)
    with pytest.raises(ValueError, match="--class_names has 2 names; the model has 80 classes"):
        export_workdir(str(path), "yolox", fresh, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"shape mismatch for 'backbone\.backbone\.dark2\.0\.bn\."
                                         r"running_mean'.*\(16,\).*model \(64,\).*model is size s"):
        export_workdir(str(path), "yolox", fresh, size="s")
    with pytest.raises(ValueError, match=r"--method 'yolov9' is not known"):
        export_workdir(str(path), "yolov9", fresh)
    with pytest.raises(ValueError, match=r"--method yolox needs a config with method "
                                         r"'detection'.*togethernet_scenes\.py:smoke has method "
                                         r"'togethernet'"):
        export_workdir(str(path), "yolox", fresh, config="configs/togethernet_scenes.py:smoke")
    assert not os.path.exists(fresh)


def test_cli_errors(tmp_path):
    missing = tmp_path / "nowhere.pth"
    result = _convert("--from", missing, "--method", "togethernet", "--out", tmp_path / "o")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {missing}: no such checkpoint file"
    assert "Traceback" not in result.stderr

    sd, _ = official_yolox(5, seed=4)  # a plain YOLOX: no TogetherNet decoder, DTFE, SC blocks
    path = tmp_path / "yolox.npz"
    np.savez(path, **sd)
    result = _convert("--from", path, "--method", "togethernet", "--out", tmp_path / "o",
                      "--config", "configs/togethernet_scenes.py:smoke")
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}: ") and "model variable(s) not in the checkpoint: " \
        "params/decoder/conv_1/bn/bias" in last and "model.init_from" in last
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "o" / "checkpoints")
