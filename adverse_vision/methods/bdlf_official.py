"""BDLF's official fusion network (LiuZhu-CV/BDLFusion), built from a checkout of its
repository at run time for ``python -m adverse_vision.versus``; nothing of it is part
of this project.

The network BDLF learns is the fusion network; its task networks differ (the official
code detects with FCOS on ResNet-50, this project with YOLOX), so the comparison times
the fusion network alone, both sides on the same batches:

* ``fusion train step``: the official ``Fusion_Network_IJ`` on the official fusion
  loss ``Fusionloss_grad2`` (``|u - M|_1 + 1.1 (1 - SSIM(u, M))`` with its own
  ``pytorch_ssim``) against the saliency-weighted target ``M = s IR + (1 - s) Y`` (its
  ``_enhcence_loss``; the network fed IR and the visible YCrCb, as its forward feeds
  it), backward, and SGD at lr 1e-4 with weight decay 1e-3
  (its ``Architect``'s optimiser of the fusion network), the loss read on the host.
  Ours: the same step of :class:`~adverse_vision.models.bdlf.FusionNet` on
  :func:`~adverse_vision.losses.fusion.fusion_loss` with the same optimiser, jitted.
* ``fusion inference``: the fused colour image as its ``forward_fusion`` makes it
  (visible RGB to YCrCb, the network on IR and Y, back to RGB with the visible
  chroma, clamped to [0, 1], min-max normalised) without gradients. Ours: the same
  from the run's fusion network (``bdlf.minmax``: per image by default, the official
  min-max spans the batch; the same work at batch 1).

The official colour conversions (``RGB2YCrCb``, ``YCrCb2RGB`` of ``model/fcos_fusion.py``)
move their tensors to CUDA unconditionally, so the official side restates them (the
same matrix and offsets) in PyTorch; they are two small matrix products per image.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
import optax

from adverse_vision import parallel, versus, xla_options
from adverse_vision.errors import OfficialUnavailable
from adverse_vision.losses.fusion import fusion_loss
from adverse_vision.ops import tap_conv

#: The official optimiser of the fusion network (``Architect``: SGD, no momentum).
LR, WEIGHT_DECAY = 1e-4, 1e-3


def _check(cfg) -> None:
    b = cfg.bdlf
    if b.mode not in ("bilevel", "fusion_loss"):
        raise OfficialUnavailable(f"bdlf.mode={b.mode!r} has no fusion network to time; use "
                                  "the bi-level or the fusion_loss mode")
    if float(b.fusion_width) != 1.0:
        raise OfficialUnavailable(f"the official fusion network has full width (64 channels); "
                                  f"this config has bdlf.fusion_width={b.fusion_width}")


def _torch_colour(torch):
    """The official YCrCb conversions (offset 0.5 on the chroma), on any device."""
    to_rgb = torch.tensor([[1.0, 1.0, 1.0], [1.403, -0.714, 0.0], [0.0, -0.344, 1.773]])
    bias = torch.tensor([0.0, -0.5, -0.5])

    def rgb_to_ycrcb(x):
        r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        y = 0.299 * r + 0.587 * g + 0.114 * b
        return torch.cat([y, (r - y) * 0.713 + 0.5, (b - y) * 0.564 + 0.5], 1)

    def ycrcb_to_rgb(x):
        flat = x.permute(0, 2, 3, 1).reshape(-1, 3)
        rgb = (flat + bias).mm(to_rgb)
        return rgb.reshape(x.shape[0], x.shape[2], x.shape[3], 3).permute(0, 3, 1, 2)

    return rgb_to_ycrcb, ycrcb_to_rgb


def contenders(cfg, checkout: str, batches: dict[str, dict[str, np.ndarray]],
               tasks: tuple[str, str]) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The official side of ``tasks`` (the method's ``contender_tasks``: the fusion
    network's train step and inference; see the module docstring) and its info."""
    _check(cfg)
    versus.checkout_file(checkout, "model.fcos_fusion")
    versus.checkout_file(checkout, "model.loss")
    torch = versus.import_torch()
    (net_cls,) = versus.import_from_checkout(checkout, "model.fcos_fusion", ["Fusion_Network_IJ"])
    (loss_cls,) = versus.import_from_checkout(checkout, "model.loss", ["Fusionloss_grad2"])
    rgb_to_ycrcb, ycrcb_to_rgb = _torch_colour(torch)
    torch.manual_seed(cfg.seed)
    net, criterion = net_cls(), loss_cls()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    train = batches["train"]
    ir, vis = versus.torch_images(torch, train["thermal"]), versus.torch_images(torch, train["image"])
    saliency = np.asarray(train["saliency"], np.float32)
    saliency = torch.from_numpy(np.ascontiguousarray(
        saliency.reshape(saliency.shape[:3] + (1,)).transpose(0, 3, 1, 2)))

    def train_step():
        net.train()
        optimizer.zero_grad()
        ycrcb = rgb_to_ycrcb(vis)
        fused = net(ir, ycrcb)
        target = saliency * ir[:, :1] + (1 - saliency) * ycrcb[:, :1]
        loss = criterion(ir, ycrcb, fused, target)
        loss.backward()
        optimizer.step()
        loss.item()

    infer = batches["infer"]
    ir_i, vis_i = versus.torch_images(torch, infer["thermal"]), versus.torch_images(torch, infer["image"])

    def inference():
        net.eval()
        with torch.no_grad():
            ycrcb = rgb_to_ycrcb(vis_i)
            fused = net(ir_i, ycrcb)
            rgb = ycrcb_to_rgb(torch.cat([fused, ycrcb[:, 1:]], 1)).clamp(0, 1)
            (rgb - rgb.min()) / (rgb.max() - rgb.min())

    info = {"official_label": "official PyTorch", "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            versus.NETWORKS: {"Fusion_Network_IJ": net, "Fusionloss_grad2": criterion}}
    return {tasks[0]: train_step, tasks[1]: inference}, info


def own(method, trainers: dict[str, Any], batches: dict[str, dict[str, np.ndarray]]
        ) -> dict[str, versus.Compiled]:
    """Our side of the method's ``contender_tasks``: the run's fusion network, compiled ahead of time (the
    train step's loss and update in the trainer's scopes, as ``breakdown`` splits it)."""
    from adverse_vision.trainer import LOSS_SCOPE, OPTIMIZER_SCOPE  # pylint: disable=import-outside-toplevel
    trainer = trainers["train"]
    theta = trainer.init_state().params["fusion"]
    tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR))
    state = [theta, tx.init(theta)]
    ssim_weight = float(method.cfg.bdlf.ssim_weight)

    @tap_conv.kernel_gradients_by_rows()
    def step(theta, opt_state, batch):
        def loss_fn(theta):
            return fusion_loss(method._fuse(theta, batch), method._target(batch),  # pylint: disable=protected-access
                               batch["valid"], ssim_weight)[0]
        with jax.named_scope(LOSS_SCOPE):
            loss, grads = jax.value_and_grad(loss_fn)(theta)
        with jax.named_scope(OPTIMIZER_SCOPE):
            updates, opt_state = tx.update(grads, opt_state, theta)
            theta = optax.apply_updates(theta, updates)
        return theta, opt_state, loss

    train = parallel.global_batch(batches["train"], trainer.mesh)
    step = xla_options.jit(step).lower(state[0], state[1], train).compile()

    def train_step():
        state[0], state[1], loss = step(state[0], state[1], train)
        float(loss)

    infer_trainer = trainers["infer"]
    infer = parallel.global_batch(batches["infer"], infer_trainer.mesh)
    infer_theta = infer_trainer.init_state().params["fusion"]

    def fuse(theta, batch):
        return method._task_image(method._fuse(theta, batch), batch)  # pylint: disable=protected-access

    fuse = xla_options.jit(fuse).lower(infer_theta, infer).compile()

    def inference():
        fuse(infer_theta, infer).block_until_ready()

    tasks = method.contender_tasks
    return {tasks[0]: versus.Compiled(train_step, step.as_text()),
            tasks[1]: versus.Compiled(inference, fuse.as_text())}
