"""Shared test fixtures' building blocks."""

from configs import yolox_scenes


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
