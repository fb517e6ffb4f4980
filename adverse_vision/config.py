"""The keys every run has, and the validation of a config before any work starts.

:func:`base_config` holds what every run has (seed, steps, batch and image sizes,
cadences, the compute dtype, the data source, the optimiser, the evaluations); each
method adds its own keys (:mod:`adverse_vision.methods`), and
:func:`adverse_vision.methods.config` gives the whole set for one method.
:func:`validate` checks a config against that set once: unknown or mistyped keys
(named with the closest known key) and unusable values of the shared keys; the
method checks its own. Config files use the recipes of ``configs/common.py``.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable, Optional

import ml_collections

from adverse_vision import degrade as degrade_lib
from adverse_vision.data import scenes_conditions

DTYPES = ("float32", "bfloat16")
#: Keys of one evaluation entry (``evals.<name>``) and their defaults.
EVAL_ENTRY = {"split": "val", "every": 0, "data": {}}


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key."""


def _degrade(name: str = "haze", **params: Any) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": name, **params})


def base_config() -> ml_collections.ConfigDict:
    """The keys every run has, with their defaults (a method adds its own)."""
    c = ml_collections.ConfigDict()
    c.method = ""
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
    c.model.dtype = "float32"  # compute dtype; parameters and losses stay float32
    c.model.remat = False  # recompute backbone stages / dense blocks in the backward pass
    c.model.bn_sync = True  # BatchNorm statistics over the global batch; False: per device

    c.data = ml_collections.ConfigDict()
    c.data.name = "scenes"
    c.data.class_names = ("person", "bicycle", "car", "motorbike", "bus")
    c.data.seed = 0  # scenes only: which scenes are rendered (independent of the run seed)
    c.data.num_train = 4096  # scenes only
    c.data.num_val = 256  # scenes only
    c.data.scene_size = 256  # scenes only: rendered image side
    # scenes only: the infrared image, "simple" (every object hot over a cold
    # background, in any weather) or "lwir" (a thermal camera model; needs
    # conditions): see adverse_vision/data/scenes_conditions.py
    c.data.thermal = "simple"
    # scenes only: the conditions a sample is seen in, one drawn per sample from
    # day_clear, day_fog, night, night_fog; the visible image comes in its condition
    # (so data.degrade and data.val_degrade must be none); () keeps the daylight image
    c.data.conditions = ()
    c.data.root = ""  # dataset folder / tfds data_dir
    c.data.train_split = "trainval"
    c.data.val_split = "test"
    c.data.train_annotations = ""  # coco: annotation JSON files
    c.data.val_annotations = ""
    c.data.tfds_name = ""
    c.data.class_map = ml_collections.ConfigDict()  # dataset name -> config class name
    # voc, tfds, m3fd: train on objects flagged difficult (False: drop them from the
    # training labels, as some official pipelines do); evaluation always
    # keeps them, flagged, and ignores them
    c.data.train_difficult = True
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

    # Evaluations during training and by ``evaluate``: name -> entry (the log prefix).
    # An entry reads ``split`` of the dataset of ``data`` overridden by its own ``data``
    # keys (another root, no degradation, ...) every ``every`` steps (0: eval_every).
    c.evals = ml_collections.ConfigDict()
    c.evals.val = eval_entry()
    c.best_eval = "val"  # the entry whose method metric ranks checkpoints
    return c


def eval_entry(split: str = "val", every: int = 0, **data: Any) -> ml_collections.ConfigDict:
    """One ``evals`` entry: ``split`` of the run's dataset with ``data`` keys overridden."""
    return ml_collections.ConfigDict({"split": split, "every": every,
                                      "data": ml_collections.ConfigDict(data)})


def merge_defaults(cfg: ml_collections.ConfigDict, extra: ml_collections.ConfigDict,
                   prefix: str = "") -> None:
    """Adds the keys of ``extra`` (a method's defaults) to ``cfg``; a group present in
    both gets the new keys; a key present in both is an error in the method."""
    for key, value in extra.items():
        path = prefix + key
        if key not in cfg:
            with cfg.unlocked():
                cfg[key] = value.copy_and_resolve_references() if isinstance(
                    value, ml_collections.ConfigDict) else value
        elif isinstance(value, ml_collections.ConfigDict) and isinstance(
                cfg[key], ml_collections.ConfigDict):
            merge_defaults(cfg[key], value, path + ".")
        else:
            raise ValueError(f"method defaults redefine the config key '{path}'")


