"""The device-side scattering model reproduces the host-side haze exactly."""

import jax
import jax.numpy as jnp
import numpy as np

from adverse_vision import degrade
from adverse_vision.ops import haze


def test_same_fog_as_the_host_side_haze():
    rng = np.random.default_rng(0)
    clear = rng.uniform(0, 1, (2, 24, 40, 3)).astype(np.float32)
    depth = np.exp(rng.uniform(0, 5, (2, 24, 40))).astype(np.float32)
    depth[1] = 7.0  # constant depth: the farthest distance everywhere
    A, beta = np.array([0.6, 0.9], np.float32), np.array([0.05, 0.2], np.float32)
    ours = jax.jit(haze.scatter)(jnp.asarray(clear), jnp.asarray(depth), jnp.asarray(A),
                                 jnp.asarray(beta))
    for i in range(2):
        host = degrade.haze(clear[i], np.random.default_rng(1), depth=depth[i], A=float(A[i]),
                            beta=float(beta[i]))
        np.testing.assert_allclose(np.asarray(ours[i]), host, atol=2e-6)
    # The distance does not depend on the depth's unit.
    np.testing.assert_allclose(haze.haze_distance(jnp.asarray(depth)),
                               haze.haze_distance(jnp.asarray(depth * 1000.0)), rtol=1e-5)


def test_draw_ranges():
    values = haze.draw(jax.random.key(0), 1000, (0.5, 0.9))
    assert float(values.min()) >= 0.5 and float(values.max()) <= 0.9
    np.testing.assert_array_equal(haze.draw(jax.random.key(0), 3, 0.7), np.full(3, 0.7, np.float32))
