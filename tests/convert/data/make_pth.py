"""Writes the small ``.pth`` files of this folder with PyTorch itself, and their expected values.

    python tests/convert/data/make_pth.py     # needs torch (written with torch 2.13.0, CPU)

The checkpoint reader (``adverse_vision.convert.torch_pickle``) is tested against these
files without torch. Each file holds a handful of tiny tensors:

``tensors_zip.pth``, ``tensors_legacy.pth``
    the same checkpoint in the zip format (the default since PyTorch 1.6) and in the
    legacy stream format (``_use_new_zipfile_serialization=False``): ``{"model":
    OrderedDict, "epoch": 7, "note": "tiny"}`` whose state dict has parameters, a
    BatchNorm's buffers, one tensor of each of several dtypes and views (an offset
    row, a transpose, a strided slice) sharing one storage with a plain tensor.
``dataparallel_zip.pth``
    a bare state dict of a ``torch.nn.DataParallel`` model: every key starts with
    ``module.``.

``expected.npz`` holds the values, ``<file stem>/<key>``, with bfloat16 tensors
widened to float32 (exact), and under ``dtypes`` a JSON object mapping each
``<file stem>/<key>`` to its torch dtype name.
"""

import collections
import json
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _tensors():
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
        bn.running_mean.copy_(torch.randn(3, generator=g))
        bn.running_var.copy_(torch.rand(3, generator=g) + 0.5)
    bn.num_batches_tracked.fill_(11)
    base = torch.randn(4, 6, generator=g)
    sd = collections.OrderedDict([
        ("conv.weight", conv.weight), ("conv.bias", conv.bias),  # Parameters
        ("bn.running_mean", bn.running_mean), ("bn.running_var", bn.running_var),
        ("bn.num_batches_tracked", bn.num_batches_tracked),      # 0-d int64
        ("double", torch.randn(2, 3, generator=g, dtype=torch.float64)),
        ("half", torch.randn(5, generator=g).half()),
        ("bf16", torch.randn(4, generator=g).to(torch.bfloat16)),
        ("int32", torch.arange(-3, 3, dtype=torch.int32)),
        ("int8", torch.tensor([-128, -1, 0, 127], dtype=torch.int8)),
        ("uint8", torch.tensor([0, 1, 254, 255], dtype=torch.uint8)),
        ("flags", torch.tensor([True, False, True])),
        ("empty", torch.zeros(0, 3)),
        # One storage shared by a plain tensor and three non-contiguous views of it.
        ("base", base), ("row2", base[2]), ("transposed", base.t()),
        ("strided", base[1:, ::2]),
    ])
    assert sd["transposed"].untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    assert not sd["transposed"].is_contiguous() and not sd["strided"].is_contiguous()
    return sd


def _dataparallel():
    torch.manual_seed(1)
    net = torch.nn.DataParallel(torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, bias=False), torch.nn.BatchNorm2d(2), torch.nn.Linear(4, 2)))
    return net.state_dict()


def _numpy(t):
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()


def main():
    sd = _tensors()
    checkpoint = {"model": sd, "epoch": 7, "note": "tiny"}
    torch.save(checkpoint, os.path.join(HERE, "tensors_zip.pth"))
    torch.save(checkpoint, os.path.join(HERE, "tensors_legacy.pth"),
               _use_new_zipfile_serialization=False)
    dp = _dataparallel()
    assert all(k.startswith("module.") for k in dp)
    torch.save(dp, os.path.join(HERE, "dataparallel_zip.pth"))
    expected, dtypes = {}, {}
    for stem, tensors in (("tensors", sd), ("dataparallel_zip", dp)):
        for k, t in tensors.items():
            expected[f"{stem}/{k}"] = _numpy(t)
            dtypes[f"{stem}/{k}"] = str(t.dtype).removeprefix("torch.")
    np.savez_compressed(os.path.join(HERE, "expected.npz"), dtypes=np.array(json.dumps(dtypes)),
                        **expected)
    for name in sorted(os.listdir(HERE)):
        if name.endswith((".pth", ".npz")):
            print(f"{name}: {os.path.getsize(os.path.join(HERE, name))} bytes")


if __name__ == "__main__":
    main()
