r"""Depth-guided self-supervised dehazing on real photographs: trained on a folder of
CLEAR images (no hazy twins needed), evaluated on RESIDE SOTS at native size.

  # The official RESIDE-6K weights as a workdir: its hazy-image depth net is the teacher.
  python -m adverse_vision.convert --from model_RESIDE6K.pth --method depth_dehaze \
      --out runs/sdg_official
  python -m adverse_vision.train --config configs/sdg_reside.py --workdir runs/sdg_reside \
      --config.data.root=/data/RESIDE-6K/train \
      --config.sdg.teacher_from=runs/sdg_official \
      --config.evals.sots.data.root=/data/SOTS/outdoor

Data: ``data.root/GT`` (``data.train_split``) holds the clear training photographs
(RESIDE-6K's ``train/GT``, ITS/OTS ``clear``, or any folder of clean outdoor
photographs); their hazy twins, when a dataset has them, are never read. The haze is
synthesised on the device from the teacher's depth of each clear image with A and beta
drawn per image. The evaluation ``sots`` reads real hazy / clear pairs (RESIDE SOTS
``hazy/`` + ``gt/`` or ``clear/``, outdoor names ``<id>_<A>_<beta>`` matched to
``<id>``; the release's ``lowq/`` + ``clear/``; O-HAZE, NH-HAZE, Dense-Haze) from
``evals.sots.data.root`` and scores each pair at its NATIVE size, with the released
protocol's scores (inputs resized to a multiple of 32, at most 1024 px) beside them
(``psnr_official``, ``ssim_official``); checkpoints are ranked by the native PSNR.

Teacher: clear photographs have no true depth, so ``sdg.teacher_from`` must name a
workdir with a depth net: a converted official model (above), a depth stage
(``configs/sdg_scenes.py:depth``, synthetic scenes only), or an earlier dehazing run.
The student's depth net starts from the teacher's. ``--config.model.init_from=X.pth``
starts the whole network (or, for a torchvision DenseNet-169, the encoder) from a
checkpoint as well.

Recipe. The release fixes the network, the test protocol and a cosine learning-rate
decay to zero (its ``adjust_learning_rate``); it publishes no training resolution,
optimiser or step count. The project's values: 256 px crops (random scale 0.5-1.5 of
the short side, flip; the colour of a clear photograph is left alone, since the haze's
airlight is the colour change the network must undo), batch 8, Adam (no weight decay)
at 1e-4, no warm-up, cosine to 0 over ``TOTAL_STEPS`` (100 epochs of RESIDE-6K's 6,000
training images at batch 8), drop-path 0.1. The loss weights are the method's
defaults (``adverse_vision.methods.depth_dehaze``); the VGG-16 perceptual term is
on with ImageNet weights (``--config.sdg.vgg_from=vgg16-397923af.pth``) and off
without them.

Variants (comma-separated tokens after the colon):
  noguide  the mix sees the hazy image (no depth guidance): the ablation.
  smoke    the narrow test network at 64 px, 2 steps (tests).
  vgg      perceptual weight 0.04 (needs ``sdg.vgg_from``).
  bf16     compute in bfloat16.
"""

import ml_collections

from adverse_vision import methods
from adverse_vision.config import degrade_spec, eval_entry
from configs.common import variants

#: 100 epochs of RESIDE-6K's 6,000 clear training images at batch 8.
TOTAL_STEPS = 75_000


def get_config(arg: str = ""):
    c = methods.config("depth_dehaze")
    c.image_size = 256
    c.batch_size = 8
    c.total_steps = TOTAL_STEPS
    c.eval_every = 7_500
    c.checkpoint_every = 750
    c.log_every = 100

    c.data.name = "image_folder"
    c.data.root = ""  # --config.data.root=/data/RESIDE-6K/train
    c.data.train_split = "GT"
    c.data.num_workers = 4
    c.data.degrade = degrade_spec("none")  # the haze is made on the device
    c.data.augment.flip = 0.5
    c.data.augment.scale = (0.5, 1.5)
    c.data.augment.jitter = 0.0
    c.data.augment.hsv = None

    c.evals = ml_collections.ConfigDict()
    c.evals.sots = eval_entry("test", name="dehaze_pairs", root="", val_split="",
                              layout="auto")  # --config.evals.sots.data.root=/data/SOTS/outdoor
    c.best_eval = "sots"

    c.sdg.stage = "dehaze"
    c.sdg.encoder = "densenet169"
    c.sdg.teacher_from = ""  # --config.sdg.teacher_from=runs/sdg_official

    c.optimizer.name = "adamw"
    c.optimizer.base_lr = 8e-4  # x batch / 64: 1e-4 at batch 8
    c.optimizer.weight_decay = 0.0
    c.optimizer.warmup_fraction = 0.0
    c.optimizer.min_lr_ratio = 0.0
    c.optimizer.final_hold_fraction = 0.0
    c.optimizer.ema_decay = 0.0

    def noguide(c):
        c.sdg.guidance = "none"

    def vgg(c):
        c.sdg.perceptual_weight = 0.04

    def smoke(c):
        c.sdg.encoder = "tiny"
        c.image_size = 64
        c.total_steps = c.eval_every = c.checkpoint_every = 2
        c.log_every = 1
        c.data.num_workers = 0

    return variants(c, arg, {"noguide": noguide, "vgg": vgg, "smoke": smoke})
