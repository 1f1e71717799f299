"""Softmax decode attention on TPU (Pallas, Mosaic lowering): one query per row over a KV cache, reading only the
blocks of each row's valid slots [start[r], length[r]).

Layout. The model keeps k, v as [b, S, K, D]. Blocked per kv head, the second-minor block dim would be K's 1,
which Mosaic's (8, 128) tiling rejects (a block's last two dims must be multiples of (8, 128) or the array's
full dims), and transposing the cache to [b, K, S, D] per step would read and write the whole cache, the cost this
kernel exists to avoid. So the cache is viewed as [b, S*K, D] (a free reshape: slot s, kv head g is row s*K + g)
and a block of ``block_k`` slots is ``block_k*K`` rows x D, all kv heads together: tile-friendly when block_k*K is
a multiple of 8 (D is the full dim).

Compute per (row, block). All H query heads (zero-padded to Hp, a multiple of 8 sublanes) score against every
row of the block: s = q [Hp, D] @ kblock [block_k*K, D]^T -> [Hp, block_k*K], so each query head also scores
the K - 1 kv heads it does not use. Those entries are masked out with the valid slots: column c is slot c // K of
kv head c % K; entry (h, c) is kept iff c % K == h // G (G = H / K; a constant [Hp, block_k*K] mask built in the
wrapper, fetched once: no vector integer division in the kernel) and start <= slot < length (a column range,
K*(start - block start) <= c < K*(length - block start)). The value dot p [Hp, block_k*K] @ vblock
[block_k*K, D] then needs no mask: masked p are exactly 0. Online softmax (running max m, sum l, unnormalised
fp32 output [Hp, D]) lives in VMEM scratch across the block axis.

Why the K-fold waste is cheap. Per block the kernel reads 2 * block_k*K*D elements (k and v) and does
2 * 2 * Hp * block_k*K*D FLOPs: Hp FLOPs per bf16 byte, of which Hp / K (= G) are useful. At MiniMax-M1's H = 64,
K = 8, D = 128 that is 64 FLOP/byte, below the MXU / HBM ridge of every TPU generation (v5e: ~197 TFLOP/s over
~0.82 TB/s = 240; v5p: ~460 / 2.8 = 166; v6e: ~920 / 1.6 = 560), so the step stays bound by reading the cache.
The VPU / EUP work (mask, exp) also grows K-fold: Hp / (2 D) element ops per loaded element (1/4 at the shape
above). Not measured: this kernel has never run on TPU hardware here (see "Verified" below).

Grid (b, S / block_k), dimension semantics ("parallel", "arbitrary"). start and length are scalar-prefetched
into SMEM; the k / v index maps clamp block j into the row's valid block range [start // block_k,
ceil(length / block_k) - 1], so grid steps outside it revisit the same block (the Pallas TPU pipeline issues no
DMA when the block index does not change) and ``pl.when`` skips their compute (which would change nothing: the
mask is built for block j, none of whose slots is valid there): per row the kernel reads the valid slots rounded
out to blocks, plus one block for an empty row (never used). The scratch is initialised at block 0 and the
normalised output is written at the last block (an empty row, l = 0, gets zeros). Steps outside the range still
cost the per-step pipeline overhead (S / block_k steps per row, whatever the context): a longer block_k amortises
it (default ~2048 rows per block: at H = 64, K = 8, D = 128, bf16, k and v double-buffered take 2 MiB of VMEM and
each [64, 2048] fp32 score-sized temporary 512 KiB). The alternative, a manual double-buffered DMA loop over the
valid blocks only (memory_space=ANY), would avoid that overhead but is more to get right without hardware: not done.

Precision: scores and the softmax in fp32; q, k, v enter the dots in their dtype (bf16 typically) with fp32
accumulation, p is rounded to v's dtype for the value dot; fp32 inputs use ``Precision.HIGHEST``. Same semantics
as ``gpu_triton.decode_attention``; the oracle is ``reference.decode_attention``.

Verified: in TPU interpret mode on a CPU (tests/kernels/test_decode_attention_tpu.py, poisoned slots included),
and the Mosaic lowering succeeds on a CPU-only machine (``jax.export`` with platforms=["tpu"], bf16: b=4, H=16,
K=4, D=128, S=4096; MiniMax-M1's H=64, K=8 at S=65536; a G = 3 shape). Block bounds use ``lax.div``, since ``//``
lowers through sign(), whose Mosaic rule asks for a TPU. libtpu's compiler (Mosaic's layout passes) was not run,
and the kernel was never run or timed on a TPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

_F32 = jnp.float32
SUBLANES = 8  # query heads are zero-padded to a multiple of this; block_k * K must be one too
TARGET_ROWS = 2048  # default block: about this many cache rows (slots x kv heads), 512 KiB of bf16 k at D = 128

# jax >= 0.5 calls it CompilerParams; older releases TPUCompilerParams.
_CompilerParams = getattr(pltpu, "CompilerParams", None) or getattr(pltpu, "TPUCompilerParams")  # noqa: B009


def _interpret_arg(interpret):
    """True -> TPU interpret mode (a CPU simulation with TPU semantics); an explicit InterpretParams passes through."""
    if interpret is True:
        params = getattr(pltpu, "InterpretParams", None)
        return params() if params is not None else True
    return interpret


def default_block_k(cache_len: int, kv_heads: int, target_rows: int = TARGET_ROWS) -> int:
    """The largest power of two <= target_rows / kv_heads that divides the cache length (>= 1)."""
    bk = 1 << max(0, (max(1, target_rows // kv_heads)).bit_length() - 1)
    while bk > 1 and cache_len % bk:
        bk //= 2
    return bk


def fits(q_shape, k_shape, block_k: int | None = None) -> bool:
    """Whether ``decode_attention`` accepts these shapes (q [b, H, D], k [b, S, K, D])."""
    H, (S, K) = q_shape[1], k_shape[1:3]
    bk = default_block_k(S, K) if block_k is None else block_k
    return H % K == 0 and bk >= 1 and S % bk == 0 and (bk * K) % SUBLANES == 0


def _block_range(start, length, block_k: int, n_blocks: int):
    """A row's blocks to visit: [lo, hi), never empty (an empty row still fetches block lo, computing nothing)."""
    lo = jnp.minimum(lax.div(start, block_k), n_blocks - 1)  # lax.div: both >= 0; `//` lowers through sign(),
    hi = jnp.maximum(lax.div(length + block_k - 1, block_k), lo + 1)  # which asks for a TPU (export fails)
    return lo, hi


