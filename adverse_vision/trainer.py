"""The generic training loop: state, sharding, steps, evaluation, checkpoints, logging.

The run's method (found by ``cfg.method`` in :mod:`adverse_vision.methods`) supplies
the model-specific parts: how to initialise variables, the loss, the prediction for
evaluation, the evaluator and its data. This module owns everything else, identically
for every method:

* one ``("data",)`` mesh, one jitted train step with explicit shardings and a donated
  state, traced under the mesh (per-image work stays on each device's rows), per-step
  randomness by ``fold_in(seed key, step)``;
* only the batch entries the step reads sent to the devices, two steps ahead
  (:mod:`adverse_vision.feed`);
* orbax checkpoints of the state and the data iterator (resume by rerunning the same
  command), the best checkpoint by the metric of ``cfg.best_eval`` kept;
* the evaluations of ``cfg.evals``, each on its own data and cadence, logged under its
  name;
* SIGTERM and Ctrl-C save and exit cleanly, on every process at the same step when
  there are several; anything non-finite stops the run naming the
  step before it is logged or saved;
* metrics as JSON lines and TensorBoard events, the resolved config beside them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from adverse_vision import checkpoint as ckpt_lib
from adverse_vision import errors
from adverse_vision import feed
from adverse_vision import methods as methods_lib
from adverse_vision import optim
from adverse_vision import parallel
from adverse_vision import storage
from adverse_vision import workdir as workdir_lib
from adverse_vision import xla_options
from adverse_vision.convert import pretrained
from adverse_vision.data import factory as data_factory
from adverse_vision.data.problems import DataError
from adverse_vision.logs import MetricWriter, Progress
from adverse_vision.models.batch_norm import per_device_statistics
from adverse_vision.ops import tap_conv
from adverse_vision.state import TrainState, abstract_state, create_state, make_optimizer

#: JAX name scopes of the train step's loss (and gradients) and of its update, which
#: adverse_vision.breakdown reads from the compiled program's metadata.
LOSS_SCOPE = "loss"
OPTIMIZER_SCOPE = "optimizer"

log = logging.getLogger("adverse_vision")

# Names kept here for the programs and notebooks that use them from the trainer.
load_workdir_config = workdir_lib.load_config
save_config = workdir_lib.save_config
write_json = workdir_lib.write_json
check_config_change = workdir_lib.check_config_change


#: Training batches waiting on the devices ahead of the step that takes them.
DEVICE_PREFETCH = 2


class NonFiniteLossError(errors.RunStopped):
    """The loss, a gradient or the parameters became NaN or infinite; the message names
    the step and the last good checkpoint."""


class Trainer:
    """Builds the state and jitted steps of one config on one mesh."""

    def __init__(self, cfg: ml_collections.ConfigDict, mesh=None):
        self.cfg = methods_lib.validate(cfg)
        self.mesh = mesh if mesh is not None else parallel.make_mesh()
        self.method = methods_lib.build(cfg)
        self.tx, self.schedule = make_optimizer(self.method, cfg)
        self.replicated = parallel.replicated(self.mesh)
        self.batch_sharding = parallel.data_sharding(self.mesh)
        self.base_rng = jax.random.PRNGKey(cfg.seed)
        self.best_metric = workdir_lib.best_metric(cfg, self.method)
        self._train_step = None
        self._predict = None
        self._all_finite = None
        self._batch_keys: dict[Any, tuple[str, ...]] = {}

    # ----------------------------------------------------------------- state
    def _create_state(self, rng: jax.Array) -> TrainState:
        return create_state(self.method, self.tx, rng, self.cfg.optimizer.ema_decay > 0)

    def with_variables(self, state: TrainState, params: Any,
                       model_state: Optional[dict[str, Any]] = None) -> TrainState:
        """``state`` restarted from loaded variables: a fresh optimiser state, and EMA
        parameters (when used) equal to ``params`` in buffers of their own (the train
        step donates the state, and XLA refuses to donate one buffer twice)."""
        params = jax.device_put(params, self.replicated)
        ema = None
        if state.ema_params is not None:
            ema = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=self.replicated)(params)
        if model_state is not None:
            state = state.replace(model_state=jax.device_put(model_state, self.replicated))
        opt_state = jax.jit(self.tx.init, out_shardings=self.replicated)(params)
        return state.replace(params=params, opt_state=opt_state,
                             ema_params=ema)

    @property
    def all_finite(self) -> Callable[[TrainState], jax.Array]:
        """``all_finite(state)``: whether every parameter (EMA included) is finite; one
        small program, run at log and save steps only."""
        if self._all_finite is None:
            def check(state):
                leaves = jax.tree.leaves((state.params, state.ema_params))
                return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
            self._all_finite = jax.jit(check, out_shardings=self.replicated)
        return self._all_finite

    def init_state(self) -> TrainState:
        # An "rbg" key: the model's ~150 initialisers compile several times faster than
        # with threefry keys (the train step's randomness still uses threefry).
        init_rng = jax.random.key(self.cfg.seed, impl="rbg")
        return jax.jit(self._create_state, out_shardings=self.replicated)(init_rng)

    def data(self) -> data_factory.DataBundle:
        """The config's data, batched for this host's share of the mesh."""
        per_host = parallel.per_host_batch_size(self.cfg.batch_size, self.mesh)
        return data_factory.DataBundle(self.cfg, per_host_batch=per_host, method=self.method)

    def first_batch(self) -> dict[str, np.ndarray]:
        """The first batch of the training stream, on the host (numpy): what a
        benchmark times a step on."""
        with contextlib.closing(self.data().train_iterator()) as batches:
            return {k: np.asarray(v) for k, v in next(batches).items()}

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state, without computing it."""
        return abstract_state(self.method, self.tx, self.cfg.optimizer.ema_decay > 0,
                              self.replicated)

    def start_state(self) -> TrainState:
        """The state a new run starts from: fresh, then what the method loads from
        earlier runs (``prepare_state``), then the pretrained weights of
        ``model.init_from`` for methods that take them (``init_rules``)."""
        state = self.init_state()
        prepare = getattr(self.method, "prepare_state", None)
        if prepare is not None:
            state = prepare(state, self)
        init_from = self.cfg.model.get("init_from", "")
        if self.method.init_rules is not None and init_from:
            filled = pretrained.load_into(state, init_from, self.method.init_rules,
                                          self.cfg.method)
            state = self.with_variables(state, filled.pop("params"), model_state=filled)
        return state

    # ----------------------------------------------------------------- steps
    def _step(self, state: TrainState, batch: dict[str, jax.Array], variant: Any = None):
        # Traced under the mesh, so per-sample operations can run on each device's rows
        # (adverse_vision.ops.per_device), and so can BatchNorm's statistics with
        # model.bn_sync=False (adverse_vision.models.batch_norm); convolution kernel
        # gradients in the form fastest on CPU (adverse_vision.ops.tap_conv).
        with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh), \
                per_device_statistics(not self.cfg.model.bn_sync), \
                tap_conv.kernel_gradients_by_rows():
            return self._step_on_mesh(state, batch, variant)

    def _step_on_mesh(self, state: TrainState, batch: dict[str, jax.Array], variant: Any):
        rng = jax.random.fold_in(self.base_rng, state.step)

        grads_fn = getattr(self.method, "grads_fn", None)
        # The scopes name the loss's and the update's operations for
        # adverse_vision.breakdown (metadata only: the program is the same).
        with jax.named_scope(LOSS_SCOPE):
            if grads_fn is not None:  # methods whose gradients are not one loss's (bi-level)
                loss, grads, model_state, metrics = grads_fn(
                    state.params, state.model_state, batch, rng, state.step, variant=variant)
            else:
                def loss_fn(params):
                    return self.method.loss_fn(params, state.model_state, batch, rng,
                                               state.step)

                (loss, (model_state, metrics)), grads = jax.value_and_grad(
                    loss_fn, has_aux=True)(state.params)
        with jax.named_scope(OPTIMIZER_SCOPE):
            updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema = state.ema_params
            if ema is not None:
                ema = optim.ema_update(ema, params, self.cfg.optimizer.ema_decay,
                                       state.step + 1)
        metrics = dict(metrics, loss=loss, lr=self.schedule(state.step),
                       grad_norm=optax.global_norm(grads),
                       valid_samples=jnp.sum(batch["valid"].astype(jnp.int32)))
        if jax.tree.structure(model_state) != jax.tree.structure(state.model_state):
            # A checkpoint of the changed state would not restore into a fresh one.
            raise ValueError(f"method {self.method.name!r}: its train step returns a model "
                             f"state of another structure than it was given: "
                             f"{jax.tree.structure(model_state)} for "
                             f"{jax.tree.structure(state.model_state)}")
        new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                                  opt_state=opt_state, ema_params=ema)
        return new_state, metrics

    @property
    def train_step(self) -> "_TrainStep":
        """``train_step(state, batch, step=None) -> (state, metrics)``, jitted.

        Methods with a ``step_variant(step)`` (e.g. whether an iteration takes the
        upper-level step) get one compiled program per variant, chosen on the host from
        ``step`` (read from the state when not given), instead of a ``lax.cond`` inside
        one program (XLA:CPU runs the branches of a conditional many times slower)."""
        if self._train_step is None:
            jitted = xla_options.jit(
                self._step, in_shardings=(self.replicated, self.batch_sharding),
                out_shardings=(self.replicated, self.replicated), donate_argnums=(0,),
                static_argnums=(2,))
            self._train_step = _TrainStep(jitted, getattr(self.method, "step_variant", None))
        return self._train_step

    def batch_keys(self, step: int, local: dict[str, Any]) -> tuple[str, ...]:
        """The entries of a host batch (``local``) that the train step of ``step`` reads:
        the only ones sent to the devices (found once per step variant by tracing the
        step on shapes, :func:`adverse_vision.feed.read_keys`)."""
        variant = self.train_step.variant(step)
        if variant not in self._batch_keys:
            self._batch_keys[variant] = feed.read_keys(
                lambda state, batch: self._step(state, batch, variant),
                self.abstract_state(), feed.global_shapes(local))
        return self._batch_keys[variant]

    @property
    def predict(self) -> Callable:
        if self._predict is None:
            def predict(variables, batch):
                with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
                    return self.method.predict(variables, batch)

            self._predict = xla_options.jit(
                predict,
                in_shardings=(self.replicated, self.batch_sharding),
                out_shardings=self.batch_sharding)
        return self._predict

    # ----------------------------------------------------------------- eval
    def evaluate(self, variables: dict[str, Any], pipeline,
                 predict: Optional[Callable] = None,
                 evaluator: Any = None) -> tuple[dict[str, float], Any]:
        """One pass over an evaluation pipeline; returns (metrics, evaluator).
        ``predict(batch) -> outputs`` replaces the method's prediction with
        ``variables`` (a method's own comparisons, e.g. of several denoisers);
        ``evaluator`` the method's (``make_evaluator()``)."""
        evaluator = self.method.make_evaluator() if evaluator is None else evaluator
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
        return self.variant(int(jax.device_get(state.step)) if step is None else step)

    def variant(self, step: int) -> Any:
        """The method's variant of iteration ``step`` (None for methods without)."""
        return None if self.step_variant is None else self.step_variant(int(step))

    def __call__(self, state: TrainState, batch: dict[str, jax.Array],
                 step: Optional[int] = None):
        return self.jitted(state, batch, self._variant(state, step))

    def lower(self, state: TrainState, batch: dict[str, jax.Array], step: Optional[int] = None):
        return self.jitted.lower(state, batch, self._variant(state, step))

    def trace(self, state: TrainState, batch: dict[str, jax.Array], step: Optional[int] = None):
        return self.jitted.trace(state, batch, self._variant(state, step))


