"""One module per method: how its model is built, its loss, prediction and evaluation.

A method object has ``best_metric``, ``eval_keys`` (the batch entries its evaluator
reads), ``init_variables(rng)``,
``loss_fn(params, model_state, batch, rng, step) -> (loss, (model_state, metrics))``,
``predict(variables, batch) -> outputs`` and ``make_evaluator()``; the generic
:mod:`adverse_vision.trainer` does the rest. Optional hooks: ``make_optimizer() ->
(tx, schedule)`` (otherwise :func:`adverse_vision.optim.make_optimizer`),
``grads_fn(params, model_state, batch, rng, step, variant) -> (loss, grads,
model_state, metrics)`` in place of ``jax.value_and_grad(loss_fn)`` (bi-level
methods), ``step_variant(step) -> hashable`` (one compiled train step per value,
chosen on the host; passed to ``grads_fn`` as ``variant``), and
``prepare_state(state, trainer)`` for runs that start from earlier runs.
"""

from __future__ import annotations

import ml_collections


def build(cfg: ml_collections.ConfigDict):
    """The method object named by ``cfg.method``."""
    if cfg.method == "detection":
        from adverse_vision.methods.detection import DetectionMethod  # pylint: disable=import-outside-toplevel
        return DetectionMethod(cfg)
    if cfg.method == "togethernet":
        from adverse_vision.methods.togethernet import TogetherNetMethod  # pylint: disable=import-outside-toplevel
        return TogetherNetMethod(cfg)
    if cfg.method == "dnhl":
        from adverse_vision.methods.dnhl import DNHLMethod  # pylint: disable=import-outside-toplevel
        return DNHLMethod(cfg)
    if cfg.method == "bdlf":
        from adverse_vision.methods.bdlf import BDLFMethod  # pylint: disable=import-outside-toplevel
        return BDLFMethod(cfg)
    raise ValueError(f"config key 'method' is {cfg.method!r}; no such method")
