r"""BDLF on M3FD (infrared-visible pairs with 6 detection classes), the paper's detection setting.

  python -m adverse_vision.train --config configs/bdlf_m3fd.py:fusion --config.data.root=M3FD \
      --workdir runs/m3fd_fusion
  python -m adverse_vision.train --config configs/bdlf_m3fd.py --config.data.root=M3FD \
      --config.bdlf.fusion_from=runs/m3fd_fusion --workdir runs/m3fd_bdlf
  python -m adverse_vision.evaluate --workdir runs/m3fd_bdlf --split test

``data.root`` holds ``Ir/<id>.png``, ``Vis/<id>.png``, ``Annotation/<id>.xml`` and
``Main/{train,val,test}.txt`` (the official split lists: 3,600 train / 600 test of the
4,200 pairs), and optionally ``Mask/<id>.png`` (precomputed saliency maps; without
them the saliency is computed, see README). The official run starts its fusion
network from one pretrained on the fusion loss, hence the ``fusion`` run first.

Official settings kept: the fusion network and 1x1 critic at full size, the critic
and task network on SGD (momentum 0.9, weight decay 1e-4, lr 2e-4 after a 1000-step
warm-up), the fusion network on SGD lr 1e-4 (weight decay 1e-3) every 10 iterations
on a held-out batch, random softmax aggregation, generator weights 0.5 / 0.01.
The detector is the project's YOLOX-s at 512 px (the official FCOS with ResNet-50 is
not ported); the official step-decays of the learning rate at 30k / 40k iterations
are not reproduced.

Variants: ``fusion``, ``visible``, ``infrared`` (baselines), ``gradnorm``, ``random``,
model sizes, ``bf16``.
"""

from adverse_vision import methods
from adverse_vision.config import degrade_spec
from configs.common import bdlf_official, bdlf_variants
from adverse_vision.data.fusion_pairs import M3FD_CLASSES


def get_config(arg: str = ""):
    c = methods.config("bdlf")
    c.data.name = "m3fd"
    c.data.root = ""  # set by flag
    c.data.class_names = M3FD_CLASSES
    c.data.train_split = "train"
    c.data.val_split = "test"
    c.data.degrade = degrade_spec("none")  # real night and fog
    c.data.val_degrade = degrade_spec("none")
    c.model.size = "s"
    c.image_size = 512
    c.batch_size = 8
    c.total_steps = 50_000
    c.eval_every = 5_000
    c.checkpoint_every = 1_000
    c.log_every = 100
    c.bdlf.branches = ("critic", "detection")
    bdlf_official(c)
    return bdlf_variants(c, arg, {})
