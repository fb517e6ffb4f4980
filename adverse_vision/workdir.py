"""A run's directory: its config (``config.json``), the metrics that rank its
checkpoints, and the variables of a finished or running run.

Below the trainer, so that starting from an earlier run (``model.init_from``, a
method's earlier stage) needs nothing above it.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import jax
import ml_collections
import numpy as np

from adverse_vision import checkpoint as ckpt_lib
from adverse_vision import config as config_lib
from adverse_vision import methods as methods_lib
from adverse_vision import state as state_lib
from adverse_vision import storage
from adverse_vision.parallel import make_mesh, replicated

log = logging.getLogger("adverse_vision")

#: Keys a resumed run may change: how long it runs and how often it logs, evaluates
#: and saves. Any other change would alter the model, the data or the method under the
#: checkpoints already in the workdir (or, for data.num_workers, the structure of the
#: saved data iterator's state).
RESUMABLE_CHANGES = ("total_steps", "eval_every", "checkpoint_every", "log_every",
                     "keep_checkpoints")


def config_path(workdir: str) -> str:
    return storage.join(workdir, "config.json")


def save_config(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        storage.write_text(config_path(workdir), cfg.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (its ``config.json``), validated. A workdir
    written by an older version loads too: keys added since get their defaults, and
    the keys of other methods that older versions saved with every run are dropped."""
    path = config_path(workdir)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
    loaded = _lists_to_tuples(json.loads(storage.read_text(path)))
    reference = methods_lib.config(loaded.get("method", ""))
    _fill_defaults(loaded, reference)
    dropped = _drop_unknown(loaded, reference)
    if dropped:
        log.info("%s: keys that method %r does not have were dropped: %s", path,
                 loaded["method"], ", ".join(dropped))
    return methods_lib.validate(ml_collections.ConfigDict(loaded))


def _fill_defaults(loaded: dict, reference: ml_collections.ConfigDict, prefix: str = "") -> None:
    for key, ref in reference.items():
        path = prefix + key
        if key not in loaded:
            loaded[key] = ref.to_dict() if isinstance(ref, ml_collections.ConfigDict) else ref
        elif (isinstance(ref, ml_collections.ConfigDict) and isinstance(loaded[key], dict)
              and not config_lib.is_free(path)):
            _fill_defaults(loaded[key], ref, path + ".")


def _drop_unknown(loaded: dict, reference: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    dropped = []
    for key in list(loaded):
        path = prefix + key
        if key not in reference:
            dropped.append(path)
            del loaded[key]
        elif (isinstance(reference[key], ml_collections.ConfigDict)
              and isinstance(loaded[key], dict) and not config_lib.is_free(path)):
            dropped += _drop_unknown(loaded[key], reference[key], path + ".")
    return dropped


def _lists_to_tuples(x: Any) -> Any:
    """JSON turns the config's tuples into lists; configs hold no lists of their own."""
    if isinstance(x, dict):
        return {k: _lists_to_tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_lists_to_tuples(v) for v in x)
    return x


def check_config_change(cfg: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Compares ``cfg`` with the config a resumed ``workdir`` was trained with; returns the
    allowed changes (``RESUMABLE_CHANGES``) as ``key: old -> new`` lines and raises
    ConfigError naming the keys of any other change."""
    saved = load_config(workdir)
    before, after = dict(_leaves(saved)), dict(_leaves(cfg))
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    refused = [k for k in changed if k not in RESUMABLE_CHANGES]
    if refused:
        shown = "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in refused[:5])
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        raise config_lib.ConfigError(
            f"{workdir} holds checkpoints of another config ({shown}{more}); resume it with "
            f"the config in its config.json, or train in a new workdir (a resumed run may "
            f"change only {', '.join(RESUMABLE_CHANGES)})")
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed]


def _leaves(cfg: ml_collections.ConfigDict) -> list[tuple[str, Any]]:
    """(dotted key, value) of every value of a config, JSON-normalised for comparison."""
    plain = json.loads(cfg.to_json_best_effort(sort_keys=True))

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, f"{prefix}{k}.")
        else:
            yield prefix[:-1], node
    return list(walk(plain, ""))


def write_json(path: str, value: Any) -> None:
    """Strict JSON (``null``, never ``NaN``, for a value that is not a finite number)."""
    storage.write_text(path, json.dumps(_strict(value), indent=2, default=str, allow_nan=False))


def _strict(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def best_metric(cfg: ml_collections.ConfigDict, method) -> str:
    """The logged metric that ranks a run's checkpoints: ``<best_eval>/<method metric>``."""
    return f"{cfg.best_eval}/{method.best_metric}"


def checkpointer(workdir: str, cfg: ml_collections.ConfigDict, method,
                 keep: int = 3) -> ckpt_lib.Checkpointer:
    return ckpt_lib.Checkpointer(storage.join(workdir, "checkpoints"), keep=keep,
                                 best_metric=best_metric(cfg, method))


def restore_state(workdir: str, which: str | int = "best", mesh=None):
    """``(cfg, method, state, step)`` of the best (by the ranking metric; the latest
    when none was evaluated) or latest checkpoint of a workdir, or of the step
    ``which``, replicated on ``mesh``."""
    cfg = load_config(workdir)
    method = methods_lib.build(cfg)
    tx, _ = state_lib.make_optimizer(method, cfg)
    ckpt = checkpointer(workdir, cfg, method)
    if isinstance(which, int):
        if which not in ckpt.all_steps():
            ckpt.close()
            raise ckpt_lib.CheckpointError(f"no checkpoint of step {which} in {ckpt.directory}")
        step = which
    else:
        step = ckpt.best_step() if which == "best" else None
        if step is None:
            step = ckpt.latest_step()
    if step is None:
        ckpt.close()
        raise ckpt_lib.CheckpointError(f"no checkpoint in {ckpt.directory}")
    sharding = replicated(mesh if mesh is not None else make_mesh())
    template = state_lib.abstract_state(method, tx, cfg.optimizer.ema_decay > 0, sharding)
    try:
        state, step = ckpt.restore(template, step=step)
    finally:
        ckpt.close()
    return cfg, method, state, step


def restore_variables(workdir: str, which: str | int = "best"):
    """``(cfg, eval variables on the host, step)`` of a workdir's checkpoint."""
    cfg, _, state, step = restore_state(workdir, which)
    return cfg, jax.device_get(state.eval_variables()), step


def variable_shapes(tree) -> dict[str, tuple[int, ...]]:
    """Each leaf's path (as ``jax.tree_util.keystr`` writes it) and shape."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}


def check_fit(loaded, current, what: str) -> None:
    """Raises ValueError naming the first variable that ``loaded`` lacks, has in excess
    or holds with another shape, compared with ``current``."""
    have, want = variable_shapes(loaded), variable_shapes(current)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = [k for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        if extra:
            parts.append(f"unexpected {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
        if wrong:
            k = wrong[0]
            parts.append(f"{k} has shape {have[k]}, the model needs {want[k]}"
                         + (f" ({len(wrong) - 1} more differ)" if len(wrong) > 1 else ""))
        raise ValueError(f"{what} does not fit this model: " + "; ".join(parts))
