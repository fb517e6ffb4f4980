"""FLOP counts of traced programs: loops counted their whole trip count, sharded
programs counted over all their devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from adverse_vision import timing
from adverse_vision.ops.attention import attention


def _count(fn, *args):
    return timing.flops(jax.jit(fn).trace(*args))


def test_a_matrix_product_counts_its_multiply_adds():
    a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
    assert _count(lambda x, y: x @ y, a, b) == 2 * 64 * 32 * 16


def test_a_product_in_chunks_counts_as_in_one_piece():
    a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
    one = _count(lambda x, y: x @ y, a, b)
    chunks = _count(lambda x, y: jax.lax.map(lambda r: r @ y, x.reshape(8, 8, 32)), a, b)
    assert chunks == pytest.approx(one, rel=1e-3)  # and the loop's counter
    # XLA's own count of the chunked program has one chunk's worth.
    compiled = jax.jit(lambda x, y: jax.lax.map(lambda r: r @ y, x.reshape(8, 8, 32))
                       ).lower(a, b).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert cost["flops"] < one / 4


def test_nested_loops_multiply_their_trip_counts():
    w = jnp.ones((16, 16))

    def inner(x):
        return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=4)[0]

    def outer(x):
        return jax.lax.scan(lambda c, _: (inner(c), None), x, None, length=3)[0]

    assert _count(outer, jnp.ones((8, 16))) == pytest.approx(12 * 2 * 8 * 16 * 16, rel=1e-3)


def test_a_loop_inside_a_jitted_and_differentiated_function():
    w = jnp.ones((128, 128))

    def loss(v, x):
        y = jax.lax.map(lambda r: jnp.tanh(r @ v), x.reshape(4, 16, 128))
        return jnp.sum(y)

    x = jnp.ones((64, 128))
    one = _count(jax.grad(lambda v, x: jnp.sum(jnp.tanh(x @ v))), w, x)
    chunks = _count(jax.jit(jax.grad(loss)), w, x)
    # The same products; the chunks add the sums of the weights' gradient over chunks.
    assert chunks == pytest.approx(one, rel=0.05)
    assert chunks >= 2 * (2 * 64 * 128 * 128)  # forward and the weights' gradient at least


def test_attention_in_chunks_counts_as_in_one_piece():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(1, n, 2, 8)), jnp.float32)
               for n in (256, 64, 64))

    def run(budget):
        return _count(lambda q, k, v: attention(q, k, v, max_logits=budget,
                                                logits_per_chunk=4096), q, k, v)

    one, chunks = run(1 << 30), run(4096)
    assert chunks == pytest.approx(one, rel=0.01)
    assert one >= 2 * 2 * 256 * 64 * 2 * 8  # two products per head


def test_a_sharded_program_counts_all_its_devices():
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs several devices (the suite fakes 8 CPU devices)")
    mesh = Mesh(np.array(devices), ("data",))
    x = jax.device_put(jnp.ones((8 * len(devices), 32)), NamedSharding(mesh, P("data")))
    w = jnp.ones((32, 32))
    assert _count(lambda x, w: x @ w, x, w) == 2 * 8 * len(devices) * 32 * 32


def test_measure_reports_the_whole_count():
    a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
    fn = jax.jit(lambda x, y: jax.lax.map(lambda r: r @ y, x.reshape(8, 8, 32)))
    measured = timing.measure(fn, (a, b), steps=1)
    assert measured.flops == pytest.approx(2 * 64 * 32 * 16, rel=1e-3) and measured.seconds > 0
