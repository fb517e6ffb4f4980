"""The official TogetherNet (yz-wang/TogetherNet), built from a checkout of its
repository at run time for ``python -m adverse_vision.versus``; nothing of it is part
of this project.

* Train step, as its training loop runs one (``utils/utils_fit.py``): the hazy and clear
  images concatenated into one input (the network splits them 4 + 4 and runs the hazy
  four only, so the batch must be 4), ``0.2 * YOLOLoss + 0.8 * MSE(restored, clear)``,
  backward, SGD with Nesterov momentum 0.937 and weight decay 5e-4 (one parameter group
  instead of its three, which only exempt BatchNorm weights and biases from the decay),
  and the loss read on the host (``loss.item()``), as its loop does.
* Inference, as its ``yolo.py`` detects: evaluation mode without gradients, the network
  (whose decoder always runs), ``decode_outputs`` and ``non_max_suppression`` at its
  defaults (confidence 0.5, IoU 0.3).
* Inputs: ours, converted: ImageNet mean/std normalised NCHW images, boxes as
  ``[cx, cy, w, h, class]`` in pixels.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np

from adverse_vision import versus
from adverse_vision.errors import OfficialUnavailable

#: The YOLOX sizes its ``YoloBody(num_classes, phi)`` knows.
PHIS = ("nano", "tiny", "s", "m", "l", "x")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _nchw(torch, images: np.ndarray):
    x = (np.asarray(images, np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _targets(torch, batch: dict[str, np.ndarray]) -> list:
    out = []
    for boxes, classes, mask in zip(batch["boxes"], batch["classes"], batch["box_mask"]):
        b = np.asarray(boxes, np.float32)[np.asarray(mask, bool)]
        c = np.asarray(classes, np.float32)[np.asarray(mask, bool)]
        centre = np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2], c[:, None]], 1)
        out.append(torch.from_numpy(centre.astype(np.float32)))
    return out


def _build(cfg, checkout: str, batches: dict[str, dict[str, np.ndarray]]):
    """The official network, loss, optimiser and inputs (see the module docstring)."""
    size = cfg.model.size
    if cfg.model.depth > 0 or cfg.model.width > 0 or size not in PHIS:
        raise OfficialUnavailable(f"the official network has the sizes {PHIS}; this config "
                                  f"asks for model.size={size!r} (depth {cfg.model.depth}, "
                                  f"width {cfg.model.width})")
    train = batches["train"]
    if len(train["image"]) != 4:
        raise OfficialUnavailable("the official network splits its training input as 4 hazy "
                                  f"+ 4 clear images: run with --config.batch_size=4 (not "
                                  f"{len(train['image'])})")
    for module in ("nets.yolo", "nets.yolo_training", "utils.utils_bbox"):
        versus.checkout_file(checkout, module)
    torch = versus.import_torch()
    (yolo_body,) = versus.import_from_checkout(checkout, "nets.yolo", ["YoloBody"])
    (yolo_loss,) = versus.import_from_checkout(checkout, "nets.yolo_training", ["YOLOLoss"])
    num_classes = len(cfg.data.class_names)
    torch.manual_seed(cfg.seed)
    model = yolo_body(num_classes, size)
    detection_loss, mse = yolo_loss(num_classes), torch.nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=float(cfg.optimizer.base_lr),
                                momentum=0.937, nesterov=True, weight_decay=5e-4)
    clear = _nchw(torch, train["clean"])
    both = torch.cat([_nchw(torch, train["image"]), clear], 0)
    targets = _targets(torch, train)

    def train_step(ranges: bool = False):
        def scope(name):
            return torch.profiler.record_function(f"user::{name}") if ranges \
                else contextlib.nullcontext()
        model.train()
        with scope("optimizer"):
            optimizer.zero_grad()
        outputs = model(both)
        with scope("loss"):
            loss = 0.2 * detection_loss(outputs[0], targets) + 0.8 * mse(outputs[1], clear)
        loss.backward()
        with scope("optimizer"):
            optimizer.step()
        loss.item()

    return torch, model, train_step, num_classes


def contenders(cfg, checkout: str, batches: dict[str, dict[str, np.ndarray]]
               ) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """``({"train step": fn, "inference": fn}, info)`` (see the module docstring)."""
    torch, model, train_step, num_classes = _build(cfg, checkout, batches)
    decode, nms = versus.import_from_checkout(checkout, "utils.utils_bbox",
                                              ["decode_outputs", "non_max_suppression"])
    images = _nchw(torch, batches["infer"]["image"])
    shape = list(images.shape[-2:])

    def inference():
        model.eval()
        with torch.no_grad():
            outputs = model(images)
            nms(decode(outputs[0], shape), num_classes, shape, np.array(shape), True,
                conf_thres=0.5, nms_thres=0.3)

    info = {"official_label": "official PyTorch", "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
    return {"train step": train_step, "inference": inference}, info


#: Stages of the profile, in the order of a step.
STAGES = ("backbone", "DTFE", "neck", "head", "decoder")
_OURS = {"backbone": "backbone", "dtfe": "DTFE", "neck": "neck", "head": "head",
         "decoder": "decoder"}


def _our_stage(direction: str, path: tuple[str, ...]) -> str:
    if direction == "update":
        return "optimizer"
    if path and path[0] in _OURS:
        return f"{_OURS[path[0]]} {direction}"
    return "loss" if direction == "forward" else "loss backward"


def stage_profile(cfg, checkout: str, batches: dict[str, dict[str, np.ndarray]], trainer
                  ) -> dict[str, dict[str, float]]:
    """Seconds per stage of one train step (backbone, DTFE, neck, head, decoder forward
    and backward; the loss, SimOTA included, and its backward; the optimiser) of the
    official network (``torch.profiler``) and ours (XLA's operation trace); see
    :mod:`adverse_vision.stage_profile`."""
    from adverse_vision import parallel, stage_profile as profile  # pylint: disable=import-outside-toplevel
    torch, model, train_step, _ = _build(cfg, checkout, batches)
    body, pafpn = model.backbone.backbone, model.backbone
    neck = ["lateral_conv0", "C3_p4", "reduce_conv1", "C3_p3", "bu_conv2", "C3_n3",
            "bu_conv1", "C3_n4", "sc1", "sc2", "sc3", "upsample"]
    modules = {"backbone": [getattr(body, n) for n in ("stem", "dark2", "dark3", "dark4", "dark5")],
               "DTFE": [body.deconv, body.swt1],
               "neck": [getattr(pafpn, n) for n in neck],
               "decoder": [pafpn.decoder], "head": [model.head]}
    official = profile.torch_stage_seconds(torch, lambda: train_step(ranges=True), modules)
    batch = parallel.global_batch(batches["train"], trainer.mesh)
    compiled = trainer.train_step.lower(trainer.init_state(), batch).compile()
    ours = profile.xla_stage_seconds(compiled, lambda: (trainer.init_state(), batch), _our_stage)
    return {"official": official, "ours": ours}


def stage_order() -> list[str]:
    """The profile's rows in the order of a step."""
    return ([f"{s} forward" for s in STAGES] + ["loss", "loss backward"]
            + [f"{s} backward" for s in reversed(STAGES)] + ["optimizer", "other"])
