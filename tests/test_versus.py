"""versus: an official implementation timed against ours, interleaved in one process."""

import subprocess
import sys

import numpy as np
import pytest

from adverse_vision import versus
from adverse_vision.errors import OfficialUnavailable
from adverse_vision.methods import detection as detection_method
from adverse_vision.methods import bdlf_official, togethernet_official
from adverse_vision.methods.bdlf import BDLFMethod
from adverse_vision.methods.depth_dehaze import official as sdg_official
from adverse_vision.methods.dnhl import official as dnhl_official
from configs import sdg_scenes, togethernet_scenes
from tests.helpers import bdlf_smoke_config, dnhl_smoke_config, smoke_config


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
    assert info["official_precision"] == "float32"
    assert info["host"].endswith(" cores") and len(info["date"]) == 10


class _Autocast:
    """torch's ``autocast`` and ``bfloat16`` as far as ``official_precision`` uses them:
    records the arguments and whether a call is inside (PyTorch is not a test need)."""
    bfloat16 = "torch.bfloat16"

    def __init__(self):
        self.entered, self.inside = [], False

    def autocast(self, device, dtype):
        self.entered.append((device, dtype))
        return self

    def __enter__(self):
        self.inside = True

    def __exit__(self, *exc):
        self.inside = False


def test_the_official_side_computes_in_our_dtype(monkeypatch):
    torch = _Autocast()
    seen = []
    fns = {"train step": lambda: seen.append(("train", torch.inside)) or 1.0,
           "inference": lambda: seen.append(("infer", torch.inside)) or 2.0}
    same, name = versus.official_precision(fns, "float32")
    assert name == "float32" and same == fns
    monkeypatch.setitem(sys.modules, "torch", None)  # as where PyTorch is not installed
    with pytest.raises(OfficialUnavailable, match="PyTorch is not installed"):
        versus.official_precision(fns, "bfloat16")
    monkeypatch.setattr(versus, "import_torch", lambda: torch)
    wrapped, name = versus.official_precision(fns, "bfloat16")
    assert name == "torch.autocast(bfloat16)" and not torch.entered
    assert wrapped["inference"]() == 2.0 and wrapped["train step"]() == 1.0
    assert seen == [("infer", True), ("train", True)] and not torch.inside
    assert torch.entered == [("cpu", "torch.bfloat16")] * 2
    with pytest.raises(ValueError, match="model.dtype='float16'"):
        versus.official_precision(fns, "float16")


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


def test_a_method_times_its_own_tasks_with_our_side_of_them(tmp_path, monkeypatch):
    """BDLF times its fusion network alone: the official side names the tasks and the
    method builds our side of them (Method.own_contenders), here against a stand-in."""
    checkout = _stand_in_checkout(tmp_path)

    def official_contenders(self, where, batches):
        (net,) = versus.import_from_checkout(where, "standin.net", ["Net"])
        train, infer = net(batches["train"]["image"]), net(batches["infer"]["image"])
        assert {"thermal", "saliency"} <= set(batches["train"])
        tasks = BDLFMethod.contender_tasks
        return {tasks[0]: train.step, tasks[1]: infer.step}, {}

    monkeypatch.setattr(BDLFMethod, "official_contenders", official_contenders)
    results, _ = versus.compare(bdlf_smoke_config(), checkout, rounds=2, warmup=1,
                                infer_batch=8, settle_s=0.0)
    assert [r.name for r in results] == list(BDLFMethod.contender_tasks)
    assert all(min(r.ours) > 0 for r in results)


def test_an_official_task_without_our_side_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(detection_method.DetectionMethod, "official_contenders",
                        lambda self, where, batches: ({"export": lambda: None}, {}))
    with pytest.raises(ValueError, match=r"tasks \['export'\] but not our side"):
        versus.compare(smoke_config(batch_size=8), str(tmp_path), rounds=2)


def test_each_official_side_says_what_it_cannot_build(tmp_path):
    batches = {"train": {"image": np.zeros((2, 64, 64, 3), np.uint8)},
               "infer": {"image": np.zeros((1, 64, 64, 3), np.uint8)}}
    where = str(tmp_path)
    # DN-HL: the Caffe form at full width, trained alone
    cfg = dnhl_smoke_config("denoise")
    with pytest.raises(OfficialUnavailable, match="'official' and 'denoise' variants"):
        dnhl_official.contenders(cfg, where, batches)
    cfg.dnhl.denoiser_form, cfg.dnhl.denoiser_width = "official", 1.0
    with pytest.raises(OfficialUnavailable, match=r"deploy_denoise\.prototxt not found"):
        dnhl_official.contenders(cfg, where, batches)
    # BDLF: a mode with a fusion network, at full width
    tasks = BDLFMethod.contender_tasks
    cfg = bdlf_smoke_config("visible")
    with pytest.raises(OfficialUnavailable, match="no fusion network to time"):
        bdlf_official.contenders(cfg, where, batches, tasks)
    cfg = bdlf_smoke_config()
    with pytest.raises(OfficialUnavailable, match="bdlf.fusion_width=0.125"):
        bdlf_official.contenders(cfg, where, batches, tasks)
    cfg.bdlf.fusion_width = 1.0
    with pytest.raises(OfficialUnavailable, match=r"model/fcos_fusion\.py not found"):
        bdlf_official.contenders(cfg, where, batches, tasks)
    # depth-guided dehazing: the DenseNet-169 dehazer, sides multiples of 32
    cfg = sdg_scenes.get_config("smoke")
    with pytest.raises(OfficialUnavailable, match="DenseNet-169 depth net"):
        sdg_official.contenders(cfg, where, batches)
    cfg.sdg.encoder = "densenet169"
    with pytest.raises(OfficialUnavailable, match="multiples of 32, got 64x48"):
        sdg_official.contenders(cfg, where, {"infer": {"image": np.zeros((1, 64, 48, 3))}})
    with pytest.raises(OfficialUnavailable, match=r"multi_network\.py not found"):
        sdg_official.contenders(cfg, where, batches)


