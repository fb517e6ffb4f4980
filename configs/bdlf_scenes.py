r"""BDLF (bi-level infrared-visible fusion) on the embedded street scenes at night and in fog.

  python -m adverse_vision.train --config configs/bdlf_scenes.py:tiny,fusion --workdir runs/fusion_tiny
  python -m adverse_vision.train --config configs/bdlf_scenes.py:tiny --workdir runs/bdlf_tiny \
      --config.bdlf.fusion_from=runs/fusion_tiny
  python -m adverse_vision.evaluate --workdir runs/bdlf_tiny

Each scene comes with its thermal rendering (the infrared image, which fog and
darkness do not touch) and its visible image degraded either by low light or by fog
(one per sample). The fusion network fuses the infrared image with the visible
luminance; YOLOX detects the five scene classes on the fused colour image; a 1x1
critic scores the fused luminance against the saliency-weighted target. The fusion
network steps on the aggregated first-order hypergradient every ``bdlf.upper_every``
iterations, on a batch from the held-out tenth of the training scenes. As in the
official recipe, the fusion network starts from a run of the ``fusion`` variant
(``bdlf.fusion_from``); without it, the bi-level schedule starts from scratch.

Variants (comma-separated tokens after the colon):
  (none)    fusion network at full width, YOLOX-s at 320 px, batch 16: an accelerator run.
  tiny      quarter-width fusion network, half-width critic, YOLOX-tiny at 160 px,
            batch 8, AdamW: a 2-core CPU run.
  smoke     very narrow networks at 64 px for tests.
  fusion    baseline: the fusion network trained on the fusion loss alone (no critic,
            no hypergradient), the detector on its output.
  visible, infrared   baselines: the detector on one source, no fusion.
  gradnorm, random    the aggregation rule of the branch hypergradients.
  seg       adds a DeepLab-LargeFOV segmentation branch on the scenes' masks.
  official  BDLF's optimisation recipe (SGD for every network, see
            ``configs/common.py:bdlf_official``).
  lwir      the thermal camera model (``data.thermal=lwir``) and four conditions,
            one per sample: day clear, day fog, night (street lamps), night fog
            (``adverse_vision/data/scenes_conditions.py``), in place of the simple
            thermal rendering under a night-or-fog visible image; evaluated on the
            mixed validation scenes (``val``) and on each condition alone
            (``evals.day_clear`` ... ``evals.night_fog``).
  nano, s, m, l, x, bf16, clear   as in every config.
"""

from adverse_vision import methods
from adverse_vision.config import degrade_spec, eval_entry, set_degrade_mixture
from adverse_vision.data.scenes_conditions import CONDITIONS
from configs.common import bdlf_official, bdlf_variants, cpu_optimizer, scenes_default

#: Train steps of the ``tiny`` CPU run.
TINY_STEPS = 400


def night_and_fog():
    """Low light (gamma 2-3.5, gain 0.2-0.5, sensor noise) or fog (beta 0.08-0.16)."""
    return (degrade_spec("low_light"), degrade_spec("haze", A=(0.6, 0.9), beta=(0.08, 0.16)))


def get_config(arg: str = ""):
    c = methods.config("bdlf")
    scenes_default(c)
    c.batch_size = 16
    set_degrade_mixture(c, "degrade", night_and_fog())
    set_degrade_mixture(c, "val_degrade", night_and_fog())
    c.bdlf.branches = ("critic", "detection")
    c.bdlf.fusion_optimizer = "adam"  # from scratch (the official run starts from a pretrained fusion net)
    c.bdlf.fusion_lr = 1e-4
    c.bdlf.fusion_weight_decay = 0.0
    c.bdlf.upper_every = 10

    def tiny(c):
        c.model.size = "tiny"
        c.image_size = 160
        c.batch_size = 8
        c.total_steps = TINY_STEPS
        c.eval_every = c.checkpoint_every = TINY_STEPS // 2
        c.log_every = 20
        c.data.num_train = 4000
        c.data.num_val = 128
        c.data.scene_size = 160
        c.data.num_workers = 0
        cpu_optimizer(c)
        # A quarter-width fusion network: it runs at full resolution, where its
        # narrow convolutions dominate a CPU step.
        c.bdlf.fusion_width = 0.25
        c.bdlf.critic_width = 0.5
        c.bdlf.seg_width = 0.25
        c.bdlf.seg_fc = 256
        c.bdlf.fusion_lr = 1e-3
        c.bdlf.upper_every = 5

    def smoke(c):
        c.model.size = "nano"
        c.model.depth, c.model.width = 0.33, 0.125
        c.image_size = 64
        c.batch_size = 8
        c.total_steps = 4
        c.eval_every = 4
        c.checkpoint_every = 2
        c.log_every = 2
        c.data.num_train = 64
        c.data.num_val = 16
        c.data.scene_size = 64
        c.data.num_workers = 0
        c.data.max_boxes = 8
        cpu_optimizer(c)
        c.bdlf.fusion_width = 0.125
        c.bdlf.critic_width = 0.125
        c.bdlf.seg_width = 0.0625
        c.bdlf.seg_fc = 32
        c.bdlf.upper_every = 2

    def lwir(c):
        c.data.thermal = "lwir"
        c.data.conditions = CONDITIONS
        set_degrade_mixture(c, "degrade", (degrade_spec("none"),))
        set_degrade_mixture(c, "val_degrade", (degrade_spec("none"),))
        for condition in CONDITIONS:
            c.evals[condition] = eval_entry(conditions=(condition,))

    return bdlf_variants(c, arg, {"tiny": tiny, "smoke": smoke, "official": bdlf_official,
                                  "lwir": lwir})
