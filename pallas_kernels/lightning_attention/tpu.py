"""Lightning attention on TPU: fused Pallas (Mosaic TPU) forward and backward kernels.

Algorithm (Lightning Attention-2; see reference.chunked for the exact semantics reproduced here).
Per (batch, head) the sequence is cut into blocks of C tokens; with local positions t, u in [0, m)
(m <= C the block's real length) and S the fp32 state entering the block:

    intra = ((Q K^T) * M) V,         M[t, u] = e^{-s (t - u)} for t >= u else 0
    inter = (Q S) * e^{-s (t + 1)}
    S    <- e^{-s m} S + (K * e^{-s (m - 1 - u)})^T V

Every exponent is non-positive. Kernels use the grid (batch, heads, blocks) with dimension
semantics ("parallel", "parallel", "arbitrary"); the running fp32 state [Dk, Dv] lives in a VMEM
scratch buffer that persists across the sequential block axis. The decay mask M (identical for all
blocks of one head) is built once per (batch, head) at the first block and cached in VMEM.

Backward (custom_vjp, LA2 Alg. 2), with dS the gradient w.r.t. the state *leaving* a block:
    dQ = ((dO V^T) * M) K + (dO S^T) * e^{-s (t + 1)}                   (forward pass, recomputes S)
    dK = ((dO V^T) * M)^T Q + (V dS^T) * e^{-s (m - 1 - u)}            (reverse pass)
    dV = ((Q K^T) * M)^T dO + (K dS) * e^{-s (m - 1 - u)}
    dS <- e^{-s m} dS + (Q * e^{-s (t + 1)})^T dO
The reverse pass is seeded with the cotangent of the returned final state; after the first block
dS is the gradient of the initial state.

Packed sequences (segment_ids, contiguous runs): the wrapper turns ids into per-token "index of the
last token of my segment" (end[u]) plus two scalars per block (prefetched into SMEM): the end of the
segment that owns the incoming state (e_prev) and the start of the segment of the block's last real
token (s_last). Then, with global positions,
    intra pair (t, u), t >= u, same segment  <=>  t <= end[u]
    token t sees the incoming state          <=>  t <= e_prev
    token u feeds the outgoing state          <=>  u >= s_last
    the incoming state survives the block    <=>  e_prev >= last real position of the block
which reproduces reference.chunked (initial state = segment of position 0, final state = segment of
the last position). Ids that repeat in non-contiguous runs are treated as different segments.

Precision: matmul operands are in the inputs' (promoted) dtype with fp32 accumulation
(preferred_element_type=float32); fp32 operands use Precision.HIGHEST. For bf16 inputs the fp32
state and the fp32 masked score tiles are rounded to bf16 right before they enter a matmul (as in
flash attention); the state itself and all accumulations stay fp32.

`decay` is treated as a fixed buffer: its cotangent is zero (MiniMax slopes are not trained).

Limits / notes:
  * Scalar prefetch puts decay [H] and, with segment_ids, 2 * B * ceil(T / C) int32 in SMEM.
  * On hardware pick C a multiple of 128 (MXU and lane tiles); tiny C is only for interpret tests.
  * Not validated on TPU hardware here: tested in TPU interpret mode on CPU, and the Mosaic
    lowering (jax.export with platforms=["tpu"]) succeeds, but libtpu's compiler was not run.
  * jax.vmap over the kernels lowers for TPU but fails in TPU interpret mode on jax 0.10.2 (the
    interpreter does not extend dimension_semantics for the vmapped grid axis).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

_F32 = jnp.float32

# jax >= 0.5 calls it CompilerParams; older releases TPUCompilerParams.
_CompilerParams = getattr(pltpu, "CompilerParams", None) or getattr(pltpu, "TPUCompilerParams")  # noqa: B009


def _compiler_params():
    return _CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _interpret_arg(interpret):
    """True -> TPU interpret mode (CPU simulation with TPU semantics); falls back to plain interpret."""
    if interpret is True:
        params = getattr(pltpu, "InterpretParams", None)
        return params() if params is not None else True
    return interpret  # False, or an explicit InterpretParams / bool from the caller


# ----------------------------------------------------------------------------------------------
# In-kernel helpers
# ----------------------------------------------------------------------------------------------


def _prec(dt):
    return lax.Precision.HIGHEST if jnp.dtype(dt) == jnp.float32 else None


def _mm(a, b, dt):
    """a [M, K] @ b [K, N] -> fp32."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=_prec(dt), preferred_element_type=_F32)


