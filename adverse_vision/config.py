"""Shared configuration pieces and validation of a config before any work starts.

Every config file under ``configs/`` builds on :func:`base_config`, which holds every
key the trainer knows with its default. :func:`validate` rejects unknown or mistyped
keys (naming them, with the closest known key) and inconsistent values, before
anything is compiled.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable, Optional

import ml_collections

from adverse_vision import degrade as degrade_lib

METHODS = ("detection", "togethernet", "dnhl", "bdlf")
DATASETS = ("scenes", "voc", "coco", "tfds", "scenes_crops", "image_folder", "class_folder",
            "voc_seg", "m3fd", "mfnet", "fusion_folder")
BDLF_MODES = ("bilevel", "fusion_loss", "visible", "infrared")
BDLF_BRANCHES = ("critic", "detection", "segmentation")
MODEL_SIZES = ("nano", "tiny", "s", "m", "l", "x")
DTYPES = ("float32", "bfloat16")
LOSS_VARIANTS = ("yolox", "togethernet")


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key."""


def _degrade(name: str = "haze", **params: Any) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": name, **params})


def base_config() -> ml_collections.ConfigDict:
    """Every key a run may set, with its default."""
    c = ml_collections.ConfigDict()
    c.method = "detection"
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 16  # global, over all hosts and devices
    c.image_size = 320
    c.eval_every = 500
    c.checkpoint_every = 500
    c.log_every = 50
    c.keep_checkpoints = 3
    c.eval_batch_size = 0  # 0: same as batch_size

    c.model = ml_collections.ConfigDict()
    c.model.size = "s"
    c.model.depth = 0.0  # >0 overrides the size's depth multiplier
    c.model.width = 0.0  # >0 overrides the size's width multiplier
    c.model.act = "silu"
    c.model.dtype = "float32"  # compute dtype; parameters and losses stay float32
    c.model.loss = "yolox"  # or "togethernet"
    c.model.l1_from_fraction = 1.0  # stock YOLOX turns on L1 for the last epochs
    c.model.conf_threshold = 0.001
    c.model.nms_iou = 0.65
    c.model.max_detections = 100
    c.model.init_from = ""  # a workdir, checkpoint or official .pth to start from
    # TogetherNet: joint loss det_weight x detection + restore_weight x MSE(restored, clear)
    c.model.det_weight = 0.2
    c.model.restore_weight = 0.8
    c.model.restore_target = "signed"  # clear image in [-1, 1]; "imagenet": the official quirk
    c.model.dropout = 0.1  # transformer dropout in the DTFE

    # DN-HL: a denoiser trained through a frozen classifier or segmenter (method "dnhl")
    c.dnhl = ml_collections.ConfigDict()
    c.dnhl.stage = "joint"  # high | denoise | joint
    c.dnhl.task = "classification"  # classification | segmentation
    c.dnhl.denoiser_form = "default"  # default ([0,1] RGB, padded) | official (Caffe form)
    c.dnhl.denoiser_width = 1.0  # channel multiplier of the denoiser
    c.dnhl.high_width = 1.0  # channel multiplier of the classifier / segmenter convs
    c.dnhl.high_fc = 0  # fc features (0: 4096 for VGG-16, 1024 for DeepLab-LargeFOV)
    c.dnhl.high_head = "avg"  # classifier: avg (global pool, any size) | flatten (224 px)
    c.dnhl.high_dropout = 0.5
    c.dnhl.high_from = ""  # joint: workdir of the high-level stage (loaded frozen)
    c.dnhl.sigmas = (30.0,)  # training noise sigmas on the 0-255 scale, one per batch
    c.dnhl.eval_sigmas = (15.0, 25.0, 50.0)  # evaluate's comparison
    c.dnhl.val_sigma = 50.0  # noise of the validation runs during training
    c.dnhl.rec_weight = 0.0038  # w in L_high + w * MSE (MSE on the 0-255 scale)
    c.dnhl.clip_noisy = False  # clip noisy images to [0, 1]
    c.dnhl.tile = 140  # tiled inference for whole images of any size
    c.dnhl.tile_stride = 64
    c.dnhl.psnr_border = 3

    # BDLF: infrared-visible fusion trained as a bi-level problem (method "bdlf")
    c.bdlf = ml_collections.ConfigDict()
    c.bdlf.mode = "bilevel"  # bilevel | fusion_loss (theta on the fusion loss alone) | visible | infrared
    c.bdlf.branches = ("critic", "detection")  # lower levels; add "segmentation" with masks
    c.bdlf.aggregation = "random"  # random (softmax of N(0, 1) per hyper-step) | gradnorm | fixed
    c.bdlf.aggregation_weights = ()  # fixed: one weight per branch, in branch order
    c.bdlf.upper_every = 10  # the fusion network steps every this many iterations
    c.bdlf.upper_fraction = 0.1  # training samples held out for the upper level
    c.bdlf.hyper_eps = 1e-8  # relative: eps |grad_theta f|^2 is added to |grad_omega f|^2
    c.bdlf.fusion_width = 1.0  # channel multiplier of the fusion network
    c.bdlf.critic_width = 1.0
    c.bdlf.seg_classes = ("background", "person", "bicycle", "car", "motorbike", "bus")
    c.bdlf.seg_width = 1.0  # DeepLab-LargeFOV segmenter of the segmentation branch
    c.bdlf.seg_fc = 0  # fc6/fc7 features (0: 1024)
    c.bdlf.seg_dropout = 0.5
    c.bdlf.ssim_weight = 1.1  # fusion loss |u - M|_1 + w (1 - SSIM(u, M))
    c.bdlf.fusion_adv_weight = 0.5  # generator weight in the critic branch's upper loss
    c.bdlf.task_adv_weight = 0.01  # generator weight in the task branches' upper losses
    c.bdlf.minmax = "image"  # fused colour normalisation: image | batch (official) | none
    c.bdlf.fusion_optimizer = "sgd"  # sgd | adam, for the fusion network (theta)
    c.bdlf.fusion_lr = 1e-4
    c.bdlf.fusion_weight_decay = 1e-3
    c.bdlf.fusion_from = ""  # a "bdlf" workdir whose fusion network starts this run
    c.bdlf.eval_images = 0  # validation images scored by the fusion metrics (0: all)

    c.data = ml_collections.ConfigDict()
    c.data.name = "scenes"
    c.data.class_names = ("person", "bicycle", "car", "motorbike", "bus")
    c.data.seed = 0  # scenes only: which scenes are rendered (independent of the run seed)
    c.data.num_train = 4096  # scenes only
    c.data.num_val = 256  # scenes only
    c.data.scene_size = 256  # scenes only: rendered image side
    c.data.root = ""  # voc / coco image folders / tfds data_dir
    c.data.train_split = "trainval"
    c.data.val_split = "test"
    c.data.train_annotations = ""  # coco: annotation JSON files
    c.data.val_annotations = ""
    c.data.tfds_name = ""
    c.data.class_map = ml_collections.ConfigDict()  # dataset name -> config class name
    c.data.max_boxes = 50
    c.data.num_workers = 2
    c.data.degrade = _degrade("haze", A=(0.5, 0.5), beta=(0.05, 0.14))
    c.data.val_degrade = _degrade("haze", A=(0.5, 0.5), beta=(0.05, 0.14))
    c.data.augment = ml_collections.ConfigDict()
    c.data.augment.flip = 0.5
    c.data.augment.scale = (0.75, 1.25)
    c.data.augment.jitter = 0.2
    c.data.augment.hsv = (0.1, 0.7, 0.4)
    c.data.on_bad_box = "clip"  # clip | skip | error
    c.data.on_unknown_class = "skip"  # skip | error
    c.data.on_empty = "keep"  # keep | skip
    c.data.on_missing_image = "skip"  # skip | error
    c.data.on_bad_annotation = "skip"  # skip | error

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"
    c.optimizer.base_lr = 0.01  # per 64 images; scaled by batch_size / 64
    c.optimizer.momentum = 0.937
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.warmup_fraction = 0.03
    c.optimizer.warmup_start = 0.1  # warm-up starts at this fraction of the lr
    c.optimizer.min_lr_ratio = 0.01
    c.optimizer.final_hold_fraction = 0.15  # held at the minimum lr at the end
    c.optimizer.grad_clip = 0.0  # 0: off
    c.optimizer.ema_decay = 0.0  # 0: off; YOLOX uses 0.9998
    return c


