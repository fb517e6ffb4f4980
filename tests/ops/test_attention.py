"""Attention in chunks of queries: the numbers of one piece (to float32 rounding), in
bounded memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adverse_vision.models.depth_dehaze import TfuseNet
from adverse_vision.ops import attention as attention_lib
from adverse_vision.ops.attention import attention, query_chunk


def _qkv(b=2, n=300, m=40, h=2, d=8, e=6, seed=0):
    r = np.random.default_rng(seed)
    return (jnp.asarray(r.standard_normal(shape), jnp.float32)
            for shape in ((b, n, h, d), (b, m, h, d), (b, m, h, e)))


def _one_piece(q, k, v):  # the textbook softmax, division first
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


def test_chunks_of_queries_give_the_numbers_of_one_piece():
    q, k, v = _qkv()
    whole = jax.jit(attention)(q, k, v)
    np.testing.assert_allclose(whole, _one_piece(q, k, v), rtol=1e-5, atol=1e-6)
    # 2 * 2 * 64 * 40 logits per chunk: 64 queries, 300 padded to 320.
    assert query_chunk(2, 300, 2, 40, max_logits=0, logits_per_chunk=10240) == 64
    chunked = jax.jit(lambda q, k, v: attention(q, k, v, max_logits=0,
                                                logits_per_chunk=10240))(q, k, v)
    assert chunked.shape == (2, 300, 2, 6)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_gradients_through_the_chunks_match():
    q, k, v = _qkv(n=100)

    def loss(args, **kw):
        return jnp.sum(jnp.sin(attention(*args, **kw)))

    whole = jax.grad(loss)((q, k, v))
    chunked = jax.grad(lambda a: loss(a, max_logits=0, logits_per_chunk=2 * 2 * 32 * 40))(
        (q, k, v))
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_chunk_sizes():
    assert query_chunk(1, 100, 1, 10, max_logits=1000) == 100  # fits: one piece
    assert query_chunk(1, 102400, 1, 6400, max_logits=0, logits_per_chunk=2 ** 20) == 128
    assert query_chunk(1, 10 ** 6, 4, 10 ** 6, max_logits=0, logits_per_chunk=10) == 16
    assert query_chunk(1, 8, 1, 10 ** 6, max_logits=0, logits_per_chunk=10) == 8
    # The accelerators' budget: the dehazer's 640x640 blocks (2.6 GB of logits) in one
    # piece, a 1024x1024 image's (17 GB) in chunks of 2**22 logits.
    big = attention_lib.MAX_LOGITS
    assert query_chunk(1, 320 * 320, 1, 80 * 80, max_logits=big) == 320 * 320
    assert query_chunk(1, 512 * 512, 1, 128 * 128, max_logits=big) == 256
    # The CPU's (this test's platform): anything above one chunk goes in chunks.
    assert attention_lib.default_max_logits() == attention_lib.LOGITS_PER_CHUNK == 2 ** 22
    assert query_chunk(1, 320 * 320, 1, 80 * 80) == 512
    assert query_chunk(1, 64 * 64, 1, 16 * 16) == 64 * 64  # 2**20 logits: one piece


def test_accelerators_keep_one_piece(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attention_lib.default_max_logits() == attention_lib.MAX_LOGITS
    assert query_chunk(1, 320 * 320, 1, 80 * 80) == 320 * 320


def test_shapes_that_do_not_fit_are_refused():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="queries \\(B, N, H, D\\)"):
        attention(q, k[:, :, :1], v)
    with pytest.raises(ValueError, match="queries"):
        attention(q[0], k, v)


def test_the_dehazer_in_chunks_is_the_dehazer(monkeypatch):
    net = TfuseNet(dim=8)
    x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3))
    variables = net.init(jax.random.key(1), x, x)
    whole = net.apply(variables, x, x)
    monkeypatch.setattr(attention_lib, "LOGITS_PER_CHUNK", 4 * 16)  # budget and chunk
    np.testing.assert_allclose(net.apply(variables, x, x), whole, rtol=1e-5, atol=1e-6)


def test_bfloat16_weights_keep_float32_sums():
    q, k, v = _qkv()
    low = attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
                    jnp.bfloat16)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(low.astype(jnp.float32), _one_piece(q, k, v), atol=0.05)


def test_the_chunks_gradient_keeps_no_weights_of_the_whole():
    q, k, v = _qkv(b=1, n=4096, m=1024, h=1, d=16, e=16)

    def temp_bytes(**kw):
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, **kw) ** 2),
                                argnums=(0, 1, 2)))
        return grad.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = 4096 * 1024 * 4
    assert temp_bytes(max_logits=2 ** 30) >= logits_bytes  # one piece holds them all
    assert temp_bytes(max_logits=0, logits_per_chunk=2 ** 16) < logits_bytes / 4


def test_gradients_in_bfloat16_through_the_chunks():
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(n=100))

    def grads(**kw):
        return jax.grad(lambda a: jnp.sum(jnp.sin(attention(*a, jnp.bfloat16, **kw).astype(
            jnp.float32))))((q, k, v))

    for a, b in zip(grads(), grads(max_logits=0, logits_per_chunk=2 * 2 * 32 * 40)):
        assert a.dtype == b.dtype == jnp.bfloat16
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        # bfloat16 keeps 8 bits: about 2 % of the largest entry
        np.testing.assert_allclose(a, b, rtol=0.02, atol=0.02 * float(jnp.abs(b).max()))


def test_forward_mode_needs_one_piece():
    q, k, v = _qkv(n=100)
    jax.jvp(lambda q: attention(q, k, v), (q,), (q,))  # one piece: any transform
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda q: attention(q, k, v, max_logits=0, logits_per_chunk=1024), (q,), (q,))