def _mm_nt(a, b, dt):
    """a [M, K] @ b[N, K]^T -> fp32."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_prec(dt), preferred_element_type=_F32)


def _decay_mask(s, c):
    """[C, C] fp32: e^{-s (t - u)} for t >= u, else 0 (exponent clamped to <= 0 before exp)."""
    t = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    u = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    diff = t - u
    causal = diff >= 0
    return jnp.where(causal, jnp.exp(-s * jnp.maximum(diff, 0).astype(_F32)), 0.0)


class _Block:
    """Per-block decay vectors and masks (fp32). qw, kw: [C, 1]; g: [1, 1]."""

    def __init__(self, s, blk, *, c, seq_len, seg):
        # seg: None or (e_prev, s_last, end_row [1, C] int32) for this block.
        base = blk * c
        m = jnp.minimum(c, seq_len - base)  # real length of this block (int32 scalar)
        pos = lax.broadcasted_iota(jnp.int32, (c, 1), 0)  # local position t / u
        posf = pos.astype(_F32)
        qw = jnp.exp(-s * (posf + 1.0))  # e^{-s (t + 1)}
        k_exp = m - 1 - pos  # negative only on padding
        kw = jnp.where(k_exp >= 0, jnp.exp(-s * jnp.maximum(k_exp, 0).astype(_F32)), 0.0)
        m_vec = jnp.full((1, 1), m, jnp.int32)
        g = jnp.exp(-s * m_vec.astype(_F32))  # e^{-s m}
        self.end_row = None
        if seg is not None:
            e_prev, s_last, end_row = seg
            gpos = pos + base
            qw = jnp.where(gpos <= e_prev, qw, 0.0)
            kw = jnp.where(gpos >= s_last, kw, 0.0)
            g = jnp.where(m_vec + (base - 1) <= e_prev, g, 0.0)
            self.end_row = end_row
        self.base, self.qw, self.kw, self.g, self.c = base, qw, kw, g, c

    def mask(self, cached):
        """Causal decay mask restricted to same-segment pairs."""
        if self.end_row is None:
            return cached
        t = lax.broadcasted_iota(jnp.int32, (self.c, self.c), 0) + self.base
        return jnp.where(t <= self.end_row, cached, 0.0)


def _unpack(refs, has_seg, n_in):
    """Split kernel refs: decay_ref, [e_prev_ref, s_last_ref], then n_in inputs, [end_ref], rest."""
    decay_ref, *refs = refs
    seg_refs = None
    if has_seg:
        e_prev_ref, s_last_ref, *refs = refs
    ins, refs = refs[:n_in], refs[n_in:]
    if has_seg:
        end_ref, *refs = refs
        seg_refs = (e_prev_ref, s_last_ref, end_ref)
    return decay_ref, seg_refs, ins, refs


def _block_info(s, blk, seg_refs, *, nb, c, seq_len):
    seg = None
    if seg_refs is not None:
        e_prev_ref, s_last_ref, end_ref = seg_refs
        idx = pl.program_id(0) * nb + blk
        seg = (e_prev_ref[idx], s_last_ref[idx], end_ref[...])
    return _Block(s, blk, c=c, seq_len=seq_len, seg=seg)


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


def _fwd_kernel(*refs, c, nb, seq_len, has_seg, has_s0, dt):
    decay_ref, seg_refs, (q_ref, k_ref, v_ref), refs = _unpack(refs, has_seg, 3)
    if has_s0:
        s0_ref, *refs = refs
    o_ref, st_ref, state_ref, mask_ref = refs
    j = pl.program_id(2)
    s = decay_ref[pl.program_id(1)]

    @pl.when(j == 0)
    def _init():
        state_ref[...] = s0_ref[...].astype(_F32) if has_s0 else jnp.zeros(state_ref.shape, _F32)
        mask_ref[...] = _decay_mask(s, c)

    blk = _block_info(s, j, seg_refs, nb=nb, c=c, seq_len=seq_len)
    q, k, v = q_ref[...], k_ref[...], v_ref[...]
    state = state_ref[...]
    scores = _mm_nt(q, k, dt) * blk.mask(mask_ref[...])
    o = _mm(scores.astype(dt), v, dt) + _mm(q, state.astype(dt), dt) * blk.qw
    o_ref[...] = o.astype(o_ref.dtype)
    k_dec = (k.astype(_F32) * blk.kw).T.astype(dt)  # [Dk, C]
    state_ref[...] = blk.g * state + _mm(k_dec, v, dt)

    @pl.when(j == nb - 1)
    def _final():
        st_ref[...] = state_ref[...]


def _bwd_dq_kernel(*refs, c, nb, seq_len, has_seg, has_s0, dt):
    decay_ref, seg_refs, (k_ref, v_ref, do_ref), refs = _unpack(refs, has_seg, 3)
    if has_s0:
        s0_ref, *refs = refs
    dq_ref, state_ref, mask_ref = refs
    j = pl.program_id(2)
    s = decay_ref[pl.program_id(1)]

    @pl.when(j == 0)
    def _init():
        state_ref[...] = s0_ref[...].astype(_F32) if has_s0 else jnp.zeros(state_ref.shape, _F32)
        mask_ref[...] = _decay_mask(s, c)

    blk = _block_info(s, j, seg_refs, nb=nb, c=c, seq_len=seq_len)
    k, v, do = k_ref[...], v_ref[...], do_ref[...]
    state = state_ref[...]
    dp = _mm_nt(do, v, dt) * blk.mask(mask_ref[...])  # [t, u]
    dq = _mm(dp.astype(dt), k, dt) + _mm_nt(do, state.astype(dt), dt) * blk.qw
    dq_ref[...] = dq.astype(dq_ref.dtype)
    k_dec = (k.astype(_F32) * blk.kw).T.astype(dt)
    state_ref[...] = blk.g * state + _mm(k_dec, v, dt)


def _bwd_dkv_kernel(*refs, c, nb, seq_len, has_seg, has_s0, dt):
    decay_ref, seg_refs, (q_ref, k_ref, v_ref, do_ref), refs = _unpack(refs, has_seg, 4)
    dst_ref, *refs = refs
    if has_s0:
        dk_ref, dv_ref, ds0_ref, dstate_ref, mask_ref = refs
    else:
        dk_ref, dv_ref, dstate_ref, mask_ref = refs
    j = pl.program_id(2)
    blk_idx = nb - 1 - j  # reverse order over blocks
    s = decay_ref[pl.program_id(1)]

    @pl.when(j == 0)
    def _init():
        dstate_ref[...] = dst_ref[...].astype(_F32)
        mask_ref[...] = _decay_mask(s, c)

    blk = _block_info(s, blk_idx, seg_refs, nb=nb, c=c, seq_len=seq_len)
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    dstate = dstate_ref[...]  # gradient w.r.t. the state leaving this block
    ds_dt = dstate.astype(dt)
    mask = blk.mask(mask_ref[...])
    p = _mm_nt(q, k, dt) * mask  # [t, u]
    dp = _mm_nt(do, v, dt) * mask  # [t, u]
    dv = _mm(p.T.astype(dt), do, dt) + _mm(k, ds_dt, dt) * blk.kw
    dk = _mm(dp.T.astype(dt), q, dt) + _mm_nt(v, ds_dt, dt) * blk.kw
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)
    q_dec = (q.astype(_F32) * blk.qw).T.astype(dt)  # [Dk, C]
    dstate_ref[...] = blk.g * dstate + _mm(q_dec, do, dt)

    if has_s0:

        @pl.when(j == nb - 1)
        def _final():
            ds0_ref[...] = dstate_ref[...]


# ----------------------------------------------------------------------------------------------
# pallas_call builders (inputs in [B, H, Tp, D] layout, Tp = nb * C)
# ----------------------------------------------------------------------------------------------


def _tile_spec(c, d, reverse=False, nb=None):
    if reverse:
        return pl.BlockSpec((None, None, c, d), lambda b, h, j, *_: (b, h, nb - 1 - j, 0))
    return pl.BlockSpec((None, None, c, d), lambda b, h, j, *_: (b, h, j, 0))


def _state_spec(dk, dv):
    return pl.BlockSpec((None, None, dk, dv), lambda b, h, j, *_: (b, h, 0, 0))


def _end_spec(c, reverse=False, nb=None):
    # end ids are stored [B, nb, 1, C] so each block is a full (1, C) trailing tile.
    if reverse:
        return pl.BlockSpec((None, None, 1, c), lambda b, h, j, *_: (b, nb - 1 - j, 0, 0))
    return pl.BlockSpec((None, None, 1, c), lambda b, h, j, *_: (b, j, 0, 0))


def _grid_call(kernel_fn, *, like, dv, c, seq_len, decay, seg, has_s0, in_specs, inputs, out_specs, out_shape,
               interpret):
    """One pallas_call over the grid (batch, heads, blocks) of ``like`` [B, H, Tp, dk]: ``kernel_fn`` gets the
    static block facts, decay (and the segment tables) are scalar-prefetched, and the fp32 [dk, dv] state
    and [C, C] score tile live in VMEM scratch across the "arbitrary" block axis."""
    b, h, tp, dk = like.shape
    nb = tp // c
    kernel = functools.partial(kernel_fn, c=c, nb=nb, seq_len=seq_len, has_seg=seg is not None, has_s0=has_s0,
                               dt=like.dtype)
    prefetch = _prefetch(decay, seg)
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(prefetch),
            grid=(b, h, nb),
            in_specs=in_specs,
            out_specs=out_specs,
            scratch_shapes=[pltpu.VMEM((dk, dv), _F32), pltpu.VMEM((c, c), _F32)],
        ),
        out_shape=out_shape,
        compiler_params=_compiler_params(),
        interpret=_interpret_arg(interpret),
    )(*prefetch, *inputs)


def _prefetch(decay, seg):
    return (decay,) if seg is None else (decay, seg[0], seg[1])


def _with_optional(in_specs, inputs, seg, s0, *, c, dk, dv):
    """Append the segment-end row and the initial state (when given) to a call's specs and inputs."""
    if seg is not None:
        in_specs, inputs = [*in_specs, _end_spec(c)], [*inputs, seg[2]]
    if s0 is not None:
        in_specs, inputs = [*in_specs, _state_spec(dk, dv)], [*inputs, s0]
    return in_specs, inputs


