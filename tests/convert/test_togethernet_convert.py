"""Tests for importing official TogetherNet / YOLOX weights (adverse_vision.convert).

The reference archive holds the official PyTorch TogetherNet-s (5 classes) with
weights exactly representable in float32, an input and the official outputs; the
flax port given those weights through ``load_official`` must reproduce them.
The checkpoint reader is tested on archives written here by hand in the
``torch.save`` formats, and in tests/convert/test_torch_pickle.py on small files
written by torch itself (no torch needed for either).
"""

import collections
import contextlib
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.convert import (
    TorchPickleError,
    load_official,
    load_pth,
    read_state_dict,
    reference_state_dict,
)
from adverse_vision.convert.keys import module_path
from adverse_vision.convert.torch_pickle import state_dict_from
from adverse_vision.methods.detection import YOLOX_RULES
from adverse_vision.methods.togethernet import TOGETHERNET_RULES
from tests.helpers import reference as reference_path

NAME = "togethernet_s_seed0.npz"


def _rel(out, ref):
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def reference():
    with np.load(reference_path(NAME)) as z:
        arrays = {k: z[k] for k in z.files}
    sd = {}
    for k, v in arrays.items():  # the documented decoding, written out independently
        if k.startswith("q/"):
            sd[k[2:]] = v.astype(np.float32) * arrays["s/" + k[2:]]
        elif k.startswith("f/"):
            sd[k[2:]] = v
    return arrays, sd


# ------------------------------------------------------------------ official outputs


