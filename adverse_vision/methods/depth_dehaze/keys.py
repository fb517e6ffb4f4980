"""Key rules of the official depth-guided dehazing checkpoints, and what the method's
converters declare (see :class:`adverse_vision.methods.Converter`).

* :data:`MULTINET_RULES`: the official ``multi_Net`` state dict (as ``test.py``
  loads it, with or without ``DataParallel``'s ``module.`` prefix, which the reader
  strips) onto :class:`adverse_vision.models.depth_dehaze.DepthDehaze`:
  ``depth_finetune.depth_es.model.features.*`` -> ``depth/encoder/*`` (torchvision's
  DenseNet names), ``depth_finetune.depth_es.{midconv,up1..up4,finalconv}`` ->
  ``depth/*``, ``mix1.w`` -> ``mix/w``, ``Tfuse_second.*`` -> ``dehazer/*``.
* :data:`MULTINET_IGNORED`: the official depth module keeps each DenseNet layer under
  two names (``model.features.denseblock1`` and its alias ``dense_block1``, ``conv0``,
  ``norm0``, ``trans_block{i}``, ``model_out`` = ``norm5``), so its state dict holds
  every encoder tensor twice. The aliases are the same PyTorch modules, hence always
  the same tensors; the torchvision names are read and the aliases skipped, as is the
  unused ImageNet ``model.classifier``.
* :data:`TFUSE_RULES`: a ``Tfuse_Net`` state dict on its own onto
  :class:`~adverse_vision.models.depth_dehaze.TfuseNet`.
* :data:`DENSENET_RULES`: a torchvision DenseNet ImageNet checkpoint
  (``features.conv0.weight``, ``features.denseblock1.denselayer1.norm1.weight``, ...;
  also the older ``norm.1``/``conv.2`` spelling of torchvision's download files) onto
  the depth net's encoder of a ``DepthDehaze``, for ``model.init_from``: the encoder
  only (its ``classifier`` has no counterpart); :func:`densenet_rules` aims them at
  another module path.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DENSENET_RULES", "MODEL", "MULTINET_IGNORED", "MULTINET_RULES", "TFUSE_MODEL",
           "TFUSE_RULES", "densenet_rules", "example_inputs", "tfuse_example_inputs",
           "tfuse_rules"]

#: The flax modules the official networks become.
MODEL = "adverse_vision.models.depth_dehaze:DepthDehaze"
TFUSE_MODEL = "adverse_vision.models.depth_dehaze:TfuseNet"

_DEPTH = r"depth_finetune\.depth_es\."


def densenet_rules(source: str = r"features\.", target: str = "depth/encoder/") -> tuple:
    """Rules from torchvision DenseNet ``features`` keys (after the ``source`` prefix, a
    regular expression) to an encoder at module path ``target``."""
    return (
        # Old torchvision files spell the dense layers' parts "norm.1", "conv.2".
        (rf"^{source}(denseblock\d+)\.(denselayer\d+)\.(norm|conv)\.([12])\.",
         rf"{target}\1/\2/\3\4/"),
        (rf"^{source}", target),
    )


def tfuse_rules(source: str = "", target: str = "") -> tuple:
    """Rules from an official ``Tfuse_Net`` under the key prefix ``source`` (a regular
    expression) to a :class:`TfuseNet` at module path ``target``."""
    t = rf"^{source}Tfuse\."
    return (
        (rf"{t}block1\.(\d+)\.attn\.(kv|sr|norm)2\.", rf"{target}block1_\1/attn/\2/"),
        (rf"{t}block(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.", rf"{target}block\1_\2/mlp/dwconv/"),
        (rf"{t}block(\d)\.(\d+)\.", rf"{target}block\1_\2/"),
        (t, target),
        (rf"^{source}deconv(\d)\.0\.", rf"{target}deconv\1/deconv/"),
        (rf"^{source}output1\.(\d)\.", rf"{target}output_\1/"),
    )


MULTINET_RULES: tuple[tuple[str, str], ...] = (
    *densenet_rules(rf"{_DEPTH}model\.features\.", "depth/encoder/"),
    (rf"^{_DEPTH}(midconv|up\d|finalconv)\.", r"depth/\1/"),
    (r"^mix1\.", "mix/"),
    *tfuse_rules(r"Tfuse_second\.", "dehazer/"),
)

MULTINET_IGNORED: tuple[str, ...] = (
    rf"^{_DEPTH}(conv0|norm0|dense_block\d|trans_block\d|model_out)\.",
    rf"^{_DEPTH}model\.classifier\.",
)

TFUSE_RULES: tuple[tuple[str, str], ...] = tfuse_rules()

DENSENET_RULES: tuple[tuple[str, str], ...] = densenet_rules()


def example_inputs(side: int) -> tuple:
    """The arrays a ``DepthDehaze`` is traced with: one hazy RGB image."""
    return (np.zeros((1, side, side, 3), np.float32),)


def tfuse_example_inputs(side: int) -> tuple:
    """The arrays a ``TfuseNet`` is traced with: the mixed image and the hazy image."""
    return (np.zeros((1, side, side, 3), np.float32),) * 2
