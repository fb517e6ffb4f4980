"""Named dataset sources and the pipelines that batch them, for the methods to declare.

A source builder is ``build(bundle, data_cfg, split, problems) -> source``: ``bundle``
is the run's :class:`adverse_vision.data.factory.DataBundle` (its policy, image size
and split names), ``data_cfg`` the ``data`` group (an evaluation may override some of
its keys), ``split`` the run split ("train", "val" or "test") and ``problems`` the
:class:`~adverse_vision.data.problems.DataProblems` the source reports to. A builder
that reads files under ``data.root`` is marked :func:`reads_root`. A method maps each
``data.name`` it reads to one of them (``Method.datasets``), so "scenes" can mean the
detection scenes for one method and their segmentation masks for another.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import ml_collections

from adverse_vision import storage
from adverse_vision.data import pipeline


def plain(x: Any) -> Any:
    """A config value as plain Python (a tuple of degradation specs as a list of dicts)."""
    if isinstance(x, tuple) and any(isinstance(v, (ml_collections.ConfigDict, dict)) for v in x):
        return [plain(v) for v in x]
    return x.to_dict() if isinstance(x, ml_collections.ConfigDict) else x


def reads_root(build: Callable) -> Callable:
    """Marks a builder whose files are under ``data.root`` (an empty root is refused)."""
    build.reads_root = True
    return build


def _count(d, split: str) -> int:
    return d.num_train if split == "train" else d.num_val


def _keep_difficult(d, split: str) -> bool:
    """Objects flagged difficult stay in every evaluation split (ignored by the mAP),
    and in the training split unless ``data.train_difficult`` is False."""
    return split != "train" or bool(d.train_difficult)


# ------------------------------------------------------------------ detection sources
def scenes(bundle, d, split, problems):
    """The embedded street scenes: boxes, depth, thermal image and class masks (in
    ``data.conditions`` with ``data.thermal``'s infrared image, when set)."""
    del bundle, problems
    from adverse_vision.data.scenes import ScenesSource  # pylint: disable=import-outside-toplevel
    return ScenesSource(split=split, num_samples=_count(d, split),
                        image_size=(d.scene_size, d.scene_size), seed=d.seed,
                        thermal=d.thermal, conditions=tuple(d.conditions))


@reads_root
def voc(bundle, d, split, problems):
    from adverse_vision.data.voc import VOCSource  # pylint: disable=import-outside-toplevel
    return VOCSource(d.root, image_set=bundle.split_name(d, split),
                     class_names=tuple(d.class_names), class_map=dict(plain(d.class_map)) or None,
                     keep_difficult=_keep_difficult(d, split), policy=bundle.policy,
                     problems=problems)


@reads_root
def coco(bundle, d, split, problems):
    from adverse_vision.data.coco import COCOSource  # pylint: disable=import-outside-toplevel
    annotations = d.train_annotations if split == "train" else d.val_annotations
    return COCOSource(annotations, d.root, class_names=tuple(d.class_names),
                      class_map=dict(plain(d.class_map)) or None, policy=bundle.policy,
                      problems=problems)


def tfds(bundle, d, split, problems):
    from adverse_vision.data.tfds_source import TFDSSource  # pylint: disable=import-outside-toplevel
    return TFDSSource(d.tfds_name, bundle.split_name(d, split), data_dir=d.root or None,
                      class_names=tuple(d.class_names), class_map=dict(plain(d.class_map)) or None,
                      keep_difficult=_keep_difficult(d, split), policy=bundle.policy,
                      problems=problems)


# ------------------------------------------------------------------ dense sources
def _daylight_only(d, source: str) -> None:
    if tuple(d.conditions) or d.thermal != "simple":
        raise ValueError(f"{source} renders the daylight scenes only: leave data.conditions "
                         f"empty and data.thermal 'simple' (got {tuple(d.conditions)!r}, "
                         f"{d.thermal!r})")


def scenes_segmentation(bundle, d, split, problems):
    """The embedded scenes with their class masks (label 0: background)."""
    del bundle, problems
    _daylight_only(d, "the scenes' segmentation source")
    from adverse_vision.data import scenes_tasks  # pylint: disable=import-outside-toplevel
    return scenes_tasks.ScenesSegmentationSource(
        split=split, num_samples=_count(d, split), image_size=d.scene_size, seed=d.seed)


def scenes_crops(bundle, d, split, problems):
    """Object crops of the embedded scenes at the run's image size, labelled by class."""
    del problems
    _daylight_only(d, "the scenes' crops source")
    from adverse_vision.data import scenes_tasks  # pylint: disable=import-outside-toplevel
    return scenes_tasks.ScenesCropsSource(
        split=split, num_samples=_count(d, split), crop_size=bundle.image_size,
        scene_size=d.scene_size, seed=d.seed)


@reads_root
def image_folder(bundle, d, split, problems):
    from adverse_vision.data import folders  # pylint: disable=import-outside-toplevel
    return folders.ImageFolderSource(os.path.join(d.root, bundle.split_name(d, split)),
                                     problems=problems, policy=bundle.policy)


@reads_root
def class_folder(bundle, d, split, problems):
    from adverse_vision.data import folders  # pylint: disable=import-outside-toplevel
    return folders.ClassFolderSource(os.path.join(d.root, bundle.split_name(d, split)),
                                     class_names=folder_classes(bundle, d), problems=problems,
                                     policy=bundle.policy)


def folder_classes(bundle, d) -> tuple[str, ...] | None:
    """``data.class_names``, or when it is empty the sorted class folders of the
    training split (so every split numbers the classes alike), or None when there is
    no training folder (each split then uses its own folders)."""
    if tuple(d.class_names):
        return tuple(d.class_names)
    train_root = os.path.join(d.root, bundle.split_name(d, "train"))
    if not storage.isdir(train_root):
        return None
    return tuple(sorted(e for e in storage.listdir(train_root)
                        if storage.isdir(os.path.join(train_root, e)))) or None


def class_names(d) -> tuple[str, ...]:
    """The classes of a dataset: ``data.class_names``, or for a class folder without
    them the class folders of its training split."""
    if tuple(d.class_names):
        return tuple(d.class_names)
    if d.name == "class_folder":
        root = os.path.join(d.root, d.train_split)
        if not storage.isdir(root):
            raise FileNotFoundError(f"config key 'data.root': class folder {root} not found")
        names = sorted(n for n in storage.listdir(root) if storage.isdir(os.path.join(root, n)))
        if names:
            return tuple(names)
        raise ValueError(f"config key 'data.root': {root} has no class subfolders")
    raise ValueError("config key 'data.class_names' is empty")


@reads_root
def voc_seg(bundle, d, split, problems):
    from adverse_vision.data import folders  # pylint: disable=import-outside-toplevel
    return folders.VOCSegmentationSource(d.root, bundle.split_name(d, split), problems=problems,
                                         policy=bundle.policy)


# ------------------------------------------------------------------ infrared-visible pairs
@reads_root
def m3fd(bundle, d, split, problems):
    from adverse_vision.data import fusion_pairs  # pylint: disable=import-outside-toplevel
    return fusion_pairs.M3FDSource(d.root, bundle.split_name(d, split),
                                   class_names=tuple(d.class_names),
                                   keep_difficult=_keep_difficult(d, split),
                                   policy=bundle.policy, problems=problems)


@reads_root
def mfnet(bundle, d, split, problems):
    from adverse_vision.data import fusion_pairs  # pylint: disable=import-outside-toplevel
    return fusion_pairs.MFNetSource(d.root, bundle.split_name(d, split), policy=bundle.policy,
                                    problems=problems)


@reads_root
def fusion_folder(bundle, d, split, problems):
    from adverse_vision.data import fusion_pairs  # pylint: disable=import-outside-toplevel
    root = os.path.join(d.root, bundle.split_name(d, split))
    return fusion_pairs.FusionFolderSource(root if storage.isdir(root) else d.root,
                                           policy=bundle.policy, problems=problems)


# ------------------------------------------------------------------ pipelines
def box_pipeline(bundle, source, *, train: bool, seed: int, data_cfg, saliency: bool = False):
    """Degraded, letterboxed batches with boxes padded to ``data.max_boxes``
    (:func:`adverse_vision.data.pipeline.make_pipeline`)."""
    d = data_cfg
    return pipeline.make_pipeline(
        source, batch_size=bundle.per_host_batch, image_size=bundle.image_size,
        max_boxes=d.max_boxes, train=train, seed=seed,
        degrade=plain(d.degrade if train else d.val_degrade), augment=plain(d.augment),
        num_workers=d.num_workers, saliency=saliency)


def dense_pipeline(bundle, source, *, train: bool, seed: int, data_cfg, task: str):
    """Clean crops with a label or a mask per image
    (:func:`adverse_vision.data.dense.make_dense_pipeline`)."""
    from adverse_vision.data.dense import make_dense_pipeline  # pylint: disable=import-outside-toplevel
    d = data_cfg
    return make_dense_pipeline(
        source, batch_size=bundle.per_host_batch, image_size=bundle.image_size, train=train,
        task=task, seed=seed, augment={"scale": plain(d.augment.scale), "flip": d.augment.flip},
        num_workers=d.num_workers)


#: The sources of the box datasets (detection and the methods built on it).
BOX_DATASETS = {"scenes": scenes, "voc": voc, "coco": coco, "tfds": tfds}


# ------------------------------------------------------------------ hazy / clear pairs
@reads_root
def dehaze_pairs(bundle, d, split, problems):
    """Real hazy / clear pairs (RESIDE, NTIRE sets, ``lowq``/``clear``) from
    ``data.root/<split>``, or ``data.root`` itself when that folder does not exist;
    ``data.layout`` (when the config has it) picks the layout, else it is detected."""
    from adverse_vision.data import dehaze_pairs as pairs  # pylint: disable=import-outside-toplevel
    root = os.path.join(d.root, bundle.split_name(d, split))
    return pairs.DehazePairSource(root if storage.isdir(root) else d.root,
                                  layout=d.get("layout", "auto"), policy=bundle.policy,
                                  problems=problems)
