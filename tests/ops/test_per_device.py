"""batch_local: per-device rows under the trainer's mesh, the plain function elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from adverse_vision import parallel
from adverse_vision.ops.per_device import batch_local


def _per_image(x):
    values, _ = jax.lax.top_k(x, 3)
    return jnp.sum(values, axis=-1)


def _program(mesh):
    def loss(x):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            y = batch_local(jax.vmap(_per_image))(x)
        return jnp.sum(jnp.sin(y) * x[:, :, 0])

    return jax.jit(jax.value_and_grad(loss))


def test_same_values_and_gradients_and_no_gather():
    mesh = parallel.make_mesh()
    x = np.random.default_rng(0).normal(size=(16, 5, 40)).astype(np.float32)
    sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    value, grad = _program(mesh)(sharded)
    plain_value, plain_grad = jax.value_and_grad(
        lambda x: jnp.sum(jnp.sin(jax.vmap(_per_image)(x)) * x[:, :, 0]))(x)
    np.testing.assert_allclose(value, plain_value, rtol=1e-6)
    np.testing.assert_allclose(grad, plain_grad, rtol=1e-6, atol=1e-7)
    text = _program(mesh).lower(sharded).compile().as_text()
    assert " all-gather(" not in text


def test_plain_outside_a_mesh_and_when_rows_do_not_divide():
    x = jnp.ones((6, 2, 8))
    np.testing.assert_array_equal(batch_local(jax.vmap(_per_image))(x), 3.0)
    mesh = parallel.make_mesh()
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # 6 rows on 8 devices
        np.testing.assert_array_equal(jax.jit(batch_local(jax.vmap(_per_image)))(x), 3.0)
