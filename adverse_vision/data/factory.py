"""Config -> data sources and grain pipelines for a run.

``DataBundle(cfg, per_host_batch)`` builds the sources a run's method declares
(``Method.datasets``, from :mod:`adverse_vision.data.catalog`) on demand: the training
stream (checkpointable, shaped by the method), a fresh single-pass pipeline per
evaluation (``cfg.evals`` entries, each the dataset with its own ``data`` overrides),
and the bad-input report of every source built, for the run summary.
"""

from __future__ import annotations

from typing import Any, Optional

import ml_collections

from adverse_vision import methods as methods_lib
from adverse_vision.data import held_out
from adverse_vision.data.catalog import plain
from adverse_vision.data.problems import DataPolicy, DataProblems


class DataBundle:
    """The sources and pipelines of one run (``method``: the run's method object,
    built from ``cfg`` when not given)."""

    def __init__(self, cfg: ml_collections.ConfigDict, per_host_batch: int, method=None):
        self.cfg = cfg
        self.per_host_batch = per_host_batch
        self.image_size = int(cfg.image_size)
        self.method = method if method is not None else methods_lib.build(cfg)
        self.policy = DataPolicy.from_config(plain(cfg.data))
        self._sources: dict[tuple, Any] = {}
        self._check_root(cfg.data, "data.root")

    def _check_root(self, d: ml_collections.ConfigDict, key: str) -> None:
        build = self.method.datasets.get(d.name)
        if getattr(build, "reads_root", False) and not d.root:
            raise ValueError(f"config key '{key}' is empty; data.name {d.name!r} reads its "
                             f"files from there (--config.{key}=/path/to/dataset)")

    @staticmethod
    def split_name(d: ml_collections.ConfigDict, split: str) -> str:
        """The dataset's own name of a run split ("train", "val", "test"): the image set
        or folder of ``data.train_split`` / ``data.val_split``."""
        return {"train": d.train_split, "val": d.val_split, "test": d.val_split}[split]

    # ------------------------------------------------------------------ sources
    def data_config(self, eval_name: Optional[str] = None) -> ml_collections.ConfigDict:
        """``cfg.data``, or for an evaluation entry the same with the entry's overrides."""
        if eval_name is None:
            return self.cfg.data
        if eval_name not in self.cfg.evals:
            raise ValueError(f"no evaluation {eval_name!r} in this config; its evaluations: "
                             f"{tuple(self.cfg.evals)}")
        overrides = self.cfg.evals[eval_name].data
        if not len(overrides):
            return self.cfg.data
        d = self.cfg.data.copy_and_resolve_references()
        with d.unlocked():
            for key, value in overrides.items():
                if key in ("degrade", "val_degrade", "class_map"):
                    del d[key]  # a mixture, a single spec or a map replaces the whole value
                d[key] = value
        if "root" in overrides:
            self._check_root(d, f"evals.{eval_name}.data.root")
        return d

    def source(self, split: str, eval_name: Optional[str] = None):
        """The source of ``split``, of the run's dataset or of an evaluation's."""
        key = (split, eval_name if eval_name and len(self.cfg.evals[eval_name].data) else None)
        if key not in self._sources:
            d = self.data_config(key[1])
            name = f"{d.name} {split}" + (f" ({key[1]})" if key[1] else "")
            self._sources[key] = self.method.make_source(self, d, split, DataProblems(name))
        return self._sources[key]

    # ------------------------------------------------------------------ pipelines
    def pipeline(self, split: str, train: bool, eval_name: Optional[str] = None,
                 source: Any = None, seed: Optional[int] = None):
        """The method's batches of ``split`` (or of ``source``)."""
        return self.method.make_pipeline(
            self, source if source is not None else self.source(split, eval_name), train=train,
            seed=self.cfg.seed if seed is None else seed, data_cfg=self.data_config(eval_name))

    def train_iterator(self):
        """The training stream's iterator; its state is saved with each checkpoint."""
        return self.method.train_iterator(self)

    def val_pipeline(self, split: str = "val"):
        """A single deterministic pass over ``split`` of the run's dataset, the last batch
        padded."""
        return self.pipeline(split, train=False)

    def eval_pipeline(self, eval_name: str):
        """A single deterministic pass over the evaluation ``cfg.evals[eval_name]``."""
        entry = self.cfg.evals[eval_name] if eval_name in self.cfg.evals else None
        if entry is None:
            self.data_config(eval_name)  # names the known evaluations
        return self.pipeline(entry.split, train=False, eval_name=eval_name)

    def held_out_split(self, fraction: float):
        """``(lower, upper)`` sources: the training split without and with a held-out
        ``fraction`` of it (fixed by ``data.seed``)."""
        source = self.source("train")
        lower, upper = held_out.split_indices(len(source), float(fraction), self.cfg.data.seed)
        return (held_out.Subset(source, lower, "lower level"),
                held_out.Subset(source, upper, "upper level"))

    def problems_summary(self) -> dict[str, dict[str, int]]:
        """Bad-input counts per source that was built ("train", "val", "test (rtts)")."""
        out = {}
        for (split, eval_name), source in self._sources.items():
            problems = getattr(source, "problems", None)
            if problems is not None:
                out[split + (f" ({eval_name})" if eval_name else "")] = problems.summary()
        return out
