"""Recipe pieces shared by the config files: each edits a config in place.

A config file starts from :func:`adverse_vision.methods.config` (the keys every run has
plus its method's), sets its recipe, and ends with :func:`variants` (its variant
tokens). The trainer validates the result, command-line overrides included, once.
"""

from __future__ import annotations

from typing import Any, Optional

import ml_collections

from adverse_vision.config import apply_variant_tokens, degrade_spec, eval_entry

MODEL_SIZES = ("nano", "tiny", "s", "m", "l", "x")


def _size(name: str):
    def recipe(cfg: ml_collections.ConfigDict) -> None:
        cfg.model.size = name
        cfg.model.depth = cfg.model.width = 0.0
    return recipe


#: Variant tokens of the configs with a YOLOX detector: its size.
SIZES = {name: _size(name) for name in MODEL_SIZES}


def variants(cfg: ml_collections.ConfigDict, arg: str, recipes: dict[str, Any],
             after: Optional[dict[str, Any]] = None) -> ml_collections.ConfigDict:
    """Applies a config file's variant tokens: ``recipes``, then ``after`` and ``bf16``,
    ``clear`` (see :func:`adverse_vision.config.apply_variant_tokens`). The config is
    validated once, with the command line's overrides, when a run is built from it
    (:func:`adverse_vision.methods.validate`)."""
    return apply_variant_tokens(cfg, arg, recipes, after)


def scenes_default(cfg: ml_collections.ConfigDict) -> None:
    """An accelerator-sized run on the embedded scenes: size "s", 320 px, batch 32."""
    cfg.model.size = "s"
    cfg.image_size = 320
    cfg.batch_size = 32
    cfg.total_steps = 20_000
    cfg.eval_every = 2_000
    cfg.checkpoint_every = 1_000
    cfg.log_every = 100
    cfg.data.name = "scenes"
    cfg.data.num_train = 20_000
    cfg.data.num_val = 500
    cfg.data.scene_size = 320


def heldout_fog(cfg: ml_collections.ConfigDict) -> None:
    """Adds the evaluation ``heldout_fog``: the validation scenes in patchy fog
    (``degrade.patchy_haze``: a density that varies over the image, a brighter, tinted
    airlight), which training never sees: the stand-in for real haze (RTTS)."""
    cfg.evals.heldout_fog = eval_entry(val_degrade=degrade_spec(
        "patchy_haze", A=(0.7, 1.0), beta=(0.05, 0.14), variation=(0.3, 0.8), cells=(2, 5),
        tint=0.05))


def cpu_optimizer(cfg: ml_collections.ConfigDict) -> None:
    """AdamW with the default schedule and weight-decay mask, for runs of minutes.

    AdamW reaches a usable detector far sooner than the SGD recipe at the step counts
    of a CPU run (measured on the foggy scenes: 0.23 vs 0.06 mAP after 400 steps).
    """
    cfg.optimizer.name = "adamw"
    cfg.optimizer.base_lr = 0.016  # x batch / 64
    cfg.optimizer.weight_decay = 0.05
    cfg.optimizer.ema_decay = 0.0


def scenes_tiny(cfg: ml_collections.ConfigDict) -> None:
    """A tiny-sized model on 160 px foggy scenes, batch 16, AdamW: a 2-core CPU run."""
    cfg.model.size = "tiny"
    cfg.image_size = 160
    cfg.batch_size = 16
    cfg.total_steps = 1000
    cfg.eval_every = 250
    cfg.checkpoint_every = 250
    cfg.log_every = 25
    cfg.data.num_train = 16_000
    cfg.data.num_val = 256
    cfg.data.scene_size = 160
    cfg.data.num_workers = 1
    cpu_optimizer(cfg)


def scenes_smoke(cfg: ml_collections.ConfigDict) -> None:
    """A very narrow model (depth 0.33, width 0.125) on 96 px scenes, batch 8: tests."""
    cfg.model.size = "nano"
    cfg.model.depth, cfg.model.width = 0.33, 0.125
    cfg.image_size = 96
    cfg.batch_size = 8
    cfg.total_steps = 400
    cfg.eval_every = 400
    cfg.checkpoint_every = 200
    cfg.log_every = 50
    cfg.data.num_train = 3200
    cfg.data.num_val = 64
    cfg.data.scene_size = 96
    cfg.data.num_workers = 0
    cfg.data.max_boxes = 16
    cpu_optimizer(cfg)


def dnhl_base(cfg: ml_collections.ConfigDict, task: str) -> None:
    """DN-HL on clean images (noise is added on the device): SGD with momentum 0.9,
    the official gradient clipping and reconstruction weight of ``task``."""
    cfg.dnhl.task = task
    cfg.dnhl.rec_weight = 0.0038 if task == "classification" else 7.8e-4  # the paper's w
    cfg.data.degrade = degrade_spec("none")
    cfg.data.val_degrade = degrade_spec("none")
    cfg.optimizer.name = "sgd"
    cfg.optimizer.momentum = 0.9
    cfg.optimizer.nesterov = False
    cfg.optimizer.ema_decay = 0.0
    cfg.optimizer.grad_clip = 100.0  # the official gradient clipping