class _Window:
    """The metrics of the steps since the last check. They stay on the devices until a
    log or save step (the host does not wait for the device in between); ``check`` then
    fetches them once and stops the run before anything non-finite is logged or saved,
    or when no valid sample arrived in the whole window."""

    def __init__(self):
        self.pending: list[tuple[int, dict[str, Any]]] = []  # on the devices
        self.fetched: list[tuple[int, dict[str, Any]]] = []  # on the host, since the last log

    def add(self, step: int, metrics: dict[str, Any]) -> None:
        self.pending.append((step, metrics))

    def check(self, trainer: "Trainer", state: TrainState, ckpt: ckpt_lib.Checkpointer,
              data: data_factory.DataBundle) -> None:
        if not self.pending:
            return
        steps = [step for step, _ in self.pending]
        window = list(zip(steps, jax.device_get([m for _, m in self.pending])))
        self.pending = []
        self.fetched.extend(window)
        for step, m in window:
            for key, what in (("loss", "loss"), ("grad_norm", "gradient norm")):
                if not math.isfinite(float(m[key])):
                    _stop_non_finite(f"{what} is {float(m[key])} at step {step}", ckpt)
        if not bool(jax.device_get(trainer.all_finite(state))):
            _stop_non_finite(f"parameters are not finite after step {steps[-1]}", ckpt)
        if not any(int(m["valid_samples"]) for _, m in window):
            problems = ", ".join(f"{k}={v}" for split in data.problems_summary().values()
                                 for k, v in split.items() if v and k != "total")
            raise DataError(
                f"no valid training sample in steps {steps[0]}-{steps[-1]} ({len(steps)} "
                f"batches): every image failed to load; stopping ({problems or 'see the log'})")

    def means(self) -> dict[str, float]:
        """Means over the steps fetched since the last call."""
        fetched, self.fetched = self.fetched, []
        return {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}


