"""BatchNorm: flax's results with global statistics, per-group statistics on request."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from adverse_vision import parallel
from adverse_vision.models.batch_norm import BatchNorm, per_device_statistics, statistic_groups


def _variables(module, x):
    variables = module.init(jax.random.key(1), x, use_running_average=False)
    return jax.tree.map(lambda v: v + 0.3 * jax.random.normal(jax.random.key(3), v.shape),
                        variables)


def _train(module, variables, x):
    return module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])


@pytest.mark.parametrize("fast_variance", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_same_as_flax_batch_norm(fast_variance, dtype):
    x = jax.random.normal(jax.random.key(0), (8, 5, 5, 7)) * 3 + 1
    kw = dict(momentum=0.9, epsilon=1e-3, use_fast_variance=fast_variance, dtype=dtype)
    ours, flax_bn = BatchNorm(**kw), nn.BatchNorm(**kw)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x, False)) == jax.tree.map(
        jnp.shape, flax_bn.init(jax.random.key(1), x, False))
    variables = _variables(flax_bn, x)
    (y, updates), (y_ref, updates_ref) = _train(ours, variables, x), _train(flax_bn, variables, x)
    assert y.dtype == y_ref.dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
    jax.tree.map(np.testing.assert_array_equal, updates, updates_ref)
    np.testing.assert_array_equal(
        np.asarray(ours.apply(variables, x, use_running_average=True), np.float32),
        np.asarray(flax_bn.apply(variables, x, use_running_average=True), np.float32))


def _per_slice(variables, x, parts):
    """flax's BatchNorm on each of ``parts`` equal slices: outputs, mean running stats."""
    flax_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-3)
    results = [_train(flax_bn, variables, s) for s in np.split(np.asarray(x), parts)]
    y = np.concatenate([np.asarray(r[0]) for r in results])
    stats = jax.tree.map(lambda *s: np.mean(s, axis=0), *[r[1] for r in results])
    return y, stats


def test_groups_normalise_each_slice_with_its_own_statistics():
    x = jax.random.normal(jax.random.key(0), (8, 3, 3, 4)) * 2 - 1
    bn = BatchNorm(momentum=0.9, epsilon=1e-3)
    variables = _variables(bn, x)
    with per_device_statistics(groups=4):
        y, stats = jax.jit(lambda v, x: _train(bn, v, x))(variables, x)
    y_ref, stats_ref = _per_slice(variables, x, 4)
    np.testing.assert_allclose(y, y_ref, atol=2e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), stats, stats_ref)
    with per_device_statistics(False):  # off: the global batch
        np.testing.assert_array_equal(_train(bn, variables, x)[0],
                                      _train(nn.BatchNorm(momentum=0.9, epsilon=1e-3),
                                             variables, x)[0])


def test_per_device_on_the_mesh_is_per_device_rows():
    mesh = parallel.make_mesh()
    devices = mesh.shape["data"]
    x = jax.random.normal(jax.random.key(0), (2 * devices, 3, 3, 4)) * 2 - 1
    bn = BatchNorm(momentum=0.9, epsilon=1e-3)
    variables = _variables(bn, x)

    def program(v, x):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), per_device_statistics():
            return _train(bn, v, x)

    y, stats = jax.jit(program)(variables, jax.device_put(x, NamedSharding(mesh, P("data"))))
    y_ref, stats_ref = _per_slice(variables, x, devices)
    np.testing.assert_allclose(y, y_ref, atol=2e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), stats, stats_ref)


def test_groups_that_do_not_divide_the_batch_are_an_error():
    assert statistic_groups(6) == 1
    with per_device_statistics(groups=4):
        with pytest.raises(ValueError, match=r"bn_sync=False.*6 rows.*4 devices"):
            statistic_groups(6)
    with per_device_statistics(), pytest.raises(ValueError, match="channels-last"):
        BatchNorm(axis=1).init(jax.random.key(0), jnp.ones((2, 3, 4, 4)), False)
