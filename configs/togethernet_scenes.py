r"""TogetherNet (joint dehazing + detection) on the embedded foggy street scenes.

  python -m adverse_vision.train --config configs/togethernet_scenes.py:tiny --workdir runs/tn_tiny

The network sees the foggy image; the loss is 0.2 x detection (TogetherNet's focal
objectness variant) + 0.8 x MSE of the restored image against the clear scene.
Validation reports mAP@0.5 and the PSNR of the restored and of the foggy images
against the clear ones (``psnr_restored``, ``psnr_input``).

Variants (comma-separated tokens after the colon):
  (none)   TogetherNet-s, 320 px, batch 32, the paper's SGD recipe: an accelerator run.
  tiny     TogetherNet at YOLOX-tiny size, 160 px, batch 16, AdamW: trains on a 2-core
           laptop CPU in about 12 minutes.
  smoke    a very narrow TogetherNet at 96 px for tests.
  nano, s, m, l, x   choose the model size, keeping the rest.
  bf16     compute in bfloat16 (parameters, BatchNorm statistics and losses stay float32).
  clear    train and evaluate without fog (the restoration target is then the input).
  heldout  also evaluate on the validation scenes in patchy fog that training never sees
           (``evals.heldout_fog``, see ``configs/common.py:heldout_fog``).
  nodecoder  the DTFE and SC modules without the restoration decoder and its loss
           (``model.restore_weight=0``): separates the architecture from the
           restoration loss.

Starting from a pretrained detector, as the paper does (from COCO YOLOX): train YOLOX
on the clear scenes, then pass its workdir as ``--config.model.init_from``; the
backbone, neck and head load, the DTFE, SC blocks and decoder start fresh.
"""

from adverse_vision import methods
from configs.common import SIZES, heldout_fog, scenes_default, scenes_smoke, scenes_tiny, variants

#: Train steps of the ``tiny`` CPU run. One step (batch 16 at 160 px) measured 1.47 s
#: on an idle 2-core CPU (`bench`), so 400 steps, two evaluations and compilation take
#: about 12 minutes.
TINY_STEPS = 400


def get_config(arg: str = ""):
    c = methods.config("togethernet")
    scenes_default(c)
    c.model.loss = "togethernet"
    c.model.det_weight = 0.2
    c.model.restore_weight = 0.8
    c.model.restore_target = "signed"
    c.model.dropout = 0.1
    c.optimizer.ema_decay = 0.0  # the paper trains without EMA

    def tiny(c):
        scenes_tiny(c)
        c.total_steps = TINY_STEPS
        c.eval_every = c.checkpoint_every = TINY_STEPS // 2
        c.log_every = 10
        c.data.num_train = TINY_STEPS * c.batch_size

    def smoke(c):
        scenes_smoke(c)
        c.total_steps = 200
        c.eval_every = 200
        c.checkpoint_every = 100
        c.data.num_train = 1600

    def nodecoder(c):
        c.model.restore_weight = 0.0

    return variants(c, arg, {"tiny": tiny, "smoke": smoke, "heldout": heldout_fog,
                             "nodecoder": nodecoder}, after=SIZES)
