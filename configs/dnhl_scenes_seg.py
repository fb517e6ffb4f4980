r"""DN-HL with a segmenter on the embedded scenes (background + the 5 object classes).

Three runs, one per stage, each started from the one before:

  python -m adverse_vision.train --config configs/dnhl_scenes_seg.py:tiny,high --workdir runs/dnhl_seg_high
  python -m adverse_vision.train --config configs/dnhl_scenes_seg.py:tiny,denoise --workdir runs/dnhl_seg_mse
  python -m adverse_vision.train --config configs/dnhl_scenes_seg.py:tiny,joint --workdir runs/dnhl_seg_joint \
      --config.model.init_from=runs/dnhl_seg_mse --config.dnhl.high_from=runs/dnhl_seg_high
  python -m adverse_vision.evaluate --workdir runs/dnhl_seg_joint

``high`` trains a DeepLab-LargeFOV-layout segmenter on clean scenes; ``denoise`` the
denoiser alone (MSE, sigma 50 here); ``joint`` the denoiser through the frozen
segmenter, L = CE + 7.8e-4 * MSE_255. ``evaluate`` on the joint run prints the mIoU on
noisy scenes, on the MSE-only denoiser's output and on the joint denoiser's output,
with both denoisers' PSNR and SSIM, at sigma 15, 25 and 50.

Variants (comma-separated tokens after the colon):
  high, denoise, joint   the stage (joint is the default).
  (none)   full-width denoiser and a DeepLab-LargeFOV segmenter at half width, 192 px
           scenes, batch 32, SGD with momentum 0.9.
  tiny     CPU run: 96 px scenes, batch 16, denoiser and segmenter at a quarter
           width with 256-wide fc layers, AdamW; a few minutes per stage.
  official the Caffe denoiser form (unpadded 5x5 / 3x3 convs, BGR 0-255 inside; its
           output, and so the segmenter's input, is 6 px smaller).
  bf16     compute in bfloat16.
"""

from adverse_vision import methods
from configs.common import dnhl_base, dnhl_tiny, dnhl_variants

CLASSES = ("background", "person", "bicycle", "car", "motorbike", "bus")
#: Train steps of each ``tiny`` stage.
TINY_STEPS = 600


def get_config(arg: str = ""):
    c = methods.config("dnhl")
    dnhl_base(c, "segmentation")
    c.data.name = "scenes"
    c.data.class_names = CLASSES
    c.data.num_train = 20_000
    c.data.num_val = 300
    c.data.scene_size = 192
    c.data.augment.scale = (0.75, 1.25)
    c.image_size = 192
    c.batch_size = 32
    c.total_steps = 10_000
    c.eval_every = c.checkpoint_every = 1_000
    c.log_every = 100
    c.dnhl.high_width = 0.5
    c.dnhl.high_fc = 512
    c.dnhl.sigmas = (50.0,)
    c.dnhl.val_sigma = 50.0

    def tiny(c):
        dnhl_tiny(c, image_size=96, batch_size=16, steps=TINY_STEPS, num_val=96)
        c.data.scene_size = 96

    return dnhl_variants(c, arg, {"tiny": tiny},
                         sgd_lr={"high": 0.01, "denoise": 1e-3, "joint": 1e-3},
                         adamw_lr={"high": 4e-3, "denoise": 4e-3, "joint": 1e-3})