def test_reference_outputs(reference):
    arrays, sd = reference
    model, variables = load_official("togethernet", sd, num_classes=5, size="s")
    x = jnp.asarray(arrays["input_nchw"].transpose(0, 2, 3, 1))
    out = jax.jit(lambda v, x: model.apply(v, x, train=False, restore=True))(variables, x)
    errors = {f"head{i}": _rel(np.asarray(out["heads"][i]),
                               arrays[f"head{i}_nchw"].transpose(0, 2, 3, 1)) for i in range(3)}
    errors["restored"] = _rel(np.asarray(out["restored"]),
                              arrays["restored_nchw"].transpose(0, 2, 3, 1))
    print("\nTogetherNet-s vs official, relative L2 error: "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    for name, err in errors.items():
        assert err < 1e-3, (name, err)


def test_every_key_is_used_once(reference):
    _, sd = reference
    _, variables = load_official("togethernet", sd, num_classes=5, size="s")
    n_vars = len(jax.tree_util.tree_leaves(variables))
    n_keys = sum(not k.endswith("num_batches_tracked") for k in sd)
    assert n_vars == n_keys
    p = variables["params"]
    # Layouts: OIHW -> HWIO, (out, in) -> (in, out), ConvTranspose (in, out, kh, kw) -> (kh, kw, out, in).
    np.testing.assert_array_equal(p["neck"]["sc1"]["scconv"]["k2"]["kernel"],
                                  sd["backbone.sc1.scconv.k2.1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["dtfe"]["swt1"]["m"]["tr_0"]["fc1"]["kernel"],
                                  sd["backbone.backbone.swt1.m.tr.0.fc1.weight"].T)
    np.testing.assert_array_equal(p["dtfe"]["swt1"]["m"]["tr_0"]["ma"]["in_proj_kernel"],
                                  sd["backbone.backbone.swt1.m.tr.0.ma.in_proj_weight"].T)
    assert p["decoder"]["conv_2"]["deconv"]["kernel"].shape == (3, 3, 128, 512)
    np.testing.assert_array_equal(variables["batch_stats"]["decoder"]["conv_3"]["bn"]["var"],
                                  sd["backbone.decoder.conv_3.1.running_var"])
    np.testing.assert_array_equal(p["dtfe"]["deconv"]["p_conv"]["bias"],
                                  sd["backbone.backbone.deconv.p_conv.bias"])


# ------------------------------------------------------------------ key mapping and errors


@pytest.mark.parametrize("prefix,path", [
    ("backbone.backbone.dark3.1.m.2.conv2.bn.", "backbone/dark3/csp/m_2/conv2/bn"),
    ("backbone.backbone.dark5.1.conv2.conv.", "backbone/dark5/spp/conv2/conv"),
    ("backbone.C3_n4.m.0.conv1.conv.", "neck/C3_n4/m_0/conv1/conv"),
    ("head.reg_convs.2.1.bn.", "head/reg_convs_2_1/bn"),
    ("head.obj_preds.1.", "head/obj_preds_1"),
    ("backbone.backbone.swt1.m.tr.0.ma.out_proj.", "dtfe/swt1/m/tr_0/ma/out_proj"),
    ("backbone.backbone.swt1.m.linear.", "dtfe/swt1/m/linear"),
    ("backbone.backbone.swt1.conv3.bn.", "dtfe/swt1/conv3/bn"),
    ("backbone.sc2.scconv.k2.1.", "neck/sc2/scconv/k2"),
    ("backbone.sc3.k1.0.", "neck/sc3/k1"),
    ("backbone.decoder.conv_2.1.", "decoder/conv_2/bn"),
    ("backbone.decoder.conv_4.1.", "decoder/conv_4"),
])
def test_module_paths(prefix, path):
    assert "/".join(module_path(prefix, TOGETHERNET_RULES)) == path
    if not any(s in prefix for s in ("swt1", "sc", "decoder")):
        assert "/".join(module_path(prefix, YOLOX_RULES)) == path
    assert module_path("something.else.", TOGETHERNET_RULES) is None


def test_strict_errors(reference):
    _, sd = reference
    sd = dict(sd)
    gone = sd.pop("backbone.sc1.k1.0.weight")
    with pytest.raises(ValueError, match=r"1 model variable\(s\) not in the checkpoint: "
                                         r"params/neck/sc1/k1/kernel"):
        load_official("togethernet", sd, num_classes=5)
    sd["backbone.sc1.k1.0.weight"] = gone
    sd["backbone.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"1 checkpoint key\(s\) not used: backbone\.extra\.weight"):
        load_official("togethernet", sd, num_classes=5)
    del sd["backbone.extra.weight"]
    sd["backbone.decoder.conv_4.1.weight"] = np.zeros((3, 64, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"backbone\.decoder\.conv_4\.1\.weight.*\(3, 64, 5, 5\)"
                                         r".*\(7, 7, 64, 3\)"):
        load_official("togethernet", sd, num_classes=5)
    with pytest.raises(ValueError, match="unknown network"):
        load_official("yolov9", sd)
    with pytest.raises(ValueError, match="no such checkpoint file"):
        load_official("togethernet", "/nonexistent/weights.pth")


def test_prefixes_nesting_and_inference(reference, tmp_path):
    _, sd = reference
    _, expected = load_official("togethernet", sd, num_classes=5, size="s")
    wrapped = {"model": {"module." + k: v for k, v in sd.items()}, "start_epoch": 3}
    model, variables = load_official("togethernet", wrapped)  # num_classes from the head
    assert model.num_classes == 5
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, expected)
    # The reference .npz itself, and a .pth written in torch's zip format.
    _, from_npz = load_official("togethernet", reference_path(NAME), num_classes=5)
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_npz, expected)
    path = tmp_path / "togethernet.pth"
    _write_pth(path, {"model": collections.OrderedDict(
        ("module." + k, _tensor(v)) for k, v in sd.items()), "start_epoch": 3})
    _, from_pth = load_official("togethernet", str(path), num_classes=5)
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_pth, expected)


def test_yolox_part(reference):
    _, sd = reference
    with pytest.raises(ValueError, match=r"checkpoint key\(s\) not used: backbone\.backbone\.deconv"):
        load_official("yolox", sd, num_classes=5)
    _, together = load_official("togethernet", sd, num_classes=5)
    _, variables = load_official("yolox", sd, num_classes=5, strict=False)
    for part in ("backbone", "head"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, variables["params"][part],
                               together["params"][part])
    # Excluded keys are initialised afresh (here a head for another class count).
    model, variables = load_official(
        "yolox", {k: v for k, v in sd.items() if k.startswith("head.")}, num_classes=3,
        size="s", strict=False, exclude=[r"^head\.cls_preds\."], init_size=32)
    assert model.num_classes == 3
    cls = variables["params"]["head"]["cls_preds_0"]
    assert cls["kernel"].shape == (1, 1, 128, 3)
    np.testing.assert_allclose(cls["bias"], -np.log(99.0), rtol=1e-6)
    np.testing.assert_array_equal(variables["params"]["head"]["obj_preds_2"]["kernel"],
                                  sd["head.obj_preds.2.weight"].transpose(2, 3, 1, 0))


def test_reference_format_decoding():
    arrays = {"q/a.weight": np.array([[1, -2]], np.int8), "s/a.weight": np.float32(0.25),
              "f/a.bias": np.array([0.5], np.float32), "input_nchw": np.zeros((1, 3, 2, 2))}
    sd = reference_state_dict(arrays)
    assert set(sd) == {"a.weight", "a.bias"}
    np.testing.assert_array_equal(sd["a.weight"], [[0.25, -0.5]])
    assert set(read_state_dict(arrays)) == {"a.weight", "a.bias"}
    with pytest.raises(ValueError, match="no scale entry"):
        reference_state_dict({"q/b": np.zeros(2, np.int8)})


# ------------------------------------------------------------------ hand-written torch.save files


class _Storage:
    """A storage to write: its key and flat data."""

    def __init__(self, data):
        self.data = np.ascontiguousarray(data).reshape(-1)
        self.key = None


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _tensor(array):
    array = np.asarray(array)
    strides = tuple(s // array.itemsize for s in np.ascontiguousarray(array).strides)
    return _Tensor(_Storage(array), 0, tuple(array.shape), strides)


_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                  np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage",
                  np.dtype(np.bool_): "BoolStorage"}


@contextlib.contextmanager
def _fake_torch():
    """Stand-in ``torch`` / ``torch._utils`` modules, so that pickle writes the same
    globals as torch.save (``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``)."""
    torch_mod = types.ModuleType("torch")
    utils_mod = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is written
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    classes = {}
    for name in _STORAGE_NAMES.values():
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch_mod, name, cls)
        classes[name] = cls
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch_mod, utils_mod
    try:
        yield _rebuild_tensor_v2, classes
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _dump(obj, legacy):
    """data.pkl bytes and the storages it references, in key order."""
    storages = []
    buf = io.BytesIO()
    with _fake_torch() as (rebuild, classes):

        class Pickler(pickle.Pickler):
            def persistent_id(self, o):
                if not isinstance(o, _Storage):
                    return None
                if o.key is None:
                    o.key = str(len(storages))
                    storages.append(o)
                pid = ("storage", classes[_STORAGE_NAMES[o.data.dtype]], o.key, "cpu",
                       o.data.size)
                return pid + (None,) if legacy else pid

            def reducer_override(self, o):
                if isinstance(o, _Tensor):
                    return rebuild, (o.storage, o.offset, o.size, o.stride, False,
                                     collections.OrderedDict())
                return NotImplemented

        Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue(), storages