def walk(cfg: ml_collections.ConfigDict, prefix: str = "",
         into_free: bool = False) -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every key, groups included; the keys inside free groups
    (:func:`is_free`) only with ``into_free``."""
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        yield path, value
        if isinstance(value, ml_collections.ConfigDict) and (into_free or not is_free(path)):
            yield from walk(value, path + ".", into_free)


def check_overrides(cfg: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
    """Raises ConfigError for the first ``--config.<key>=value`` override that ``cfg`` has
    no such key for. Settable are the keys of ``cfg``, those inside free groups
    (``data.degrade.beta``, a class map's entries, ``evals.val.split``) included; a
    degradation mixture (a tuple of specs) is set as a whole only."""
    known, mixtures = [], []
    for path, value in walk(cfg, into_free=True):
        known.append(path)
        if isinstance(value, tuple) and path.endswith(("degrade", "val_degrade")):
            mixtures.append(path)
    for key in keys:
        if key in known:
            continue
        mixture = next((m for m in mixtures if key.startswith(m + ".")), None)
        if mixture is not None:
            raise ConfigError(
                f"config key '{key}' in --config.{key}: '{mixture}' is a mixture of "
                f"{len(get(cfg, mixture))} degradation specs in this config; its keys cannot "
                f"be overridden one by one (edit the config file's specs)")
        raise ConfigError(f"unknown config key '{key}' in --config.{key}{suggest(key, known)}")


# Groups whose keys are data, not schema: checked by their own rules.
_FREE = ("data.degrade", "data.val_degrade", "data.class_map", "evals")


def is_free(path: str) -> bool:
    """Whether ``path`` is a group whose keys are data (degradation specs, class maps,
    evaluation entries)."""
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


def check_choice(cfg, path: str, choices: Iterable[Any]) -> None:
    """Raises ConfigError unless the value of ``path`` is one of ``choices``."""
    value = get(cfg, path)
    if value not in tuple(choices):
        raise ConfigError(f"config key '{path}' is {value!r}; expected one of {tuple(choices)}")


def get(cfg, path: str) -> Any:
    """The value of a dotted key."""
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


def _check_degrade(value: Any, path: str) -> None:
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


def validate(cfg: ml_collections.ConfigDict,
             reference: Optional[ml_collections.ConfigDict] = None) -> ml_collections.ConfigDict:
    """Checks the keys of ``cfg`` against ``reference`` (the keys of its method; the
    shared keys alone when not given) and the values of the shared keys; raises
    ConfigError naming the key. The method's own values are its to check
    (:func:`adverse_vision.methods.validate` runs both)."""
    if reference is None:
        reference = base_config()
    known = dict(walk(reference))
    for path, value in walk(cfg):
        if path not in known:
            raise ConfigError(f"unknown config key '{path}'{suggest(path, known)}")
        ref = known[path]
        if path in ("data.degrade", "data.val_degrade") and isinstance(value, tuple):
            continue  # a list of degradation specs, one picked per sample
        if isinstance(ref, ml_collections.ConfigDict) != isinstance(value, ml_collections.ConfigDict):
            kind = "group" if isinstance(ref, ml_collections.ConfigDict) else "value"
            raise ConfigError(f"config key '{path}' must be a {kind}")
    for path in known:
        if "." not in path and path not in cfg:
            raise ConfigError(f"config key '{path}' is missing")
    check_choice(cfg, "model.dtype", DTYPES)
    check_choice(cfg, "optimizer.name", ("sgd", "adamw"))
    for key in ("total_steps", "batch_size", "image_size", "eval_every", "checkpoint_every", "log_every"):
        if int(cfg[key]) <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {cfg[key]!r}")
    check_choice(cfg, "data.on_bad_box", ("clip", "skip", "error"))
    check_choice(cfg, "data.on_unknown_class", ("skip", "error"))
    check_choice(cfg, "data.on_empty", ("keep", "skip"))
    check_choice(cfg, "data.on_missing_image", ("skip", "error"))
    check_choice(cfg, "data.on_bad_annotation", ("skip", "error"))
    _check_degrade(cfg.data.degrade, "data.degrade")
    _check_degrade(cfg.data.val_degrade, "data.val_degrade")
    _check_conditions(cfg.data, "data")
    for path, value in walk(cfg, into_free=True):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{path}' is {value}; it must be a finite number")
    check_ranges(cfg, _RANGES)
    _check_evals(cfg)
    return cfg


def _check_evals(cfg: ml_collections.ConfigDict) -> None:
    """Each ``evals`` entry has the keys of :data:`EVAL_ENTRY`, its ``data`` keys are
    keys of ``data``, and ``best_eval`` names an entry."""
    if not len(cfg.evals):
        raise ConfigError("config key 'evals' is empty: give at least one evaluation")
    for name, entry in cfg.evals.items():
        path = f"evals.{name}"
        if not isinstance(entry, ml_collections.ConfigDict):
            raise ConfigError(f"config key '{path}' must be a group with keys "
                              f"{tuple(EVAL_ENTRY)} (config.eval_entry(...))")
        for key in entry:
            if key not in EVAL_ENTRY:
                raise ConfigError(f"unknown config key '{path}.{key}'"
                                  f"{suggest(key, EVAL_ENTRY)}; an entry has {tuple(EVAL_ENTRY)}")
        for key in EVAL_ENTRY:
            if key not in entry:
                raise ConfigError(f"config key '{path}.{key}' is missing")
        if int(entry.every) < 0:
            raise ConfigError(f"config key '{path}.every' is {entry.every!r}; it must be >= 0 "
                              "(0: eval_every)")
        for key, value in entry.data.items():
            if key not in cfg.data:
                raise ConfigError(f"unknown config key '{path}.data.{key}'"
                                  f"{suggest(key, list(cfg.data))}; its keys override 'data'")
            if key in ("degrade", "val_degrade"):
                _check_degrade(value, f"{path}.data.{key}")
        if len(entry.data):
            merged = {k: v for k, v in cfg.data.items()}
            merged.update(entry.data.items())
            _check_conditions(merged, f"{path}.data")
    if cfg.best_eval not in cfg.evals:
        raise ConfigError(f"config key 'best_eval' is {cfg.best_eval!r}; expected one of the "
                          f"evaluations {tuple(cfg.evals)}")


def _check_conditions(data: Any, path: str) -> None:
    """``data.thermal`` and ``data.conditions`` (the embedded scenes' conditions)."""
    if data["thermal"] not in scenes_conditions.THERMAL_MODELS:
        raise ConfigError(f"config key '{path}.thermal' is {data['thermal']!r}; expected one "
                          f"of {scenes_conditions.THERMAL_MODELS}")
    conditions = data["conditions"]
    if isinstance(conditions, str) or not isinstance(conditions, (tuple, list)):
        raise ConfigError(f"config key '{path}.conditions' must be a tuple of names, got "
                          f"{conditions!r}")
    for name in conditions:
        if name not in scenes_conditions.CONDITIONS:
            raise ConfigError(f"config key '{path}.conditions' has {name!r}; expected names "
                              f"from {scenes_conditions.CONDITIONS}")
    if len(set(conditions)) != len(conditions):
        raise ConfigError(f"config key '{path}.conditions' repeats a name: {tuple(conditions)}")
    if data["thermal"] != "simple" and not conditions:
        raise ConfigError(f"config key '{path}.thermal' is {data['thermal']!r}, which needs "
                          f"'{path}.conditions' (the time of day and fog the infrared image is "
                          "rendered in)")
    if conditions:
        if data["name"] != "scenes":
            raise ConfigError(f"config key '{path}.conditions' is for the embedded scenes; "
                              f"'{path}.name' is {data['name']!r}")
        for key in ("degrade", "val_degrade"):
            specs = data[key] if isinstance(data[key], tuple) else (data[key],)
            if any(dict(spec).get("name") != "none" for spec in specs):
                raise ConfigError(
                    f"config key '{path}.{key}' must be none when '{path}.conditions' is set "
                    "(the conditions degrade the visible image themselves): "
                    "config.degrade_spec('none')")


#: (key, lowest, highest or None, whether the lowest is allowed) of the shared numbers.
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
    ("data.max_boxes", 1, None, True),
    ("data.num_workers", 0, None, True),
    ("keep_checkpoints", 1, None, True),
    ("eval_batch_size", 0, None, True),
)


def check_ranges(cfg: ml_collections.ConfigDict, ranges: Iterable[tuple]) -> None:
    """Raises ConfigError for the first ``(key, low, high, low allowed)`` of ``ranges``
    whose value lies outside."""
    for path, low, high, low_ok in ranges:
        value = get(cfg, path)
        too_low = value < low or (value == low and not low_ok)
        if too_low or (high is not None and value > high):
            bounds = (f"{'>=' if low_ok else '>'} {low}" if high is None
                      else f"in [{low}, {high}]" if low_ok else f"in ({low}, {high}]")
            raise ConfigError(f"config key '{path}' is {value!r}; it must be {bounds}")


def apply_variant_tokens(cfg: ml_collections.ConfigDict, arg: str, recipes: dict[str, Any],
                         after: Optional[dict[str, Any]] = None) -> ml_collections.ConfigDict:
    """Applies a config file's ``:variant`` argument, a comma-separated token list.

    A token is one of the file's ``recipes`` or ``after`` recipes (functions editing the
    config; e.g. a model size), ``bf16`` (bfloat16 compute) or ``clear`` (no
    degradation). ``recipes`` run first, then ``after`` and the built-in tokens, so
    ``tiny,bf16`` or ``smoke,s`` compose in any order.
    """
    after = dict(after or {})
    after.setdefault("bf16", _bf16)
    after.setdefault("clear", _clear)
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    known = sorted(set(recipes) | set(after))
    for token in tokens:
        if token not in known:
            raise ConfigError(f"unknown config variant '{token}'{suggest(token, known)}; "
                              f"known: {known}")
    for table in (recipes, after):
        for token in tokens:
            if token in table:
                table[token](cfg)
    return cfg


def _bf16(cfg: ml_collections.ConfigDict) -> None:
    cfg.model.dtype = "bfloat16"


def _clear(cfg: ml_collections.ConfigDict) -> None:
    """No degradation: replaces ``data.degrade`` and ``data.val_degrade`` whole (a
    mixture of specs included) and drops the scenes' conditions."""
    for key in ("degrade", "val_degrade"):
        del cfg.data[key]
        cfg.data[key] = _degrade("none")
    cfg.data.conditions = ()
