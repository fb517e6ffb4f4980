"""Dot-product attention whose logits need not exist all at once.

The attention of ``N`` queries over ``M`` keys holds a ``(B, H, N, M)`` logit array:
for queries at half the resolution of a 640x640 image and keys reduced 4x4 further,
102,400 x 6,400 floats (2.6 GB) per block; at 1024x1024, 262,144 x 16,384 (17 GB),
beyond most hosts and accelerators.
Above a logit budget the queries go in chunks (``lax.map``) whose logits hold about
:data:`LOGITS_PER_CHUNK` floats, so memory stays bounded at any image size; every row
goes through the same operations as in one piece (equal to float32 rounding: XLA may
order a product's sums differently for another shape). The budget depends on the
platform (:func:`default_max_logits`): on the CPU it is one chunk, because a chunk's
logits stay in the processor's caches while one piece's pass through memory once per
operation (README, Benchmark: the 640x640 stage-1 attention 1.65 s in one piece,
1.11 s in chunks of 2**22 logits); on accelerators it is :data:`MAX_LOGITS`, where one
piece avoids a loop of small kernels.

The softmax's division comes after the second product (``(exp(l - max) v) / sum``),
which divides ``N x E`` numbers rather than ``N x M`` and saves a pass over the
logits (the stage-1 attention's gradients: 3.75 s in chunks with the division after,
5.60 s with it first, 4.15 s in one piece, before the gradient below).

In chunks the gradient goes chunk by chunk as well (a ``jax.custom_vjp``): the forward
pass keeps only each query's log-sum-exp besides the outputs, and the backward pass
recomputes a chunk's logits, its weights ``p = exp(l - lse)``, and
``ds = p (g v^T - rowsum(g * out))``, summing the keys' and values' gradients over the
chunks. Automatic differentiation of the loop instead stored every chunk's weights, the
whole ``(B, H, N, M)`` array the chunks exist to avoid, and read it back: the dehazer's
stage-1 attention in its train step (batch 8, 16,384 queries, 1,024 keys) took 0.88 s
forward and backward that way, 0.66 s chunk by chunk. Forward-mode differentiation does
not pass a ``custom_vjp``; it needs the attention in one piece.

The products run heads-major (``(B, H, N, D)``, batch dimensions first, keys and
values transposed once), and with one batch entry and one head as plain matrix
products: the 640x640 stage-1 attention took 1.15-1.20 s in the layout of its inputs,
0.81-0.90 s heads-major, 0.76 s as matrix products (one process, alternated).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

#: Logits (floats) of one attention above which its queries go in chunks on
#: accelerators: 2**30 (4 GiB in float32).
MAX_LOGITS = 2 ** 30
#: Logits per chunk of queries, and the budget on the CPU: 2**22 (16 MiB in float32)
#: was the fastest of 2**20 to 2**24 for the 640x640 attention above, forward and
#: backward together, on a 2-core CPU (2**23: 4 % faster forward, 23 % slower backward).
LOGITS_PER_CHUNK = 2 ** 22
#: Fewer queries per chunk than this are not worth a loop step.
MIN_QUERY_CHUNK = 16


def default_max_logits() -> int:
    """The default budget: :data:`LOGITS_PER_CHUNK` on the CPU, :data:`MAX_LOGITS`
    on accelerators (``jax.default_backend()``)."""
    return LOGITS_PER_CHUNK if jax.default_backend() == "cpu" else MAX_LOGITS


def query_chunk(batch: int, queries: int, heads: int, keys: int,
                max_logits: Optional[int] = None, logits_per_chunk: Optional[int] = None
                ) -> int:
    """Queries per chunk: all ``queries`` when their logits (``batch * heads * queries
    * keys``) are at most ``max_logits``, else the largest power of two whose logits
    fit ``logits_per_chunk`` (at least :data:`MIN_QUERY_CHUNK`). None: the platform's
    :func:`default_max_logits`, the module's :data:`LOGITS_PER_CHUNK`."""
    max_logits = default_max_logits() if max_logits is None else max_logits
    logits_per_chunk = logits_per_chunk or LOGITS_PER_CHUNK
    if batch * heads * queries * keys <= max_logits:
        return queries
    fit = max(1, logits_per_chunk // max(1, batch * heads * keys))
    chunk = max(MIN_QUERY_CHUNK, 1 << (fit.bit_length() - 1))
    return min(chunk, queries)


def _product(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """``einsum(spec)`` of heads-major operands (``"bh..."``), summed in float32; with
    one batch entry and one head, a product of their matrices (XLA:CPU ran the 640x640
    stage-1 attention 7 % faster so than with the two unit dimensions)."""
    if x.shape[0] * x.shape[1] == 1 and y.shape[0] * y.shape[1] == 1:
        plain = spec.replace("bh", "")
        return jnp.einsum(plain, x[0, 0], y[0, 0], preferred_element_type=jnp.float32)[None, None]
    return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """Heads-major: ``q`` (B, H, Q, D), ``k`` (B, H, M, D), ``v`` (B, H, M, E) ->
    (outputs (B, H, Q, E) in ``dtype``, the logits' log-sum-exp per query (B, H, Q))."""
    logits = _product("bhqd,bhkd->bhqk", q, k)
    # The softmax with its division after the product with the values.
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.exp(logits - top)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    out = _product("bhqk,bhkd->bhqd", weights.astype(dtype), v) / total
    return out.astype(dtype), (top + jnp.log(total))[..., 0]


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
    """(B, H, N, ...) -> (N / chunk, B, H, chunk, ...)."""
    b, h, n = x.shape[:3]
    return jnp.moveaxis(x.reshape(b, h, n // chunk, chunk, *x.shape[3:]), 2, 0)


def _unchunk(x: jax.Array) -> jax.Array:
    """The inverse of :func:`_chunks`."""
    b, h = x.shape[1:3]
    return jnp.moveaxis(x, 0, 2).reshape(b, h, -1, *x.shape[4:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _in_chunks(q, k, v, chunk: int, dtype) -> jax.Array:
    """Heads-major attention, the queries (a whole number of chunks) in ``chunk``s."""
    return _in_chunks_fwd(q, k, v, chunk, dtype)[0]


def _in_chunks_fwd(q, k, v, chunk, dtype):
    out, lse = jax.lax.map(lambda qc: _attend(qc, k, v, dtype), _chunks(q, chunk))
    out = _unchunk(out)
    return out, (q, k, v, out, _unchunk(lse))


def _in_chunks_bwd(chunk, dtype, residuals, g):
    """Chunk by chunk again: the weights from the recomputed logits and the saved
    log-sum-exp, ``ds = p (g v^T - rowsum(g * out))``; the keys' and values' gradients
    summed over the chunks."""
    q, k, v, out, lse = residuals
    delta = jnp.sum(g.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)

    def step(sums, xs):
        dk, dv = sums
        qc, gc, lse_c, delta_c = xs
        weights = jnp.exp(_product("bhqd,bhkd->bhqk", qc, k) - lse_c[..., None])
        dv = dv + _product("bhqk,bhqd->bhkd", weights.astype(dtype), gc)
        ds = weights * (_product("bhqd,bhkd->bhqk", gc, v) - delta_c[..., None])
        dq = _product("bhqk,bhkd->bhqd", ds.astype(dtype), k)
        dk = dk + _product("bhqk,bhqd->bhkd", ds.astype(dtype), qc)
        return (dk, dv), dq.astype(q.dtype)

    zeros = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    (dk, dv), dq = jax.lax.scan(step, zeros, (_chunks(q, chunk), _chunks(g, chunk),
                                              _chunks(lse, chunk), _chunks(delta, chunk)))
    return _unchunk(dq), dk.astype(k.dtype), dv.astype(v.dtype)


_in_chunks.defvjp(_in_chunks_fwd, _in_chunks_bwd)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, dtype=jnp.float32,
              max_logits: Optional[int] = None, logits_per_chunk: Optional[int] = None
              ) -> jax.Array:
    """``softmax(q k^T) v`` per head: queries ``(B, N, H, D)`` (already scaled), keys
    ``(B, M, H, D)``, values ``(B, M, H, E)`` -> ``(B, N, H, E)``. Logits, softmax and
    the second product's sums in float32, the weights cast to ``dtype`` for it; the
    queries in chunks of :func:`query_chunk` (padded to a whole number of chunks) when
    the logits exceed ``max_logits`` (None: :func:`default_max_logits`). In chunks the
    gradient is computed chunk by chunk too (a ``jax.custom_vjp``: reverse mode only;
    forward-mode differentiation needs one piece, ``max_logits`` above the logits)."""
    if not (q.ndim == k.ndim == v.ndim == 4 and q.shape[0] == k.shape[0] == v.shape[0]
            and k.shape[1] == v.shape[1] and q.shape[2] == k.shape[2] == v.shape[2]
            and q.shape[3] == k.shape[3]):
        raise ValueError(f"attention: queries (B, N, H, D), keys (B, M, H, D) and values "
                         f"(B, M, H, E) expected, got {q.shape}, {k.shape}, {v.shape}")
    n = q.shape[1]
    chunk = query_chunk(q.shape[0], n, q.shape[2], k.shape[1], max_logits, logits_per_chunk)
    # Heads-major for the products (batch dimensions first): XLA:CPU's products ran the
    # dehazer's attention 1.4-1.75x as fast so; keys and values move once.
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    if chunk >= n:
        return _attend(q, k, v, dtype)[0].transpose(0, 2, 1, 3)
    pad = -n % chunk
    if pad:
        q = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0)))
    return _in_chunks(q, k, v, chunk, dtype).transpose(0, 2, 1, 3)[:, :n]