def _write_pth(path, obj, legacy=False):
    data, storages = _dump(obj, legacy)
    if legacy:
        with open(path, "wb") as f:
            pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
            pickle.dump(1001, f, protocol=2)
            pickle.dump({"protocol_version": 1001, "little_endian": True}, f, protocol=2)
            f.write(data)
            pickle.dump([s.key for s in storages], f, protocol=2)
            for s in storages:
                f.write(struct.pack("<q", s.data.size))
                f.write(s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())
        return
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
        for s in storages:
            zf.writestr(f"archive/data/{s.key}", s.data.tobytes())


def _sample_checkpoint():
    """Tensors covering dtypes, a storage offset, a transposed view and shared storage."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 6)).astype(np.float32)
    shared = _Storage(base)
    expected = {
        "conv.weight": rng.normal(size=(3, 2, 3, 3)).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "half": rng.normal(size=(5,)).astype(np.float16),
        "double": rng.normal(size=(2, 2)),
        "flags": np.array([True, False, True]),
        "row2": base[2],                     # offset 12, size (6,), stride (1,)
        "transposed": base.T,                # size (6, 4), stride (1, 6)
        "every_other": base[1:, ::2],        # offset 6, stride (6, 2)
    }
    tensors = {k: _tensor(v) for k, v in expected.items() if k in
               ("conv.weight", "bn.num_batches_tracked", "half", "double", "flags")}
    tensors["row2"] = _Tensor(shared, 12, (6,), (1,))
    tensors["transposed"] = _Tensor(shared, 0, (6, 4), (1, 6))
    tensors["every_other"] = _Tensor(shared, 6, (3, 3), (6, 2))
    return collections.OrderedDict(tensors), expected


@pytest.mark.parametrize("legacy", [False, True])
def test_load_pth_hand_written(tmp_path, legacy):
    tensors, expected = _sample_checkpoint()
    path = tmp_path / "sample.pth"
    _write_pth(path, {"model": tensors, "epoch": 12, "note": "x"}, legacy=legacy)
    loaded = load_pth(path)
    assert loaded["epoch"] == 12 and loaded["note"] == "x"
    assert isinstance(loaded["model"], collections.OrderedDict)
    assert list(loaded["model"]) == list(expected)
    for k, v in expected.items():
        got = loaded["model"][k]
        assert got.dtype == v.dtype and got.shape == v.shape, k
        assert got.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(got, v)
    sd = state_dict_from(loaded)
    assert set(sd) == set(expected)


def test_load_pth_refuses_code_and_bad_files(tmp_path):
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("keep")

    class Evil:  # unpickled by a plain pickle.load, this would delete the sentinel
        def __reduce__(self):
            return (os.remove, (str(sentinel),))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(TorchPickleError, match=r"evil\.pth: refusing to load global .*remove"):
        load_pth(path)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(TorchPickleError, match="not a PyTorch checkpoint"):
        load_pth(legacy)
    assert sentinel.exists()

    tensors, _ = _sample_checkpoint()
    good = tmp_path / "good.pth"
    _write_pth(good, tensors)
    broken = tmp_path / "broken.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
        for n in src.namelist():
            if n != "archive/data/0":
                dst.writestr(n, src.read(n))
    with pytest.raises(TorchPickleError, match=r"broken\.pth: storage blob 'archive/data/0'"):
        load_pth(broken)

    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(TorchPickleError, match=r"notes\.pth: not a PyTorch checkpoint"):
        load_pth(text)
    with pytest.raises(TorchPickleError, match="no tensors found"):
        state_dict_from({"epoch": 3})
