"""DN-HL's official denoiser (Ding-Liu/DeepDenoising, Caffe), restated in PyTorch from
a checkout of its repository at run time for ``python -m adverse_vision.versus``.

Caffe cannot be installed here, so this module reads the network the official code
deploys, ``exper/config/deploy_denoise.prototxt``, and builds it layer by layer with
PyTorch's own operators (a restatement written by this project, not official code):
``Convolution`` and ``Deconvolution`` (``nn.Conv2d`` / ``nn.ConvTranspose2d``),
``BatchNorm`` (batch statistics in training, running ones in evaluation, no affine, eps
1e-5, moving-average fraction 0.999), ``Scale`` (per-channel weight and bias), ``ReLU``,
``Eltwise`` (sum), ``Concat`` and ``Crop``. Only these types are accepted: a prototxt
with another one is refused, naming it.

* ``train step`` as its solver trains the denoiser (``solver_denoise.prototxt`` with
  ``train_denoise.prototxt``): Gaussian noise of ``dnhl.sigmas[0]`` added to the
  mean-subtracted BGR 0-255 crops, the network, ``EuclideanLoss`` (sum of squares over
  2N) against the clean crop cropped like the output, backward, gradients clipped to an
  L2 norm of 100, SGD with momentum 0.9 and weight decay 5e-4, each parameter's
  ``lr_mult`` and ``decay_mult`` from the prototxt (biases: 2 and 0), the loss read on
  the host.
* ``inference``: the network in evaluation mode without gradients.

Our side is the run's train step and prediction; the config must be the ``official``
form at full width and the ``denoise`` stage, so that both sides are the same network
on the same inputs.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import numpy as np

from adverse_vision import versus
from adverse_vision.errors import OfficialUnavailable

#: The prototxt the official code deploys, in its checkout.
DEPLOY = os.path.join("exper", "config", "deploy_denoise.prototxt")
#: Caffe's ImageData mean of the official training prototxt, BGR.
MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
LAYER_TYPES = ("Convolution", "Deconvolution", "BatchNorm", "Scale", "ReLU", "Eltwise",
               "Concat", "Crop")
# A comment or a field separator (skipped), a string, punctuation, a word.
_TOKEN = re.compile(r'\s*(?:(#[^\n]*|[,;])|("(?:[^"\\]|\\.)*")|([{}:])|([^\s{}:"#,;]+))')


def parse_prototxt(text: str) -> dict[str, list[Any]]:
    """Protocol-buffer text format as nested dicts: field name -> list of values (a
    scalar: int, float or str; a message: another such dict).

    Raises:
      ValueError: malformed text, with the position."""
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"prototxt: cannot read at character {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group(1) is None and m.lastindex is not None:
            tokens.append(m.group(m.lastindex))
    return _message(tokens, 0, top=True)[0]


def _scalar(token: str) -> Any:
    if token.startswith('"'):
        return token[1:-1]
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return token  # an enum name or true/false


def _message(tokens: list[str], i: int, top: bool = False) -> tuple[dict[str, list[Any]], int]:
    fields: dict[str, list[Any]] = {}
    while i < len(tokens):
        name = tokens[i]
        if name == "}":
            if top:
                raise ValueError("prototxt: '}' without its '{'")
            return fields, i + 1
        i += 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        if i >= len(tokens):
            raise ValueError(f"prototxt: field {name!r} has no value")
        if tokens[i] == "{":
            value, i = _message(tokens, i + 1)
        else:
            value, i = _scalar(tokens[i]), i + 1
        fields.setdefault(name, []).append(value)
    if not top:
        raise ValueError("prototxt: a '{' is not closed")
    return fields, i


def _one(msg: dict[str, list[Any]], key: str, default: Any = None) -> Any:
    return msg.get(key, [default])[0]


def build_network(torch, net: dict[str, list[Any]], example):
    """A ``torch.nn.Module`` running the layers of a parsed deploy prototxt (input blob
    ``input``, output: the last layer's top) and each parameter's ``(lr_mult,
    decay_mult)``. The channel counts come from running ``example`` through it.

    Raises:
      OfficialUnavailable: a layer type outside :data:`LAYER_TYPES`."""
    nn = torch.nn
    layers = net.get("layer", [])
    for layer in layers:
        if _one(layer, "type") not in LAYER_TYPES:
            raise OfficialUnavailable(f"{DEPLOY}: layer {_one(layer, 'name')!r} has type "
                                      f"{_one(layer, 'type')!r}, which the restatement does "
                                      f"not know ({', '.join(LAYER_TYPES)})")

    class Network(nn.Module):
        def __init__(self):
            super().__init__()
            self.ops = nn.ModuleDict()
            self.mults: dict[str, tuple[float, float]] = {}
            blobs = {_one(net, "input", "data"): example}
            with torch.no_grad():
                for layer in layers:
                    self._add(layer, blobs)
            self.output = _one(layers[-1], "top")

        def _add(self, layer, blobs):
            kind, key = _one(layer, "type"), _key(layer)
            x = blobs[_one(layer, "bottom")]
            if kind in ("Convolution", "Deconvolution"):
                p = _one(layer, "convolution_param", {})
                args = dict(kernel_size=_one(p, "kernel_size"), stride=_one(p, "stride", 1),
                            padding=_one(p, "pad", 0), bias=_one(p, "bias_term", "true") != "false")
                if kind == "Convolution":
                    op = nn.Conv2d(x.shape[1], _one(p, "num_output"),
                                   dilation=_one(p, "dilation", 1), groups=_one(p, "group", 1), **args)
                else:
                    op = nn.ConvTranspose2d(x.shape[1], _one(p, "num_output"), **args)
                specs = layer.get("param", [])
                for i, pname in enumerate(("weight", "bias")):
                    spec = specs[i] if i < len(specs) else {}
                    self.mults[f"ops.{key}.{pname}"] = (float(_one(spec, "lr_mult", 1)),
                                                        float(_one(spec, "decay_mult", 1)))
            elif kind == "BatchNorm":
                op = nn.BatchNorm2d(x.shape[1], eps=1e-5, momentum=0.001, affine=False)
            elif kind == "Scale":
                op = _Scale(torch, x.shape[1])
            else:
                op = None
            if op is not None:
                self.ops[key] = op
            blobs[_one(layer, "top")] = self._run(layer, op, blobs)

        def _run(self, layer, op, blobs):
            kind = _one(layer, "type")
            bottoms = [blobs[b] for b in layer["bottom"]]
            if op is not None:
                return op(bottoms[0])
            if kind == "ReLU":
                return torch.relu(bottoms[0])
            if kind == "Eltwise":
                if _one(_one(layer, "eltwise_param", {}), "operation", 1) not in (1, "SUM"):
                    raise OfficialUnavailable(f"{DEPLOY}: Eltwise {_one(layer, 'name')!r} is "
                                              "not a sum")
                return sum(bottoms[1:], bottoms[0])
            if kind == "Concat":
                return torch.cat(bottoms, _one(_one(layer, "concat_param", {}), "axis", 1))
            # Crop: bottom 0 to the shape of bottom 1 from ``axis`` on, at ``offset``.
            p = _one(layer, "crop_param", {})
            axis, offset = _one(p, "axis", 2), _one(p, "offset", 0)
            x, like = bottoms
            for a in range(axis, x.dim()):
                x = x.narrow(a, offset, like.shape[a])
            return x

        def forward(self, x):
            blobs = {_one(net, "input", "data"): x}
            for layer in layers:
                key = _key(layer)
                blobs[_one(layer, "top")] = self._run(
                    layer, self.ops[key] if key in self.ops else None, blobs)
            return blobs[self.output]

    return Network()


def _key(layer) -> str:
    """A layer's name as a module key (no dots)."""
    return str(_one(layer, "name")).replace(".", "_")


def _Scale(torch, channels: int):  # pylint: disable=invalid-name
    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1, channels, 1, 1))
            self.bias = torch.nn.Parameter(torch.zeros(1, channels, 1, 1))

        def forward(self, x):
            return x * self.weight + self.bias

    return Scale()


