r"""DN-HL's segmentation recipe (the paper's PASCAL VOC 2012 setting), for a VOC2012
root (``JPEGImages/``, ``SegmentationClass/`` palette PNGs with 255 = void,
``ImageSets/Segmentation/{train,val}.txt``).

  python -m adverse_vision.train --config configs/dnhl_voc12_deeplab.py:high --config.data.root=VOC2012 --workdir runs/voc_high
  python -m adverse_vision.train --config configs/dnhl_voc12_deeplab.py:denoise --config.data.root=VOC2012 --workdir runs/voc_mse
  python -m adverse_vision.train --config configs/dnhl_voc12_deeplab.py:joint --config.data.root=VOC2012 \
      --config.model.init_from=runs/voc_mse --config.dnhl.high_from=runs/voc_high --workdir runs/voc_joint
  python -m adverse_vision.evaluate --workdir runs/voc_joint

Official settings: DeepLab-LargeFOV (dilated VGG-16, fc6 3x3 dilation 12 with 1024
channels, 21 classes, output stride 8); denoiser pre-training with sigma 30 on 40 px
crops, batch 64, SGD lr 1e-4, momentum 0.9, weight decay 5e-4, gradient clipping 100;
joint training through the frozen segmenter with L = CE + 7.8e-4 * MSE_255 and SGD lr
1e-3. Crops are 320 px (DeepLab's 321 rounded to the denoiser's multiple of 4). The
learning rates follow the project's warm-up / cosine schedule.
"""

from adverse_vision import methods
from configs.common import dnhl_base, dnhl_variants

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def get_config(arg: str = ""):
    c = methods.config("dnhl")
    dnhl_base(c, "segmentation")
    c.data.name = "voc_seg"
    c.data.root = ""  # set by flag
    c.data.train_split = "train"
    c.data.val_split = "val"
    c.data.class_names = VOC_CLASSES
    c.data.num_workers = 8
    c.data.augment.scale = (0.5, 1.5)
    c.image_size = 320
    c.batch_size = 20
    c.eval_batch_size = 8
    c.total_steps = 20_000
    c.eval_every = c.checkpoint_every = 2_000
    c.log_every = 100
    c.dnhl.high_width = 1.0
    c.dnhl.high_fc = 1024
    c.dnhl.sigmas = (30.0,)
    c.dnhl.val_sigma = 30.0
    c.optimizer.weight_decay = 5e-4

    def denoise(c):  # the official pre-training: 40 px crops, batch 64
        c.dnhl.stage = "denoise"
        c.optimizer.base_lr = 1e-4
        c.image_size = 40
        c.batch_size = 64

    # optimizer.base_lr is per 64 images: 3.2e-3 gives the official 1e-3 at batch 20
    return dnhl_variants(c, arg, {"denoise": denoise},
                         sgd_lr={"high": 3.2e-3, "denoise": 1e-4, "joint": 3.2e-3})
