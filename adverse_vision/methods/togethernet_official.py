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

from typing import Any, Callable

import numpy as np

from adverse_vision import versus
from adverse_vision.errors import OfficialUnavailable

#: The YOLOX sizes its ``YoloBody(num_classes, phi)`` knows.
PHIS = ("nano", "tiny", "s", "m", "l", "x")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _targets(torch, batch: dict[str, np.ndarray]) -> list:
    out = []
    for boxes, classes, mask in zip(batch["boxes"], batch["classes"], batch["box_mask"]):
        b = np.asarray(boxes, np.float32)[np.asarray(mask, bool)]
        c = np.asarray(classes, np.float32)[np.asarray(mask, bool)]
        centre = np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2], c[:, None]], 1)
        out.append(torch.from_numpy(centre.astype(np.float32)))
    return out


def contenders(cfg, checkout: str, batches: dict[str, dict[str, np.ndarray]]
               ) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """``({"train step": fn, "inference": fn}, info)`` (see the module docstring)."""
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
    clear = versus.torch_images(torch, train["clean"], MEAN, STD)
    both = torch.cat([versus.torch_images(torch, train["image"], MEAN, STD), clear], 0)
    targets = _targets(torch, train)

    def train_step():
        model.train()
        optimizer.zero_grad()
        outputs = model(both)
        loss = 0.2 * detection_loss(outputs[0], targets) + 0.8 * mse(outputs[1], clear)
        loss.backward()
        optimizer.step()
        loss.item()

    decode, nms = versus.import_from_checkout(checkout, "utils.utils_bbox",
                                              ["decode_outputs", "non_max_suppression"])
    images = versus.torch_images(torch, batches["infer"]["image"], MEAN, STD)
    shape = list(images.shape[-2:])

    def inference():
        model.eval()
        with torch.no_grad():
            outputs = model(images)
            nms(decode(outputs[0], shape), num_classes, shape, np.array(shape), True,
                conf_thres=0.5, nms_thres=0.3)

    info = {"official_label": "official PyTorch", "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            versus.NETWORKS: {"YoloBody": model, "YOLOLoss": detection_loss}}
    return {"train step": train_step, "inference": inference}, info