def test_prototxt_is_read_as_nested_fields():
    text = '''
    # a deploy network
    input: "data"
    input_shape { dim: 1 dim: 3 dim: 136 dim: 136 }
    layer {
      name: "up", type: "Deconvolution"   # fields may end with commas
      bottom: "x" top: "up"
      convolution_param { kernel_size: 4 stride: 2 pad: 1 weight_filler: { type: "xavier" } }
      param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2; decay_mult: 0 }
    }
    layer { name: "sum" type: "Eltwise" eltwise_param { operation: SUM coeff: -0.5 } }
    '''
    net = dnhl_official.parse_prototxt(text)
    assert net["input"] == ["data"] and net["input_shape"] == [{"dim": [1, 3, 136, 136]}]
    up, add = net["layer"]
    assert up["name"] == ["up"] and up["type"] == ["Deconvolution"]
    assert up["convolution_param"][0]["weight_filler"] == [{"type": ["xavier"]}]
    assert [p["lr_mult"][0] for p in up["param"]] == [1, 2]
    assert add["eltwise_param"] == [{"operation": ["SUM"], "coeff": [-0.5]}]
    for bad, message in (("layer { name: 1", "not closed"), ("a: 1 }", "without its"),
                         ("layer {} a", "has no value"), ('a: "open', "cannot read")):
        with pytest.raises(ValueError, match=message):
            dnhl_official.parse_prototxt(bad)


def test_restated_caffe_layers_run_in_pytorch():
    """Where PyTorch is installed (it is no requirement of the project): a small
    prototxt with every layer type the restatement knows builds, runs, and keeps each
    parameter's lr_mult / decay_mult; an unknown layer type is refused by name."""
    torch = pytest.importorskip("torch")
    text = '''
    input: "data"
    layer { name: "c0" type: "Convolution" bottom: "data" top: "c0"
            param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
            convolution_param { num_output: 8 kernel_size: 3 pad: 0 } }
    layer { name: "c1" type: "Convolution" bottom: "c0" top: "c1"
            convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 bias_term: false } }
    layer { name: "bn" type: "BatchNorm" bottom: "c1" top: "c1" }
    layer { name: "sc" type: "Scale" bottom: "c1" top: "c1" scale_param { bias_term: true } }
    layer { name: "r" type: "ReLU" bottom: "c1" top: "c1" }
    layer { name: "up" type: "Deconvolution" bottom: "c1" top: "up"
            convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 } }
    layer { name: "cat" type: "Concat" bottom: "c0" bottom: "up" top: "cat" }
    layer { name: "out" type: "Convolution" bottom: "cat" top: "out"
            convolution_param { num_output: 3 kernel_size: 3 pad: 0 } }
    layer { name: "crop" type: "Crop" bottom: "data" bottom: "out" top: "cropped"
            crop_param { axis: 2 offset: 2 } }
    layer { name: "sum" type: "Eltwise" bottom: "out" bottom: "cropped" top: "y" }
    '''
    x = torch.randn(2, 3, 20, 20)
    net = dnhl_official.build_network(torch, dnhl_official.parse_prototxt(text), x)
    y = net.eval()(x)
    assert tuple(y.shape) == (2, 3, 16, 16)
    assert net.mults["ops.c0.bias"] == (2.0, 0.0) and net.mults["ops.c1.weight"] == (1.0, 1.0)
    out = net.ops["out"](torch.cat([net.ops["c0"](x), net.ops["up"](torch.relu(net.ops["sc"](
        net.ops["bn"](net.ops["c1"](net.ops["c0"](x))))))], 1))
    assert torch.allclose(y, out + x[:, :, 2:18, 2:18])
    bad = dnhl_official.parse_prototxt('layer { name: "p" type: "Pooling" bottom: "data" top: "p" }')
    with pytest.raises(OfficialUnavailable, match="'p' has type 'Pooling'"):
        dnhl_official.build_network(torch, bad, x)
