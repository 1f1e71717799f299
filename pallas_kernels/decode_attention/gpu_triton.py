"""Split-K flash decoding on GPU (Pallas, Triton lowering): one query per row over a KV cache, reading only the
valid slots of each row.

Layout: the cache stays as the model keeps it, k, v [b, S, K, D] (no transpose per step: JAX's shipped
``pallas.ops.gpu.decode_attention.gqa`` swaps the cache to [b, K, S, D] on every call, i.e. reads and writes the
whole max_len cache per step, which is what this kernel exists to avoid).

Grid (b, K, splits). Program (r, g, j) owns kv head g of row r and the j-th of ``splits`` equal slices of the
row's VALID blocks: the blocks of ``block_k`` slots that meet [start[r], length[r]) are cut into ``splits`` runs of
ceil(n / splits) blocks at run time, so the work is balanced whatever the cache's max_len and however little of it
is filled (slicing the whole cache instead left most programs idle at a short context in a long cache, and with a
max_len of an odd number of blocks forced one split per row: 64K-slot rows then ran on b x K programs). The G = H
/ K query heads of kv head g ride together as the M dimension of the dots (padded to 16 rows, Triton's minimum).
A program walks its run (a ``fori_loop`` with traced bounds: slots outside are never loaded), keeping an online
softmax (running max m, sum l, unnormalised fp32 output). A run with no valid slot writes m = -inf, l = 0. The
runs are merged in XLA with their log-sum-exp weights. Reads per step: the valid K/V slots of each row (rounded
out to blocks), plus q and [b, K, splits, G, D] fp32 partials. On one H200 (1b shape, one decode step of the whole
model at batch 1) the whole-cache slicing cost 8.7 ms at a 64K context against XLA's 4.8; with runs of valid blocks
the kernel matches XLA at batch 1 and is 1.5-2.8x faster from batch 16 (experiments/results/long_generation_h200).

Precision: scores and the softmax in fp32; q, k, v enter the dots in their dtype (bf16 typically) with fp32
accumulation, p is rounded to v's dtype for the second dot (as flash attention does); fp32 inputs use
``Precision.HIGHEST`` (IEEE, for tests). The oracle is ``reference.decode_attention``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

_F32 = jnp.float32
MIN_ROWS = 16  # Triton dots need M >= 16: the G query heads of a kv head are zero-padded up to this


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _kernel(bounds_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, block_k: int, splits: int, scale: float):
    j = pl.program_id(2)
    cache_len = k_ref.shape[0]
    lo, hi = bounds_ref[0], jnp.minimum(bounds_ref[1], cache_len)
    lo_block, hi_block = lo // block_k, (hi + block_k - 1) // block_k  # the row's valid blocks [lo_block, hi_block)
    per = (jnp.maximum(hi_block - lo_block, 0) + splits - 1) // splits
    first = lo_block + j * per
    last = jnp.minimum(first + per, hi_block)  # exclusive; <= first: nothing valid in this run
    q = q_ref[...]  # [Gp, D]
    prec = lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
    rows = q.shape[0]

    def body(i, carry):
        acc, m, lsum = carry
        kb = k_ref[pl.ds(i * block_k, block_k), :]  # [block_k, D]
        vb = v_ref[pl.ds(i * block_k, block_k), :]
        s = lax.dot_general(q, kb, (((1,), (1,)), ((), ())), precision=prec, preferred_element_type=_F32) * scale
        pos = i * block_k + lax.broadcasted_iota(jnp.int32, (rows, block_k), 1)
        s = jnp.where((pos >= lo) & (pos < hi), s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))  # finite: a visited block holds at least one valid slot
        p = jnp.exp(s - m_new[:, None])
        alpha = jnp.exp(m - m_new)
        pv = lax.dot_general(p.astype(vb.dtype), vb, (((1,), (0,)), ((), ())), precision=prec,
                             preferred_element_type=_F32)
        return alpha[:, None] * acc + pv, m_new, alpha * lsum + jnp.sum(p, axis=1)

    init = (jnp.zeros(o_ref.shape, _F32), jnp.full((rows,), -jnp.inf, _F32), jnp.zeros((rows,), _F32))
    acc, m, lsum = lax.fori_loop(first, jnp.maximum(last, first), body, init)
    o_ref[...] = acc
    m_ref[...] = m
    l_ref[...] = lsum


def fits(q_shape, k_shape, block_k: int = 64) -> bool:
    """Whether ``decode_attention`` accepts these shapes (q [b, H, D], k [b, S, K, D]) with this block."""
    H, D, (S, K) = q_shape[1], q_shape[2], k_shape[1:3]
    return H % K == 0 and D >= 16 and not D & (D - 1) and S % block_k == 0


@functools.partial(jax.jit, static_argnames=("splits", "block_k", "num_warps", "num_stages", "interpret"))
def decode_attention(q, k, v, start, length, *, splits: int | None = None, block_k: int = 64,
                     num_warps: int = 4, num_stages: int = 2, interpret: bool = False):
    """q [b, H, D]; k, v [b, S, K, D]; start, length int [b] -> [b, H, D] in q's dtype.

    ``splits`` runs of each row's valid blocks per (row, kv head) go in parallel (default: enough programs to fill
    a GPU, at most S / block_k); S must be a multiple of ``block_k`` (the caller pads the cache length).
    """
    b, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    if H % K:
        raise ValueError(f"decode_attention: {H} query heads are not a multiple of {K} kv heads")
    if block_k < 16 or block_k & (block_k - 1):
        raise ValueError(f"decode_attention: block_k={block_k} must be a power of two >= 16")
    if D < 16 or D & (D - 1):
        raise ValueError(f"decode_attention: head_dim {D} must be a power of two >= 16 for the Triton kernel")
    if S % block_k:
        raise ValueError(f"decode_attention: cache length {S} is not a multiple of block_k = {block_k}")
    if splits is None:
        splits = default_splits(b, K, S, block_k)
    if splits < 1:
        raise ValueError(f"decode_attention: splits={splits} must be >= 1")
    G = H // K
    Gp = max(MIN_ROWS, _next_pow2(G))
    qg = q.reshape(b, K, G, D)
    if Gp != G:
        qg = jnp.pad(qg, ((0, 0), (0, 0), (0, Gp - G), (0, 0)))
    bounds = jnp.stack([jnp.broadcast_to(jnp.asarray(start, jnp.int32), (b,)),
                        jnp.broadcast_to(jnp.asarray(length, jnp.int32), (b,))], axis=1)  # [b, 2]
    kernel = functools.partial(_kernel, block_k=block_k, splits=splits, scale=1.0 / math.sqrt(D))
    kv_spec = pl.BlockSpec((None, S, None, D), lambda r, g, j: (r, 0, g, 0))  # the row's whole cache; runs index it
    o, m, lsum = pl.pallas_call(
        kernel,
        grid=(b, K, splits),
        in_specs=[pl.BlockSpec((None, 2), lambda r, g, j: (r, 0)),
                  pl.BlockSpec((None, None, Gp, D), lambda r, g, j: (r, g, 0, 0)),
                  kv_spec, kv_spec],
        out_specs=[pl.BlockSpec((None, None, None, Gp, D), lambda r, g, j: (r, g, j, 0, 0)),
                   pl.BlockSpec((None, None, None, Gp), lambda r, g, j: (r, g, j, 0)),
                   pl.BlockSpec((None, None, None, Gp), lambda r, g, j: (r, g, j, 0))],
        out_shape=[jax.ShapeDtypeStruct((b, K, splits, Gp, D), _F32),
                   jax.ShapeDtypeStruct((b, K, splits, Gp), _F32),
                   jax.ShapeDtypeStruct((b, K, splits, Gp), _F32)],
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="m1jax_decode_attention",
    )(bounds, qg, k, v)
    return merge_splits(o, m, lsum)[:, :, :G].reshape(b, H, D).astype(q.dtype)


def merge_splits(o, m, lsum):
    """Partials over axis 2 (o [..., splits, G, D] unnormalised, m / lsum [..., splits, G]) -> [..., G, D]; rows
    with no valid slot anywhere -> 0."""
    mx = jnp.max(m, axis=2, keepdims=True)
    w = jnp.where(jnp.isfinite(m), jnp.exp(m - jnp.where(jnp.isfinite(mx), mx, 0.0)), 0.0)
    num = jnp.sum(w[..., None] * o, axis=2)
    den = jnp.sum(w * lsum, axis=2)
    return jnp.where(den[..., None] > 0, num / jnp.where(den > 0, den, 1.0)[..., None], 0.0)


def default_splits(b: int, kv_heads: int, cache_len: int, block_k: int, target_programs: int = 528) -> int:
    """Splits per (row, kv head): about ``target_programs`` programs in all (4 per SM of an H100 / H200), at most
    one per block of the cache."""
    blocks = max(1, cache_len // block_k)
    return max(1, min(blocks, target_programs // max(1, b * kv_heads)))
