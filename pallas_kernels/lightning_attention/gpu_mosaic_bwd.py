"""Lightning attention backward as three passes of the Mosaic GPU forward kernel (gpu_mosaic.py), for Hopper.

The gradients of o_t = sum_{u<=t} e^{-s(t-u)} (q_t . k_u) v_u + e^{-s(t+1)} q_t S0 and of the final state
S_T = e^{-sT} S0 + sum_u e^{-s(T-1-u)} k_u^T v_u, given dO [B, T, H, dv] and dS_T [B, H, dk, dv], are each a
lightning-attention forward with the operands renamed (per head, s = decay):

    dq_t = sum_{u<=t} e^{-s(t-u)} (dO_t . v_u) k_u + e^{-s(t+1)} dO_t S0^T
         = forward(q=dO, k=v, v=k, initial_state=S0^T).o
    dv_u = sum_{t>=u} e^{-s(t-u)} (q_t . k_u) dO_t + e^{-s(T-1-u)} k_u dS_T
         = forward(q=k, k=q, v=dO, initial_state=e^{s} dS_T, reverse=True).o
    dk_u = sum_{t>=u} e^{-s(t-u)} (dO_t . v_u) q_t + e^{-s(T-1-u)} v_u dS_T^T
         = forward(q=v, k=dO, v=q, initial_state=e^{s} dS_T^T, reverse=True).o
    dS0  = sum_t e^{-s(t+1)} q_t^T dO_t + e^{-sT} dS_T = e^{-s} x (the dv pass's final state)

``reverse=True`` walks the blocks from the end with the in-block tables mirrored (gpu_mosaic_call.with_tail), so no
array is flipped in memory. The reverse scan's initial state enters one step after the last token (weight
e^{-s(T-t)}), hence the e^{s} on dS_T. Each pass reads three [B, T, H, D] arrays and writes one, as each of the
Triton backward's three kernels does, and runs at the forward's speed with ``gpu_mosaic.auto_layout``'s layout.
Rounding: every pass rounds its products' operands to the input dtype as the forward does (P, the decayed operand
and the bf16 state); the gradients come out in the input dtype.

The reverse scans start from the fp32 state e^{s} dS_T, which overflows only for decay rates above ~88 (MiniMax's
are below 1).

Limits: the forward kernel's (bf16 / f16 q, k, v, dk and dv in {64, 128}), no segment ids, and T a multiple of 64
(the reverse scan has no tail); ``unsupported_reason`` says why not, and ``lightning_attention`` (ops impl
"mosaic_gpu_all", what "auto" runs on Hopper) then runs the Triton backward. ``backward_qkv`` does the same on the
interleaved projection, reading q | k | v in place and writing d qkv in place (a ``jax.new_ref`` the three kernels
update). Status: correct on an H200 (experiments/results/gpu_kernel_check_op_mosaic_all_h200.md,
gpu_kernel_check_qkv_auto_mosaic_all_h200.md) and in the GPU interpret mode (tests/kernels/test_gpu_mosaic_bwd.py);
fwd+bwd 1.33-1.52x the Mosaic forward + Triton backward, 2.53-3.21x fla (lightning_vs_fla_mosaic_all_h200.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.lightning_attention import gpu_mosaic, gpu_mosaic_call, gpu_triton, gpu_triton_qkv

_F32 = jnp.float32
BLOCK = 64


def unsupported_reason(q, k, v, decay, initial_state=None, segment_ids=None):
    """Why the three-pass Mosaic backward cannot take this call (a string), or None if it can."""
    reason = gpu_mosaic.unsupported_reason(q, k, v, decay, initial_state, segment_ids)
    if reason is not None:
        return reason
    if v.shape[-1] > 128:  # dv is the q / k width of the dq pass (dk <= 128 and both % 64: the forward's check)
        return f"the backward passes need dk and dv in {{64, 128}}, got {q.shape[-1]}, {v.shape[-1]}"
    if q.shape[1] % BLOCK:
        return f"the reverse passes need a sequence length that is a multiple of {BLOCK}, got {q.shape[1]}"
    return None


def _passes(q, k, v, decay, initial_state, do, dst, *, cols, interpret, o_buf=None):
    """The three passes (module docstring) on q, k, v read at ``cols`` = (q start, k start, v start, dk, dv) of their
    arrays (``gpu_mosaic.forward_columns``) and do [B, T, H, dv]. o_buf None: returns (dq, dk, dv, d initial state or
    None); else a Ref like q that dq, dk, dv are written into at the q, k, v columns (dq, dk, dv come back None)."""
    qc, kc, vc, dk, dv = cols
    b, h = q.shape[0], q.shape[2]
    fwd = functools.partial(gpu_mosaic.forward_columns, interpret=interpret, o_buf=o_buf)
    layout = functools.partial(gpu_mosaic.auto_layout, b, h)
    grow = jnp.exp(decay.astype(_F32))[None, :, None, None]  # e^{+s}: the reverse scans' initial states
    dst = jnp.zeros((b, h, dk, dv), _F32) if dst is None else dst.astype(_F32)
    s0t = None if initial_state is None else jnp.swapaxes(initial_state.astype(_F32), -1, -2)
    do = do.astype(q.dtype)
    dq, _ = fwd(do, v, k, decay, cols=(0, vc, kc, dv, dk), o_col=qc, initial_state=s0t, **layout(dk))
    dv_, s_end = fwd(k, q, do, decay, cols=(kc, qc, 0, dk, dv), o_col=vc, initial_state=dst * grow, reverse=True,
                     **layout(dv))
    dk_, _ = fwd(v, do, q, decay, cols=(vc, 0, qc, dv, dk), o_col=kc, initial_state=jnp.swapaxes(dst * grow, -1, -2),
                 reverse=True, **layout(dk))
    ds0 = None if initial_state is None else (s_end / grow).astype(initial_state.dtype)
    return dq, dk_, dv_, ds0


def backward(q, k, v, decay, initial_state, do, dst, *, interpret=False):
    """(dq, dk, dv, d initial_state or None) of lightning attention by three forward-kernel passes (module
    docstring). q, k [B, T, H, dk], v and do [B, T, H, dv] of one 16-bit dtype, dst [B, H, dk, dv] (or None for
    zero); the call must be supported (``unsupported_reason``)."""
    return _passes(q, k, v, decay, initial_state, do, dst, cols=(0, 0, 0, q.shape[-1], v.shape[-1]),
                   interpret=interpret)


def backward_or_triton(q, k, v, decay, initial_state, segment_ids, do, dst, *, params):
    """gpu_triton.with_backward's backward: the three passes where they apply, else the Triton kernels (ragged
    lengths, other head dims)."""
    if unsupported_reason(q, k, v, decay, initial_state, segment_ids) is None:
        return backward(q, k, v, decay, initial_state, do, dst, interpret=params.interpret)
    return gpu_triton.backward(q, k, v, decay, initial_state, segment_ids, do, dst, params=params)


def backward_qkv(qkv, decay, initial_state, do, dst, *, interpret=False):
    """``backward`` for the interleaved qkv [B, T, H, 3 D] (ops' ``lightning_attention_qkv``): the passes read q, k,
    v in place and write dq | dk | dv into one interleaved buffer (a ``jax.new_ref`` each kernel updates in place:
    neither slices nor a concatenation are materialised). Returns (d qkv, d initial_state or None)."""
    d = qkv.shape[-1] // 3
    buf = jax.new_ref(lax.empty(qkv.shape, qkv.dtype))
    *_, ds0 = _passes(qkv, qkv, qkv, decay, initial_state, do, dst, cols=(0, d, 2 * d, d, d), interpret=interpret,
                      o_buf=buf)
    return buf[...], ds0


def backward_qkv_or_triton(qkv, decay, initial_state, segment_ids, do, dst, *, params):
    """gpu_triton_qkv.qkv_with_backward's backward: ``backward_qkv`` where the passes apply, else the interleaved
    Triton kernels (``gpu_triton_qkv.backward_qkv``)."""
    view = gpu_mosaic_call.qkv_view(qkv)
    if unsupported_reason(view, view, view, decay, initial_state, segment_ids) is None:
        return backward_qkv(qkv, decay, initial_state, do, dst, interpret=params.interpret)
    return gpu_triton_qkv.backward_qkv(qkv, decay, initial_state, segment_ids, do, dst, params=params)


def lightning_attention(q, k, v, decay, *, initial_state=None, segment_ids=None, block_size=64, interpret=False):
    """ops-style entry (impl "mosaic_gpu_all"): ``gpu_mosaic.lightning_attention`` with the three-pass Mosaic
    backward where it applies (``backward_or_triton``): the Mosaic forward and the Triton backward where only the
    forward does, all-Triton otherwise. Returns (o in q.dtype, final fp32 state)."""
    return gpu_mosaic.lightning_attention(q, k, v, decay, initial_state=initial_state, segment_ids=segment_ids,
                                          block_size=block_size, interpret=interpret, backward=backward_or_triton)


def lightning_attention_qkv(qkv, decay, *, initial_state=None, segment_ids=None, block_size=64, interpret=False,
                            seq_split=1):
    """ops-style interleaved entry (impl "mosaic_gpu_all"): ``gpu_mosaic.lightning_attention_qkv`` with the
    three-pass backward writing d qkv in place where it applies (``backward_qkv_or_triton``). Returns (o, final
    fp32 state)."""
    return gpu_mosaic.lightning_attention_qkv(qkv, decay, initial_state=initial_state, segment_ids=segment_ids,
                                              block_size=block_size, interpret=interpret, seq_split=seq_split,
                                              backward=backward_qkv_or_triton)


__all__ = ["backward", "backward_or_triton", "backward_qkv", "backward_qkv_or_triton", "lightning_attention",
           "lightning_attention_qkv", "unsupported_reason"]
