"""Segment (packed-document) causal attention on GPU: Pallas flash-attention kernels with the Triton lowering that
visit only the key blocks a query tile's segments can reach (forward and backward).

Why: a packed training row of 8192 tokens holds several documents. Given a dense [t, t] mask, cuDNN's flash
attention computes every causal block and masks it (0.93 ms forward, 3.46 ms backward per 1b softmax layer on an
H200, against 3.5 ms forward + backward for one 8K document; experiments/results/train_trace_1b_h200_after_moe_gather
.md). With documents of mean length L the reachable blocks are about L / t of the causal ones.

Semantics (``reference.py``): query i sees key j iff start(i) <= j <= i, start(i) the first index of i's run of
equal segment ids. The run bounds (``reference.run_bounds``: start and one-past-the-end per token) are computed in
XLA and passed to the kernels, which derive their loop ranges from them:

  forward, dQ   grid (batch, heads, query tiles): key blocks from min(start) of the tile // block_k up to the
                tile's diagonal; online softmax in fp32 (running max, running sum, rescaled accumulator).
  dK, dV        grid (batch, heads, key tiles): query blocks from the tile's own up to max(end) of its keys; each
                program writes its query head's fp32 share, and the heads sharing a kv head (GQA) are summed in XLA
                (unrolling them inside one program asked 305 KB of shared memory at D 128, 4 heads per kv head).

The forward saves the log-sum-exp per query row (fp32); the backward recomputes the probabilities from it and
delta = rowsum(dO * O) (XLA), FlashAttention-2 style. Products take the inputs' dtype with fp32 accumulation
(probabilities and dS rounded to it for their products, as every flash kernel does); fp32 inputs use HIGHEST
(IEEE, meant for tests). Masked entries are excluded with a finite -1e30 and an explicit zero, so a block that a row
cannot see (it lies before the row's segment) contributes nothing and never makes NaN.

Limits: head_dim a power of two in [16, 256]; the sequence is zero-padded to a multiple of the tiles (the padding
tokens form their own one-token runs and are sliced off).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.segment_attention import reference

_F32 = jnp.float32
_NEG = -1e30


@dataclasses.dataclass(frozen=True)
class Params:
    """Tiles and Triton settings (static). block_q / block_k: powers of two >= 16."""

    block_q: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2
    bwd_block_q: int = 64
    bwd_block_k: int = 64
    bwd_num_warps: int = 4
    bwd_num_stages: int = 2
    interpret: bool = False

    def check(self):
        for name in ("block_q", "block_k", "bwd_block_q", "bwd_block_k"):
            n = getattr(self, name)
            if n < 16 or n & (n - 1):
                raise ValueError(f"segment attention {name} must be a power of two >= 16, got {n}")


def _dot(a, b, ca: int, cb: int):
    prec = lax.Precision.HIGHEST if a.dtype == _F32 else None
    return lax.dot_general(a, b, (((ca,), (cb,)), ((), ())), precision=prec, preferred_element_type=_F32)


def _iota(n):
    return lax.broadcasted_iota(jnp.int32, (n,), 0)


def _visible(q_idx, k_idx, q_start):
    """[bq, bk]: key k_idx[c] is in query q_idx[r]'s run and not after it."""
    return (k_idx[None, :] <= q_idx[:, None]) & (k_idx[None, :] >= q_start[:, None])


def _key_range(q0, q_start, bq, bk):
    """Key blocks [lo, hi) reachable by queries q0 .. q0 + bq - 1 with run starts q_start."""
    return jnp.min(q_start) // bk, (q0 + bq - 1) // bk + 1


# ---------------------------------------------------------------------------------------------------------- kernels


