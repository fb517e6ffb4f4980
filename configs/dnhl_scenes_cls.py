r"""DN-HL with a classifier on the embedded scenes (object crops of the 5 classes).

Three runs, one per stage, each started from the one before:

  python -m adverse_vision.train --config configs/dnhl_scenes_cls.py:tiny,high --workdir runs/dnhl_cls_high
  python -m adverse_vision.train --config configs/dnhl_scenes_cls.py:tiny,denoise --workdir runs/dnhl_cls_mse
  python -m adverse_vision.train --config configs/dnhl_scenes_cls.py:tiny,joint --workdir runs/dnhl_cls_joint \
      --config.model.init_from=runs/dnhl_cls_mse --config.dnhl.high_from=runs/dnhl_cls_high
  python -m adverse_vision.evaluate --workdir runs/dnhl_cls_joint

``high`` trains the classifier on clean crops; ``denoise`` the denoiser alone (MSE,
sigma 50 here); ``joint`` the denoiser through the frozen classifier,
L = CE + 0.0038 * MSE_255. ``evaluate`` on the joint run prints top-1 / top-5 of the
classifier on noisy crops, on the MSE-only denoiser's output and on the joint denoiser's
output, with both denoisers' PSNR and SSIM, at sigma 15, 25 and 50.

Variants (comma-separated tokens after the colon):
  high, denoise, joint   the stage (joint is the default).
  (none)   full-width denoiser (1.03 M parameters) and a VGG-16-layout classifier at
           half width, 96 px crops, batch 64, SGD with momentum 0.9.
  tiny     CPU run: 64 px crops, batch 32, denoiser and classifier at a quarter
           width with 256-wide fc layers, AdamW; a few minutes per stage.
  smoke    very narrow networks at 32 px, batch 8, 4 steps per stage, for tests.
  official the Caffe denoiser form (unpadded 5x5 / 3x3 convs, BGR 0-255 inside; its
           output, and so the classifier's input, is 6 px smaller).
  bf16     compute in bfloat16.
"""

from adverse_vision import methods
from configs.common import dnhl_base, dnhl_tiny, dnhl_variants

CLASSES = ("person", "bicycle", "car", "motorbike", "bus")
#: Train steps of each ``tiny`` stage.
TINY_STEPS = 600


def get_config(arg: str = ""):
    c = methods.config("dnhl")
    dnhl_base(c, "classification")
    c.data.name = "scenes_crops"
    c.data.class_names = CLASSES
    c.data.num_train = 20_000
    c.data.num_val = 500
    c.data.scene_size = 256
    c.data.augment.scale = (0.9, 1.1)
    c.image_size = 96
    c.batch_size = 64
    c.total_steps = 10_000
    c.eval_every = c.checkpoint_every = 1_000
    c.log_every = 100
    c.dnhl.high_width = 0.5
    c.dnhl.high_fc = 1024
    c.dnhl.sigmas = (50.0,)
    c.dnhl.val_sigma = 50.0

    def tiny(c):
        dnhl_tiny(c, image_size=64, batch_size=32, steps=TINY_STEPS, num_val=400)

    def smoke(c):
        tiny(c)
        c.image_size, c.batch_size = 32, 8
        c.total_steps = c.eval_every = c.checkpoint_every = 4
        c.log_every = 2
        c.data.num_train, c.data.num_val, c.data.scene_size = 64, 16, 64
        c.dnhl.denoiser_width, c.dnhl.high_width, c.dnhl.high_fc = 0.125, 0.0625, 32
        c.dnhl.eval_sigmas = (25.0, 50.0)

    return dnhl_variants(c, arg, {"tiny": tiny, "smoke": smoke},
                         sgd_lr={"high": 0.01, "denoise": 1e-3, "joint": 1e-4},
                         adamw_lr={"high": 4e-3, "denoise": 4e-3, "joint": 1e-3})