def _fwd_call(q, k, v, s0, decay, seg, *, c, seq_len, interpret):
    b, h, tp, dk = q.shape
    dv = v.shape[-1]
    in_specs, inputs = _with_optional([_tile_spec(c, dk), _tile_spec(c, dk), _tile_spec(c, dv)], [q, k, v],
                                      seg, s0, c=c, dk=dk, dv=dv)
    return _grid_call(
        _fwd_kernel, like=q, dv=dv, c=c, seq_len=seq_len, decay=decay, seg=seg, has_s0=s0 is not None,
        in_specs=in_specs, inputs=inputs, out_specs=[_tile_spec(c, dv), _state_spec(dk, dv)],
        out_shape=[jax.ShapeDtypeStruct((b, h, tp, dv), q.dtype), jax.ShapeDtypeStruct((b, h, dk, dv), _F32)],
        interpret=interpret,
    )


def _bwd_dq_call(k, v, do, s0, decay, seg, *, c, seq_len, interpret):
    b, h, tp, dk = k.shape
    dv = v.shape[-1]
    in_specs, inputs = _with_optional([_tile_spec(c, dk), _tile_spec(c, dv), _tile_spec(c, dv)], [k, v, do],
                                      seg, s0, c=c, dk=dk, dv=dv)
    return _grid_call(
        _bwd_dq_kernel, like=k, dv=dv, c=c, seq_len=seq_len, decay=decay, seg=seg, has_s0=s0 is not None,
        in_specs=in_specs, inputs=inputs, out_specs=_tile_spec(c, dk),
        out_shape=jax.ShapeDtypeStruct((b, h, tp, dk), k.dtype), interpret=interpret,
    )


