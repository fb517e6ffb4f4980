"""Shared test fixtures' building blocks."""

import jax
import numpy as np

from configs import yolox_scenes


def fill_variables(shapes, seed=0):
    """Concrete variables for a shape tree, without compiling ~150 initialisers.

    Kernels are uniform with variance 1.5 / fan_in: the signal neither dies out
    over the depth in eval mode (as it does at PyTorch's default scale, 1/3 /
    fan_in) nor turns chaotic (He scale). BatchNorm statistics start at 0 / 1.
    """
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = path[-1].key
        if name in ("kernel", "in_proj_kernel"):
            bound = np.sqrt(4.5 / np.prod(x.shape[:-1]))
            return rng.uniform(-bound, bound, x.shape).astype(x.dtype)
        if name in ("scale", "var"):
            return np.ones(x.shape, x.dtype)
        if name == "mean":
            return np.zeros(x.shape, x.dtype)
        return rng.uniform(-0.1, 0.1, x.shape).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def smoke_config(**overrides):
    """A 6-step smoke YOLOX config; ``overrides`` map dotted keys to values.

    Tests that train share this config, so their compiled programs are shared too
    (through the test run's compilation cache)."""
    cfg = yolox_scenes.get_config("smoke")
    cfg.total_steps = 6
    cfg.eval_every = 6
    cfg.checkpoint_every = 2
    cfg.log_every = 1
    cfg.data.num_train = 64
    cfg.data.num_val = 8
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg
