"""Config -> data sources and grain pipelines for a run.

``DataBundle(cfg, per_host_batch)`` builds the training source and the evaluation
sources of ``cfg.data`` on demand, the training iterator (checkpointable) and a fresh
single-pass evaluation pipeline per call, and gathers the bad-input report of every
source for the run summary.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from adverse_vision.data import pipeline
from adverse_vision.data.problems import DataPolicy, DataProblems

DNHL_STAGES = ("high", "denoise", "joint")
DNHL_TASKS = ("classification", "segmentation")
DNHL_DATASETS = ("scenes", "scenes_crops", "image_folder", "class_folder", "voc_seg")
BDLF_DATASETS = ("scenes", "m3fd", "mfnet", "fusion_folder")
# Datasets read from files under ``data.root`` (tfds falls back to its own data_dir).
NEEDS_ROOT = ("voc", "coco", "image_folder", "class_folder", "voc_seg", "m3fd", "mfnet",
              "fusion_folder")


def _plain(x: Any) -> Any:
    if isinstance(x, tuple) and any(isinstance(v, (ml_collections.ConfigDict, dict)) for v in x):
        return [_plain(v) for v in x]  # a tuple of degradation specs
    return x.to_dict() if isinstance(x, ml_collections.ConfigDict) else x


class DataBundle:
    """The sources and pipelines of one run."""

    def __init__(self, cfg: ml_collections.ConfigDict, per_host_batch: int):
        self.cfg = cfg
        self.per_host_batch = per_host_batch
        self.policy = DataPolicy.from_config(_plain(cfg.data))
        self._sources: dict[str, Any] = {}
        if cfg.data.name in NEEDS_ROOT and not cfg.data.root:
            raise ValueError(f"config key 'data.root' is empty; data.name {cfg.data.name!r} "
                             f"reads its files from there (--config.data.root=/path/to/dataset)")

    def split_name(self, split: str) -> str:
        """The dataset's own name of a run split ("train", "val", "test")."""
        d = self.cfg.data
        if d.name in ("scenes", "scenes_crops"):
            return split
        return {"train": d.train_split, "val": d.val_split, "test": d.val_split}[split]

    def source(self, split: str):
        if split not in self._sources:
            self._sources[split] = self._make_source(split)
        return self._sources[split]

    @property
    def dnhl_task(self) -> str:
        """The dense task of a "dnhl" run: "denoise" for the stage "denoise", else
        ``cfg.dnhl.task``."""
        stage, task = self.cfg.dnhl.stage, self.cfg.dnhl.task
        if stage not in DNHL_STAGES:
            raise ValueError(f"config key 'dnhl.stage' is {stage!r}; choose one of {DNHL_STAGES}")
        if task not in DNHL_TASKS:
            raise ValueError(f"config key 'dnhl.task' is {task!r}; choose one of {DNHL_TASKS}")
        return "denoise" if stage == "denoise" else task

    def _folder_classes(self) -> tuple[str, ...] | None:
        """``data.class_names``, or when it is empty the sorted class folders of the
        training split (so every split numbers the classes alike), or None when
        there is no training folder (each split then uses its own folders)."""
        d = self.cfg.data
        if tuple(d.class_names):
            return tuple(d.class_names)
        train_root = os.path.join(d.root, self.split_name("train"))
        if not os.path.isdir(train_root):
            return None
        return tuple(sorted(
            e for e in os.listdir(train_root) if os.path.isdir(os.path.join(train_root, e))
        )) or None

    def _make_dnhl_source(self, split: str):
        # pylint: disable=import-outside-toplevel
        from adverse_vision.data import folders, scenes_tasks

        d = self.cfg.data
        task = self.dnhl_task
        problems = DataProblems(f"{d.name} {split}")
        if d.name == "scenes":
            if task == "classification":
                raise ValueError(
                    "config key 'data.name' is 'scenes' (segmentation masks) but 'dnhl.task' is "
                    "'classification'; use data.name 'scenes_crops' for classification"
                )
            count = d.num_train if split == "train" else d.num_val
            return scenes_tasks.ScenesSegmentationSource(
                split=split, num_samples=count, image_size=d.scene_size, seed=d.seed)
        if d.name == "scenes_crops":
            count = d.num_train if split == "train" else d.num_val
            return scenes_tasks.ScenesCropsSource(
                split=split, num_samples=count, crop_size=self.cfg.image_size,
                scene_size=d.scene_size, seed=d.seed)
        if d.name == "image_folder":
            return folders.ImageFolderSource(
                os.path.join(d.root, self.split_name(split)), problems=problems, policy=self.policy)
        if d.name == "class_folder":
            return folders.ClassFolderSource(
                os.path.join(d.root, self.split_name(split)),
                class_names=self._folder_classes(), problems=problems, policy=self.policy)
        if d.name == "voc_seg":
            return folders.VOCSegmentationSource(
                d.root, self.split_name(split), problems=problems, policy=self.policy)
        raise ValueError(
            f"config key 'data.name' is {d.name!r}; method 'dnhl' reads one of {DNHL_DATASETS}"
        )

    def _make_bdlf_source(self, split: str):
        # pylint: disable=import-outside-toplevel
        from adverse_vision.data import fusion_pairs

        d = self.cfg.data
        problems = DataProblems(f"{d.name} {split}")
        if d.name == "m3fd":
            return fusion_pairs.M3FDSource(d.root, self.split_name(split),
                                           class_names=tuple(d.class_names), policy=self.policy,
                                           problems=problems)
        if d.name == "mfnet":
            return fusion_pairs.MFNetSource(d.root, self.split_name(split), policy=self.policy,
                                            problems=problems)
        if d.name == "fusion_folder":
            root = os.path.join(d.root, self.split_name(split))
            return fusion_pairs.FusionFolderSource(root if os.path.isdir(root) else d.root,
                                                   policy=self.policy, problems=problems)
        if d.name != "scenes":
            raise ValueError(f"config key 'data.name' is {d.name!r}; method 'bdlf' reads one of "
                             f"{BDLF_DATASETS}")
        return None  # the detection scenes below carry the thermal image and the masks

    def _make_source(self, split: str):
        d = self.cfg.data
        if self.cfg.method == "dnhl":
            return self._make_dnhl_source(split)
        if self.cfg.method == "bdlf":
            source = self._make_bdlf_source(split)
            if source is not None:
                return source
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
        if self.cfg.method == "dnhl":
            from adverse_vision.data.dense import make_dense_pipeline  # pylint: disable=import-outside-toplevel
            return make_dense_pipeline(
                self.source(split), batch_size=self.per_host_batch,
                image_size=self.cfg.image_size, train=train, task=self.dnhl_task,
                seed=self.cfg.seed,
                augment={"scale": _plain(d.augment.scale), "flip": d.augment.flip},
                num_workers=d.num_workers)
        return self._detection_pipeline(self.source(split), train, self.cfg.seed)

    def _detection_pipeline(self, source, train: bool, seed: int):
        d = self.cfg.data
        return pipeline.make_pipeline(
            source, batch_size=self.per_host_batch, image_size=self.cfg.image_size,
            max_boxes=d.max_boxes, train=train, seed=seed,
            degrade=_plain(d.degrade if train else d.val_degrade),
            augment=_plain(d.augment), num_workers=d.num_workers,
            saliency=self.cfg.method == "bdlf")

    def held_out_split(self):
        """``(lower, upper)`` sources: the training split without and with its held-out
        ``bdlf.upper_fraction`` (fixed by ``data.seed``)."""
        from adverse_vision.data import held_out  # pylint: disable=import-outside-toplevel
        source = self.source("train")
        lower, upper = held_out.split_indices(len(source), float(self.cfg.bdlf.upper_fraction),
                                              self.cfg.data.seed)
        return (held_out.Subset(source, lower, "lower level"),
                held_out.Subset(source, upper, "upper level"))

    def train_iterator(self):
        """The training stream's iterator; its state is saved with each checkpoint.

        Bi-level runs (method "bdlf" in mode "bilevel") pair each batch with a batch of
        the held-out part (``batch["upper/<key>"]``), drawn anew every
        ``bdlf.upper_every`` batches."""
        if self.cfg.method == "bdlf" and self.cfg.bdlf.mode == "bilevel":
            from adverse_vision.data import held_out  # pylint: disable=import-outside-toplevel
            lower, upper = self.held_out_split()
            return held_out.PairedIterator(
                iter(self._detection_pipeline(lower, True, self.cfg.seed)),
                iter(self._detection_pipeline(upper, True, self.cfg.seed + 1)),
                int(self.cfg.bdlf.upper_every))
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