def _bwd_dkv_call(q, k, v, do, dst, decay, seg, *, has_s0, c, seq_len, interpret):
    b, h, tp, dk = q.shape
    dv = v.shape[-1]
    nb = tp // c
    dt = q.dtype
    rev = functools.partial(_tile_spec, reverse=True, nb=nb)
    in_specs = [rev(c, dk), rev(c, dk), rev(c, dv), rev(c, dv)]
    inputs = [q, k, v, do]
    if seg is not None:
        in_specs.append(_end_spec(c, reverse=True, nb=nb))
        inputs.append(seg[2])
    in_specs.append(_state_spec(dk, dv))
    inputs.append(dst)
    out_specs = [rev(c, dk), rev(c, dv)]
    out_shape = [jax.ShapeDtypeStruct((b, h, tp, dk), dt), jax.ShapeDtypeStruct((b, h, tp, dv), dt)]
    if has_s0:
        out_specs.append(_state_spec(dk, dv))
        out_shape.append(jax.ShapeDtypeStruct((b, h, dk, dv), _F32))
    outs = _grid_call(
        _bwd_dkv_kernel, like=q, dv=dv, c=c, seq_len=seq_len, decay=decay, seg=seg, has_s0=has_s0,
        in_specs=in_specs, inputs=inputs, out_specs=out_specs, out_shape=out_shape, interpret=interpret,
    )
    return outs if has_s0 else (*outs, None)


# ----------------------------------------------------------------------------------------------
# custom_vjp core on the kernel layout
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _core(q, k, v, s0, decay, seg, c, seq_len, interpret):
    return _fwd_call(q, k, v, s0, decay, seg, c=c, seq_len=seq_len, interpret=interpret)


