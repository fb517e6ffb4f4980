"""The checkpoint reader on small files written by PyTorch itself (tests/convert/data).

The files and their expected values were written by ``tests/convert/data/make_pth.py``
with torch 2.13.0; reading them needs no torch.
"""

import collections
import json
import os
import zipfile

import numpy as np
import pytest

from adverse_vision.convert import read_state_dict
from adverse_vision.convert.torch_pickle import load_pth, state_dict_from

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@pytest.fixture(scope="module")
def expected():
    """``{stem: OrderedDict(key -> (array, torch dtype name))}`` in the saved key order."""
    with np.load(os.path.join(DATA, "expected.npz")) as z:
        dtypes = json.loads(str(z["dtypes"]))
        out = collections.defaultdict(collections.OrderedDict)
        for name, dtype in dtypes.items():  # JSON keeps the saved order
            stem, key = name.split("/", 1)
            out[stem][key] = (z[name], dtype)
    return out


def _check(loaded, want):
    assert list(loaded) == list(want)
    for key, (value, dtype) in want.items():
        got = loaded[key]
        assert isinstance(got, np.ndarray), key
        assert got.dtype.name == dtype and got.shape == value.shape, (key, got.dtype, got.shape)
        assert got.flags["C_CONTIGUOUS"], key
        np.testing.assert_array_equal(got.astype(np.float32) if dtype == "bfloat16" else got,
                                      value, err_msg=key)


@pytest.mark.parametrize("name,is_zip", [("tensors_zip.pth", True), ("tensors_legacy.pth", False)])
def test_zip_and_legacy_files(expected, name, is_zip):
    path = os.path.join(DATA, name)
    assert zipfile.is_zipfile(path) == is_zip  # the file is in the format it is named for
    loaded = load_pth(path)
    assert loaded["epoch"] == 7 and loaded["note"] == "tiny"
    assert isinstance(loaded["model"], collections.OrderedDict)
    sd = state_dict_from(loaded)
    _check(sd, expected["tensors"])
    assert {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int8", "uint8",
            "bool"} <= {dtype for _, dtype in expected["tensors"].values()}
    # Views of one shared storage: an offset row, a transpose, a strided slice.
    base = sd["base"]
    np.testing.assert_array_equal(sd["row2"], base[2])
    np.testing.assert_array_equal(sd["transposed"], base.T)
    np.testing.assert_array_equal(sd["strided"], base[1:, ::2])
    assert sd["bn.num_batches_tracked"].shape == () and int(sd["bn.num_batches_tracked"]) == 11
    assert sd["empty"].shape == (0, 3)


def test_dataparallel_prefix(expected):
    path = os.path.join(DATA, "dataparallel_zip.pth")
    raw = load_pth(path)
    assert isinstance(raw, collections.OrderedDict)
    _check(raw, expected["dataparallel_zip"])
    assert all(k.startswith("module.") for k in raw)
    stripped = read_state_dict(path)
    assert list(stripped) == [k.removeprefix("module.") for k in raw]
    for key, value in raw.items():
        np.testing.assert_array_equal(stripped[key.removeprefix("module.")], value)
