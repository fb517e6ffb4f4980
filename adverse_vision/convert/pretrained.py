"""Pretrained weights into project train states and workdirs.

Two uses:

* **Starting a run from pretrained weights** (``model.init_from``):
  :func:`init_state_from` fills a fresh train state from an official checkpoint
  (YOLOX COCO weights in the Megvii or bubbliiiing key layout, a TogetherNet
  checkpoint; ``.pth``/``.pt``/``.npz``) or from a project run (a workdir, its
  ``checkpoints/`` folder or one ``checkpoints/<step>`` folder). Every tensor whose
  name and shape match a variable of the current model is loaded; the rest (for
  example the class head of a checkpoint with another class count) keeps its fresh
  initialisation. What was loaded and what was not is logged. The optimiser state is
  initialised again from the loaded parameters, and the EMA parameters (when the
  config uses EMA) start equal to them.

* **Turning an official checkpoint into a project workdir** (:func:`export_workdir`,
  the ``python -m adverse_vision.convert`` program): a ``config.json`` and a step-0
  checkpoint holding a complete train state, which ``evaluate`` and
  ``trainer.restore_for_eval`` load like a trained run. Here every tensor must fit:
  an unused checkpoint key, a model variable the checkpoint lacks or a shape that
  differs is an error naming them.

From a project run, the evaluation weights are taken (the EMA parameters when that
run kept them) from the best checkpoint by its validation metric, or the latest when
none was evaluated; a ``checkpoints/<step>`` folder picks that step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from adverse_vision import convert as convert_lib
from adverse_vision.convert.togethernet import (
    TOGETHERNET_RULES,
    YOLOX_RULES,
    convert_state_dict,
    flatten,
    infer_num_classes,
    map_key,
    unflatten,
)

log = logging.getLogger("adverse_vision.convert")

#: ``--method`` of the converter -> (config ``method``, key rules, default config file).
CONVERT_METHODS: dict[str, tuple[str, tuple, str]] = {
    "togethernet": ("togethernet", TOGETHERNET_RULES, "configs/togethernet_scenes.py"),
    "yolox": ("detection", YOLOX_RULES, "configs/yolox_scenes.py"),
}

#: The 80 COCO classes in the order of the official YOLOX releases' class ids.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)

_SHOW = 5  # names listed per category in the log


def _few(names: list[str], limit: int = _SHOW) -> str:
    if not names:
        return "-"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


@dataclasses.dataclass
class LoadReport:
    """What a pretrained load did.

    Attributes:
      source: the checkpoint file or run directory.
      loaded: model variables filled from it (``collection/path`` names).
      kept: model variables left at their initialisation.
      mismatched: ``(source name, model variable, source shape, model shape)`` of the
        tensors whose name matched but whose shape did not (source shapes in the
        source's own layout).
      unused: source tensors without a counterpart in the model.
      step: the step restored, for a project run.
    """

    source: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[tuple[str, str, tuple, tuple]] = dataclasses.field(default_factory=list)
    unused: list[str] = dataclasses.field(default_factory=list)
    step: Optional[int] = None

    def lines(self) -> list[str]:
        where = self.source if self.step is None else f"{self.source} (step {self.step})"
        total = len(self.loaded) + len(self.kept)
        shapes = [f"{src} {tuple(a)} vs {tuple(b)}" for src, _, a, b in self.mismatched]
        return [
            f"init_from {where}: loaded {len(self.loaded)} of {total} model variables",
            f"  loaded: {_few(self.loaded)}",
            f"  kept at initialisation ({len(self.kept)}): {_few(self.kept)}",
            f"  of which another shape in the checkpoint ({len(self.mismatched)}): "
            f"{_few(shapes)}",
            f"  checkpoint tensors without a counterpart ({len(self.unused)}): "
            f"{_few(self.unused)}",
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


# ---------------------------------------------------------------------------- matching


def _targets(variables: Mapping) -> dict[tuple, Any]:
    return {(coll,) + path: leaf for coll in variables
            for path, leaf in flatten(variables[coll]).items()}


def _name(path: tuple) -> str:
    return "/".join(path)


def match_official(state_dict: Mapping[str, np.ndarray], variables: Mapping, rules,
                   source: str) -> tuple[dict[tuple, np.ndarray], LoadReport]:
    """Maps official tensors onto ``variables`` (a flax variables tree of arrays or shape
    structs), keeping those whose converted shape matches.

    Returns ``({(collection, *path): array of the target dtype}, report)``. Two
    tensors mapping to one variable are an error.
    """
    targets = _targets(variables)
    report = LoadReport(source=source)
    filled: dict[tuple, np.ndarray] = {}
    origin: dict[tuple, str] = {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        where = map_key(key, value, variables, rules)
        if where == ():  # bookkeeping entries such as num_batches_tracked
            continue
        if where is None or (where[0],) + where[1] not in targets:
            report.unused.append(key)
            continue
        coll, path, array = where
        full = (coll,) + path
        target = targets[full]
        if full in origin:
            raise ValueError(f"{source}: {key!r} and {origin[full]!r} both map to {_name(full)}")
        origin[full] = key
        if tuple(array.shape) != tuple(target.shape):
            report.mismatched.append((key, _name(full), tuple(value.shape), tuple(target.shape)))
            continue
        filled[full] = np.asarray(array, dtype=target.dtype)
    _finish(report, targets, filled)
    return filled, report


def match_variables(source_vars: Mapping, variables: Mapping,
                    source: str) -> tuple[dict[tuple, np.ndarray], LoadReport]:
    """Like :func:`match_official` for a flax variables tree of a project run: the same
    path and shape."""
    targets = _targets(variables)
    report = LoadReport(source=source)
    filled: dict[tuple, np.ndarray] = {}
    for path, value in _targets(source_vars).items():
        if path not in targets:
            report.unused.append(_name(path))
            continue
        target = targets[path]
        if tuple(np.shape(value)) != tuple(target.shape):
            report.mismatched.append((_name(path), _name(path), tuple(np.shape(value)),
                                      tuple(target.shape)))
            continue
        filled[path] = np.asarray(value, dtype=target.dtype)
    _finish(report, targets, filled)
    return filled, report


def _finish(report: LoadReport, targets: Mapping[tuple, Any], filled: Mapping) -> None:
    report.loaded = [_name(p) for p in targets if p in filled]
    report.kept = [_name(p) for p in targets if p not in filled]
    report.unused.sort()


# ---------------------------------------------------------------------------- sources


def _run_location(path: str) -> tuple[str, Optional[int]]:
    """(workdir, step or None) of a workdir, its checkpoints folder or a step folder."""
    p = os.path.abspath(path)
    if os.path.isfile(os.path.join(p, "config.json")):
        return p, None
    parent = os.path.dirname(p)
    if os.path.basename(p) == "checkpoints" and os.path.isfile(os.path.join(parent, "config.json")):
        return parent, None
    grand = os.path.dirname(parent)
    if (os.path.basename(p).isdigit() and os.path.basename(parent) == "checkpoints"
            and os.path.isfile(os.path.join(grand, "config.json"))):
        return grand, int(os.path.basename(p))
    raise ValueError(f"{path}: a directory, but not a training workdir (no config.json), its "
                     "checkpoints/ folder or a checkpoints/<step> folder")


def restore_run_variables(path: str) -> tuple[dict, int]:
    """The evaluation variables (EMA parameters when kept) of a project run, as numpy
    arrays, and the step they come from."""
    from adverse_vision import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
    from adverse_vision import trainer as trainer_lib  # pylint: disable=import-outside-toplevel

    workdir, step = _run_location(path)
    cfg = trainer_lib.load_workdir_config(workdir)
    trainer = trainer_lib.Trainer(cfg)
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise ckpt_lib.CheckpointError(f"no checkpoint in {directory}")
    ckpt = ckpt_lib.Checkpointer(directory, best_metric=trainer.method.best_metric)
    try:
        if step is None:
            step = ckpt.best_step()
        if step is None:
            step = ckpt.latest_step()
        if step is None:
            raise ckpt_lib.CheckpointError(f"no checkpoint in {ckpt.directory}")
        if step not in ckpt.all_steps():
            raise ckpt_lib.CheckpointError(f"no checkpoint of step {step} in {ckpt.directory}")
        state, step = ckpt.restore(trainer.abstract_state(), step=step)
    finally:
        ckpt.close()
    import jax  # pylint: disable=import-outside-toplevel
    return jax.device_get(state.eval_variables()), step


def rules_for(cfg) -> tuple:
    """Key rules for the model of a config's method."""
    return TOGETHERNET_RULES if cfg.method == "togethernet" else YOLOX_RULES


def load_pretrained(path: str, variables: Mapping, cfg) -> tuple[dict, LoadReport]:
    """The variables of ``variables``' structure that ``path`` provides, by name and shape.

    Args:
      path: official checkpoint file or project run directory (see the module doc).
      variables: the current model's variables ``{"params": ..., "batch_stats": ...}``
        (arrays or ``jax.ShapeDtypeStruct``).
      cfg: the run's config (its method picks the key rules of official checkpoints).

    Returns:
      ``({(collection, *path): numpy array}, LoadReport)`` with at least one entry.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: unreadable checkpoint, or not one tensor matches the model.
    """
    spec = os.fspath(path)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"model.init_from: {spec} not found")
    if os.path.isdir(spec):
        source_vars, step = restore_run_variables(spec)
        filled, report = match_variables(source_vars, variables, spec)
        report.step = step
        n_source = len(_targets(source_vars))
    else:
        sd = convert_lib.read_state_dict(spec)
        filled, report = match_official(sd, variables, rules_for(cfg), spec)
        n_source = sum(not k.endswith("num_batches_tracked") for k in sd)
    if not filled:
        hint = ""
        if report.mismatched:
            src, dst, a, b = report.mismatched[0]
            hint = (f"; {len(report.mismatched)} matched by name with another shape, e.g. "
                    f"{src} {a} vs {dst} {b} (another model size?)")
        elif report.unused:
            hint = f"; its tensors are named like {_few(report.unused, 3)}"
        raise ValueError(f"{spec}: none of its {n_source} tensors matches a variable of the "
                         f"'{cfg.method}' model{hint}")
    return filled, report