def _caffe_input(torch, images: np.ndarray):
    """uint8 RGB NHWC -> mean-subtracted BGR 0-255 NCHW, as the official data layer."""
    x = np.asarray(images, np.float32)[..., ::-1] - MEAN_BGR
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def contenders(cfg, checkout: str, batches: dict[str, dict[str, np.ndarray]]
               ) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """``({"train step": fn, "inference": fn}, info)`` (see the module docstring)."""
    d = cfg.dnhl
    if d.stage != "denoise" or d.denoiser_form != "official" or float(d.denoiser_width) != 1.0:
        raise OfficialUnavailable(
            "the official denoiser is the Caffe form at full width, trained alone: use the "
            "'official' and 'denoise' variants (this config has dnhl.stage="
            f"{d.stage!r}, dnhl.denoiser_form={d.denoiser_form!r}, dnhl.denoiser_width={d.denoiser_width})")
    path = os.path.join(os.path.abspath(os.path.expanduser(checkout)), DEPLOY)
    if not os.path.isfile(path):
        raise OfficialUnavailable(f"{path} not found: --official must be a checkout of "
                                  "Ding-Liu/DeepDenoising")
    torch = versus.import_torch()
    with open(path, encoding="utf-8") as f:
        try:
            net_spec = parse_prototxt(f.read())
        except ValueError as e:
            raise OfficialUnavailable(f"{path}: {e}") from None
    torch.manual_seed(cfg.seed)
    clean = _caffe_input(torch, batches["train"]["image"])
    net = build_network(torch, net_spec, clean[:1])
    groups: dict[tuple[float, float], list] = {}
    for name, param in net.named_parameters():
        groups.setdefault(net.mults.get(name, (1.0, 1.0)), []).append(param)
    base_lr, weight_decay = float(cfg.optimizer.base_lr), 5e-4
    optimizer = torch.optim.SGD(
        [{"params": ps, "lr": base_lr * lr, "weight_decay": weight_decay * decay}
         for (lr, decay), ps in groups.items()], lr=base_lr, momentum=0.9)
    sigma = float(tuple(d.sigmas)[0])
    params = [p for ps in groups.values() for p in ps]

    def train_step():
        net.train()
        optimizer.zero_grad()
        noisy = clean + sigma * torch.randn_like(clean)
        out = net(noisy)
        c = (clean.shape[-1] - out.shape[-1]) // 2
        label = clean[:, :, c:c + out.shape[-2], c:c + out.shape[-1]]
        loss = ((out - label) ** 2).sum() / (2 * out.shape[0])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 100.0)
        optimizer.step()
        loss.item()

    images = _caffe_input(torch, batches["infer"]["image"])

    def inference():
        net.eval()
        with torch.no_grad():
            net(images)

    info = {"official_label": "official (Caffe prototxt, PyTorch ops)",
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "official_parameters": sum(p.numel() for p in params),
            versus.NETWORKS: {"denoiser": net}}
    return {"train step": train_step, "inference": inference}, info
