"""Importing weights of the official PyTorch implementations.

    from adverse_vision.convert import load_official
    model, variables = load_official(network, "official.pth", num_classes=5, size="s")
    out = model.apply(variables, images, train=False)

``load_official(network, state_dict, ...)`` builds the flax model of an official
network and fills every one of its variables from an official state dict. The
networks are those the methods declare (``Method.converters``, looked up by
:func:`adverse_vision.methods.converter`): each names its flax module, the key rules
of its official checkpoints (see :mod:`adverse_vision.convert.keys`), the official
keys without a counterpart, the inputs that trace its variables and whether it is
built with a class count. ``state_dict`` is a mapping of official keys to arrays
(numpy arrays, or anything with ``.detach().cpu().numpy()`` or ``__array__``), or a
path to a ``.pth``/``.pt`` checkpoint (read without PyTorch, see ``torch_pickle``) or
an ``.npz`` archive. Keys may carry the ``module.`` prefix of ``DataParallel``;
checkpoints nesting the weights under ``model`` or ``state_dict`` are unpacked. An
``.npz`` (or mapping) in the project's reference format (``q/<key>`` int8 codes times
``s/<key>`` scales, ``f/<key>`` other entries, ``*_nchw`` test arrays) is decoded to
its state dict.

Loading is strict by default: a checkpoint key that maps to nothing or a model
variable left unfilled is an error listing them; ``strict=False`` loads the matching
part and keeps freshly initialised values for the rest (``exclude`` drops official
keys by regular expression first, e.g. a classifier with another class count).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adverse_vision import methods
from adverse_vision.convert.keys import (
    convert_state_dict,
    flatten,
    infer_num_classes,
    unflatten,
)
from adverse_vision.convert.torch_pickle import (
    TorchPickleError,
    load_pth,
    state_dict_from,
)

__all__ = [
    "TorchPickleError",
    "export_workdir",
    "load_into",
    "load_official",
    "load_pretrained",
    "load_pth",
    "read_state_dict",
    "reference_state_dict",
]


def _to_numpy(value: Any, key: str, source: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without torch
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as e:
        raise ValueError(f"{source}: entry {key!r} is not an array ({type(value).__name__}): "
                         f"{e}") from None


def _is_reference_format(keys: Sequence[str]) -> bool:
    keys = list(keys)
    return bool(keys) and any(k.startswith("q/") for k in keys) and all(
        k.startswith(("q/", "s/", "f/")) or k.endswith("_nchw") for k in keys)


def reference_state_dict(arrays: Mapping[str, Any], source: str = "reference") -> dict:
    """Decodes the reference format: ``q/<key> * s/<key>`` and ``f/<key>`` -> ``{key: array}``."""
    out = {}
    for k in arrays:
        if k.startswith("q/"):
            key = k[2:]
            if "s/" + key not in arrays:
                raise ValueError(f"{source}: {k!r} has no scale entry 's/{key}'")
            codes = np.asarray(arrays[k])
            out[key] = codes.astype(np.float32) * np.float32(np.asarray(arrays["s/" + key]))
        elif k.startswith("f/"):
            out[k[2:]] = np.asarray(arrays[k])
    return out


def read_state_dict(state_dict: Any) -> dict[str, np.ndarray]:
    """The flat official ``{key: numpy array}`` of a mapping or a checkpoint path.

    Strips a ``module.`` prefix, unpacks ``model``/``state_dict`` nesting and decodes
    the reference ``.npz`` format. Raises ValueError naming the file on bad input.
    """
    if isinstance(state_dict, (str, os.PathLike)):
        source = os.fspath(state_dict)
        if not os.path.isfile(source):
            raise ValueError(f"{source}: no such checkpoint file")
        if source.endswith(".npz"):
            try:
                with np.load(source, allow_pickle=False) as z:
                    raw = {k: z[k] for k in z.files}
            except Exception as e:
                raise ValueError(f"{source}: cannot read the .npz archive: {e}") from None
        else:
            raw = load_pth(source)
    elif isinstance(state_dict, Mapping):
        source, raw = "state_dict", state_dict
    else:
        raise ValueError(f"state_dict: expected a mapping or a checkpoint path, got "
                         f"{type(state_dict).__name__}")
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: expected a dict of weights, got {type(raw).__name__}")
    if _is_reference_format([str(k) for k in raw]):
        raw = reference_state_dict(raw, source)
    elif not any(hasattr(v, "shape") for v in raw.values()):
        raw = state_dict_from(dict(raw), source)
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ValueError(f"{source}: state dict keys must be strings, got {key!r}")
        if not hasattr(value, "shape") and not hasattr(value, "__array__"):
            continue  # e.g. a stray metadata entry next to the weights
        name = key.removeprefix("module.")
        if name in out:
            raise ValueError(f"{source}: key {name!r} appears with and without 'module.'")
        out[name] = _to_numpy(value, key, source)
    if not out:
        raise ValueError(f"{source}: no weights found")
    return out


def _model_class(path: str):
    module, _, attr = path.partition(":")
    return getattr(__import__(module, fromlist=[attr]), attr)


def load_official(
    name: str,
    state_dict: Any,
    *,
    num_classes: int | None = None,
    size: Any = "s",
    strict: bool = True,
    exclude: Sequence[str] = (),
    rng: Any = None,
    init_size: int = 64,
    **model_kwargs: Any,
) -> tuple[Any, dict]:
    """Builds network ``name`` and fills its variables from an official state dict.

    Args:
      name: an official network a method declares (``Method.converters``).
      state_dict: mapping of official keys to arrays, or a ``.pth``/``.pt``/``.npz`` path.
      num_classes: class count of a network built with classes; inferred from
        ``head.cls_preds.0.weight`` when None.
      size: model size name or ``(depth, width)`` of a network built with classes.
      strict: error on unused checkpoint keys or unfilled variables.
      exclude: regular expressions; matching official keys are dropped first.
      rng: key for the variables a non-strict load leaves unfilled (default key 0).
      init_size: side of the dummy inputs that trace the variable shapes.
      **model_kwargs: further model attributes (``dtype``, ``act``, ...).

    Returns:
      ``(model, variables)`` with ``variables = {"params": ..., "batch_stats": ...}``
      of jax arrays, ready for ``model.apply``.

    Raises:
      ValueError: unknown network, unreadable checkpoint, shape mismatch (naming the
        key and both shapes) or, when strict, unused keys / missing variables.
    """
    import jax
    import jax.numpy as jnp

    try:
        _, converter = methods.converter(name)
    except ValueError as e:
        raise ValueError(f"load_official: {e}") from None
    sd = read_state_dict(state_dict)
    patterns = [re.compile(p) for p in tuple(exclude) + tuple(converter.ignored)]
    if patterns:
        sd = {k: v for k, v in sd.items() if not any(p.search(k) for p in patterns)}
    if converter.takes_classes:
        if num_classes is None:
            num_classes = infer_num_classes(sd)
            if num_classes is None:
                raise ValueError(f"load_official({name!r}): num_classes not given and the "
                                 "checkpoint has no 'head.cls_preds.0.weight' to infer it from")
        model_kwargs = dict(model_kwargs, num_classes=num_classes, size=size)
    model = _model_class(converter.model)(**model_kwargs)
    inputs = tuple(jnp.asarray(x) for x in converter.inputs(init_size))
    rng = jax.random.key(0) if rng is None else rng
    abstract = jax.eval_shape(lambda k: model.init(k, *inputs, train=False), rng)
    filled, _unused, missing = convert_state_dict(sd, abstract, converter.rules, strict=strict,
                                                  name=f"load_official({name!r})")
    if missing:  # only when not strict: fresh values for what the checkpoint lacks
        init = model.init(rng, *inputs, train=False)
        for coll in init:
            for path, value in flatten(init[coll]).items():
                filled.setdefault((coll,) + path, value)
    variables = unflatten({k: jnp.asarray(v) for k, v in filled.items()})
    return model, variables


# After the definitions above, which the pretrained-weights module uses.
from adverse_vision.convert.pretrained import (  # noqa: E402  pylint: disable=wrong-import-position
    export_workdir,
    load_into,
    load_pretrained,
)
