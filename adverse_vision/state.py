"""The train state of a run and how it is built from a method: parameters, the
non-trained collections, the optimiser state and the EMA parameters."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from adverse_vision import optim


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any  # non-trained collections, e.g. BatchNorm statistics
    opt_state: Any
    ema_params: Any  # None when EMA is off

    def eval_variables(self) -> dict[str, Any]:
        params = self.ema_params if self.ema_params is not None else self.params
        return {"params": params, **self.model_state}


def make_optimizer(method, cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The method's own optimiser (``make_optimizer()``), or ``cfg.optimizer``'s."""
    own = getattr(method, "make_optimizer", None)
    return own() if own is not None else optim.make_optimizer(cfg)


def create_state(method, tx: optax.GradientTransformation, rng: jax.Array,
                 ema: bool) -> TrainState:
    """A fresh state at step 0 (traceable: the trainer jits it)."""
    variables = method.init_variables(rng)
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      model_state=dict(variables), opt_state=tx.init(params),
                      ema_params=params if ema else None)


def abstract_state(method, tx: optax.GradientTransformation, ema: bool, sharding) -> TrainState:
    """Shapes, dtypes and ``sharding`` of the state, without computing it."""
    shapes = jax.eval_shape(lambda rng: create_state(method, tx, rng, ema), jax.random.PRNGKey(0))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
