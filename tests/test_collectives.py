"""The compiled train steps shard cleanly on 8 devices: no cross-device collective grows
with the global batch (only parameter gradients, BatchNorm statistics and scalars
cross devices), and with per-device BatchNorm statistics the per-layer reductions go."""

import contextlib
import functools

import pytest

from adverse_vision import parallel, timing
from adverse_vision.data import factory
from adverse_vision.trainer import Trainer
from configs import togethernet_scenes
from tests.helpers import _override, bdlf_smoke_config, dnhl_smoke_config, smoke_config


def _step_collectives(cfg, step=0) -> list[timing.Collective]:
    trainer = Trainer(cfg)
    data = factory.DataBundle(cfg, per_host_batch=cfg.batch_size, method=trainer.method)
    with contextlib.closing(data.train_iterator()) as batches:
        batch = parallel.global_batch(next(batches), trainer.mesh)
    lowered = trainer.train_step.lower(trainer.abstract_state(), batch, step=step)
    return timing.collectives(lowered.compile())


CONFIGS = {
    "detection": lambda b: smoke_config(batch_size=b),
    "togethernet": lambda b: _override(togethernet_scenes.get_config("smoke"), {"batch_size": b}),
    "dnhl": lambda b: dnhl_smoke_config("joint", batch_size=b),
    "bdlf_upper": lambda b: bdlf_smoke_config("", batch_size=b),
}


@functools.lru_cache(maxsize=None)
def _collectives_of(name: str, batch: int, bn_sync: bool = True) -> list[timing.Collective]:
    return _step_collectives(_override(CONFIGS[name](batch), {"model.bn_sync": bn_sync}))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_no_collective_grows_with_the_batch(name):
    # BDLF's upper step (its hypergradient) is the program with the most to share.
    sizes = {b: _collectives_of(name, b) for b in (8, 16)}
    assert sizes[8], "a batch-sharded train step reduces its gradients across devices"
    for b, found in sizes.items():
        gathers = [c for c in found if c.op == "all-gather"]
        assert not gathers, f"batch {b}: all-gathers {gathers[:3]}"
    total = {b: sum(c.bytes for c in found) for b, found in sizes.items()}
    assert total[16] == total[8], (
        f"collective bytes grow with the batch: {total}; the largest at 16: "
        f"{sorted(sizes[16], key=lambda c: -c.bytes)[:3]}")


def test_per_device_batch_norm_drops_the_per_layer_reductions():
    # Synchronised: two reductions per BatchNorm layer (forward statistics, backward
    # sums); per device: the gradients' and running statistics' reductions, which XLA
    # combines into a few.
    synced, local = _collectives_of("detection", 8), _collectives_of("detection", 8, False)
    assert len(local) * 10 < len(synced), (len(local), len(synced))
    assert sum(c.bytes for c in local) <= sum(c.bytes for c in synced)


def test_collective_sizes_are_read_from_the_hlo():
    text = """
  %all-reduce.3 = f32[3,3,16,32]{3,2,1,0} all-reduce(f32[3,3,16,32]{3,2,1,0} %p), channel_id=2
  %all-reduce.7 = (f32[16]{0}, bf16[], pred[4]{0}, f32[2]{0}, f32[2]{0}, /*index=5*/f32[8,2]{1,0}) all-reduce(%a, %b, %c, %d, %e, /*index=5*/%f), channel_id=3
  %ag = f32[64,80]{1,0} all-gather-start(f32[8,80]{1,0} %x), dimensions={0}
  %add.1 = f32[16]{0} add(%all-reduce.7, %y)
"""
    found = timing.collectives_in(text)
    assert [(c.op, c.bytes) for c in found] == [
        ("all-reduce", 4 * 3 * 3 * 16 * 32), ("all-reduce", 64 + 2 + 4 + 8 + 8 + 64),
        ("all-gather", 4 * 64 * 80)]
