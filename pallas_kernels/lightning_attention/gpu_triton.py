"""Lightning attention on GPU: Pallas kernels with the Triton lowering (forward and backward).

This is the portable GPU path (pre-Hopper GPUs, and a fallback on Hopper). Since JAX 0.9 the default
Pallas GPU lowering is Mosaic GPU, so every ``pallas_call`` here passes
``compiler_params=pltriton.CompilerParams(num_warps=..., num_stages=...)`` explicitly, which selects
the Triton lowering (``jax.experimental.pallas.triton``, present in JAX 0.10.2 and 0.11.2; deprecated
since 0.11 but not removed).

Algorithm (Lightning Attention-2, per head with rate s > 0, blocks of C tokens, local indices t, u in
[0, m), m <= C the block's real length, S the fp32 state before the block):

    intra = ((Q K^T) * M) V,          M[t, u] = e^{-s (t - u)} for t >= u, else 0
    inter = (Q * e^{-s (t + 1)}) S
    S    <- e^{-s m} S + (K * e^{-s (m - 1 - u)})^T V

Every exponent is non-positive. One program owns one (batch, head, column tile) and walks the blocks
with a ``fori_loop`` keeping its slice of the state in registers. The output columns of the state are
independent, so the forward splits Dv into tiles of ``fwd_block_v`` columns (more programs, a
smaller state per program; Q K^T is recomputed per tile).

Backward (LA2 Alg. 2), with A = (Q K^T) * M, dA = (dO V^T) * M, Kd = K * kdec, Qd = Q * qdec:

    dQ = dA K + qdec * (dO S_prev^T)              forward over blocks, running S    (split over Dk)
    dK = dA^T Q + kdec * (V dS_next^T)            reverse over blocks, running dS   (split over Dk)
    dV = A^T dO + Kd dS_next                      reverse over blocks, running dS   (split over Dv)
    dS_prev = e^{-s m} dS_next + Qd^T dO,   dS seeded with the final-state cotangent;
    d(initial_state) = dS after the reverse pass.

The three backward kernels each recompute what they need from q, k, v, dO (the forward saves only
its inputs), so there are no cross-program reductions and no per-block states in memory.
Because of that the backward pairs with any forward of the same semantics: ``with_triton_backward(
fwd_fn, params)`` wraps a forward function in the one custom_vjp used here (``lightning_attention``
is the Triton forward wrapped this way; gpu_mosaic.py wraps its Hopper forward), and ``backward``
runs the three kernels for given inputs and cotangents (padding and casts inside).

The same kernels also run on the lightning layer's interleaved q | k | v projection, read and differentiated in
place: ``gpu_triton_qkv.py`` (``_forward`` / ``_backward`` take column offsets for it).

Segment ids (packed sequences), exactly as ``reference.chunked``: intra-block pairs from different
segments are masked; tokens not in the segment of the incoming state get no inter term; only tokens
in the segment of the block's last real token enter the new state; and the old state is dropped
(instead of decayed) when the block's last segment differs from the incoming one.

Precision: fp32 state and accumulators; matmul operands are fed in the compute dtype (the promoted
dtype of q, k, v, bf16 typically) with fp32 accumulation. The fp32 state is rounded to the compute
dtype where it is a matmul operand (as fla does). For fp32 inputs the dots use
``Precision.HIGHEST`` (IEEE fp32 in Triton, not TF32): exact but slow, meant for tests.

Launch knobs (tiles, warps, pipelining stages; the backward's stages follow the launch size) and head-dim limits:
gpu_triton_config.py. Measurements against fla: docs/kernels.md and experiments/results/lightning_vs_fla_rounds_h200.md.

Gradient w.r.t. ``decay``: zeros. The decay rates are a fixed buffer in MiniMax (never trained).

Tiling limits: tiles must be powers of two >= 16 (Triton). ``block_size`` is a request: it is rounded
down to a power of two and clamped to [16, MAX_BLOCK_SIZE] (the result does not depend on C beyond
rounding). Head dims are zero-padded up to a power of two >= 16 (exact); padded head dims above
MAX_HEAD_DIM raise ValueError.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.lightning_attention.gpu_triton_config import (  # noqa: F401 - re-exported (gpu_triton_qkv, tests)
    DEFAULT_BWD_BLOCK,
    DEFAULT_NUM_STAGES,
    DEFAULT_NUM_WARPS,
    MAX_BLOCK_SIZE,
    MAX_HEAD_DIM,
    MIN_TILE,
    TritonParams,
    _auto_bwd_stages,
    _Cfg,
    _config,
    _padded_head_dim,
)

_F32 = jnp.float32
_DEFAULT_PARAMS = TritonParams()


# ----------------------------------------------------------------------------------------------
# In-kernel helpers
# ----------------------------------------------------------------------------------------------


def _precision(dtype):
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _dot(a, b, ca: int, cb: int):
    """2-D dot contracting a's dim ca with b's dim cb; operands in their dtype, fp32 accumulation."""
    return lax.dot_general(
        a, b, (((ca,), (cb,)), ((), ())), precision=_precision(a.dtype), preferred_element_type=_F32
    )


def _pick(vec, idx):
    """vec[idx] for a 1-D int vector and a traced scalar index (a masked reduction)."""
    pos = lax.broadcasted_iota(jnp.int32, vec.shape, 0)
    return jnp.sum(jnp.where(pos == idx, vec, jnp.zeros_like(vec)))


def _block_factors(cfg: _Cfg, s, i, seg_ref):
    """Masks and decay factors of block i (traced). Returns (slice, M, qdec, kdec, keep).

    M [C, C] decayed causal mask; qdec [C] = e^{-s(t+1)}; kdec [C] = e^{-s(m-1-u)} (0 on padding);
    keep = e^{-s m}. With segments these are further masked as described in the module docstring.
    """
    c = cfg.c
    start = i * c
    m = jnp.minimum(c, cfg.t - start)  # real length of this block (>= 1)
    tt = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    uu = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    causal = tt >= uu
    dist = jnp.where(causal, tt - uu, 0).astype(_F32)
    mask = jnp.where(causal, jnp.exp(-s * dist), 0.0)
    pos = lax.broadcasted_iota(jnp.int32, (c,), 0)
    qdec = jnp.exp(-s * (pos + 1).astype(_F32))
    kexp = m - 1 - pos
    kdec = jnp.where(kexp >= 0, jnp.exp(-s * jnp.maximum(kexp, 0).astype(_F32)), 0.0)
    keep = jnp.exp(-s * m.astype(_F32))
    if cfg.has_seg:
        sb = seg_ref[pl.ds(start, c)]
        # Segment of the incoming state = segment of the token just before the block (block 0: its
        # own first token). Only the last block is partial, so position start - 1 is real.
        prev_blk = seg_ref[pl.ds(jnp.maximum(start - c, 0), c)]
        # (min(i, 1) * (c - 1), not jnp.where(i > 0, c - 1, 0): the Triton lowering mistypes a
        # select between two Python constants on a scalar predicate.)
        prev = _pick(prev_blk, jnp.minimum(i, 1) * (c - 1))
        last = _pick(sb, m - 1)
        mask = jnp.where(sb[:, None] == sb[None, :], mask, 0.0)
        qdec = jnp.where(sb == prev, qdec, 0.0)
        kdec = jnp.where(sb == last, kdec, 0.0)
        keep = jnp.where(prev == last, keep, 0.0)
    return pl.ds(start, c), mask, qdec, kdec, keep


def _split_refs(cfg: _Cfg, rest, n_out: int):
    """(segment ref or None, the n_out output refs) from the refs after the fixed inputs; an input aliased to
    an output (the interleaved gradient buffer, ``_backward``) comes between them and is skipped."""
    seg, rest = (rest[0], rest[1:]) if cfg.has_seg else (None, rest)
    assert len(rest) in (n_out, n_out + 1), f"{len(rest)} refs after the inputs, expected {n_out} outputs (+1 alias)"
    return seg, rest[len(rest) - n_out:]


# ----------------------------------------------------------------------------------------------
# Kernels. Refs are one (batch, head) slice: sequence refs [Tp, D or tile], state refs [Dk?, Dv?].
# ----------------------------------------------------------------------------------------------


def _fwd_kernel(decay_ref, q_ref, k_ref, v_ref, s0_ref, *rest, cfg: _Cfg):
    seg_ref, (o_ref, st_ref) = _split_refs(cfg, rest, 2)
    s = decay_ref[pl.program_id(1)].astype(_F32)
    dt = q_ref.dtype

    def body(i, state):  # state [Dk, BV] fp32
        sl, mask, qdec, kdec, keep = _block_factors(cfg, s, i, seg_ref)
        qb, kb, vb = q_ref[sl, :], k_ref[sl, :], v_ref[sl, :]
        a = _dot(qb, kb, 1, 1) * mask  # [C, C]
        o = _dot(a.astype(dt), vb, 1, 0) + qdec[:, None] * _dot(qb, state.astype(dt), 1, 0)
        o_ref[sl, :] = o.astype(o_ref.dtype)
        kd = (kb.astype(_F32) * kdec[:, None]).astype(dt)
        return keep * state + _dot(kd, vb, 0, 0)

    state = lax.fori_loop(0, cfg.nblk, body, s0_ref[...].astype(_F32))
    st_ref[...] = state


def _dq_kernel(decay_ref, k_ref, v_ref, do_ref, s0_ref, *rest, cfg: _Cfg):
    # k [Tp, BK], v / do [Tp, Dv], s0 [BK, Dv] -> dq [Tp, BK]
    seg_ref, (dq_ref,) = _split_refs(cfg, rest, 1)
    s = decay_ref[pl.program_id(1)].astype(_F32)
    dt = k_ref.dtype

    def body(i, state):  # rows kcols of the forward state, [BK, Dv]
        sl, mask, qdec, kdec, keep = _block_factors(cfg, s, i, seg_ref)
        kb, vb, dob = k_ref[sl, :], v_ref[sl, :], do_ref[sl, :]
        da = _dot(dob, vb, 1, 1) * mask  # [t, u]
        dq = _dot(da.astype(dt), kb, 1, 0) + qdec[:, None] * _dot(dob, state.astype(dt), 1, 1)
        dq_ref[sl, :] = dq.astype(dq_ref.dtype)
        kd = (kb.astype(_F32) * kdec[:, None]).astype(dt)
        return keep * state + _dot(kd, vb, 0, 0)

    lax.fori_loop(0, cfg.nblk, body, s0_ref[...].astype(_F32))


def _dk_kernel(decay_ref, q_ref, v_ref, do_ref, dst_ref, *rest, cfg: _Cfg):
    # q [Tp, BK], v / do [Tp, Dv], dst [BK, Dv] -> dk [Tp, BK]
    seg_ref, (dk_ref,) = _split_refs(cfg, rest, 1)
    s = decay_ref[pl.program_id(1)].astype(_F32)
    dt = q_ref.dtype

    def body(j, dstate):  # rows kcols of dS (gradient w.r.t. the state after the block), [BK, Dv]
        i = cfg.nblk - 1 - j
        sl, mask, qdec, kdec, keep = _block_factors(cfg, s, i, seg_ref)
        qb, vb, dob = q_ref[sl, :], v_ref[sl, :], do_ref[sl, :]
        da = _dot(dob, vb, 1, 1) * mask  # [t, u]
        dk = _dot(da.astype(dt), qb, 0, 0) + kdec[:, None] * _dot(vb, dstate.astype(dt), 1, 1)
        dk_ref[sl, :] = dk.astype(dk_ref.dtype)
        qd = (qb.astype(_F32) * qdec[:, None]).astype(dt)
        return keep * dstate + _dot(qd, dob, 0, 0)

    lax.fori_loop(0, cfg.nblk, body, dst_ref[...].astype(_F32))


def _dv_kernel(decay_ref, q_ref, k_ref, do_ref, dst_ref, *rest, cfg: _Cfg):
    # q / k [Tp, Dk], do [Tp, BV], dst [Dk, BV] -> dv [Tp, BV], ds0 [Dk, BV]
    seg_ref, (dv_ref, ds0_ref) = _split_refs(cfg, rest, 2)
    s = decay_ref[pl.program_id(1)].astype(_F32)
    dt = q_ref.dtype

    def body(j, dstate):  # columns vcols of dS, [Dk, BV]
        i = cfg.nblk - 1 - j
        sl, mask, qdec, kdec, keep = _block_factors(cfg, s, i, seg_ref)
        qb, kb, dob = q_ref[sl, :], k_ref[sl, :], do_ref[sl, :]
        a = _dot(qb, kb, 1, 1) * mask  # [t, u]
        kd = (kb.astype(_F32) * kdec[:, None]).astype(dt)
        dv = _dot(a.astype(dt), dob, 0, 0) + _dot(kd, dstate.astype(dt), 1, 0)
        dv_ref[sl, :] = dv.astype(dv_ref.dtype)
        qd = (qb.astype(_F32) * qdec[:, None]).astype(dt)
        return keep * dstate + _dot(qd, dob, 0, 0)

    ds0_ref[...] = lax.fori_loop(0, cfg.nblk, body, dst_ref[...].astype(_F32))


# ----------------------------------------------------------------------------------------------
# pallas_call wrappers (padded arrays in; grid = (batch, heads, column tiles))
# ----------------------------------------------------------------------------------------------


def _seq_spec(cfg: _Cfg, d: int, split: bool, offset: int = 0):
    """[B, Tp, H, D] -> one (batch, head) and the whole padded sequence; D whole or tile j. ``offset`` (a multiple
    of d) starts the columns there: q, k or v inside an interleaved [B, Tp, H, 3 D] q|k|v array."""
    if offset % d:
        raise ValueError(f"column offset {offset} is not a multiple of the tile {d}")
    o = offset // d
    if split:
        return pl.BlockSpec((None, cfg.tp, None, d), lambda b, h, j: (b, 0, h, o + j))
    return pl.BlockSpec((None, cfg.tp, None, d), lambda b, h, j: (b, 0, h, o))


def _state_spec(rows: int, cols: int, split_rows: bool):
    if split_rows:
        return pl.BlockSpec((None, None, rows, cols), lambda b, h, j: (b, h, j, 0))
    return pl.BlockSpec((None, None, rows, cols), lambda b, h, j: (b, h, 0, j))


def _common_specs(cfg: _Cfg, decay, seg):
    heads = decay.shape[0]
    decay_spec = pl.BlockSpec((heads,), lambda b, h, j: (0,))
    seg_specs = [pl.BlockSpec((None, cfg.tp), lambda b, h, j: (b, 0))] if cfg.has_seg else []
    seg_args = [seg] if cfg.has_seg else []
    return decay_spec, seg_specs, seg_args


def _call(kernel, cfg: _Cfg, name, grid, in_specs, out_specs, out_shape, args, *, bwd=True, aliases=None):
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg),
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=pltriton.CompilerParams(
            num_warps=cfg.num_warps, num_stages=cfg.num_stages[1 if bwd else 0]
        ),
        interpret=cfg.interpret,
        name=name,
        input_output_aliases=aliases or {},
    )(*args)


def _forward(cfg: _Cfg, q, k, v, decay, s0, seg, *, dk=None):
    """Separate q [B, Tp, H, Dk], k, v [.., Dv]; or ``dk`` given and q = k = v = one interleaved [B, Tp, H, 3 Dk]
    array (q | k | v per head, Dv = Dk)."""
    b, tp, h = q.shape[:3]
    qkv = dk is not None
    dk = dk if qkv else q.shape[-1]
    dv = dk if qkv else v.shape[-1]
    off_k, off_v = (dk, 2 * dk) if qkv else (0, 0)
    bv = cfg.fwd_block_v
    decay_spec, seg_specs, seg_args = _common_specs(cfg, decay, seg)
    return _call(
        _fwd_kernel,
        cfg,
        "lightning_attention_fwd",
        (b, h, dv // bv),
        [decay_spec, _seq_spec(cfg, dk, False), _seq_spec(cfg, dk, False, off_k), _seq_spec(cfg, bv, True, off_v),
         _state_spec(dk, bv, False), *seg_specs],
        [_seq_spec(cfg, bv, True), _state_spec(dk, bv, False)],
        [jax.ShapeDtypeStruct((b, tp, h, dv), q.dtype), jax.ShapeDtypeStruct((b, h, dk, dv), _F32)],
        (decay, q, k, v, s0, *seg_args),
        bwd=False,
    )


def _backward(cfg: _Cfg, q, k, v, decay, s0, seg, do, dst, *, dk=None):
    """(dq, dk, dv, ds0); with ``dk`` given, q = k = v is the interleaved array (``_forward``) and the gradient is
    one interleaved array (dqkv, ds0): each kernel writes its third of one buffer, passed on from kernel to kernel
    as an aliased input, so no concatenation follows."""
    b, tp, h = q.shape[:3]
    qkv = dk is not None
    dk = dk if qkv else q.shape[-1]
    dv = dk if qkv else v.shape[-1]
    off_k, off_v = (dk, 2 * dk) if qkv else (0, 0)
    bk, bv = cfg.block_k, cfg.block_v
    decay_spec, seg_specs, seg_args = _common_specs(cfg, decay, seg)
    full_v = _seq_spec(cfg, dv, False, off_v)
    full_do = _seq_spec(cfg, dv, False)
    grad_shape = (lambda x: jax.ShapeDtypeStruct(q.shape, q.dtype)) if qkv else (
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))

    def carried(prev, n_in):  # the interleaved buffer so far, as an input aliased to output 0
        return ([prev], [pl.BlockSpec(memory_space=pl.ANY)], {n_in: 0}) if qkv else ([], [], None)

    (dq,) = _call(
        _dq_kernel, cfg, "lightning_attention_bwd_dq", (b, h, dk // bk),
        [decay_spec, _seq_spec(cfg, bk, True, off_k), full_v, full_do, _state_spec(bk, dv, True), *seg_specs],
        [_seq_spec(cfg, bk, True)],
        [grad_shape(q)],
        (decay, k, v, do, s0, *seg_args),
    )
    args, specs, aliases = carried(dq, 5 + len(seg_args))
    (dk_,) = _call(
        _dk_kernel, cfg, "lightning_attention_bwd_dk", (b, h, dk // bk),
        [decay_spec, _seq_spec(cfg, bk, True), full_v, full_do, _state_spec(bk, dv, True), *seg_specs, *specs],
        [_seq_spec(cfg, bk, True, off_k)],
        [grad_shape(k)],
        (decay, q, v, do, dst, *seg_args, *args),
        aliases=aliases,
    )
    args, specs, aliases = carried(dk_, 5 + len(seg_args))
    full_k = _seq_spec(cfg, dk, False)
    dv_, ds0 = _call(
        _dv_kernel, cfg, "lightning_attention_bwd_dv", (b, h, dv // bv),
        [decay_spec, full_k, _seq_spec(cfg, dk, False, off_k), _seq_spec(cfg, bv, True),
         _state_spec(dk, bv, False), *seg_specs, *specs],
        [_seq_spec(cfg, bv, True, off_v), _state_spec(dk, bv, False)],
        [grad_shape(v), jax.ShapeDtypeStruct(s0.shape, _F32)],
        (decay, q, k, do, dst, *seg_args, *args),
        aliases=aliases,
    )
    if qkv:
        return dv_, ds0
    return dq, dk_, dv_, ds0


# ----------------------------------------------------------------------------------------------
# Padding, the differentiable wrapper and the public entry points
# ----------------------------------------------------------------------------------------------


def _pad_axis(x, axis: int, new: int):
    if x.shape[axis] == new:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, new - x.shape[axis])
    return jnp.pad(x, widths)


def _state_and_segments(cfg: _Cfg, b, h, dkp, dvp, initial_state, segment_ids):
    """The padded fp32 initial state (zeros if None) and int32 segment ids (None if None)."""
    if initial_state is None:
        s0 = jnp.zeros((b, h, dkp, dvp), _F32)
    else:
        s0 = _pad_axis(_pad_axis(initial_state.astype(_F32), 2, dkp), 3, dvp)
    seg = None
    if segment_ids is not None:
        seg = segment_ids.astype(jnp.int32)
        if cfg.tp != cfg.t:  # padding gets its own id (never equal to a real one), like reference.chunked
            seg = jnp.pad(seg, ((0, 0), (0, cfg.tp - cfg.t)), constant_values=jnp.min(seg) - 1)
    return s0, seg


def _prepare(p: TritonParams, q, k, v, decay, initial_state, segment_ids):
    """Kernel config and padded, compute-dtype operands (q, k, v, decay, s0, seg) of one call."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    dkp = _padded_head_dim(dk, "q/k")
    dvp = _padded_head_dim(dv, "v")
    cfg = _config(p, b, t, h, dkp, dvp, segment_ids is not None)
    dt = jnp.result_type(q.dtype, k.dtype, v.dtype)
    q_, k_, v_ = (x.astype(dt) for x in (q, k, v))
    q_, k_ = (_pad_axis(_pad_axis(x, 3, dkp), 1, cfg.tp) for x in (q_, k_))
    v_ = _pad_axis(_pad_axis(v_, 3, dvp), 1, cfg.tp)
    s0, seg = _state_and_segments(cfg, b, h, dkp, dvp, initial_state, segment_ids)
    return cfg, q_, k_, v_, decay.astype(_F32), s0, seg