def _stop_non_finite(what: str, ckpt: ckpt_lib.Checkpointer) -> None:
    last = ckpt.latest_step()
    where = (f"the last good checkpoint is step {last} in {ckpt.directory}" if last is not None
             else "no checkpoint was saved before it")
    raise NonFiniteLossError(f"{what}; stopping. {where}")


class _Preemption:
    """Turns SIGTERM (a preempted VM, ``kill``) and a first Ctrl-C (SIGINT) into a flag
    the loop polls once per step (:meth:`poll`), so it can save and exit cleanly; a
    second Ctrl-C interrupts at once.

    On several processes the flag must turn on at the same step everywhere, or the
    processes that stop leave the others waiting in the next collective. There SIGTERM
    is left to JAX's preemption notifier (installed by ``jax.distributed.initialize``):
    a process that gets it tells the others through the coordination service, and
    ``reached_preemption_sync_point`` turns true on every process at one agreed step.
    A first Ctrl-C raises SIGTERM in its own process, to the same effect."""

    def __init__(self):
        self.requested = False
        self._interrupted = False
        self._synced = jax.process_count() > 1
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            signals = (signal.SIGINT,) if self._synced else (signal.SIGTERM, signal.SIGINT)
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):  # pylint: disable=unused-argument
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and (self.requested or self._interrupted):
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            log.warning("%s received: saving a checkpoint and exiting (press Ctrl-C again to "
                        "stop without saving)", name)
        else:
            log.warning("%s received: saving a checkpoint and exiting", name)
        if self._synced:
            self._interrupted = True
            signal.raise_signal(signal.SIGTERM)  # to JAX's notifier, shared by all processes
        else:
            self.requested = True

    def poll(self, step: int) -> bool:
        """Whether to save and stop after ``step``: the same answer on every process.
        Call it once per step, with increasing steps."""
        if self._synced and not self.requested:
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
            if multihost_utils.reached_preemption_sync_point(step):
                log.warning("preemption: every process saves step %d and exits", step)
                self.requested = True
        return self.requested

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str,
                       progress: Optional[bool] = None) -> dict[str, Any]:
    """Trains ``cfg`` in ``workdir``, resuming from the last checkpoint there."""
    trainer = Trainer(cfg)
    storage.makedirs(workdir)
    ckpt = workdir_lib.checkpointer(workdir, cfg, trainer.method, keep=cfg.keep_checkpoints)
    resuming = ckpt.latest_step() is not None
    if resuming and storage.exists(workdir_lib.config_path(workdir)):
        for change in workdir_lib.check_config_change(cfg, workdir):
            log.warning("resumed with a changed config: %s", change)
    workdir_lib.save_config(cfg, workdir)
    data = trainer.data()
    train_iter = data.train_iterator()

    try:
        if resuming:
            state, start = ckpt.restore(trainer.abstract_state(), train_iter)
            log.info("resumed from step %d in %s", start, ckpt.directory)
        else:
            state = trainer.start_state()
    except BaseException:
        ckpt.close()
        train_iter.close()
        raise
    start = int(jax.device_get(state.step))
    if start >= cfg.total_steps:
        try:
            return _finished_run(trainer, state, data, workdir, ckpt, start)
        finally:
            ckpt.close()
            train_iter.close()

    writer = MetricWriter(workdir)
    bar = Progress(total=cfg.total_steps, initial=start, enabled=progress,
                   images_per_step=cfg.batch_size)
    summary: dict[str, Any] = {"start_step": start, "preempted": False}
    window = _Window()
    invalid_samples = 0
    last_evals: dict[str, dict[str, float]] = {}
    t_start = time.time()
    step = start
    train_step = trainer.train_step  # made here, before the feeder's thread asks for it
    # From here the feeder owns the data iterator (and closes it).
    feeder = feed.DevicePrefetcher(train_iter, trainer.mesh, trainer.batch_keys,
                                   first_step=start, ahead=DEVICE_PREFETCH)
    try:
        with _Preemption() as preempt:
            while step < cfg.total_steps:
                batch, invalid = next(feeder)
                invalid_samples += invalid
                state, metrics = train_step(state, batch, step=step)
                step += 1
                window.add(step, metrics)
                bar.update(step)
                stopping = preempt.poll(step)
                log_now = step % cfg.log_every == 0 or step == cfg.total_steps
                evals_now = [name for name, entry in cfg.evals.items()
                             if step % (entry.every or cfg.eval_every) == 0
                             or step == cfg.total_steps]
                save_now = bool(evals_now) or step % cfg.checkpoint_every == 0 or stopping
                if log_now or save_now:
                    window.check(trainer, state, ckpt, data)
                if log_now:
                    scalars = window.means()
                    scalars.update(bar.rates())
                    writer.write(step, {f"train/{k}": v for k, v in scalars.items()})
                    bar.set_postfix(loss=scalars["loss"], img_s=scalars["images_per_s"])
                evaluated = {}
                for name in evals_now:
                    metrics = trainer.method.train_evaluation(trainer, state.eval_variables(),
                                                              data, name)
                    last_evals[name] = metrics
                    evaluated.update({f"{name}/{k}": v for k, v in metrics.items()})
                    log.info("step %d: %s", step, ", ".join(f"{name}/{k} {v:.4f}"
                                                            for k, v in metrics.items()))
                if evaluated:
                    writer.write(step, evaluated)
                if save_now:
                    ckpt.save(step, state, feeder.checkpoint_view(), metrics=evaluated or None)
                if stopping:
                    summary["preempted"] = True
                    break
    except BaseException as e:
        summary["stopped"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        bar.close()
        ckpt.close()  # waits for the last save
        feeder.close()  # stops its thread and the data iterator's worker processes
        writer.close()
        elapsed = time.time() - t_start
        summary.update(_end_of_run(cfg, data, ckpt, step, elapsed, last_evals))
        summary.update(steps_per_second=(step - start) / max(elapsed, 1e-9),
                       invalid_samples=invalid_samples)
        _write_summary(workdir, summary)
    return summary


def _end_of_run(cfg, data, ckpt, step: int, seconds: float,
                evals: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The part of a run's summary that its last state and checkpoints give."""
    return {"final_step": step, "seconds": seconds, "data_problems": data.problems_summary(),
            "val": evals.get(cfg.best_eval, {}), "evals": evals,
            "best_step": ckpt.best_step(), "latest_step": ckpt.latest_step()}


def _write_summary(workdir: str, summary: dict[str, Any]) -> None:
    if jax.process_index() == 0:
        workdir_lib.write_json(storage.join(workdir, "summary.json"), summary)


def _finished_run(trainer: Trainer, state: TrainState, data, workdir: str, ckpt,
                  step: int) -> dict[str, Any]:
    """The summary of a run started again after its last step: the one it wrote, left as
    it is; or, where it stopped before writing one (killed after its last checkpoint, or
    preempted on its last step), a new one from its evaluations run now. Starting a
    finished run again never loses its results."""
    path = storage.join(workdir, "summary.json")
    if storage.exists(path):
        written = json.loads(storage.read_text(path))
        if (written.get("final_step") == step and not written.get("preempted")
                and written.get("evals")):
            log.info("%s had finished at step %d; its summary.json stands", workdir, step)
            return {**written, "start_step": step, "seconds": 0.0, "steps_per_second": 0.0}
    t_start = time.time()
    evals = {name: trainer.method.train_evaluation(trainer, state.eval_variables(), data, name)
             for name in trainer.cfg.evals}
    log.info("%s had reached step %d without a summary: evaluated it again", workdir, step)
    summary = {"start_step": step, "preempted": False, "steps_per_second": 0.0,
               "invalid_samples": 0,
               **_end_of_run(trainer.cfg, data, ckpt, step, time.time() - t_start, evals)}
    _write_summary(workdir, summary)
    return summary


def restore_for_eval(workdir: str, which: str = "best"):
    """(trainer, eval variables, step) from the best (by the ranking metric; the latest
    when none was evaluated) or latest checkpoint of a workdir."""
    cfg, _, state, step = workdir_lib.restore_state(workdir, which)
    return Trainer(cfg), state.eval_variables(), step


def log_to_stderr(level: int = logging.INFO) -> None:
    """Shows the library's log (``adverse_vision`` and its children) on stderr, once."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False  # absl's root handler would print every line again
    log.setLevel(level)