def _fwd_kernel(q_ref, k_ref, v_ref, st_ref, o_ref, lse_ref, *, bq, bk, scale):
    q0 = pl.program_id(2) * bq
    q = q_ref[...]
    q_start = st_ref[...]
    q_idx = q0 + _iota(bq)

    def body(j, carry):
        m, total, acc = carry
        ks = pl.ds(pl.multiple_of(j * bk, bk), bk)
        kb, vb = k_ref[ks, :], v_ref[ks, :]
        mask = _visible(q_idx, j * bk + _iota(bk), q_start)
        s = jnp.where(mask, _dot(q, kb, 1, 1) * scale, _NEG)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m - m_new)
        return m_new, total * alpha + jnp.sum(p, axis=1), acc * alpha[:, None] + _dot(p.astype(vb.dtype), vb, 1, 0)

    lo, hi = _key_range(q0, q_start, bq, bk)
    init = (jnp.full((bq,), _NEG, _F32), jnp.zeros((bq,), _F32), jnp.zeros(q.shape, _F32))
    m, total, acc = lax.fori_loop(lo, hi, body, init)
    o_ref[...] = (acc / total[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(total)


def _dq_kernel(q_ref, k_ref, v_ref, st_ref, do_ref, lse_ref, delta_ref, dq_ref, *, bq, bk, scale):
    q0 = pl.program_id(2) * bq
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    q_start = st_ref[...]
    q_idx = q0 + _iota(bq)

    def body(j, dq):
        ks = pl.ds(pl.multiple_of(j * bk, bk), bk)
        kb, vb = k_ref[ks, :], v_ref[ks, :]
        mask = _visible(q_idx, j * bk + _iota(bk), q_start)
        p = jnp.where(mask, jnp.exp(_dot(q, kb, 1, 1) * scale - lse[:, None]), 0.0)
        ds = p * (_dot(do, vb, 1, 1) - delta[:, None])
        return dq + _dot(ds.astype(kb.dtype), kb, 1, 0)

    lo, hi = _key_range(q0, q_start, bq, bk)
    dq = lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, _F32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, st_ref, en_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, bq, bk, scale):
    """One query head's share of dK, dV for one key tile (fp32; the wrapper sums the heads of a kv head)."""
    k0 = pl.program_id(2) * bk
    kb, vb = k_ref[...], v_ref[...]
    k_idx = k0 + _iota(bk)

    def body(i, carry):
        dk, dv = carry
        qs = pl.ds(pl.multiple_of(i * bq, bq), bq)
        q, do = q_ref[qs, :], do_ref[qs, :]
        mask = _visible(i * bq + _iota(bq), k_idx, st_ref[qs])
        p = jnp.where(mask, jnp.exp(_dot(q, kb, 1, 1) * scale - lse_ref[qs][:, None]), 0.0)
        ds = p * (_dot(do, vb, 1, 1) - delta_ref[qs][:, None])
        return dk + _dot(ds.astype(q.dtype), q, 0, 0), dv + _dot(p.astype(do.dtype), do, 0, 0)

    # queries that can see a key of this tile: from the tile's first key to the end of its last key's run
    lo, hi = k0 // bq, (jnp.max(en_ref[...]) + bq - 1) // bq
    zeros = jnp.zeros(kb.shape, _F32)
    dk, dv = lax.fori_loop(lo, hi, body, (zeros, zeros))
    dk_ref[...] = dk * scale
    dv_ref[...] = dv


# --------------------------------------------------------------------------------------------------------- wrappers


def _compiler(params: Params, bwd: bool):
    if params.interpret:
        return None
    if bwd:
        return pltriton.CompilerParams(num_warps=params.bwd_num_warps, num_stages=params.bwd_num_stages)
    return pltriton.CompilerParams(num_warps=params.num_warps, num_stages=params.num_stages)


def _pad_len(t: int, params: Params) -> int:
    tile = max(params.block_q, params.block_k, params.bwd_block_q, params.bwd_block_k)
    return -(-t // tile) * tile


def _padded_bounds(segment_ids, b, t, tp):
    """Run starts / ends for the padded length: padding tokens are one-token runs."""
    if segment_ids is None:
        start, end = jnp.zeros((b, t), jnp.int32), jnp.full((b, t), t, jnp.int32)
    else:
        start, end = reference.run_bounds(segment_ids)
    if tp > t:
        own = jnp.broadcast_to(jnp.arange(t, tp, dtype=jnp.int32), (b, tp - t))
        start, end = jnp.concatenate([start, own], 1), jnp.concatenate([end, own + 1], 1)
    return start, end


def _query_tile_specs(bq, tp, d, grp):
    """Grid (batch, head, query tile) -> [the head's query tile, its kv head's whole k and v, the tile's run starts]."""
    return [
        pl.BlockSpec((None, bq, None, d), lambda i, j, n: (i, n, j, 0)),
        pl.BlockSpec((None, tp, None, d), lambda i, j, n: (i, 0, j // grp, 0)),
        pl.BlockSpec((None, tp, None, d), lambda i, j, n: (i, 0, j // grp, 0)),
        pl.BlockSpec((None, bq), lambda i, j, n: (i, n)),
    ]


def _forward(q, k, v, start, *, scale, params):
    b, tp, h, d = q.shape
    kvh = k.shape[2]
    grp = h // kvh
    bq, bk = params.block_q, params.block_k
    kernel = functools.partial(_fwd_kernel, bq=bq, bk=bk, scale=scale)
    return pl.pallas_call(
        kernel,
        grid=(b, h, tp // bq),
        in_specs=_query_tile_specs(bq, tp, d, grp),
        out_specs=[_query_tile_specs(bq, tp, d, grp)[0], pl.BlockSpec((None, None, bq), lambda i, j, n: (i, j, n))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, tp), _F32)],
        compiler_params=_compiler(params, False),
        interpret=params.interpret,
        name="segment_attention_fwd",
    )(q, k, v, start)


def _backward(q, k, v, start, end, o, lse, do, *, scale, params):
    b, tp, h, d = q.shape
    kvh = k.shape[2]
    grp = h // kvh
    delta = jnp.einsum("bthd,bthd->bht", o.astype(_F32), do.astype(_F32))
    bq, bk = params.bwd_block_q, params.bwd_block_k
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, bq=bq, bk=bk, scale=scale),
        grid=(b, h, tp // bq),
        in_specs=[*_query_tile_specs(bq, tp, d, grp), _query_tile_specs(bq, tp, d, grp)[0],
                  *[pl.BlockSpec((None, None, bq), lambda i, j, n: (i, j, n))] * 2],
        out_specs=_query_tile_specs(bq, tp, d, grp)[0],
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_compiler(params, True),
        interpret=params.interpret,
        name="segment_attention_bwd_dq",
    )(q, k, v, start, do, lse, delta)
    # grid over query heads (each program one head's share; G times the programs of a kv-head grid, and no
    # G-fold unrolled loads: those asked 305 KB of shared memory at D 128, G 4 on an H200), summed per kv head here
    row = lambda: pl.BlockSpec((None, None, tp), lambda i, j, n: (i, j, 0))  # noqa: E731
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, bq=bq, bk=bk, scale=scale),
        grid=(b, h, tp // bk),
        in_specs=[
            pl.BlockSpec((None, tp, None, d), lambda i, j, n: (i, 0, j, 0)),
            pl.BlockSpec((None, bk, None, d), lambda i, j, n: (i, n, j // grp, 0)),
            pl.BlockSpec((None, bk, None, d), lambda i, j, n: (i, n, j // grp, 0)),
            pl.BlockSpec((None, tp), lambda i, j, n: (i, 0)),
            pl.BlockSpec((None, bk), lambda i, j, n: (i, n)),
            pl.BlockSpec((None, tp, None, d), lambda i, j, n: (i, 0, j, 0)),
            row(),
            row(),
        ],
        out_specs=[pl.BlockSpec((None, bk, None, d), lambda i, j, n: (i, n, j, 0))] * 2,
        out_shape=[jax.ShapeDtypeStruct(q.shape, _F32)] * 2,
        compiler_params=_compiler(params, True),
        interpret=params.interpret,
        name="segment_attention_bwd_dkv",
    )(q, k, v, start, end, do, lse, delta)
    per_kv = lambda x, like: x.reshape(b, tp, kvh, grp, d).sum(3).astype(like.dtype)  # noqa: E731
    dk, dv = per_kv(dk, k), per_kv(dv, v)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, start, end, scale, params):
    return _forward(q, k, v, start, scale=scale, params=params)[0]


def _attention_fwd(q, k, v, start, end, scale, params):
    o, lse = _forward(q, k, v, start, scale=scale, params=params)
    return o, (q, k, v, start, end, o, lse)


def _attention_bwd(scale, params, res, do):
    q, k, v, start, end, o, lse = res
    dq, dk, dv = _backward(q, k, v, start, end, o, lse, do.astype(q.dtype), scale=scale, params=params)
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def check_inputs(q, k, v, segment_ids):
    """ValueError (one line) for shapes the kernels do not take."""
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"q [b, t, h, d] and k, v [b, t, kv, d] expected, got {q.shape} {k.shape} {v.shape}")
    b, t, h, d = q.shape
    if k.shape[:2] != (b, t) or k.shape[3] != d or h % k.shape[2]:
        raise ValueError(f"k / v {k.shape} do not fit q {q.shape} (same b, t, d; heads a multiple of kv heads)")
    if d < 16 or d > 256 or d & (d - 1):
        raise ValueError(f"segment attention needs head_dim a power of two in [16, 256], got {d}")
    if segment_ids is not None and segment_ids.shape != (b, t):
        raise ValueError(f"segment_ids must be [batch, seq] = {(b, t)}, got {segment_ids.shape}")


@functools.partial(jax.jit, static_argnames=("scale", "params"))
def segment_attention(q, k, v, segment_ids=None, *, scale=None, params: Params = Params()):
    """Causal softmax attention within segments (runs of equal ids; module docstring). q [b, t, h, d], k / v
    [b, t, kv, d] -> [b, t, h, d] in q's dtype (computed in the promoted dtype of q, k, v). ``scale`` (default
    1 / sqrt(d)) is a static Python float. Differentiable in q, k, v."""
    check_inputs(q, k, v, segment_ids)
    params.check()
    b, t, h, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    tp = _pad_len(t, params)
    start, end = _padded_bounds(segment_ids, b, t, tp)
    pad = lambda x: x if tp == t else jnp.pad(x, ((0, 0), (0, tp - t), (0, 0), (0, 0)))  # noqa: E731
    dtype = jnp.result_type(q, k, v)
    o = _attention(pad(q.astype(dtype)), pad(k.astype(dtype)), pad(v.astype(dtype)), start, end, scale, params)
    return o[:, :t].astype(q.dtype)
