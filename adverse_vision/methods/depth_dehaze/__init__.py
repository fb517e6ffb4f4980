"""Depth-guided self-supervised dehazing ("Image Dehazing via Self-supervised Depth
Guidance", Pattern Recognition 2024): its method (:mod:`.method`: two training stages
on clear images alone, evaluation at native size, prediction) and the key rules of the
official weights (:mod:`.keys`). The network is :mod:`adverse_vision.models.depth_dehaze`."""

from adverse_vision.methods.depth_dehaze.method import DepthDehazeMethod

__all__ = ["DepthDehazeMethod"]
