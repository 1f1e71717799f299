"""Lightning attention on the lightning layer's interleaved projection: the Triton kernels of ``gpu_triton.py`` on
q | k | v read in place, and d q | k | v written in place.

The layer's projection is one [B, T, H, 3 D] array, q | k | v per head. Each kernel's BlockSpecs read their column
range of it (``gpu_triton._seq_spec``'s offset), and the three backward kernels write d qkv into one buffer, passed
from dQ to dK to dV as an aliased input (``input_output_aliases``), so neither the slices nor the gradient's
concatenation are materialised. D must be a power of two in [16, 256] (a column tile of the interleaved array
cannot be padded in place); a sequence not a multiple of the block is padded (a copy), as in ``gpu_triton``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.lightning_attention import split
from pallas_kernels.lightning_attention.gpu_triton import (
    _F32,
    DEFAULT_BWD_BLOCK,
    DEFAULT_NUM_STAGES,
    DEFAULT_NUM_WARPS,
    MAX_HEAD_DIM,
    MIN_TILE,
    TritonParams,
    _backward,
    _config,
    _forward,
    _pad_axis,
    _state_and_segments,
)

_DEFAULT_PARAMS = TritonParams()



def qkv_unsupported_reason(qkv) -> str | None:
    """Why the interleaved kernels cannot take ``qkv`` [B, T, H, 3 D] (a string), or None: D must be a power of
    two >= 16 (a column tile of the interleaved array cannot be padded in place)."""
    if qkv.ndim != 4 or qkv.shape[-1] % 3:
        return f"qkv must be [batch, seq, heads, 3 * head_dim], got shape {qkv.shape}"
    d = qkv.shape[-1] // 3
    if d < MIN_TILE or d & (d - 1) or d > MAX_HEAD_DIM:
        return f"head_dim {d} is not a power of two in [{MIN_TILE}, {MAX_HEAD_DIM}]"
    return None


def _prepare_qkv(p: TritonParams, qkv, initial_state, segment_ids):
    b, t, h, d3 = qkv.shape
    d = d3 // 3
    cfg = _config(p, b, t, h, d, d, segment_ids is not None)
    s0, seg = _state_and_segments(cfg, b, h, d, d, initial_state, segment_ids)
    return cfg, _pad_axis(qkv, 1, cfg.tp), s0, seg


def forward_qkv(qkv, decay, initial_state=None, segment_ids=None, *, params: TritonParams = _DEFAULT_PARAMS):
    """``forward`` on an interleaved qkv [B, T, H, 3 D] (per head q | k | v, one dtype): the kernel reads its
    three column ranges in place, so no slices are materialised. Returns (o [B, T, H, D], final fp32 state)."""
    t, d = qkv.shape[1], qkv.shape[-1] // 3
    cfg, qkv_, s0, seg = _prepare_qkv(params, qkv, initial_state, segment_ids)
    o, state = _forward(cfg, qkv_, qkv_, qkv_, decay.astype(_F32), s0, seg, dk=d)
    return o[:, :t], state


def backward_qkv(qkv, decay, initial_state, segment_ids, do, dstate, *, params: TritonParams = _DEFAULT_PARAMS):
    """``backward`` for ``forward_qkv``: (d qkv [B, T, H, 3 D] in qkv's dtype, interleaved like qkv and written by
    the three kernels into one buffer, d initial_state or None)."""
    t, d = qkv.shape[1], qkv.shape[-1] // 3
    cfg, qkv_, s0, seg = _prepare_qkv(params, qkv, initial_state, segment_ids)
    do_ = _pad_axis(do.astype(qkv.dtype), 1, cfg.tp)
    dqkv, ds0 = _backward(cfg, qkv_, qkv_, qkv_, decay.astype(_F32), s0, seg, do_, dstate.astype(_F32), dk=d)
    return dqkv[:, :t], None if initial_state is None else ds0.astype(initial_state.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _qkv_with_bwd(fwd_fn, bwd_fn, params, qkv, decay, initial_state, segment_ids):
    return fwd_fn(qkv, decay, initial_state, segment_ids)


def _qkv_with_bwd_fwd(fwd_fn, bwd_fn, params, qkv, decay, initial_state, segment_ids):
    return fwd_fn(qkv, decay, initial_state, segment_ids), (qkv, decay, initial_state, segment_ids)


def _qkv_with_bwd_bwd(fwd_fn, bwd_fn, params, res, cts):
    del fwd_fn
    qkv, decay, initial_state, segment_ids = res
    dqkv, ds0 = bwd_fn(qkv, decay, initial_state, segment_ids, *cts, params=params)
    return dqkv, jnp.zeros_like(decay), ds0, None


_qkv_with_bwd.defvjp(_qkv_with_bwd_fwd, _qkv_with_bwd_bwd)


@functools.partial(
    jax.jit,
    static_argnames=("block_size", "interpret", "seq_split", "fwd_block_v", "bwd_block", "num_warps", "num_stages"),
)
def lightning_attention_qkv(qkv, decay, *, initial_state=None, segment_ids=None, block_size: int = 64,
                            interpret: bool = False, seq_split: int = 1, fwd_block_v: int | None = None,
                            bwd_block: int = DEFAULT_BWD_BLOCK, num_warps: int = DEFAULT_NUM_WARPS,
                            num_stages: int | tuple[int, int | None] = DEFAULT_NUM_STAGES):
    """``lightning_attention`` of q, k, v = qkv[..., :D], qkv[..., D:2D], qkv[..., 2D:] for an interleaved qkv
    [B, T, H, 3 D] (D a power of two >= 16), without materialising the slices, and with d qkv written as one
    interleaved array (no concatenation). ``seq_split`` > 1 runs that many chunks of the sequence at once
    (``split.split_sequence_qkv``, whose backward also stays in the one buffer). Returns (o [B, T, H, D] in qkv's
    dtype, final fp32 state)."""
    reason = qkv_unsupported_reason(qkv)
    if reason is not None:
        raise ValueError(reason)
    params = TritonParams.make(block_size, interpret, fwd_block_v, bwd_block, num_warps, num_stages)
    return qkv_with_backward(functools.partial(forward_qkv, params=params), params, seq_split)(
        qkv, decay, initial_state, segment_ids)


def qkv_with_backward(fwd_fn, params: TritonParams, seq_split: int = 1, bwd_fn=None):
    """``fwd_fn(qkv, decay, initial_state, segment_ids) -> (o, final state)`` (any forward with
    ``reference.chunked``'s function on the slices) made differentiable in qkv and initial_state with
    ``bwd_fn(qkv, decay, initial_state, segment_ids, do, dstate, *, params) -> (d qkv, d initial_state or None)``
    as its VJP (None: ``backward_qkv``, the Triton kernels): whole, or on ``seq_split`` chunks
    (``split.split_sequence_qkv``). Returns ``f(qkv, decay, initial_state=None, segment_ids=None) -> (o, state)``."""
    bwd_fn = backward_qkv if bwd_fn is None else bwd_fn
    if int(seq_split) == 1:
        def f(qkv, decay, initial_state=None, segment_ids=None):
            return _qkv_with_bwd(fwd_fn, bwd_fn, params, qkv, decay, initial_state, segment_ids)

        return f

    return split.split_sequence_qkv(fwd_fn, functools.partial(bwd_fn, params=params), int(seq_split))


__all__ = ["lightning_attention_qkv", "forward_qkv", "backward_qkv", "qkv_with_backward", "qkv_unsupported_reason"]
