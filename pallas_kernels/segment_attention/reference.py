"""fp32 reference of segment attention: causal softmax attention within runs of equal segment ids.

A *segment* is a maximal run of equal ids along the sequence (how packing lays documents end to end, and how the
lightning layers reset their state). Query i sees key j iff start(i) <= j <= i, where start(i) is the first index of
i's run. For ids that each form one run (the packer's 1, 2, 3, ..., 0 padding) this is the usual "same id and
causal" mask.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax


def run_bounds(segment_ids):
    """segment_ids [b, t] -> (start, end) int32 [b, t]: the first index of each token's run and one past its last."""
    seg = jnp.asarray(segment_ids)
    b, t = seg.shape
    idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    change = seg[:, 1:] != seg[:, :-1]
    first = jnp.concatenate([jnp.ones((b, 1), bool), change], axis=1)
    last = jnp.concatenate([change, jnp.ones((b, 1), bool)], axis=1)
    start = lax.cummax(jnp.where(first, idx, 0), axis=1)
    end = lax.cummin(jnp.where(last, idx + 1, t), axis=1, reverse=True)
    return start, end


def run_mask(segment_ids, t: int | None = None):
    """[b, t, t] bool: query i (rows) may attend to key j (columns). All one run if segment_ids is None."""
    if segment_ids is None:
        return jnp.tril(jnp.ones((t, t), bool))[None]
    start, _ = run_bounds(segment_ids)
    j = jnp.arange(start.shape[1])
    return (j[None, None, :] <= j[None, :, None]) & (j[None, None, :] >= start[:, :, None])


def segment_attention(q, k, v, segment_ids=None, *, scale=None):
    """q [b, t, h, d], k / v [b, t, kv, d] (h a multiple of kv: query head g*(h//kv) + i uses kv head g) ->
    [b, t, h, d] in q's dtype, computed in fp32 (HIGHEST products)."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    f32 = jnp.float32
    qg = q.astype(f32).reshape(b, t, kv, h // kv, d)
    s = jnp.einsum("bqkgd,bskd->bkgqs", qg, k.astype(f32), precision=lax.Precision.HIGHEST) * scale
    mask = run_mask(segment_ids, t)
    s = jnp.where(mask[:, None, None], s, -jnp.inf)
    p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    p = p / jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("bkgqs,bskd->bqkgd", p, v.astype(f32), precision=lax.Precision.HIGHEST)
    return o.reshape(b, t, h, d).astype(q.dtype)
