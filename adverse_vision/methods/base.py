"""What a method declares, and the defaults every method starts from.

A method is a subclass of :class:`Method` registered under a name
(:func:`adverse_vision.methods.register`). The shared layers read everything they
need from it and name no method themselves:

(a) config: :meth:`Method.defaults` adds the method's keys to the keys every run has
    (:func:`adverse_vision.config.base_config`); :meth:`Method.check_config` checks
    their values. A key the method does not declare does not exist for its runs.
(b) data: ``datasets`` maps each ``data.name`` the method reads to a source builder
    of :mod:`adverse_vision.data.catalog`; :meth:`Method.make_pipeline` turns a
    source into batches; :meth:`Method.train_iterator` the training stream (extra
    splits such as a held-out upper level); ``eval_keys`` the entries the evaluator
    reads on the host.
(c) evaluation: :meth:`Method.make_evaluator`, its ``best_metric``,
    :meth:`Method.train_evaluation` for the evaluations during training and
    :meth:`Method.report` for ``python -m adverse_vision.evaluate``.
(d) official weights: ``converters``, network name -> :class:`Converter`.
(e) benchmark: :meth:`Method.bench_train` (the train step's timing),
    :meth:`Method.bench_extra` (timings of the method's parts) and
    :meth:`Method.bench_lines`.
(f) prediction on image files (``python -m adverse_vision.predict``): the inputs
    besides the visible image (``predict_inputs``), whether it ``detects`` and
    ``restores``, the function run (:meth:`Method.predict_fn`) and the images written
    (:meth:`Method.prediction_images`).

Training itself: ``init_variables``, ``loss_fn`` (or ``grads_fn`` with
``step_variant`` for methods whose gradient is not one loss's), ``predict``, an
optional ``make_optimizer`` and ``prepare_state`` (runs that start from earlier
runs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Optional

import ml_collections

from adverse_vision.config import ConfigError
from adverse_vision.errors import OfficialUnavailable


@dataclasses.dataclass(frozen=True)
class Converter:
    """An official network the project reads the weights of.

    Attributes:
      model: ``"module.path:ClassName"`` of the Flax module.
      rules: ``(regex, replacement)`` key rules from official state_dict keys to the
        project's flattened variable names (see :mod:`adverse_vision.convert`).
      ignored: official keys (regular expressions) with no counterpart, skipped.
      example_inputs: ``example_inputs(side) -> tuple`` of the arrays the module is
        called with to trace its variable shapes (batch 1, ``side`` pixels square);
        None: one float32 RGB image.
      takes_classes: the module is built with ``num_classes`` and ``size`` (read from
        the checkpoint's class head and layout when not given).
      config: the config file whose method trains this network (``convert --out``
        writes a workdir with it), relative to the repository root.
    """

    model: str
    rules: tuple
    ignored: tuple = ()
    example_inputs: Optional[Callable[[int], tuple]] = None
    takes_classes: bool = True
    config: str = ""

    def inputs(self, side: int) -> tuple:
        """The arrays that trace the module's variables at ``side`` pixels."""
        if self.example_inputs is not None:
            return tuple(self.example_inputs(side))
        import numpy as np  # pylint: disable=import-outside-toplevel
        return (np.zeros((1, side, side, 3), np.float32),)


class Method:
    """The base of every method; see the module docstring for what a method declares."""

    #: The registered name (``cfg.method``); set by ``register``.
    name: ClassVar[str] = ""
    #: data.name -> source builder ``(bundle, data_cfg, split, problems) -> source``.
    datasets: ClassVar[dict[str, Callable]] = {}
    #: Batch entries the evaluator reads (gathered to the host).
    eval_keys: tuple[str, ...] = ("valid",)
    #: Metric of an evaluation that ranks checkpoints (higher is better).
    best_metric: str = ""
    #: Network name -> :class:`Converter` of the official weights this method reads.
    converters: ClassVar[dict[str, Converter]] = {}
    #: Key rules of the official checkpoints ``model.init_from`` may name (the run then
    #: starts from every tensor that matches by name and shape); None: the method has no
    #: ``model.init_from``, or reads it itself (``prepare_state``).
    init_rules: ClassVar[Optional[tuple]] = None
    #: The tasks ``versus`` and ``breakdown`` time when :meth:`own_contenders` builds
    #: our side of its own (its keys); None: the standard ``versus.TASKS``.
    contender_tasks: ClassVar[Optional[tuple[str, ...]]] = None

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg

    # ------------------------------------------------------------------ config
    @classmethod
    def defaults(cls) -> ml_collections.ConfigDict:
        """The method's config keys with their defaults, as groups to merge into the
        keys every run has (a group of the base, e.g. ``model``, gets keys added)."""
        return ml_collections.ConfigDict()

    @classmethod
    def check_config(cls, cfg: ml_collections.ConfigDict) -> None:
        """Raises ConfigError naming the first unusable value of the method's keys."""
        if cfg.data.name not in cls.datasets:
            raise ConfigError(f"config key 'data.name' is {cfg.data.name!r}; method "
                              f"{cls.name!r} reads one of {tuple(cls.datasets)}")

    # ------------------------------------------------------------------ data
    def make_source(self, bundle, data_cfg: ml_collections.ConfigDict, split: str, problems):
        """The source of ``split`` of the dataset ``data_cfg`` describes."""
        return self.datasets[data_cfg.name](bundle, data_cfg, split, problems)

    def make_pipeline(self, bundle, source, *, train: bool, seed: int,
                      data_cfg: ml_collections.ConfigDict):
        """Batches of ``source`` (a grain dataset; see :mod:`adverse_vision.data`)."""
        raise NotImplementedError

    def train_iterator(self, bundle):
        """The training stream; its state is saved with every checkpoint."""
        return iter(bundle.pipeline("train", train=True))

    # ------------------------------------------------------------------ evaluation
    def make_evaluator(self):
        raise NotImplementedError

    def train_evaluation(self, trainer, variables, bundle, entry) -> dict[str, float]:
        """The metrics of one evaluation entry during training (logged as
        ``<entry>/<metric>``). The default runs the entry's evaluation pipeline through
        the method's evaluator."""
        metrics, _ = trainer.evaluate(variables, bundle.eval_pipeline(entry))
        return metrics

    def report(self, trainer, variables, bundle, entry, options: dict[str, Any]):
        """``(metrics, table)`` of ``python -m adverse_vision.evaluate`` for one
        evaluation entry (``options``: the program's extra flags)."""
        del options
        metrics, evaluator = trainer.evaluate(variables, bundle.eval_pipeline(entry),
                                              evaluator=self.report_evaluator(bundle, entry))
        return metrics, evaluator.table()

    def report_evaluator(self, bundle, entry):
        """The evaluator :meth:`report` scores ``entry`` with; None: the trainer's
        (:meth:`make_evaluator`)."""
        del bundle, entry
        return None

    # ------------------------------------------------------------------ benchmark
    def bench_train(self, bench, trainer, state, batch, steps: int):
        """``(measured, entries)`` of ``python -m adverse_vision.bench``'s train step:
        ``measured`` (an :class:`adverse_vision.timing.Measured`) is one train step as
        training runs it, ``entries`` the method's own results. ``bench``: the
        program's helpers (:class:`adverse_vision.timing.BenchTools`); the timed steps
        consume ``state``. The default compiles the step once and times it."""
        return bench.measure_train_step(trainer.train_step, state, batch, steps), {}

    def bench_extra(self, bench, variables, batch, steps: int) -> dict[str, Any]:
        """Timings of the method's parts on the inference batch, with the variables
        inference ran with. The default has none."""
        del bench, variables, batch, steps
        return {}

    @staticmethod
    def bench_lines(result: dict[str, Any]) -> list[str]:
        """Report lines of the entries :meth:`bench_train` and :meth:`bench_extra` add."""
        del result
        return []

    # ------------------------------------------------------------------ prediction
    #: What ``predict`` reads per image besides the visible one (``("thermal",)``: an
    #: infrared image paired by file stem).
    predict_inputs: ClassVar[tuple[str, ...]] = ()
    #: Whether ``predict_fn(restore=True)`` adds a restored image, which costs compute
    #: and which ``predict --norestore`` leaves out.
    restores: ClassVar[bool] = False

    @property
    def detects(self) -> bool:
        """Whether predictions hold detections (``boxes``, ``scores``, ``classes``,
        ``valid``), which ``predict`` writes as JSON and draws."""
        return False

    def predict_fn(self, restore: bool) -> Callable:
        """``fn(variables, batch) -> outputs`` that ``predict`` runs on letterboxed
        image files (``restore``: also the restored image, for methods that
        :attr:`restores`). The default is :meth:`predict` for methods that detect;
        ValueError for the others, which have nothing to write unless they override
        this and :meth:`prediction_images`."""
        del restore
        if not self.detects:
            raise ValueError(f"method {self.name!r} has no prediction for image files: "
                             "it neither detects nor makes images")
        return self.predict

    def official_contenders(self, checkout: str, batches: dict[str, dict[str, Any]]
                            ) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
        """The official implementation, built from its repository's ``checkout`` at run
        time, for ``python -m adverse_vision.versus``: ``({task: callable}, info)``, each
        callable running one ``"train step"`` or ``"inference"`` on the inputs ours gets
        (``batches["train"]``, ``batches["infer"]``: numpy batches of the run's data) and
        returning when its work is done; ``info`` describes what was built, and its
        ``versus.NETWORKS`` entry (``{label: torch module}``) names the modules whose
        submodules ``python -m adverse_vision.breakdown`` splits the time by.

        Raises:
          OfficialUnavailable: one line on what is missing (by default: no official side)."""
        del checkout, batches
        raise OfficialUnavailable(f"method {self.name!r} has no official implementation to "
                                  "time against")

    def own_contenders(self, trainers: dict[str, Any], batches: dict[str, dict[str, Any]]
                       ) -> dict[str, Callable[[], Any]]:
        """Our side of the :meth:`official_contenders` tasks that are not the standard
        ``"train step"`` (the run's jitted train step) and ``"inference"`` (its
        ``predict_fn``), e.g. one network of the method alone: ``{task: callable}``
        built from ``trainers`` (``"train"``, ``"infer"``: the run's :class:`Trainer`
        at the train and the inference batch) on the same ``batches``; a
        ``versus.Compiled`` (one compiled program and its HLO text) lets ``breakdown``
        split it too. Default: none."""
        del trainers, batches
        return {}

    def evaluation_images(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The images of an evaluation batch that its network input is made of, uint8
        ``(B, H, W, C)`` per batch key: ``image`` (the degraded input), ``clean`` where the
        data has it, and the :attr:`predict_inputs`. ``python -m adverse_vision.samples``
        writes them as the files ``predict`` reads. The default: the batch's own; a
        method that degrades its input on the device gives the degraded one."""
        return {k: batch[k] for k in ("image", "clean", *self.predict_inputs) if k in batch}

    def prediction_images(self, outputs: dict[str, Any], i: int,
                          to_original: Callable) -> dict[str, Any]:
        """Images of ``predict`` for image ``i`` of a batch: file suffix (``"_fused.png"``)
        -> uint8 image at the original size; ``to_original(x, value_range=(lo, hi),
        nearest=False)`` undoes the letterbox. The entry ``"canvas"`` (not written) is
        the image the detections are drawn on, when not the input."""
        del outputs, i, to_original
        return {}
