"""Config -> data sources and grain pipelines for a run.

``DataBundle(cfg, per_host_batch)`` builds the training source and the evaluation
sources of ``cfg.data`` on demand, the training iterator (checkpointable) and a fresh
single-pass evaluation pipeline per call, and gathers the bad-input report of every
source for the run summary.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from adverse_vision.data import pipeline
from adverse_vision.data.problems import DataPolicy, DataProblems


def _plain(x: Any) -> Any:
    return x.to_dict() if isinstance(x, ml_collections.ConfigDict) else x


class DataBundle:
    """The sources and pipelines of one run."""

    def __init__(self, cfg: ml_collections.ConfigDict, per_host_batch: int):
        self.cfg = cfg
        self.per_host_batch = per_host_batch
        self.policy = DataPolicy.from_config(_plain(cfg.data))
        self._sources: dict[str, Any] = {}

    def split_name(self, split: str) -> str:
        """The dataset's own name of a run split ("train", "val", "test")."""
        d = self.cfg.data
        if d.name == "scenes":
            return split
        return {"train": d.train_split, "val": d.val_split, "test": d.val_split}[split]

    def source(self, split: str):
        if split not in self._sources:
            self._sources[split] = self._make_source(split)
        return self._sources[split]

    def _make_source(self, split: str):
        d = self.cfg.data
        class_names = tuple(d.class_names)
        class_map = dict(_plain(d.class_map)) or None
        problems = DataProblems(f"{d.name} {split}")
        if d.name == "scenes":
            from adverse_vision.data.scenes import ScenesSource  # pylint: disable=import-outside-toplevel
            count = d.num_train if split == "train" else d.num_val
            return ScenesSource(split=split, num_samples=count,
                                image_size=(d.scene_size, d.scene_size), seed=d.seed)
        if d.name == "voc":
            from adverse_vision.data.voc import VOCSource  # pylint: disable=import-outside-toplevel
            return VOCSource(d.root, image_set=self.split_name(split), class_names=class_names,
                             class_map=class_map, policy=self.policy, problems=problems)
        if d.name == "coco":
            from adverse_vision.data.coco import COCOSource  # pylint: disable=import-outside-toplevel
            annotations = d.train_annotations if split == "train" else d.val_annotations
            return COCOSource(annotations, d.root, class_names=class_names, class_map=class_map,
                              policy=self.policy, problems=problems)
        if d.name == "tfds":
            from adverse_vision.data.tfds_source import TFDSSource  # pylint: disable=import-outside-toplevel
            return TFDSSource(d.tfds_name, self.split_name(split), data_dir=d.root or None,
                              class_names=class_names, class_map=class_map,
                              policy=self.policy, problems=problems)
        raise ValueError(f"config key 'data.name' is {d.name!r}; no such dataset")

    def _pipeline(self, split: str, train: bool):
        d = self.cfg.data
        return pipeline.make_pipeline(
            self.source(split), batch_size=self.per_host_batch, image_size=self.cfg.image_size,
            max_boxes=d.max_boxes, train=train, seed=self.cfg.seed,
            degrade=_plain(d.degrade if train else d.val_degrade),
            augment=_plain(d.augment), num_workers=d.num_workers)

    def train_iterator(self):
        """The training stream's iterator; its state is saved with each checkpoint."""
        return iter(self._pipeline("train", train=True))

    def val_pipeline(self, split: str = "val"):
        """A single deterministic pass over ``split``, the last batch padded."""
        return self._pipeline(split, train=False)

    def problems_summary(self) -> dict[str, dict[str, int]]:
        """Bad-input counts per split, from the sources that were built."""
        out = {}
        for split, source in self._sources.items():
            problems = getattr(source, "problems", None)
            if problems is not None:
                out[split] = problems.summary()
        return out