def kv_index_map(r, j, start_ref, length_ref, *, block_k: int, n_blocks: int):
    """Grid step (r, j) -> the k / v block it loads: j clamped into the row's blocks [lo, hi), so the steps before
    and after them revisit a block (no new DMA) and no block without a valid slot is ever fetched (an empty row
    fetches block lo once, unused)."""
    lo, hi = _block_range(start_ref[r], length_ref[r], block_k, n_blocks)
    return r, jnp.minimum(jnp.maximum(j, lo), hi - 1), 0


def _kernel(start_ref, length_ref, head_mask_ref, q_ref, k_ref, v_ref, o_ref, m_sc, l_sc, acc_sc, *,
            block_k: int, kv_heads: int, n_blocks: int, scale: float):
    r, j = pl.program_id(0), pl.program_id(1)
    start, length = start_ref[r], length_ref[r]
    lo, hi = _block_range(start, length, block_k, n_blocks)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, _F32)
        l_sc[...] = jnp.zeros(l_sc.shape, _F32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, _F32)

    @pl.when((j >= lo) & (j < hi) & (start < length))
    def _block():
        q, kb, vb = q_ref[...], k_ref[...], v_ref[...]  # [Hp, D], [block_k*K, D], [block_k*K, D]
        prec = lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
        s = lax.dot_general(q, kb, (((1,), (1,)), ((), ())), precision=prec, preferred_element_type=_F32) * scale
        col = lax.broadcasted_iota(jnp.int32, s.shape, 1)
        base = j * block_k  # the block's first slot
        keep = ((head_mask_ref[...] != 0) & (col >= kv_heads * (start - base))
                & (col < kv_heads * (length - base)))
        s = jnp.where(keep, s, -jnp.inf)
        m_prev = m_sc[...]  # [Hp, 1]
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # padded heads never see a valid entry
        p = jnp.exp(s - m_safe)
        alpha = jnp.exp(m_prev - m_safe)
        l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
        pv = lax.dot_general(p.astype(vb.dtype), vb, (((1,), (0,)), ((), ())), precision=prec,
                             preferred_element_type=_F32)
        acc_sc[...] = alpha * acc_sc[...] + pv
        m_sc[...] = m_new

    @pl.when(j == n_blocks - 1)
    def _finish():
        lsum = l_sc[...]
        o = jnp.where(lsum > 0, acc_sc[...] / jnp.where(lsum > 0, lsum, 1.0), 0.0)
        o_ref[...] = o.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("block_k", "interpret"))