def _core_fwd(q, k, v, s0, decay, seg, c, seq_len, interpret):
    out = _fwd_call(q, k, v, s0, decay, seg, c=c, seq_len=seq_len, interpret=interpret)
    return out, (q, k, v, s0, decay, seg)


def _core_bwd(c, seq_len, interpret, res, cts):
    q, k, v, s0, decay, seg = res
    do, dst = cts
    do = do.astype(q.dtype)
    dst = dst.astype(_F32)
    dq = _bwd_dq_call(k, v, do, s0, decay, seg, c=c, seq_len=seq_len, interpret=interpret)
    dk, dv, ds0 = _bwd_dkv_call(
        q, k, v, do, dst, decay, seg, has_s0=s0 is not None, c=c, seq_len=seq_len, interpret=interpret
    )
    dseg = None if seg is None else tuple(None for _ in seg)
    # decay is a fixed buffer: zero cotangent.
    return dq, dk, dv, ds0, jnp.zeros_like(decay), dseg


_core.defvjp(_core_fwd, _core_bwd)


# ----------------------------------------------------------------------------------------------
# Public wrapper
# ----------------------------------------------------------------------------------------------


def _round_up(x, m):
    return -(-x // m) * m


def _segment_metadata(segment_ids, seq_len, c, nb):
    """(e_prev [B*nb], s_last [B*nb], end [B, nb, 1, C]) int32; see the module docstring."""
    seg = segment_ids.astype(jnp.int32)
    b = seg.shape[0]
    idx = jnp.arange(seq_len, dtype=jnp.int32)
    new = jnp.concatenate([jnp.ones((b, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    start = lax.cummax(jnp.where(new, idx[None], 0), axis=1)  # first index of my segment
    last = jnp.concatenate([seg[:, 1:] != seg[:, :-1], jnp.ones((b, 1), bool)], axis=1)
    end = lax.cummin(jnp.where(last, idx[None], seq_len - 1), axis=1, reverse=True)  # last index
    blk0 = jnp.arange(nb, dtype=jnp.int32) * c
    # State entering block j belongs to position j*C - 1 (position 0's segment for j = 0).
    e_prev = end[:, jnp.maximum(blk0 - 1, 0)]  # [B, nb]
    s_last = start[:, jnp.minimum(blk0 + c, seq_len) - 1]  # [B, nb]
    pad = nb * c - seq_len
    end_p = jnp.pad(end, ((0, 0), (0, pad)), constant_values=-1).reshape(b, nb, 1, c)
    return e_prev.reshape(-1), s_last.reshape(-1), end_p


@functools.partial(jax.jit, static_argnames=("block_size", "interpret"))
def lightning_attention(
    q, k, v, decay, *, initial_state=None, segment_ids=None, block_size=128, interpret=False
):
    """Pallas TPU lightning attention. Returns (o [B, T, H, Dv] in q.dtype, final state fp32).

    q, k [B, T, H, Dk], v [B, T, H, Dv]; decay [H] positive rates; initial_state [B, H, Dk, Dv] or
    None; segment_ids [B, T] ints (contiguous runs) or None. Differentiable w.r.t. q, k, v and
    initial_state (decay gets a zero cotangent). ``interpret=True`` runs the kernels in TPU
    interpret mode on CPU; an explicit ``pltpu.InterpretParams`` is passed through.
    """
    out_dtype = q.dtype
    b, t, h, dk = q.shape
    dt = jnp.promote_types(jnp.promote_types(q.dtype, k.dtype), v.dtype)
    # Block size: a multiple of the sublane tile (8 rows for 32-bit, 16 for 16-bit operands), at
    # most the sequence length rounded up to that tile. TPU interpret mode does not check tiling.
    align = 8 * max(1, 4 // jnp.dtype(dt).itemsize)
    c = _round_up(min(int(block_size), _round_up(t, align)), align)
    nb = -(-t // c)
    pad = nb * c - t

    def prep(x):
        x = jnp.swapaxes(x.astype(dt), 1, 2)  # [B, H, T, D]
        return jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) if pad else x

    qp, kp, vp = prep(q), prep(k), prep(v)
    s0 = None if initial_state is None else initial_state.astype(_F32)
    seg = None if segment_ids is None else _segment_metadata(segment_ids, t, c, nb)
    o, state = _core(qp, kp, vp, s0, decay.astype(_F32), seg, c, t, interpret)
    o = jnp.swapaxes(o[:, :, :t], 1, 2).astype(out_dtype)
    return o, state


__all__ = ["lightning_attention"]