def walk(cfg: ml_collections.ConfigDict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        yield path, value
        if isinstance(value, ml_collections.ConfigDict) and not is_free(path):
            yield from walk(value, path + ".")


def check_overrides(cfg: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
    """Raises ConfigError for the first ``--config.<key>=value`` override that ``cfg`` has
    no such key for. Settable are the schema's keys and the keys already inside the
    free groups (``data.degrade.beta``, a class map's entries); a degradation mixture (a
    tuple of specs) is set as a whole only."""
    known, mixtures = [], []
    for path, value in walk(cfg):
        known.append(path)
        if is_free(path) and isinstance(value, ml_collections.ConfigDict):
            known.extend(f"{path}.{key}" for key in value)
        elif is_free(path) and isinstance(value, tuple):
            mixtures.append(path)
    for key in keys:
        if key in known:
            continue
        mixture = next((m for m in mixtures if key.startswith(m + ".")), None)
        if mixture is not None:
            raise ConfigError(
                f"config key '{key}' in --config.{key}: '{mixture}' is a mixture of "
                f"{len(_get(cfg, mixture))} degradation specs in this config; its keys cannot "
                f"be overridden one by one (edit the config file's specs)")
        raise ConfigError(f"unknown config key '{key}' in --config.{key}{suggest(key, known)}")


# Sub-dicts whose keys are data, not schema: checked by their own rules.
_FREE = ("data.degrade", "data.val_degrade", "data.class_map")


def is_free(path: str) -> bool:
    """Whether ``path`` is a sub-dict whose keys are data (degradation specs, class maps)."""
    return path in _FREE


def suggest(path: str, known: Iterable[str]) -> str:
    """' (did you mean ...?)' for the closest known key, preferring siblings of ``path``."""
    known = list(known)
    parent, _, leaf = path.rpartition(".")
    siblings = [k for k in known if k.rpartition(".")[0] == parent]
    leaves = {k.rpartition(".")[2]: k for k in siblings}
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
    if not close:
        close = [name for name in leaves if leaf and leaf in name][:1]
    if close:
        return f" (did you mean '{leaves[close[0]]}'?)"
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_choice(cfg, path: str, choices: Iterable[str]) -> None:
    value = _get(cfg, path)
    if value not in choices:
        raise ConfigError(f"config key '{path}' is {value!r}; expected one of {tuple(choices)}")


def _get(cfg, path: str) -> Any:
    for part in path.split("."):
        cfg = cfg[part]
    return cfg


def degrade_spec(name: str = "haze", **params: Any) -> ml_collections.ConfigDict:
    """A degradation spec for ``data.degrade`` / ``data.val_degrade``."""
    return _degrade(name, **params)


def set_degrade_mixture(cfg: ml_collections.ConfigDict, key: str,
                        specs: Iterable[ml_collections.ConfigDict]) -> None:
    """Sets ``data.<key>`` (``degrade`` or ``val_degrade``) to a tuple of specs, one
    drawn per sample. (The key's default is one spec; a config dict does not let a
    value change type in place, so the key is replaced.)"""
    if key not in ("degrade", "val_degrade"):
        raise ConfigError(f"set_degrade_mixture: key must be 'degrade' or 'val_degrade', got {key!r}")
    del cfg.data[key]
    cfg.data[key] = tuple(specs)


def _check_degrade(cfg, path: str) -> None:
    value = _get(cfg, path)
    if isinstance(value, tuple):
        if not value:
            raise ConfigError(f"config key '{path}' is an empty tuple; give at least one spec")
        for i, spec in enumerate(value):
            if not isinstance(spec, (ml_collections.ConfigDict, dict)):
                raise ConfigError(f"config key '{path}[{i}]' must be a degradation spec, "
                                  f"got {type(spec).__name__}")
            _check_one_degrade(dict(spec), f"{path}[{i}]")
        return
    _check_one_degrade(dict(value), path)


def _check_one_degrade(spec: dict, path: str) -> None:
    name = spec.pop("name", None)
    if name not in degrade_lib.DEGRADATIONS:
        raise ConfigError(
            f"config key '{path}.name' is {name!r}; expected one of {degrade_lib.DEGRADATIONS}")
    # Depth comes from the data (scene depth or the VOC-FOG map), not from the config.
    allowed = set(degrade_lib.parameters(name)) - {"depth"}
    for key in spec:
        if key not in allowed:
            raise ConfigError(
                f"config key '{path}.{key}' is not a parameter of degradation '{name}'"
                f"{suggest(key, allowed)}; known: {sorted(allowed)}")


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every key and the values the trainer relies on; raises ConfigError."""
    reference = base_config()
    known = dict(walk(reference))
    for path, value in walk(cfg):
        if path not in known:
            raise ConfigError(f"unknown config key '{path}'{suggest(path, known)}")
        ref = known[path]
        if path in ("data.degrade", "data.val_degrade") and isinstance(value, tuple):
            continue  # a list of degradation specs, one picked per sample
        if isinstance(ref, ml_collections.ConfigDict) != isinstance(value, ml_collections.ConfigDict):
            raise ConfigError(f"config key '{path}' must be a {'group' if isinstance(ref, ml_collections.ConfigDict) else 'value'}")
    for path in ("seed", "total_steps", "batch_size", "image_size", "eval_every",
                 "checkpoint_every", "log_every", "model", "data", "optimizer"):
        if path not in cfg:
            raise ConfigError(f"config key '{path}' is missing")
    _check_choice(cfg, "method", METHODS)
    _check_choice(cfg, "data.name", DATASETS)
    _check_choice(cfg, "model.dtype", DTYPES)
    _check_choice(cfg, "model.loss", LOSS_VARIANTS)
    _check_choice(cfg, "optimizer.name", ("sgd", "adamw"))
    _check_choice(cfg, "model.restore_target", ("signed", "imagenet"))
    _check_choice(cfg, "model.size", MODEL_SIZES)
    for key in ("total_steps", "batch_size", "image_size", "eval_every", "checkpoint_every", "log_every"):
        if int(cfg[key]) <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {cfg[key]!r}")
    needs_stride = cfg.method in ("detection", "togethernet") or (
        cfg.method == "bdlf" and "detection" in tuple(cfg.bdlf.branches))
    if needs_stride and cfg.image_size % 32:
        raise ConfigError(f"config key 'image_size' must be a multiple of 32, got {cfg.image_size}")
    _check_choice(cfg, "bdlf.mode", BDLF_MODES)
    _check_choice(cfg, "bdlf.aggregation", ("random", "gradnorm", "fixed"))
    _check_choice(cfg, "bdlf.minmax", ("image", "batch", "none"))
    _check_choice(cfg, "bdlf.fusion_optimizer", ("sgd", "adam"))
    _check_choice(cfg, "dnhl.stage", ("high", "denoise", "joint"))
    _check_choice(cfg, "dnhl.task", ("classification", "segmentation"))
    _check_choice(cfg, "dnhl.denoiser_form", ("default", "official"))
    _check_choice(cfg, "dnhl.high_head", ("avg", "flatten"))
    for path in ("data.on_bad_box",):
        _check_choice(cfg, path, ("clip", "skip", "error"))
    _check_choice(cfg, "data.on_unknown_class", ("skip", "error"))
    _check_choice(cfg, "data.on_empty", ("keep", "skip"))
    _check_choice(cfg, "data.on_missing_image", ("skip", "error"))
    _check_choice(cfg, "data.on_bad_annotation", ("skip", "error"))
    _check_degrade(cfg, "data.degrade")
    _check_degrade(cfg, "data.val_degrade")
    _check_numbers(cfg)
    _check_method_keys(cfg, reference)
    return cfg

# (key, lowest, highest, whether the lowest is allowed) of the numbers a run relies on.
_RANGES = (
    ("optimizer.base_lr", 0.0, None, False),
    ("optimizer.momentum", 0.0, 1.0, True),
    ("optimizer.weight_decay", 0.0, None, True),
    ("optimizer.warmup_fraction", 0.0, 1.0, True),
    ("optimizer.warmup_start", 0.0, 1.0, True),
    ("optimizer.min_lr_ratio", 0.0, 1.0, True),
    ("optimizer.final_hold_fraction", 0.0, 1.0, True),
    ("optimizer.grad_clip", 0.0, None, True),
    ("optimizer.ema_decay", 0.0, 1.0, True),
    ("bdlf.fusion_lr", 0.0, None, False),
    ("bdlf.fusion_weight_decay", 0.0, None, True),
    ("bdlf.upper_fraction", 0.0, 1.0, False),
    ("bdlf.upper_every", 1, None, True),
    ("bdlf.hyper_eps", 0.0, None, True),
    ("data.max_boxes", 1, None, True),
    ("data.num_workers", 0, None, True),
    ("keep_checkpoints", 1, None, True),
    ("eval_batch_size", 0, None, True),
)


def _check_numbers(cfg: ml_collections.ConfigDict) -> None:
    """Every number of the config is finite, and those in ``_RANGES`` within range."""
    for path, value in walk(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{path}' is {value}; it must be a finite number")
    for path, low, high, low_ok in _RANGES:
        value = _get(cfg, path)
        too_low = value < low or (value == low and not low_ok)
        if too_low or (high is not None and value > high):
            bounds = (f"{'>=' if low_ok else '>'} {low}" if high is None
                      else f"in [{low}, {high}]" if low_ok else f"in ({low}, {high}]")
            raise ConfigError(f"config key '{path}' is {value!r}; it must be {bounds}")


# The config groups read by one method only, and keys of other groups a method ignores.
_METHOD_GROUPS = {"dnhl": "dnhl", "bdlf": "bdlf"}
_IGNORED_KEYS = {"bdlf": {"model.init_from": "start the fusion network from an earlier run "
                                             "with bdlf.fusion_from"}}


def _check_method_keys(cfg: ml_collections.ConfigDict,
                       reference: ml_collections.ConfigDict) -> None:
    """Refuses a key set away from its default when the run's method does not read it:
    a silently ignored key is a wrong result nobody sees."""
    for method, group in _METHOD_GROUPS.items():
        if cfg.method == method:
            continue
        for path, value in walk(cfg[group], group + "."):
            default = _get(reference, path)
            if not isinstance(value, ml_collections.ConfigDict) and value != default:
                raise ConfigError(f"config key '{path}' is set to {value!r}, but method "
                                  f"{cfg.method!r} does not read the '{group}' group")
    for path, hint in _IGNORED_KEYS.get(cfg.method, {}).items():
        if _get(cfg, path) != _get(reference, path):
            raise ConfigError(f"config key '{path}' is set, but method {cfg.method!r} does not "
                              f"read it; {hint}")


def apply_variant_tokens(cfg: ml_collections.ConfigDict, arg: str,
                         recipes: dict[str, Any]) -> ml_collections.ConfigDict:
    """Applies a config file's ``:variant`` argument, a comma-separated token list.

    A token is one of the file's ``recipes`` (a function editing the config), a model
    size, ``bf16`` (bfloat16 compute) or ``clear`` (no degradation). Recipes run first,
    so ``tiny,bf16`` or ``smoke,s`` compose.
    """
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    known = sorted(set(recipes) | set(MODEL_SIZES) | {"bf16", "clear"})
    for token in tokens:
        if token not in known:
            raise ConfigError(f"unknown config variant '{token}'{suggest(token, known)}; "
                              f"known: {known}")
    for token in tokens:
        if token in recipes:
            recipes[token](cfg)
    for token in tokens:
        if token in recipes:
            continue
        if token in MODEL_SIZES:
            cfg.model.size = token
            cfg.model.depth = cfg.model.width = 0.0
        elif token == "bf16":
            cfg.model.dtype = "bfloat16"
        elif token == "clear":
            cfg.data.degrade = _degrade("none")
            cfg.data.val_degrade = _degrade("none")
    return validate(cfg)


# ----------------------------------------------------------------------------
# Recipe pieces shared by the config files (each edits a config in place).


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
    cfg.method = "dnhl"
    cfg.dnhl.task = task
    cfg.dnhl.rec_weight = 0.0038 if task == "classification" else 7.8e-4  # the paper's w
    cfg.data.degrade = _degrade("none")
    cfg.data.val_degrade = _degrade("none")
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
    cfg.method = "bdlf"
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
    return apply_variant_tokens(cfg, arg, {**recipes, **tokens})