def decode_attention(q, k, v, start, length, *, block_k: int | None = None, interpret=False):
    """q [b, H, D]; k, v [b, S, K, D]; start, length int [b] (row r attends to slots start[r] <= s < length[r])
    -> [b, H, D] in q's dtype; an empty range gives zeros.

    ``block_k`` slots per block (default ``default_block_k``: a power of two dividing S, about 2048 rows of
    slots x kv heads); S must be a multiple of it and block_k * K a multiple of 8. ``interpret=True`` runs in TPU
    interpret mode on a CPU (tests).
    """
    if q.ndim != 3 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(f"decode_attention: want q [b, H, D], k = v [b, S, K, D]; got q {q.shape}, k {k.shape}, "
                         f"v {v.shape}")
    b, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    if k.shape[0] != b or k.shape[3] != D:
        raise ValueError(f"decode_attention: k {k.shape} does not match q {q.shape} in batch or head_dim")
    if H % K:
        raise ValueError(f"decode_attention: {H} query heads are not a multiple of {K} kv heads")
    if block_k is None:
        block_k = default_block_k(S, K)
    if block_k < 1 or S % block_k:
        raise ValueError(f"decode_attention: cache length {S} is not a multiple of block_k = {block_k}")
    if (block_k * K) % SUBLANES:
        raise ValueError(f"decode_attention: block_k * kv_heads = {block_k} * {K} is not a multiple of {SUBLANES} "
                         "(Mosaic's sublane tile)")
    G, n_blocks, rows = H // K, S // block_k, block_k * K
    Hp = -(-H // SUBLANES) * SUBLANES
    qp = q if Hp == H else jnp.pad(q, ((0, 0), (0, Hp - H), (0, 0)))
    start = jnp.clip(jnp.broadcast_to(jnp.asarray(start, jnp.int32), (b,)), 0, S)
    length = jnp.clip(jnp.broadcast_to(jnp.asarray(length, jnp.int32), (b,)), 0, S)
    h, c = np.arange(Hp)[:, None], np.arange(rows)[None, :]
    head_mask = jnp.asarray((h < H) & (c % K == h // G), jnp.int32)  # [Hp, rows]: query head h reads kv head h // G

    kv_spec = pl.BlockSpec((None, rows, D), functools.partial(kv_index_map, block_k=block_k, n_blocks=n_blocks))
    kernel = functools.partial(_kernel, block_k=block_k, kv_heads=K, n_blocks=n_blocks, scale=1.0 / math.sqrt(D))
    out = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(b, n_blocks),
            in_specs=[pl.BlockSpec((Hp, rows), lambda r, j, *_: (0, 0)),
                      pl.BlockSpec((None, Hp, D), lambda r, j, *_: (r, 0, 0)),
                      kv_spec, kv_spec],
            out_specs=pl.BlockSpec((None, Hp, D), lambda r, j, *_: (r, 0, 0)),
            scratch_shapes=[pltpu.VMEM((Hp, 1), _F32), pltpu.VMEM((Hp, 1), _F32), pltpu.VMEM((Hp, D), _F32)],
        ),
        out_shape=jax.ShapeDtypeStruct((b, Hp, D), q.dtype),
        compiler_params=_CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=_interpret_arg(interpret),
        name="m1jax_decode_attention_tpu",
    )(start, length, head_mask, qp, k.reshape(b, S * K, D), v.reshape(b, S * K, D))
    return out[:, :H]
