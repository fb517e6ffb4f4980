"""Dot-product attention whose logits need not exist all at once.

The attention of ``N`` queries over ``M`` keys holds a ``(B, H, N, M)`` logit array:
for queries at half the resolution of a 640x640 image and keys reduced 4x4 further,
102,400 x 6,400 floats (2.6 GB) per block; at 1024x1024, 262,144 x 16,384 (17 GB),
beyond most hosts and accelerators.
Above :data:`MAX_LOGITS`, the queries go in chunks (``lax.map``) whose logits hold
about :data:`LOGITS_PER_CHUNK` floats, so memory stays bounded at any image size; every
row goes through the same operations as in one piece (equal to float32 rounding:
XLA may order a product's sums differently for another shape). Below it one piece is
faster on the CPU (README, Benchmark: a whole dehazing network at 640x640 took 4.6 s
with its attention in one piece and 5.9 s in chunks; its products already run at more
than half the machine's matrix product rate, and the loop costs its steps).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

#: Logits (floats) of one attention above which its queries go in chunks: 2**30
#: (4 GiB in float32).
MAX_LOGITS = 2 ** 30
#: Logits per chunk of queries: 2**20 (4 MiB in float32) was the fastest of 2**18,
#: 2**20 and 2**22 for the 640x640 attention above, on a 2-core CPU.
LOGITS_PER_CHUNK = 2 ** 20
#: Fewer queries per chunk than this are not worth a loop step.
MIN_QUERY_CHUNK = 16


def query_chunk(batch: int, queries: int, heads: int, keys: int,
                max_logits: Optional[int] = None, logits_per_chunk: Optional[int] = None
                ) -> int:
    """Queries per chunk: all ``queries`` when their logits (``batch * heads * queries
    * keys``) are at most ``max_logits``, else the largest power of two whose logits
    fit ``logits_per_chunk`` (at least :data:`MIN_QUERY_CHUNK`). None: the module's
    :data:`MAX_LOGITS`, :data:`LOGITS_PER_CHUNK`."""
    max_logits = MAX_LOGITS if max_logits is None else max_logits
    logits_per_chunk = logits_per_chunk or LOGITS_PER_CHUNK
    if batch * heads * queries * keys <= max_logits:
        return queries
    fit = max(1, logits_per_chunk // max(1, batch * heads * keys))
    chunk = max(MIN_QUERY_CHUNK, 1 << (fit.bit_length() - 1))
    return min(chunk, queries)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, dtype) -> jax.Array:
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, dtype=jnp.float32,
              max_logits: Optional[int] = None, logits_per_chunk: Optional[int] = None
              ) -> jax.Array:
    """``softmax(q k^T) v`` per head: queries ``(B, N, H, D)`` (already scaled), keys
    ``(B, M, H, D)``, values ``(B, M, H, E)`` -> ``(B, N, H, E)``. Logits and softmax
    in float32, the weights cast to ``dtype`` for the second product; the queries in
    chunks of :func:`query_chunk` (padded to a whole number of chunks) when the logits
    exceed ``max_logits``."""
    if not (q.ndim == k.ndim == v.ndim == 4 and q.shape[0] == k.shape[0] == v.shape[0]
            and k.shape[1] == v.shape[1] and q.shape[2] == k.shape[2] == v.shape[2]
            and q.shape[3] == k.shape[3]):
        raise ValueError(f"attention: queries (B, N, H, D), keys (B, M, H, D) and values "
                         f"(B, M, H, E) expected, got {q.shape}, {k.shape}, {v.shape}")
    b, n, h, _ = q.shape
    chunk = query_chunk(b, n, h, k.shape[1], max_logits, logits_per_chunk)
    if chunk >= n:
        return _attend(q, k, v, dtype)
    pad = -n % chunk
    if pad:
        q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    chunks = q.reshape(b, (n + pad) // chunk, chunk, h, q.shape[-1]).swapaxes(0, 1)
    out = jax.lax.map(lambda qc: _attend(qc, k, v, dtype), chunks)
    return out.swapaxes(0, 1).reshape(b, n + pad, h, v.shape[-1])[:, :n]