def forward(q, k, v, decay, initial_state=None, segment_ids=None, *, params: TritonParams = _DEFAULT_PARAMS):
    """Forward kernel only (not differentiable): (o [B, T, H, Dv] in q.dtype, final fp32 state)."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    cfg, q_, k_, v_, decay_, s0, seg = _prepare(params, q, k, v, decay, initial_state, segment_ids)
    o, state = _forward(cfg, q_, k_, v_, decay_, s0, seg)
    return o[:, :t, :, :dv].astype(q.dtype), state[:, :, :dk, :dv]


def backward(q, k, v, decay, initial_state, segment_ids, do, dstate, *, params: TritonParams = _DEFAULT_PARAMS):
    """The Triton backward kernels for one call: the vjp of (o, final state) w.r.t. the inputs.

    q, k, v, decay, initial_state (or None), segment_ids (or None) are the forward's inputs, unpadded;
    do [B, T, H, Dv] and dstate [B, H, Dk, Dv] the cotangents of o and of the final state. The
    kernels recompute everything from these (no forward residuals), so any forward with the same
    semantics can be paired with this backward. Returns (dq, dk, dv, d_initial_state or None) in the
    dtypes of q, k, v, initial_state.
    """
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    cfg, q_, k_, v_, decay_, s0, seg = _prepare(params, q, k, v, decay, initial_state, segment_ids)
    do_ = _pad_axis(_pad_axis(do.astype(q_.dtype), 3, v_.shape[3]), 1, cfg.tp)
    dst_ = _pad_axis(_pad_axis(dstate.astype(_F32), 2, q_.shape[3]), 3, v_.shape[3])
    dq, dk_, dv_, ds0 = _backward(cfg, q_, k_, v_, decay_, s0, seg, do_, dst_)
    dq = dq[:, :t, :, :dk].astype(q.dtype)
    dk_ = dk_[:, :t, :, :dk].astype(k.dtype)
    dv_ = dv_[:, :t, :, :dv].astype(v.dtype)
    ds0 = None if initial_state is None else ds0[:, :, :dk, :dv].astype(initial_state.dtype)
    return dq, dk_, dv_, ds0


# One custom_vjp shared by every forward: ``fwd_fn(q, k, v, decay, initial_state, segment_ids)`` ->
# (o, final state) is any implementation with reference.chunked's semantics (the Triton forward
# here, the Mosaic GPU forward in gpu_mosaic.py); the backward is always the Triton kernels above.
# Residuals are the call's inputs only.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _with_bwd(fwd_fn, bwd_fn, params, q, k, v, decay, initial_state, segment_ids):
    return fwd_fn(q, k, v, decay, initial_state, segment_ids)


def _with_bwd_fwd(fwd_fn, bwd_fn, params, q, k, v, decay, initial_state, segment_ids):
    out = fwd_fn(q, k, v, decay, initial_state, segment_ids)
    return out, (q, k, v, decay, initial_state, segment_ids)


def _with_bwd_bwd(fwd_fn, bwd_fn, params, res, cts):
    del fwd_fn
    q, k, v, decay, initial_state, segment_ids = res
    do, dst = cts
    dq, dk, dv, ds0 = bwd_fn(q, k, v, decay, initial_state, segment_ids, do, dst, params=params)
    # decay is a fixed (non-trainable) buffer: its gradient is defined as zero; segment ids are ints.
    return dq, dk, dv, jnp.zeros_like(decay), ds0, None


_with_bwd.defvjp(_with_bwd_fwd, _with_bwd_bwd)


def with_backward(fwd_fn, bwd_fn, params: TritonParams = _DEFAULT_PARAMS):
    """Differentiable version of ``fwd_fn`` whose VJP is ``bwd_fn(q, k, v, decay, initial_state, segment_ids, do,
    dstate, *, params) -> (dq, dk, dv, d initial_state or None)`` (``backward`` below, or gpu_mosaic_bwd's).

    ``fwd_fn(q, k, v, decay, initial_state, segment_ids) -> (o, final fp32 state)`` must compute
    ``reference.chunked``'s function (it need not be differentiable); the residuals are the inputs only. Returns
    ``f(q, k, v, decay, initial_state=None, segment_ids=None) -> (o, state)``, differentiable in q, k, v and
    initial_state (decay gets a zero gradient). ``fwd_fn`` and ``bwd_fn`` should be module-level functions or
    partials built once (they key JAX's caches)."""

    def f(q, k, v, decay, initial_state=None, segment_ids=None):
        return _with_bwd(fwd_fn, bwd_fn, params, q, k, v, decay, initial_state, segment_ids)

    return f


def with_triton_backward(fwd_fn, params: TritonParams = _DEFAULT_PARAMS):
    """Differentiable version of ``fwd_fn`` whose VJP runs the Triton backward kernels configured by ``params``
    (``with_backward`` with ``backward``)."""
    return with_backward(fwd_fn, backward, params)


@functools.partial(
    jax.jit,
    static_argnames=("block_size", "interpret", "fwd_block_v", "bwd_block", "num_warps", "num_stages"),
)
def lightning_attention(
    q,
    k,
    v,
    decay,
    *,
    initial_state=None,
    segment_ids=None,
    block_size: int = 64,
    interpret: bool = False,
    fwd_block_v: int | None = None,
    bwd_block: int = DEFAULT_BWD_BLOCK,
    num_warps: int = DEFAULT_NUM_WARPS,
    num_stages: int | tuple[int, int | None] = DEFAULT_NUM_STAGES,
):
    """Lightning attention with Pallas Triton kernels; differentiable in q, k, v, initial_state.

    q, k [B, T, H, Dk]; v [B, T, H, Dv]; decay [H] positive rates s; initial_state [B, H, Dk, Dv]
    or None; segment_ids [B, T] ints or None. Returns (o [B, T, H, Dv] in q.dtype, final fp32
    state [B, H, Dk, Dv]). Same semantics as ``reference.chunked``; gradient w.r.t. decay is zero.
    ``block_size`` is rounded down to a power of two in [16, MAX_BLOCK_SIZE]. ``fwd_block_v`` (None:
    automatic) and ``bwd_block`` are the state tiles of the forward and backward kernels, and
    ``num_warps`` / ``num_stages`` (an int or a (forward, backward) pair; a backward None picks it by the launch
    size, ``_auto_bwd_stages``) the Triton launch parameters; all are performance knobs that do not change the
    result beyond rounding.
    """
    params = TritonParams.make(block_size, interpret, fwd_block_v, bwd_block, num_warps, num_stages)
    # Check the head dims eagerly (a clear ValueError before any tracing of the kernels).
    _padded_head_dim(q.shape[-1], "q/k")
    _padded_head_dim(v.shape[-1], "v")
    fwd_fn = functools.partial(forward, params=params)
    return with_triton_backward(fwd_fn, params)(q, k, v, decay, initial_state, segment_ids)


__all__ = [
    "lightning_attention",
    "forward",
    "backward",
    "with_triton_backward",
    "TritonParams",
    "MAX_BLOCK_SIZE",
    "MAX_HEAD_DIM",
]
