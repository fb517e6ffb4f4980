r"""DN-HL's classification recipe (the paper's ImageNet setting), for an ImageNet-style
folder: ``ROOT/train/<class>/*.JPEG`` and ``ROOT/val/<class>/*.JPEG`` (one subfolder per
class; the classes are the sorted subfolder names unless ``data.class_names`` is set).

  python -m adverse_vision.train --config configs/dnhl_imagenet_vgg16.py:high --config.data.root=ROOT --workdir runs/in_high
  python -m adverse_vision.train --config configs/dnhl_imagenet_vgg16.py:denoise --config.data.root=ROOT --workdir runs/in_mse
  python -m adverse_vision.train --config configs/dnhl_imagenet_vgg16.py:joint --config.data.root=ROOT \
      --config.model.init_from=runs/in_mse --config.dnhl.high_from=runs/in_high --workdir runs/in_joint
  python -m adverse_vision.evaluate --workdir runs/in_joint

Official settings: VGG-16 (224 px input, flattened 7x7 map, 4096-wide fc layers, 1000
classes); denoiser pre-training with sigma 30 on 40 px crops, batch 64, SGD lr 1e-4,
momentum 0.9, weight decay 5e-4, gradient clipping 100; joint training through the
frozen VGG-16 with L = CE + 0.0038 * MSE_255 and SGD lr 1e-5. The learning rates follow
the project's warm-up / cosine schedule (``optimizer.*``) rather than Caffe's fixed rate.
The ``high`` stage trains VGG-16 from scratch (days on accelerators); with weights at
hand, convert them into a ``high`` workdir instead. The denoiser is the project form by
default (``:official`` for the Caffe form, whose output is 6 px smaller, so the
classifier then needs ``dnhl.high_head=avg``).
"""

from adverse_vision import methods
from configs.common import dnhl_base, dnhl_variants


def get_config(arg: str = ""):
    c = methods.config("dnhl")
    dnhl_base(c, "classification")
    c.data.name = "class_folder"
    c.data.root = ""  # set by flag
    c.data.train_split = "train"
    c.data.val_split = "val"
    c.data.class_names = ()  # (): the sorted subfolder names of ROOT/train
    c.data.num_workers = 8
    c.data.augment.scale = (0.875, 1.143)
    c.image_size = 224
    c.batch_size = 64
    c.total_steps = 100_000
    c.eval_every = c.checkpoint_every = 5_000
    c.log_every = 100
    c.dnhl.high_width = 1.0
    c.dnhl.high_fc = 4096
    c.dnhl.high_head = "flatten"
    c.dnhl.sigmas = (30.0,)
    c.dnhl.val_sigma = 30.0
    c.optimizer.weight_decay = 5e-4

    def denoise(c):  # the official pre-training works on 40 px crops
        c.dnhl.stage = "denoise"
        c.optimizer.base_lr = 1e-4
        c.image_size = 40

    def official(c):
        c.dnhl.denoiser_form = "official"
        c.dnhl.high_head = "avg"

    return dnhl_variants(c, arg, {"denoise": denoise, "official": official},
                         sgd_lr={"high": 0.01, "denoise": 1e-4, "joint": 1e-5})
