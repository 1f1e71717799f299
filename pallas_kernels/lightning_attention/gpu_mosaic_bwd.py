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

``reverse=True`` walks the blocks from the end with the in-block tables mirrored (gpu_mosaic.with_tail), so no
array is flipped in memory. The reverse scan's initial state enters one step after the last token (weight
e^{-s(T-t)}), hence the e^{s} on dS_T. Each pass reads three [B, T, H, D] arrays and writes one, as each of the
Triton backward's three kernels does, and runs at the forward's speed with ``gpu_mosaic.auto_layout``'s layout.
Rounding: every pass rounds its products' operands to the input dtype as the forward does (P, the decayed operand
and the bf16 state); the gradients come out in the input dtype.

The reverse scans start from the fp32 state e^{s} dS_T, which overflows only for decay rates above ~88 (MiniMax's
are below 1).

Limits: the forward kernel's (bf16 / f16 q, k, v, dk and dv in {64, 128}), no segment ids, and T a multiple of 64
(the reverse scan has no tail); ``unsupported_reason`` says why not, and ``lightning_attention`` (ops impl
"mosaic_gpu_all") then runs the Triton backward. Status: correct in the GPU interpret mode against the fp32
reference's gradients (tests/kernels/test_gpu_mosaic_bwd.py) and through Mosaic GPU's lowering passes; not yet run
or timed on a GPU (2026-12-01: the session's device time was spent before it was written), so ``impl="auto"`` keeps
the Triton backward (ops impl "mosaic_gpu").
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from pallas_kernels.lightning_attention import gpu_mosaic, gpu_triton

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


def backward(q, k, v, decay, initial_state, do, dst, *, interpret=False):
    """(dq, dk, dv, d initial_state or None) of lightning attention by three forward-kernel passes (module
    docstring). q, k [B, T, H, dk], v and do [B, T, H, dv] of one 16-bit dtype, dst [B, H, dk, dv] (or None for
    zero); the call must be supported (``unsupported_reason``)."""
    b, _, h, dk = q.shape
    dv = v.shape[-1]
    fwd = functools.partial(gpu_mosaic.lightning_attention_fwd, interpret=interpret)
    layout = functools.partial(gpu_mosaic.auto_layout, b, h)
    grow = jnp.exp(decay.astype(_F32))[None, :, None, None]  # e^{+s}: the reverse scans' initial states
    dst = jnp.zeros((b, h, dk, dv), _F32) if dst is None else dst.astype(_F32)
    s0t = None if initial_state is None else jnp.swapaxes(initial_state.astype(_F32), -1, -2)
    do = do.astype(q.dtype)
    dq, _ = fwd(do, v, k, decay, initial_state=s0t, **layout(dk))
    dv_, s_end = fwd(k, q, do, decay, initial_state=dst * grow, reverse=True, **layout(dv))
    dk_, _ = fwd(v, do, q, decay, initial_state=jnp.swapaxes(dst * grow, -1, -2), reverse=True, **layout(dk))
    ds0 = None if initial_state is None else (s_end / grow).astype(initial_state.dtype)
    return dq, dk_, dv_, ds0


def backward_or_triton(q, k, v, decay, initial_state, segment_ids, do, dst, *, params):
    """gpu_triton.with_backward's backward: the three passes where they apply, else the Triton kernels (ragged
    lengths, other head dims)."""
    if unsupported_reason(q, k, v, decay, initial_state, segment_ids) is None:
        return backward(q, k, v, decay, initial_state, do, dst, interpret=params.interpret)
    return gpu_triton.backward(q, k, v, decay, initial_state, segment_ids, do, dst, params=params)


def lightning_attention(q, k, v, decay, *, initial_state=None, segment_ids=None, block_size=64, interpret=False):
    """ops-style entry (impl "mosaic_gpu_all"): ``gpu_mosaic.lightning_attention`` with the three-pass Mosaic
    backward where it applies (``backward_or_triton``): the Mosaic forward and the Triton backward where only the
    forward does, all-Triton otherwise. Returns (o in q.dtype, final fp32 state)."""
    return gpu_mosaic.lightning_attention(q, k, v, decay, initial_state=initial_state, segment_ids=segment_ids,
                                          block_size=block_size, interpret=interpret, backward=backward_or_triton)


__all__ = ["backward", "backward_or_triton", "lightning_attention", "unsupported_reason"]
