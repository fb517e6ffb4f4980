"""Official PyTorch state dicts -> flax variables, by key rules.

A network's rules (declared by the method that reads its weights,
``Method.converters``) are ``(pattern, replacement)`` pairs applied in order to the
module prefix of an official key ("a.b.c." of "a.b.c.weight"); the first matching
rule is used, then CSP bottleneck indices ``.m.<i>.`` become ``m_<i>`` and the
remaining dots separate the path components of the flax variable. Layout changes:

* conv weights (O, I, kh, kw) -> ``kernel`` (kh, kw, I, O);
* transposed-conv weights (I, O, kh, kw) -> ``kernel`` (kh, kw, O, I) of a flax
  ``ConvTranspose(transpose_kernel=True)`` (the same axis permutation; flax flips
  the kernel itself, as PyTorch's transposed convolution does);
* Linear weights (out, in) -> ``kernel`` (in, out); ``MultiheadAttention``'s
  ``in_proj_weight`` (3C, C) -> ``in_proj_kernel`` (C, 3C);
* BatchNorm / LayerNorm ``weight``/``bias`` -> ``scale``/``bias``;
  ``running_mean``/``running_var`` -> ``mean``/``var`` in ``batch_stats``;
  ``num_batches_tracked`` is dropped;
* any other parameter (a learned scalar ``w``) goes to the flax parameter of the
  same name, as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

_COMPILED: dict[tuple, list] = {}

Path = tuple[str, ...]


def module_path(prefix: str, rules: Iterable[tuple[str, str]]) -> Path | None:
    """The flax module path of an official module prefix (ending in '.'), or None."""
    rules = tuple(rules)
    compiled = _COMPILED.setdefault(rules, [(re.compile(p), r) for p, r in rules])
    for pattern, repl in compiled:
        if pattern.match(prefix):
            rest = pattern.sub(repl, prefix, count=1)
            rest = re.sub(r"(^|/|\.)m\.(\d+)\.", r"\1m_\2/", rest)
            return tuple(p for p in re.split(r"[./]", rest) if p)
    return None


def _tree_get(tree: Mapping, path: Path):
    node = tree
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return node


def _kernel_from(weight: np.ndarray, target_ndim: int) -> np.ndarray:
    if weight.ndim == 4 and target_ndim == 4:
        # Conv (O, I, kh, kw) -> (kh, kw, I, O); ConvTranspose (I, O, kh, kw) -> (kh, kw, O, I).
        return weight.transpose(2, 3, 1, 0)
    if weight.ndim == 2 and target_ndim == 2:
        return weight.T
    return weight  # ndim mismatch: reported by the shape check


def map_key(key: str, value: np.ndarray, abstract: Mapping, rules) -> tuple | None:
    """Where an official entry goes: ``(collection, path, array)``, ``()`` for an entry
    to drop (``num_batches_tracked``), or ``None`` when no rule or target matches."""
    prefix, _, leaf = key.rpartition(".")
    if leaf == "num_batches_tracked":
        return ()
    path = module_path(prefix + "." if prefix else "", rules)
    if path is None:
        return None
    params = abstract.get("params", {})
    if leaf in ("running_mean", "running_var"):
        return "batch_stats", path + ({"running_mean": "mean", "running_var": "var"}[leaf],), value
    if leaf == "in_proj_weight":
        return "params", path + ("in_proj_kernel",), value.T if value.ndim == 2 else value
    if leaf == "in_proj_bias":
        return "params", path + ("in_proj_bias",), value
    module = _tree_get(params, path)
    if not isinstance(module, Mapping):
        return None
    if leaf == "weight":
        if "negative_slope" in module:  # PReLU: (1,) -> the flax scalar
            target = module["negative_slope"]
            fits = np.size(value) == int(np.prod(target.shape))
            return "params", path + ("negative_slope",), (
                np.reshape(value, target.shape) if fits else value)
        if "kernel" in module:
            return "params", path + ("kernel",), _kernel_from(value, len(module["kernel"].shape))
        if "scale" in module:
            return "params", path + ("scale",), value
        return None
    if leaf == "bias" and "bias" in module:
        return "params", path + ("bias",), value
    if leaf not in ("weight", "bias") and leaf in module and not isinstance(module[leaf], Mapping):
        return "params", path + (leaf,), value  # a parameter of its own name (a scalar ``w``)
    return None


def flatten(tree: Mapping, prefix: Path = ()) -> dict[Path, Any]:
    """Nested dict -> ``{path tuple: leaf}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _few(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    abstract: Mapping,
    rules: Iterable[tuple[str, str]],
    *,
    strict: bool = True,
    name: str = "checkpoint",
) -> tuple[dict, list[str], list[str]]:
    """Maps an official state dict onto the structure of ``abstract`` variables.

    Args:
      state_dict: official key -> numpy array.
      abstract: the flax variables tree (arrays or ``jax.ShapeDtypeStruct`` leaves),
        e.g. from ``jax.eval_shape(model.init, ...)``.
      rules: module prefix rewriting rules (a network's ``Converter.rules``).
      strict: raise when an official key is not consumed or a variable not filled.

    Returns:
      ``(filled, unused_keys, missing_paths)``: ``filled`` maps
      ``(collection, *path)`` to a numpy array of the target dtype.

    Raises:
      ValueError: on a shape mismatch (naming the key, the flax path and both
        shapes), on the same variable filled twice, and, when ``strict``, on
        unused keys or missing variables (a few names of each and their counts).
    """
    targets = {(coll,) + path: leaf for coll in abstract
               for path, leaf in flatten(abstract[coll]).items()}
    filled: dict[tuple, np.ndarray] = {}
    source: dict[tuple, str] = {}
    unused: list[str] = []
    for key, value in state_dict.items():
        value = np.asarray(value)
        where = map_key(key, value, abstract, rules)
        if where == ():
            continue
        if where is None or (where[0],) + where[1] not in targets:
            unused.append(key)
            continue
        coll, path, array = where
        full = (coll,) + path
        target = targets[full]
        if tuple(array.shape) != tuple(target.shape):
            raise ValueError(
                f"{name}: shape mismatch for {key!r} -> {'/'.join(full)}: checkpoint "
                f"{tuple(value.shape)} (converted {tuple(array.shape)}), model "
                f"{tuple(target.shape)}")
        if full in filled:
            raise ValueError(f"{name}: {key!r} and {source[full]!r} both map to {'/'.join(full)}")
        filled[full] = np.asarray(array, dtype=target.dtype)
        source[full] = key
    missing = ["/".join(p) for p in targets if p not in filled]
    if strict and (unused or missing):
        parts = []
        if unused:
            parts.append(f"{len(unused)} checkpoint key(s) not used: {_few(sorted(unused))}")
        if missing:
            parts.append(f"{len(missing)} model variable(s) not in the checkpoint: "
                         f"{_few(missing)}")
        raise ValueError(f"{name}: " + "; ".join(parts)
                         + " (pass strict=False to load the matching part only)")
    return filled, sorted(unused), missing


def unflatten(filled: Mapping[tuple, Any]) -> dict:
    """``{(collection, *path): array}`` -> nested dict."""
    out: dict = {}
    for path, value in filled.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


def infer_num_classes(state_dict: Mapping[str, np.ndarray]) -> int | None:
    """Number of classes from ``head.cls_preds.0.weight``, when present."""
    w = state_dict.get("head.cls_preds.0.weight")
    return int(np.shape(w)[0]) if w is not None else None


__all__ = [
    "convert_state_dict",
    "flatten",
    "infer_num_classes",
    "map_key",
    "module_path",
    "unflatten",
]
