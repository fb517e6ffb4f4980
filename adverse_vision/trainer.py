"""The generic training loop: state, sharding, steps, evaluation, checkpoints, logging.

A method (``adverse_vision.methods``) supplies the model-specific parts: how to
initialise variables, the loss, the prediction for evaluation and the evaluator. This
module owns everything else, identically for every method:

* one ``("data",)`` mesh, one jitted train step with explicit shardings and a donated
  state, per-step randomness by ``fold_in(seed key, step)``;
* orbax checkpoints of the state and the data iterator (resume by rerunning the same
  command), the best checkpoint by the method's validation metric kept;
* SIGTERM saves and exits cleanly; a non-finite loss stops the run naming the step;
* metrics as JSON lines and TensorBoard events, the resolved config beside them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from adverse_vision import checkpoint as ckpt_lib
from adverse_vision import config as config_lib
from adverse_vision import optim
from adverse_vision import parallel
from adverse_vision import methods as methods_lib
from adverse_vision.data import factory as data_factory
from adverse_vision.logs import MetricWriter, Progress

log = logging.getLogger("adverse_vision")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


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


class Trainer:
    """Builds the state and jitted steps of one config on one mesh."""

    def __init__(self, cfg: ml_collections.ConfigDict, mesh=None):
        self.cfg = config_lib.validate(cfg)
        self.mesh = mesh if mesh is not None else parallel.make_mesh()
        self.method = methods_lib.build(cfg)
        make_optimizer = getattr(self.method, "make_optimizer", None)
        self.tx, self.schedule = make_optimizer() if make_optimizer else optim.make_optimizer(cfg)
        self.replicated = parallel.replicated(self.mesh)
        self.batch_sharding = parallel.data_sharding(self.mesh)
        self.base_rng = jax.random.PRNGKey(cfg.seed)
        self._train_step = None
        self._predict = None

    # ----------------------------------------------------------------- state
    def _create_state(self, rng: jax.Array) -> TrainState:
        variables = self.method.init_variables(rng)
        params = variables.pop("params")
        ema = params if self.cfg.optimizer.ema_decay > 0 else None
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          model_state=dict(variables), opt_state=self.tx.init(params),
                          ema_params=ema)

    def init_state(self) -> TrainState:
        # An "rbg" key: the model's ~150 initialisers compile several times faster than
        # with threefry keys (the train step's randomness still uses threefry).
        init_rng = jax.random.key(self.cfg.seed, impl="rbg")
        return jax.jit(self._create_state, out_shardings=self.replicated)(init_rng)

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state, without computing it."""
        shapes = jax.eval_shape(self._create_state, self.base_rng)
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

    # ----------------------------------------------------------------- steps
    def _step(self, state: TrainState, batch: dict[str, jax.Array], variant: Any = None):
        rng = jax.random.fold_in(self.base_rng, state.step)

        grads_fn = getattr(self.method, "grads_fn", None)
        if grads_fn is not None:  # methods whose gradients are not one loss's (bi-level)
            loss, grads, model_state, metrics = grads_fn(
                state.params, state.model_state, batch, rng, state.step, variant=variant)
        else:
            def loss_fn(params):
                return self.method.loss_fn(params, state.model_state, batch, rng, state.step)

            (loss, (model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            ema = optim.ema_update(ema, params, self.cfg.optimizer.ema_decay, state.step + 1)
        metrics = dict(metrics, loss=loss, lr=self.schedule(state.step),
                       grad_norm=optax.global_norm(grads))
        new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                                  opt_state=opt_state, ema_params=ema)
        return new_state, metrics

    @property
    def train_step(self) -> "_TrainStep":
        """``train_step(state, batch, step=None) -> (state, metrics)``, jitted.

        Methods with a ``step_variant(step)`` (BDLF: whether an iteration takes the
        upper-level step) get one compiled program per variant, chosen on the host from
        ``step`` (read from the state when not given), instead of a ``lax.cond`` inside
        one program (XLA:CPU runs the branches of a conditional many times slower)."""
        if self._train_step is None:
            jitted = jax.jit(
                self._step, in_shardings=(self.replicated, self.batch_sharding),
                out_shardings=(self.replicated, self.replicated), donate_argnums=(0,),
                static_argnums=(2,))
            self._train_step = _TrainStep(jitted, getattr(self.method, "step_variant", None))
        return self._train_step

    @property
    def predict(self) -> Callable:
        if self._predict is None:
            self._predict = jax.jit(
                lambda variables, batch: self.method.predict(variables, batch),
                in_shardings=(self.replicated, self.batch_sharding),
                out_shardings=self.batch_sharding)
        return self._predict

    # ----------------------------------------------------------------- eval
    def evaluate(self, variables: dict[str, Any], pipeline,
                 predict: Optional[Callable] = None) -> tuple[dict[str, float], Any]:
        """One pass over an evaluation pipeline; returns (metrics, evaluator).
        ``predict(batch) -> outputs`` replaces the method's prediction with
        ``variables`` (a method's own comparisons, e.g. DN-HL's denoisers)."""
        evaluator = self.method.make_evaluator()
        with contextlib.closing(iter(pipeline)) as batches:  # stops its worker processes
            for local in batches:
                batch = parallel.global_batch(local, self.mesh)
                out = predict(batch) if predict is not None else self.predict(variables, batch)
                outputs = parallel.to_host(out)
                # Every host needs the whole evaluation set (mAP sorts over all of it),
                # but only the entries the evaluator reads.
                wanted = {k: v for k, v in batch.items() if k in self.method.eval_keys}
                evaluator.add(outputs, parallel.to_host(wanted))
        return evaluator.compute(), evaluator


class _TrainStep:
    """The jitted train step, with the method's step variant picked on the host."""

    def __init__(self, jitted: Callable, step_variant: Optional[Callable[[int], Any]]):
        self.jitted = jitted
        self.step_variant = step_variant

    def _variant(self, state: TrainState, step: Optional[int]) -> Any:
        if self.step_variant is None:
            return None
        if step is None:
            step = int(jax.device_get(state.step))
        return self.step_variant(int(step))

    def __call__(self, state: TrainState, batch: dict[str, jax.Array],
                 step: Optional[int] = None):
        return self.jitted(state, batch, self._variant(state, step))

    def lower(self, state: TrainState, batch: dict[str, jax.Array], step: Optional[int] = None):
        return self.jitted.lower(state, batch, self._variant(state, step))


def _check_finite(step: int, metrics: dict[str, Any], ckpt: ckpt_lib.Checkpointer) -> None:
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        last = ckpt.latest_step()
        where = (f"the last good checkpoint is step {last} in {ckpt.directory}" if last is not None
                 else "no checkpoint was saved before it")
        raise NonFiniteLossError(f"loss is {loss} at step {step}; stopping. {where}")


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    fetched = jax.device_get(history)
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


class _Preemption:
    """Turns SIGTERM into a flag the loop polls, so it can save and exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):  # pylint: disable=unused-argument
        log.warning("SIGTERM received: saving a checkpoint and exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def save_config(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2, sort_keys=True))


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str,
                       progress: Optional[bool] = None) -> dict[str, Any]:
    """Trains ``cfg`` in ``workdir``, resuming from the last checkpoint there."""
    trainer = Trainer(cfg)
    os.makedirs(workdir, exist_ok=True)
    save_config(cfg, workdir)
    per_host = parallel.per_host_batch_size(cfg.batch_size, trainer.mesh)
    data = data_factory.DataBundle(cfg, per_host_batch=per_host)
    train_iter = data.train_iterator()

    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 keep=cfg.keep_checkpoints,
                                 best_metric=trainer.method.best_metric)
    if ckpt.latest_step() is not None:
        state, start = ckpt.restore(trainer.abstract_state(), train_iter)
        log.info("resumed from step %d in %s", start, ckpt.directory)
    else:
        state = trainer.init_state()
        prepare = getattr(trainer.method, "prepare_state", None)
        if prepare is not None:  # methods whose runs start from earlier stages
            state = prepare(state, trainer)
        elif cfg.model.init_from:
            from adverse_vision.convert import pretrained  # pylint: disable=import-outside-toplevel
            state = pretrained.init_state_from(state, cfg.model.init_from, cfg)
    start = int(jax.device_get(state.step))

    writer = MetricWriter(workdir)
    bar = Progress(total=cfg.total_steps, initial=start, enabled=progress,
                   images_per_step=cfg.batch_size)
    summary: dict[str, Any] = {"start_step": start, "preempted": False}
    history: list[dict[str, Any]] = []
    pending: Optional[tuple[int, dict[str, Any]]] = None
    invalid_samples = 0
    last_eval: dict[str, float] = {}
    t_start = time.time()
    step = start
    with _Preemption() as preempt:
        try:
            while step < cfg.total_steps:
                local = next(train_iter)
                invalid_samples += int(np.sum(~np.asarray(local["valid"])))
                batch = parallel.global_batch(local, trainer.mesh)
                state, metrics = trainer.train_step(state, batch, step=step)
                step += 1
                if pending is not None:  # one step behind, so the device stays busy
                    _check_finite(*pending, ckpt)
                pending = (step, metrics)
                history.append(metrics)
                bar.update(step)
                if step % cfg.log_every == 0 or step == cfg.total_steps:
                    _check_finite(*pending, ckpt)
                    scalars = _mean_metrics(history)
                    history = []
                    scalars.update(bar.rates())
                    writer.write(step, {f"train/{k}": v for k, v in scalars.items()})
                    bar.set_postfix(loss=scalars["loss"], img_s=scalars["images_per_s"])
                eval_now = step % cfg.eval_every == 0 or step == cfg.total_steps
                save_now = eval_now or step % cfg.checkpoint_every == 0 or preempt.requested
                if save_now:
                    _check_finite(*pending, ckpt)
                if eval_now:
                    last_eval, _ = trainer.evaluate(state.eval_variables(), data.val_pipeline())
                    writer.write(step, {f"val/{k}": v for k, v in last_eval.items()})
                    log.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
                if save_now:
                    ckpt.save(step, state, train_iter,
                              metrics={f"val/{k}": v for k, v in last_eval.items()} if eval_now else None)
                if preempt.requested:
                    summary["preempted"] = True
                    break
        finally:
            bar.close()
            ckpt.close()  # waits for the last save, which reads the iterator's state
            train_iter.close()  # stops its worker processes
            writer.close()
    elapsed = time.time() - t_start
    summary.update({
        "final_step": step, "seconds": elapsed,
        "steps_per_second": (step - start) / max(elapsed, 1e-9),
        "invalid_samples": invalid_samples, "data_problems": data.problems_summary(),
        "val": last_eval, "best_step": ckpt.best_step(), "latest_step": ckpt.latest_step(),
    })
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return summary


def restore_for_eval(workdir: str, which: str = "best"):
    """(trainer, eval variables, step) from the best or latest checkpoint of a workdir."""
    cfg = load_workdir_config(workdir)
    trainer = Trainer(cfg)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 best_metric=trainer.method.best_metric)
    step = ckpt.best_step() if which == "best" else None
    if step is None:
        step = ckpt.latest_step()
    if step is None:
        raise ckpt_lib.CheckpointError(f"no checkpoint in {ckpt.directory}")
    state, step = ckpt.restore(trainer.abstract_state(), step=step)
    ckpt.close()
    return trainer, state.eval_variables(), step


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (its ``config.json``), validated."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
    with open(path) as f:
        loaded = _lists_to_tuples(json.load(f))
    # A workdir written before a config group existed lacks it: the defaults fill in.
    _fill_defaults(loaded, config_lib.base_config())
    return config_lib.validate(ml_collections.ConfigDict(loaded))


def _fill_defaults(loaded: dict, reference: ml_collections.ConfigDict, prefix: str = "") -> None:
    for key, ref in reference.items():
        path = prefix + key
        if key not in loaded:
            loaded[key] = ref.to_dict() if isinstance(ref, ml_collections.ConfigDict) else ref
        elif (isinstance(ref, ml_collections.ConfigDict) and isinstance(loaded[key], dict)
              and not config_lib.is_free(path)):
            _fill_defaults(loaded[key], ref, path + ".")


def _lists_to_tuples(x: Any) -> Any:
    """JSON turns the config's tuples into lists; configs hold no lists of their own."""
    if isinstance(x, dict):
        return {k: _lists_to_tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_lists_to_tuples(v) for v in x)
    return x


def log_to_stderr(level: int = logging.INFO) -> None:
    """Shows the library's log (``adverse_vision`` and its children) on stderr, once."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False  # absl's root handler would print every line again
    log.setLevel(level)
