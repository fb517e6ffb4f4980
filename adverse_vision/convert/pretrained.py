"""Pretrained weights into project train states and workdirs.

Two uses:

* **Starting a run from pretrained weights** (``model.init_from``, for methods that
  declare ``init_rules``): :func:`load_into` gives the variables of a fresh train
  state with every tensor of an official checkpoint (``.pth``/``.pt``/``.npz``, its
  keys mapped by the method's rules) or of a project run (a workdir, its
  ``checkpoints/`` folder or one ``checkpoints/<step>`` folder) whose name and shape
  match a variable of the current model; the rest (for example the class head of a
  checkpoint with another class count) keeps its fresh initialisation. What was
  loaded and what was not is logged. The trainer then starts from those variables
  with a fresh optimiser state and, when the config uses EMA, EMA parameters equal to
  them (``Trainer.start_state``).

* **Turning an official checkpoint into a project workdir** (:func:`export_workdir`,
  the ``python -m adverse_vision.convert`` program): a ``config.json`` and a step-0
  checkpoint holding a complete train state, which ``evaluate`` and
  ``trainer.restore_for_eval`` load like a trained run. The network's converter,
  declared by the method that reads its weights (``Method.converters``), gives the
  key rules and the default config. Here every tensor must fit: an unused checkpoint
  key, a model variable the checkpoint lacks or a shape that differs is an error
  naming them.

From a project run, the evaluation weights are taken (the EMA parameters when that
run kept them) from the best checkpoint by its validation metric, or the latest when
none was evaluated; a ``checkpoints/<step>`` folder picks that step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from adverse_vision import convert as convert_lib
from adverse_vision import methods as methods_lib
from adverse_vision import workdir as workdir_lib
from adverse_vision.convert.keys import (
    convert_state_dict,
    flatten,
    infer_num_classes,
    map_key,
    unflatten,
)

log = logging.getLogger("adverse_vision.convert")

#: The 80 COCO classes in the order of the class ids of official COCO releases.
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
    workdir, step = _run_location(path)
    _, variables, step = workdir_lib.restore_variables(workdir, "best" if step is None else step)
    return variables, step


def load_pretrained(path: str, variables: Mapping, rules: tuple,
                    method: str = "") -> tuple[dict, LoadReport]:
    """The variables of ``variables``' structure that ``path`` provides, by name and shape.

    Args:
      path: official checkpoint file or project run directory (see the module doc).
      variables: the current model's variables ``{"params": ..., "batch_stats": ...}``
        (arrays or ``jax.ShapeDtypeStruct``).
      rules: the key rules of an official checkpoint (the run's method's
        ``init_rules``); unused for a project run.
      method: the run's method, named in the error when nothing matches.

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
        filled, report = match_official(sd, variables, rules, spec)
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
                         f"'{method}' model{hint}")
    return filled, report


# ---------------------------------------------------------------------------- states


def _assemble(tx, template, filled: Mapping[tuple, Any], step) -> Any:
    """A TrainState shaped and sharded as ``template``: every variable from ``filled``,
    a fresh optimiser state, EMA parameters equal to the parameters."""
    import jax  # pylint: disable=import-outside-toplevel
    from adverse_vision.state import TrainState  # pylint: disable=import-outside-toplevel

    leaves = {p: filled[p] for p in _targets({"params": template.params, **template.model_state})}
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


def load_into(state, path: str, rules: tuple, method: str = "",
              report: Optional[list] = None) -> dict:
    """The variables of ``state`` (``{"params": ..., <collection>: ...}`` as numpy
    arrays) with every tensor of ``path`` whose name and shape match (by ``rules`` for
    an official checkpoint); the rest keep their values in ``state``.

    What was loaded and what was not is logged; with a list ``report``, the
    :class:`LoadReport` is appended to it. ``Trainer.with_variables`` turns the result
    into the state a run starts from (fresh optimiser state, EMA equal to the loaded
    parameters)."""
    import jax  # pylint: disable=import-outside-toplevel

    current = {"params": state.params, **state.model_state}
    filled, rep = load_pretrained(path, current, rules, method)
    for line in rep.lines():
        log.info("%s", line)
    if len(rep.loaded) < len(rep.kept):
        log.warning("init_from %s: only %d of %d model variables found a tensor of the same "
                    "name and shape (another model size?)", path, len(rep.loaded),
                    len(rep.loaded) + len(rep.kept))
    if report is not None:
        report.append(rep)
    base = _targets(jax.device_get(current))
    variables = unflatten({p: filled[p] if p in filled else np.asarray(base[p]) for p in base})
    return {"params": variables.get("params", {}),
            **{k: variables.get(k, {}) for k in state.model_state}}


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


def _network(network: str):
    """(method class, converter) of an official network, or a ValueError naming it."""
    try:
        return methods_lib.converter(network)
    except ValueError as e:
        raise ValueError(f"--method {network!r} is not known ({e})") from None


def _load_config(config: Any, network: str, method_cls, converter):
    """An unlocked copy of the config of ``export_workdir``, of the network's method."""
    import ml_collections  # pylint: disable=import-outside-toplevel
    from adverse_vision import cli  # pylint: disable=import-outside-toplevel

    if config is None:
        if not converter.config:
            raise ValueError(f"--method {network}: method '{method_cls.name}' declares no "
                             "config for its workdirs; pass --config")
        config = _default_config_path(converter.config)
    if isinstance(config, str):
        spec = config
        config = cli.load_config_file(config)
    else:
        spec = "the given config"
    cfg = ml_collections.ConfigDict(config.to_dict())
    if cfg.get("method") != method_cls.name:
        raise ValueError(f"--method {network} needs a config with method '{method_cls.name}'; "
                         f"{spec} has method '{cfg.get('method')}'")
    return cfg


