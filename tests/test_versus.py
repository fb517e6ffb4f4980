"""versus: an official implementation timed against ours, interleaved in one process."""

import subprocess
import sys

import numpy as np
import pytest

from adverse_vision import versus
from adverse_vision.errors import OfficialUnavailable
from adverse_vision.methods import detection as detection_method
from adverse_vision.methods import togethernet_official
from configs import togethernet_scenes
from tests.helpers import smoke_config


class _Clock:
    """A clock each callable advances by its own cost, recording who ran when."""

    def __init__(self):
        self.now, self.calls = 0.0, []

    def __call__(self):
        return self.now

    def work(self, name, seconds):
        def fn():
            self.calls.append(name)
            self.now += seconds
        return fn


def test_rounds_alternate_the_sides_and_ratios_are_official_over_ours():
    clock, rests = _Clock(), []
    results = versus.interleave({"train step": (clock.work("A", 3.0), clock.work("B", 2.0)),
                                 "inference": (clock.work("a", 1.0), clock.work("b", 4.0))},
                                rounds=4, warmup=1, clock=clock, settle_s=0.5,
                                sleep=rests.append)
    # one warm-up call each, then A B, B A, A B, B A; a rest before each timed call
    assert clock.calls[:10] == ["A", "B", "A", "B", "B", "A", "A", "B", "B", "A"]
    assert rests == [0.5] * 16
    train, infer = (r.summary() for r in results)
    assert train["official_s"] == [3.0] * 4 and train["ours_s"] == [2.0] * 4
    assert train["ratio"] == 1.5 and (train["ratio_min"], train["ratio_max"]) == (1.5, 1.5)
    assert infer["ratio"] == 0.25
    table = versus.table(results).splitlines()
    assert table[2] == "| train step | 3.000 (3.000-3.000) | 2.000 (2.000-2.000) | 1.50x (1.50-1.50) |"
    with pytest.raises(ValueError, match="rounds must be at least 2"):
        versus.interleave({}, rounds=1)


STAND_IN = '''
import numpy as np
from standin import layers

class Net:
    """A stand-in official network: a matrix product per call."""
    def __init__(self, images):
        self.x = np.asarray(images, np.float32).reshape(len(images), -1)[:, :64]
        self.w = layers.weights(64)
    def step(self):
        return float((self.x @ self.w).sum())
'''


def _stand_in_checkout(tmp_path):
    (tmp_path / "standin").mkdir()
    (tmp_path / "standin" / "__init__.py").write_text("")
    (tmp_path / "standin" / "layers.py").write_text(
        "import numpy as np\ndef weights(n):\n    return np.ones((n, n), np.float32)\n")
    (tmp_path / "standin" / "net.py").write_text(STAND_IN)
    return str(tmp_path)


def test_compare_times_a_stand_in_official_against_our_detector(tmp_path, monkeypatch):
    checkout = _stand_in_checkout(tmp_path)
    seen = {}

    def official_contenders(self, where, batches):
        (net,) = versus.import_from_checkout(where, "standin.net", ["Net"])
        seen.update({k: {key: v.shape for key, v in b.items()} for k, b in batches.items()})
        train, infer = net(batches["train"]["image"]), net(batches["infer"]["image"])
        return {"train step": train.step, "inference": infer.step}, {"official_label": "stand-in"}

    monkeypatch.setattr(detection_method.DetectionMethod, "official_contenders",
                        official_contenders)
    cfg = smoke_config(batch_size=8)
    results, info = versus.compare(cfg, checkout, rounds=2, warmup=1, infer_batch=8,
                                   infer_size=64, settle_s=0.0)
    assert seen["train"]["image"] == (8, cfg.image_size, cfg.image_size, 3)
    assert seen["infer"]["image"] == (8, 64, 64, 3)
    assert [r.name for r in results] == ["train step", "inference"]
    for r in results:
        assert len(r.official) == len(r.ours) == 2 and min(r.official + r.ours) > 0
    assert info["official_label"] == "stand-in" and info["infer_size"] == 64


def test_what_is_missing_is_one_line(tmp_path):
    with pytest.raises(OfficialUnavailable, match=r"nets/yolo\.py not found"):
        versus.import_from_checkout(str(tmp_path), "nets.yolo", ["YoloBody"])
    (tmp_path / "broken.py").write_text("import a_module_that_is_not_there\n")
    with pytest.raises(OfficialUnavailable, match="broken.py does not import here"):
        versus.import_from_checkout(str(tmp_path), "broken", ["x"])
    cfg = togethernet_scenes.get_config("smoke")
    batches = {"train": {"image": np.zeros((4, 32, 32, 3), np.uint8)}, "infer": {}}
    with pytest.raises(OfficialUnavailable, match="has the sizes"):
        togethernet_official.contenders(cfg, str(tmp_path), batches)
    cfg.model.depth = cfg.model.width = 0.0
    cfg.model.size = "s"
    with pytest.raises(OfficialUnavailable, match="nets/yolo.py not found"):
        togethernet_official.contenders(cfg, str(tmp_path), batches)
    batches["train"]["image"] = np.zeros((8, 32, 32, 3), np.uint8)
    with pytest.raises(OfficialUnavailable, match="--config.batch_size=4"):
        togethernet_official.contenders(cfg, str(tmp_path), batches)
    with pytest.raises(OfficialUnavailable, match="has no official implementation"):
        detection_method.DetectionMethod(smoke_config()).official_contenders(str(tmp_path), {})


def test_program_says_what_is_missing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "adverse_vision.versus", "--config",
         "configs/yolox_scenes.py:smoke", f"--official={tmp_path}", "--json",
         str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: method 'detection' has no official implementation to time against")
    assert not (tmp_path / "out.json").exists()
