"""The oracle for softmax attention of one new query per row over a KV cache (decode).

Row r's query attends to cache slots ``start[r] <= s < length[r]`` (left padding before ``start``, unwritten
slots from ``length`` on). Grouped-query attention: query head h reads kv head h // (H // K). Scores and the
softmax in fp32; a row with no valid slot gets zeros.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def decode_attention(q, k, v, start, length, *, scale: float | None = None):
    """q [b, H, D]; k, v [b, S, K, D]; start, length int [b] -> [b, H, D] in q's dtype (fp32 math)."""
    b, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qg = q.astype(jnp.float32).reshape(b, K, H // K, D)
    s = jnp.einsum("bkgd,bskd->bkgs", qg, k.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST) * scale
    pos = jnp.arange(S)[None, :]
    valid = (pos >= jnp.asarray(start)[:, None]) & (pos < jnp.asarray(length)[:, None])  # [b, S]
    s = jnp.where(valid[:, None, None], s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.where(valid[:, None, None], jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("bkgs,bskd->bkgd", p, v.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    o = jnp.where(denom > 0, o / jnp.where(denom > 0, denom, 1.0), 0.0)
    return o.reshape(b, H, D).astype(q.dtype)