def _size_name(cfg) -> Any:
    if cfg.model.depth > 0 and cfg.model.width > 0:
        return (cfg.model.depth, cfg.model.width)
    return cfg.model.size


def export_workdir(checkpoint: str, network: str, out: str, *,
                   num_classes: Optional[int] = None, size: Optional[str] = None,
                   config: Any = None, class_names: Optional[list] = None) -> dict[str, Any]:
    """Writes an official checkpoint as a project workdir (``config.json`` + step 0).

    Args:
      checkpoint: ``.pth``/``.pt``/``.npz`` official checkpoint.
      network: the official network (``--method`` of the convert program), one a
        method declares in ``Method.converters``; that method's config is written.
      out: the workdir to write; it must not hold checkpoints yet.
      num_classes: expected class count (the checkpoint's class head must have it);
        networks built with classes only, as ``size`` and ``class_names``.
      size: model size; default: inferred from the checkpoint, else the config's.
      config: a ``ConfigDict`` or a ``path.py[:variant]`` spec of the network's
        method; default the converter's ``config`` file (relative to the working
        directory or to the repository root).
      class_names: names of the classes; default the config's when the count fits,
        the COCO names for an 80-class checkpoint.

    Returns:
      A summary: method, size and class count (None for a network built without
      classes), tensors loaded, parameter count, the files written.

    Raises:
      FileNotFoundError: missing checkpoint or config file.
      ValueError: unknown network, a config of another method, unreadable
        checkpoint, keys or shapes that do not fit the model, an ``out`` that
        already holds checkpoints.
    """
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from adverse_vision import parallel  # pylint: disable=import-outside-toplevel
    from adverse_vision import state as state_lib  # pylint: disable=import-outside-toplevel
    from adverse_vision.models.yolox import SIZES  # pylint: disable=import-outside-toplevel

    method_cls, converter = _network(network)
    if not converter.takes_classes:
        given = [flag for flag, value in (("--num_classes", num_classes), ("--size", size),
                                          ("--class_names", class_names)) if value]
        if given:
            raise ValueError(f"{', '.join(given)}: network {network!r} is built without "
                             "classes or sizes")
    if size is not None and size not in SIZES:
        raise ValueError(f"--size {size!r} is not a model size; choose one of {tuple(SIZES)}")
    source = os.fspath(checkpoint)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source}: no such checkpoint file")
    ckpt_dir = os.path.join(out, "checkpoints")
    if os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir)):
        raise ValueError(f"{out} already holds checkpoints in {ckpt_dir}; choose a new --out")

    sd = convert_lib.read_state_dict(source)
    if converter.ignored:
        ignored = [re.compile(p) for p in converter.ignored]
        sd = {k: v for k, v in sd.items() if not any(p.search(k) for p in ignored)}
    explicit_config = config is not None
    cfg = _load_config(config, network, method_cls, converter)
    guessed = None
    if converter.takes_classes:
        head_classes = infer_num_classes(sd)
        if num_classes is not None and head_classes is not None and num_classes != head_classes:
            raise ValueError(f"{source}: the class head (head.cls_preds.0.weight) has "
                             f"{head_classes} classes, --num_classes is {num_classes}")
        n_classes = num_classes if num_classes is not None else head_classes
        guessed = infer_size(sd)
        chosen = size or (None if explicit_config else guessed)
        if chosen is not None:
            cfg.model.size = chosen
            cfg.model.depth = cfg.model.width = 0.0
        cfg.data.class_names = _class_names(cfg, n_classes, class_names, source)
    cfg = methods_lib.validate(cfg)

    method = methods_lib.build(cfg)
    tx, _ = state_lib.make_optimizer(method, cfg)
    template = state_lib.abstract_state(method, tx, cfg.optimizer.ema_decay > 0,
                                        parallel.replicated(parallel.make_mesh()))
    targets = {"params": template.params, **template.model_state}
    try:
        filled, _unused, _missing = convert_state_dict(sd, targets, converter.rules,
                                                       strict=True, name=source)
    except ValueError as e:
        message = str(e).replace(" (pass strict=False to load the matching part only)", "")
        hints = []
        if converter.takes_classes:
            size_now = _size_name(cfg)
            hints.append("the model is size " + (size_now if isinstance(size_now, str) else
                                                 f"depth {size_now[0]}, width {size_now[1]}"))
            if guessed is not None and guessed != cfg.model.size:
                hints.append(f"the checkpoint looks like size {guessed}: pass --size {guessed}")
        if method_cls.init_rules is not None:
            hints.append("to start training from the tensors that fit, use model.init_from")
        raise ValueError(message + (f" ({'; '.join(hints)})" if hints else "")) from None
    state = _assemble(tx, template, filled, jnp.zeros((), jnp.int32))

    os.makedirs(out, exist_ok=True)
    ckpt = workdir_lib.checkpointer(out, cfg, method, keep=cfg.keep_checkpoints)
    try:
        ckpt.save(0, state)
    finally:
        ckpt.close()
    workdir_lib.save_config(cfg, out)
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))
    return {
        "checkpoint": source,
        "network": network,
        "method": cfg.method,
        "size": _size_name(cfg) if converter.takes_classes else None,
        "num_classes": len(cfg.data.class_names) if converter.takes_classes else None,
        "tensors_loaded": len(filled),
        "parameters": n_params,
        "workdir": os.path.abspath(out),
        "config": os.path.join(os.path.abspath(out), "config.json"),
        "checkpoint_dir": os.path.join(ckpt.directory, "0"),
    }


__all__ = [
    "COCO_CLASSES",
    "LoadReport",
    "export_workdir",
    "infer_size",
    "load_into",
    "load_pretrained",
    "match_official",
    "match_variables",
    "restore_run_variables",
]