def dnhl_tiny(cfg: ml_collections.ConfigDict, *, image_size: int, batch_size: int,
              steps: int, num_val: int) -> None:
    """A DN-HL stage of minutes on a CPU: narrow networks, AdamW, no worker processes."""
    cfg.optimizer.name = "adamw"
    cfg.optimizer.weight_decay = 1e-4
    cfg.optimizer.warmup_fraction = 0.05
    cfg.data.num_workers = 0
    cfg.image_size = image_size
    cfg.batch_size = batch_size
    cfg.total_steps = steps
    cfg.eval_every = cfg.checkpoint_every = steps // 2
    cfg.log_every = 50
    cfg.data.num_train = 4000
    cfg.data.num_val = num_val
    cfg.dnhl.denoiser_width = 0.25
    cfg.dnhl.high_width = 0.25
    cfg.dnhl.high_fc = 256
    cfg.dnhl.high_dropout = 0.3


def dnhl_variants(cfg: ml_collections.ConfigDict, arg: str, recipes: dict[str, Any],
                  sgd_lr: dict[str, float],
                  adamw_lr: Optional[dict[str, float]] = None) -> ml_collections.ConfigDict:
    """Applies a DN-HL config's variant tokens: ``recipes`` plus the stage tokens
    ``high``, ``denoise``, ``joint`` (the default) and ``official`` (the Caffe denoiser
    form). ``base_lr`` per stage comes from ``sgd_lr``, or ``adamw_lr`` when a recipe
    switched to AdamW."""
    def stage(name):
        def recipe(c):
            c.dnhl.stage = name
            c.optimizer.base_lr = sgd_lr[name]
        return recipe

    def official(c):
        c.dnhl.denoiser_form = "official"

    stages = {name: stage(name) for name in ("high", "denoise", "joint")}
    stages["joint"](cfg)
    recipes = {**stages, "official": official, **recipes}
    cfg = apply_variant_tokens(cfg, arg, recipes)
    if adamw_lr and cfg.optimizer.name == "adamw":
        cfg.optimizer.base_lr = adamw_lr[cfg.dnhl.stage]
    return cfg


def bdlf_official(cfg: ml_collections.ConfigDict) -> None:
    """BDLF's optimisation recipe: the critic and task networks on SGD (momentum 0.9,
    weight decay 1e-4, lr 2e-4 after a 1000-step linear warm-up), the fusion network
    on SGD lr 1e-4 with weight decay 1e-3 every 10 iterations, random softmax
    aggregation. (The official detector is FCOS trained at batch 2; the lr is kept
    for the project's detector at any batch size.)"""
    cfg.optimizer.name = "sgd"
    cfg.optimizer.momentum = 0.9
    cfg.optimizer.nesterov = False
    cfg.optimizer.weight_decay = 1e-4
    cfg.optimizer.base_lr = 2e-4 * 64 / cfg.batch_size
    cfg.optimizer.warmup_fraction = min(1.0, 1000 / cfg.total_steps)
    cfg.optimizer.warmup_start = 0.0
    cfg.optimizer.min_lr_ratio = 1.0  # constant after the warm-up
    cfg.optimizer.final_hold_fraction = 0.0
    cfg.optimizer.ema_decay = 0.0
    cfg.bdlf.fusion_optimizer = "sgd"
    cfg.bdlf.fusion_lr = 1e-4
    cfg.bdlf.fusion_weight_decay = 1e-3
    cfg.bdlf.upper_every = 10
    cfg.bdlf.aggregation = "random"


def bdlf_variants(cfg: ml_collections.ConfigDict, arg: str,
                  recipes: dict[str, Any]) -> ml_collections.ConfigDict:
    """Applies a BDLF config's variant tokens: ``recipes`` plus the baselines
    ``fusion`` (the fusion network on the fusion loss alone), ``visible`` and
    ``infrared`` (task networks on one source), the aggregation rules ``gradnorm``
    and ``random``, and ``seg`` (adds the segmentation branch)."""
    def mode(name):
        def recipe(c):
            c.bdlf.mode = name
        return recipe

    def rule(name):
        def recipe(c):
            c.bdlf.aggregation = name
        return recipe

    def seg(c):
        if "segmentation" not in tuple(c.bdlf.branches):
            c.bdlf.branches = tuple(c.bdlf.branches) + ("segmentation",)

    tokens = {"fusion": mode("fusion_loss"), "visible": mode("visible"),
              "infrared": mode("infrared"), "gradnorm": rule("gradnorm"),
              "random": rule("random"), "seg": seg}
    return variants(cfg, arg, {**recipes, **tokens}, after=SIZES)
