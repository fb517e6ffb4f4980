r"""YOLOX on the embedded foggy street scenes (no files needed).

  python -m adverse_vision.train --config configs/yolox_scenes.py:tiny --workdir runs/yolox_tiny

Variants (comma-separated tokens after the colon):
  (none)   YOLOX-s, 320 px, batch 32: an accelerator-sized run.
  tiny     YOLOX-tiny, 160 px, batch 16: trains on a 2-core laptop CPU in about 15 minutes.
  smoke    a very narrow YOLOX at 96 px for tests (a minute on a CPU).
  nano, s, m, l, x   choose the model size, keeping the rest.
  bf16     compute in bfloat16 (parameters and losses stay float32).
  clear    train and evaluate without fog.
  heldout  also evaluate on the validation scenes in patchy fog that training never sees
           (``evals.heldout_fog``, see ``configs/common.py:heldout_fog``).
"""

from adverse_vision import methods
from configs.common import SIZES, heldout_fog, scenes_default, scenes_smoke, scenes_tiny, variants


def get_config(arg: str = ""):
    c = methods.config("detection")
    scenes_default(c)
    c.model.loss = "yolox"
    c.optimizer.ema_decay = 0.9998

    return variants(c, arg, {"tiny": scenes_tiny, "smoke": scenes_smoke, "heldout": heldout_fog},
                    after=SIZES)
