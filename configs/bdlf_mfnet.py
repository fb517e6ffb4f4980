r"""BDLF on MFNet (RGB-thermal pairs with 9-class semantic labels), the paper's segmentation setting.

  python -m adverse_vision.train --config configs/bdlf_mfnet.py:fusion --config.data.root=MFNet \
      --workdir runs/mfnet_fusion
  python -m adverse_vision.train --config configs/bdlf_mfnet.py --config.data.root=MFNet \
      --config.bdlf.fusion_from=runs/mfnet_fusion --workdir runs/mfnet_bdlf
  python -m adverse_vision.evaluate --workdir runs/mfnet_bdlf --split test

``data.root`` holds ``images/<id>.png`` (four channels: RGB and thermal),
``labels/<id>.png`` (class indices 0-8) and ``{train,val,test}.txt`` (1,569 pairs,
393 in the test list). The lower levels are the critic and a DeepLab-LargeFOV
segmenter on the fused colour image (mIoU over the 9 classes, unlabelled included,
as the MFNet benchmark reports). Optimisation as in ``configs/bdlf_m3fd.py``.

Variants: ``fusion``, ``visible``, ``infrared`` (baselines), ``gradnorm``, ``random``,
``bf16``.
"""

from adverse_vision import methods
from adverse_vision.config import degrade_spec
from configs.common import bdlf_official, bdlf_variants
from adverse_vision.data.fusion_pairs import MFNET_CLASSES


def get_config(arg: str = ""):
    c = methods.config("bdlf")
    c.data.name = "mfnet"
    c.data.root = ""  # set by flag
    c.data.train_split = "train"
    c.data.val_split = "test"
    c.data.degrade = degrade_spec("none")
    c.data.val_degrade = degrade_spec("none")
    c.image_size = 640
    c.batch_size = 8
    c.total_steps = 50_000
    c.eval_every = 5_000
    c.checkpoint_every = 1_000
    c.log_every = 100
    c.bdlf.branches = ("critic", "segmentation")
    c.bdlf.seg_classes = MFNET_CLASSES
    bdlf_official(c)
    return bdlf_variants(c, arg, {})
