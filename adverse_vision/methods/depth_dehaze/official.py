"""The official depth-guided dehazing network (DongLiangSXU/Depth-Guidance-dehazing),
built from a checkout of its repository at run time for ``python -m
adverse_vision.versus``; nothing of it is part of this project.

* Inference only (the release has no training code), as its ``test.py`` runs the
  network: ``multi_Net()`` (DenseNet-169 depth net, the depth/hazy mix and the
  transformer dehazer) in evaluation mode under ``torch.no_grad``, on images scaled to
  [0, 1] (``ToTensor``), NCHW. Its weights are its own random initialisation: the
  timing does not depend on them.
* Our side is the run's prediction (``predict_fn``): the same three parts on the same
  images. The official network needs sides that are multiples of 32; so does ours
  with DenseNet-169.
* The checkout's modules import ``timm``, ``scipy`` and ``matplotlib`` besides
  PyTorch and torchvision.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from adverse_vision import versus
from adverse_vision.errors import OfficialUnavailable


def contenders(cfg, checkout: str, batches: dict[str, dict[str, np.ndarray]]
               ) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """``({"inference": fn}, info)`` (see the module docstring)."""
    s = cfg.sdg
    if s.stage != "dehaze" or s.encoder != "densenet169" or s.guidance != "learned":
        raise OfficialUnavailable(
            "the official network is the depth-guided dehazer with a DenseNet-169 depth net; "
            f"this config has sdg.stage={s.stage!r}, sdg.encoder={s.encoder!r}, "
            f"sdg.guidance={s.guidance!r} (need 'dehaze', 'densenet169', 'learned')")
    images = np.asarray(batches["infer"]["image"])
    if images.shape[1] % 32 or images.shape[2] % 32:
        raise OfficialUnavailable(f"the official network needs image sides that are multiples "
                                  f"of 32, got {images.shape[1]}x{images.shape[2]}: set "
                                  "--infer_size")
    versus.checkout_file(checkout, "multi_network")
    torch = versus.import_torch()
    for package in ("timm", "scipy", "matplotlib", "torchvision"):
        try:
            __import__(package)
        except ImportError:
            raise OfficialUnavailable(f"the official network imports {package}, which is not "
                                      f"installed: pip install {package}") from None
    (multi_net,) = versus.import_from_checkout(checkout, "multi_network", ["multi_Net"])
    torch.manual_seed(cfg.seed)
    net = multi_net().eval()
    x = versus.torch_images(torch, images)

    def inference():
        with torch.no_grad():
            net(x)

    info = {"official_label": "official PyTorch", "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), versus.NETWORKS: {"multi_Net": net}}
    return {"inference": inference}, info
