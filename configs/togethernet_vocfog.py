r"""TogetherNet on VOC-FOG: the paper's recipe, with the fog synthesised on the fly.

  python -m adverse_vision.train --config configs/togethernet_vocfog.py \
      --config.data.root=/data/VOCdevkit/VOC2007 --workdir runs/tn_vocfog

Data: a VOC-layout folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``)
given by ``--config.data.root``, the 5 classes person, bicycle, car, motorbike, bus
(other VOC classes are dropped), trained on the image set ``train`` and validated on
``val`` (the official code splits VOC 9:1 into these two lists; change them with
``--config.data.train_split=trainval --config.data.val_split=test``). Each clear
image is fogged when it is loaded, by the VOC-FOG recipe: the atmospheric
scattering model with A = 0.5, beta drawn from [0.05, 0.14] and the centre-distance
depth (the images have no depth map); validation fog is the same in every
evaluation. The clear image is the restoration target. As in the official pipeline
(its ``voc_annotation.py``), objects flagged difficult are left out of the training
labels (``data.train_difficult=False``); evaluation keeps them, ignored by the mAP.

Recipe (the official one, at 640 px and batch 8): SGD, Nesterov momentum 0.937,
weight decay 5e-4 on kernels, lr 0.01 x batch / 64, 3 % quadratic warm-up, cosine to
0.01 x lr, the last 15 % held (3 / 100 and 15 / 100 epochs); 100 epochs of the 9,578
VOC-FOG training images = ``TOTAL_STEPS`` steps at batch 8 (scale ``total_steps``
with ``batch_size``); no EMA; loss 0.2 x detection (focal objectness) + 0.8 x MSE.
The official augmentation: flip, random scale 0.25-2 with aspect jitter 0.3, HSV.

Variants (comma-separated tokens after the colon):
  rtts     a second evaluation, ``rtts``, on RTTS (4,322 real hazy images in VOC
           layout, test only; Foggy Driving in VOC layout the same way): the class
           map ``{"motorcycle": "motorbike"}``, the image set ``test`` and no added
           fog (the images are hazy already, so there is no clear reference and no
           PSNR); give its folder with ``--config.evals.rtts.data.root=/data/RTTS``.
           It is logged as ``rtts/mAP`` beside ``val/mAP``; checkpoints are still
           ranked by ``val`` (``--config.best_eval=rtts`` to change that).
  nano, tiny, s, m, l, x   choose the model size (default s).
  bf16     compute in bfloat16 (parameters, BatchNorm statistics and losses float32).
  clear    train and evaluate without fog.

Flags: any key can be overridden with ``--config.key=value``, except whole
dictionaries: ``data.class_map`` cannot be given on the command line (its keys are
data, not config keys), hence the ``rtts`` token. ``python -m adverse_vision.evaluate
--workdir runs/tn_vocfog`` scores every evaluation of the saved config;
``--eval rtts`` one of them.
"""

from adverse_vision import methods
from adverse_vision.config import eval_entry
from configs.common import SIZES, variants

CLASS_NAMES = ("person", "bicycle", "car", "motorbike", "bus")
#: VOC-FOG training images (VOC 2007 + 2012 trainval images with one of the 5 classes).
TRAIN_IMAGES = 9578
EPOCHS = 100
BATCH_SIZE = 8
STEPS_PER_EPOCH = TRAIN_IMAGES / BATCH_SIZE
TOTAL_STEPS = int(round(EPOCHS * STEPS_PER_EPOCH))  # 119,725


def _haze():
    return {"name": "haze", "A": (0.5, 0.5), "beta": (0.05, 0.14)}


def get_config(arg: str = ""):
    c = methods.config("togethernet")
    c.model.size = "s"
    c.model.loss = "togethernet"
    c.model.det_weight = 0.2
    c.model.restore_weight = 0.8
    c.model.restore_target = "signed"
    c.model.dropout = 0.1
    c.model.conf_threshold = 0.001
    c.model.nms_iou = 0.65
    c.image_size = 640
    c.batch_size = BATCH_SIZE
    c.total_steps = TOTAL_STEPS
    c.eval_every = int(round(5 * STEPS_PER_EPOCH))
    c.checkpoint_every = int(round(STEPS_PER_EPOCH))
    c.log_every = 100

    c.data.name = "voc"
    c.data.root = ""  # --config.data.root=/path/VOCdevkit/VOC2007
    c.data.class_names = CLASS_NAMES
    c.data.train_split = "train"
    c.data.val_split = "val"
    c.data.max_boxes = 50
    c.data.train_difficult = False  # the official training labels leave them out
    c.data.num_workers = 4
    c.data.degrade = _haze()
    c.data.val_degrade = _haze()
    c.data.augment.flip = 0.5
    c.data.augment.scale = (0.25, 2.0)
    c.data.augment.jitter = 0.3
    c.data.augment.hsv = (0.1, 0.7, 0.4)

    c.optimizer.name = "sgd"
    c.optimizer.base_lr = 0.01  # x batch / 64
    c.optimizer.momentum = 0.937
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.warmup_fraction = 0.03
    c.optimizer.warmup_start = 0.1
    c.optimizer.min_lr_ratio = 0.01
    c.optimizer.final_hold_fraction = 0.15
    c.optimizer.ema_decay = 0.0

    def real_haze_test_set(c):
        # A second evaluation on real hazy images: the class names of RTTS / Foggy
        # Driving, their image set "test" and no added fog; its folder is given with
        # --config.evals.rtts.data.root.
        c.evals.rtts = eval_entry("test", root="", val_split="test",
                                  val_degrade={"name": "none"},
                                  class_map={"motorcycle": "motorbike"})

    return variants(c, arg, {"rtts": real_haze_test_set}, after=SIZES)