# ---------------------------------------------------------------------------- states


def _assemble(tx, template, filled: Mapping[tuple, Any], base: Optional[Mapping[tuple, Any]],
              step) -> Any:
    """A TrainState shaped and sharded as ``template``: variables from ``filled`` (then
    ``base``), a fresh optimiser state, EMA parameters equal to the parameters."""
    import jax  # pylint: disable=import-outside-toplevel
    from adverse_vision.trainer import TrainState  # pylint: disable=import-outside-toplevel

    leaves = {p: filled[p] if p in filled else base[p]
              for p in _targets({"params": template.params, **template.model_state})}
    variables = unflatten(leaves)
    params = variables.pop("params")
    model_state = {k: variables.get(k, {}) for k in template.model_state}
    shardings = jax.tree.map(lambda x: x.sharding, template)
    params = jax.device_put(params, shardings.params)
    ema = None
    if template.ema_params is not None:  # separate buffers: the train step donates the state
        ema = jax.device_put(jax.tree.map(np.array, jax.device_get(params)), shardings.ema_params)
    state = TrainState(step=step, params=params,
                       model_state=jax.device_put(model_state, shardings.model_state),
                       opt_state=tx.init(params), ema_params=ema)
    return jax.device_put(state, shardings)


def init_state_from(state, path: str, cfg, report: Optional[list] = None):
    """``state`` with its variables taken from ``path`` where name and shape match.

    Args:
      state: a fresh ``trainer.TrainState`` (from ``Trainer.init_state``).
      path: official checkpoint file or project run directory (see the module doc).
      cfg: the run's config (method, optimiser).
      report: when a list is given, the :class:`LoadReport` is appended to it.

    Returns:
      The new state: loaded parameters and model state, the optimiser state
      initialised from them, EMA parameters (when used) equal to them, same step and
      shardings.
    """
    from adverse_vision import optim  # pylint: disable=import-outside-toplevel

    current = {"params": state.params, **state.model_state}
    filled, rep = load_pretrained(path, current, cfg)
    for line in rep.lines():
        log.info("%s", line)
    if len(rep.loaded) < len(rep.kept):
        log.warning("init_from %s: only %d of %d model variables found a tensor of the same "
                    "name and shape (another model size?)", path, len(rep.loaded),
                    len(rep.loaded) + len(rep.kept))
    if report is not None:
        report.append(rep)
    tx, _ = optim.make_optimizer(cfg)
    return _assemble(tx, state, filled, _targets(current), state.step)


