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
logits: with it the chunks' gradients cost no more than one piece's (the stage-1
attention's gradients: 3.75 s in chunks with the division after, 5.60 s with it
first, 4.15 s in one piece).
"""

from __future__ import annotations

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


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, dtype) -> jax.Array:
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    # The softmax with its division after the product with the values.
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.exp(logits - top)
    total = jnp.sum(weights, axis=-1).transpose(0, 2, 1)[..., None]  # (B, N, H, 1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(dtype), v,
                     preferred_element_type=jnp.float32)
    return (out / total).astype(dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, dtype=jnp.float32,
              max_logits: Optional[int] = None, logits_per_chunk: Optional[int] = None
              ) -> jax.Array:
    """``softmax(q k^T) v`` per head: queries ``(B, N, H, D)`` (already scaled), keys
    ``(B, M, H, D)``, values ``(B, M, H, E)`` -> ``(B, N, H, E)``. Logits, softmax and
    the second product's sums in float32, the weights cast to ``dtype`` for it; the
    queries in chunks of :func:`query_chunk` (padded to a whole number of chunks) when
    the logits exceed ``max_logits`` (None: :func:`default_max_logits`)."""
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