# ---------------------------------------------------------------------------- workdirs


def _default_config_path(relative: str) -> str:
    if os.path.exists(relative):
        return relative
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidate = os.path.join(root, relative)
    if os.path.exists(candidate):
        return candidate
    raise FileNotFoundError(f"config file {relative} not found (run from the repository root "
                            "or pass --config)")


def infer_size(state_dict: Mapping[str, np.ndarray]) -> Optional[str]:
    """The YOLOX size name of an official checkpoint, from its stem width and the
    number of dark2 bottlenecks; None when it is not a standard size."""
    from adverse_vision.models.yolox import SIZES  # pylint: disable=import-outside-toplevel

    stem = state_dict.get("backbone.backbone.stem.conv.bn.weight")
    if stem is None:
        return None
    base = int(np.shape(stem)[0])
    prefix = "backbone.backbone.dark2.1.m."
    n = len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})
    depthwise = any(".dconv." in k for k in state_dict)
    for name, spec in SIZES.items():
        if (int(64 * spec.width) == base and max(round(spec.depth * 3), 1) == n
                and spec.depthwise == depthwise):
            return name
    return None


def _class_names(cfg, n_classes: Optional[int], class_names, source: str) -> tuple:
    if class_names:
        names = tuple(str(c).strip() for c in class_names)
        if n_classes is not None and len(names) != n_classes:
            raise ValueError(f"--class_names has {len(names)} names; the model has {n_classes} "
                             "classes")
        return names
    names = tuple(cfg.data.class_names)
    if n_classes is None or len(names) == n_classes:
        return names
    if n_classes == len(COCO_CLASSES):
        return COCO_CLASSES
    raise ValueError(f"{source}: the checkpoint has {n_classes} classes and the config "
                     f"{len(names)} class names {names}; pass --class_names with {n_classes} "
                     "names")


def export_workdir(checkpoint: str, method: str, out: str, *, num_classes: Optional[int] = None,
                   size: Optional[str] = None, config: Any = None,
                   class_names: Optional[list] = None) -> dict[str, Any]:
    """Writes an official checkpoint as a project workdir (``config.json`` + step 0).

    Args:
      checkpoint: ``.pth``/``.pt``/``.npz`` official checkpoint.
      method: ``"togethernet"`` or ``"yolox"`` (project method ``"detection"``).
      out: the workdir to write; it must not hold checkpoints yet.
      num_classes: expected class count (the checkpoint's class head must have it).
      size: model size; default: inferred from the checkpoint, else the config's.
      config: a ``ConfigDict`` or a ``path.py[:variant]`` spec; default the method's
        scenes config.
      class_names: names of the classes; default the config's when the count fits,
        the COCO names for an 80-class checkpoint.

    Returns:
      A summary: tensors loaded, parameter count, the files written.

    Raises:
      FileNotFoundError: missing checkpoint or config file.
      ValueError: unknown method, unreadable checkpoint, keys or shapes that do not
        fit the model, an ``out`` that already holds checkpoints.
    """
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import ml_collections  # pylint: disable=import-outside-toplevel
    from adverse_vision import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
    from adverse_vision import cli  # pylint: disable=import-outside-toplevel
    from adverse_vision import config as config_lib  # pylint: disable=import-outside-toplevel
    from adverse_vision import trainer as trainer_lib  # pylint: disable=import-outside-toplevel

    if method not in CONVERT_METHODS:
        raise ValueError(f"--method {method!r} is not known; choose one of "
                         f"{tuple(CONVERT_METHODS)}")
    cfg_method, rules, default_config = CONVERT_METHODS[method]
    if size is not None and size not in config_lib.MODEL_SIZES:
        raise ValueError(f"--size {size!r} is not a model size; choose one of "
                         f"{config_lib.MODEL_SIZES}")
    source = os.fspath(checkpoint)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source}: no such checkpoint file")
    ckpt_dir = os.path.join(out, "checkpoints")
    if os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir)):
        raise ValueError(f"{out} already holds checkpoints in {ckpt_dir}; choose a new --out")

    sd = convert_lib.read_state_dict(source)
    head_classes = infer_num_classes(sd)
    if num_classes is not None and head_classes is not None and num_classes != head_classes:
        raise ValueError(f"{source}: the class head (head.cls_preds.0.weight) has "
                         f"{head_classes} classes, --num_classes is {num_classes}")
    n_classes = num_classes if num_classes is not None else head_classes

    explicit_config = config is not None
    if config is None:
        config = _default_config_path(default_config)
    if isinstance(config, str):
        spec = config
        config = cli.load_config_file(config)
    else:
        spec = "the given config"
    cfg = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
    if cfg.method != cfg_method:
        raise ValueError(f"--method {method} needs a config with method '{cfg_method}'; "
                         f"{spec} has method '{cfg.method}'")
    guessed = infer_size(sd)
    chosen = size or (None if explicit_config else guessed)
    if chosen is not None:
        cfg.model.size = chosen
        cfg.model.depth = cfg.model.width = 0.0
    cfg.data.class_names = _class_names(cfg, n_classes, class_names, source)
    cfg = config_lib.validate(cfg)

    trainer = trainer_lib.Trainer(cfg)
    template = trainer.abstract_state()
    targets = {"params": template.params, **template.model_state}
    try:
        filled, _unused, _missing = convert_state_dict(sd, targets, rules, strict=True,
                                                       name=source)
    except ValueError as e:
        size_now = cfg.model.size if not (cfg.model.depth > 0 and cfg.model.width > 0) else (
            f"depth {cfg.model.depth}, width {cfg.model.width}")
        message = str(e).replace(" (pass strict=False to load the matching part only)", "")
        hint = f" (the model is size {size_now}"
        if guessed is not None and guessed != cfg.model.size:
            hint += f"; the checkpoint looks like size {guessed}: pass --size {guessed}"
        hint += "; to start training from the tensors that fit, use model.init_from)"
        raise ValueError(message + hint) from None
    state = _assemble(trainer.tx, template, filled, None, jnp.zeros((), jnp.int32))

    os.makedirs(out, exist_ok=True)
    ckpt = ckpt_lib.Checkpointer(ckpt_dir, keep=cfg.keep_checkpoints,
                                 best_metric=trainer.method.best_metric)
    try:
        ckpt.save(0, state)
    finally:
        ckpt.close()
    trainer_lib.save_config(cfg, out)
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))
    return {
        "checkpoint": source,
        "method": cfg.method,
        "size": cfg.model.size if not (cfg.model.depth > 0 and cfg.model.width > 0)
        else (cfg.model.depth, cfg.model.width),
        "num_classes": len(cfg.data.class_names),
        "tensors_loaded": len(filled),
        "parameters": n_params,
        "workdir": os.path.abspath(out),
        "config": os.path.join(os.path.abspath(out), "config.json"),
        "checkpoint_dir": os.path.join(ckpt.directory, "0"),
    }


__all__ = [
    "COCO_CLASSES",
    "CONVERT_METHODS",
    "LoadReport",
    "export_workdir",
    "infer_size",
    "init_state_from",
    "load_pretrained",
    "match_official",
    "match_variables",
    "restore_run_variables",
]
