"""The host side of a Mosaic GPU lightning forward call (gpu_mosaic.py's kernel, and gpu_mosaic_ws.py's): the operands'
columns (q, k, v read at column offsets of wider arrays, e.g. the interleaved q|k|v projection), the launch (grid or
persistent grid, output types, an in-place output Ref) and the split of a sequence into the kernel's whole blocks and a
tail run in the jnp reference (with the tables mirrored for a reverse scan). Read gpu_mosaic.py's docstring first."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.lightning_attention import reference
from pallas_kernels.lightning_attention.gpu_mosaic_layout import _decay_tables, plgpu


def _launch(body, scratch, args, *, block_v, interpret, state_t=False, grid_ctas=None, dims=None, o_buf=None,
            **kernel_kw):
    """Run ``body`` over the grid (dv / block_v, heads, batch) on args = (q, k, v, tables..., s0): outputs
    (o [B, T, H, dv] in q's dtype, final state [B, H, dk, dv] fp32; state_t: [B, H, dv, dk]). With
    ``grid_ctas``, a persistent grid of that many CTAs ("w") instead, which walk the (v, h, b) items. ``dims``
    (dk, dv): the head dims where q, k, v are wider arrays read at column offsets (default: their last dims).
    ``o_buf``: a Ref the body writes o into (an extra input, updated in place); then only the state is returned."""
    q, v = args[0], args[2]
    b, t, h = q.shape[:3]
    dk, dv = (q.shape[-1], v.shape[-1]) if dims is None else dims
    if interpret:
        kernel_kw["interpret"] = plgpu.InterpretGPUParams()
    state_type = jax.ShapeDtypeStruct((b, h, dv, dk) if state_t else (b, h, dk, dv), jnp.float32)
    out_type = state_type if o_buf is not None else (jax.ShapeDtypeStruct((b, t, h, dv), q.dtype), state_type)
    return plgpu.kernel(
        body,
        out_type=out_type,
        scratch_types=scratch,
        grid=(dv // block_v, h, b) if grid_ctas is None else (grid_ctas,),
        grid_names=("v", "h", "b") if grid_ctas is None else ("w",),
        compiler_params=plgpu.CompilerParams(),
        **kernel_kw,
    )(*args, *(() if o_buf is None else (o_buf,)))


def _cols(q, v, cols):
    """(q start, k start, v start, dk, dv): ``cols``, or whole last dims when None."""
    return (0, 0, 0, q.shape[-1], v.shape[-1]) if cols is None else tuple(cols)


def qkv_view(qkv):
    """A ShapeDtypeStruct of one third (q, k or v) of an interleaved qkv [B, T, H, 3 D], for the support checks."""
    return jax.ShapeDtypeStruct((*qkv.shape[:3], qkv.shape[-1] // 3), qkv.dtype)


def _columns(x, start, width):
    """x[..., start:start + width] (no copy when that is all of x)."""
    return x if start == 0 and width == x.shape[-1] else x[..., start: start + width]


def with_tail(run, q, k, v, decay, initial_state, c, reverse=False, cols=None):
    """The forward over whole blocks of ``c`` tokens by ``run(q, k, v, mask, qdec, kdec, bdec, s0, has_init) ->
    (o, final state)`` (a kernel call), the T % c tail in the jnp reference from the kernel's final state (exact).
    Returns (o [B, T, H, dv] in q.dtype, final fp32 state). ``reverse`` (T a multiple of c): the kernel walks the
    blocks from the last, with the in-block tables mirrored (the causal mask transposed, the row factors reversed).
    ``cols`` (q start, k start, v start, dk, dv): q, k, v are read at those columns of wider arrays."""
    t = q.shape[1]
    qc, kc, vc, dk, dv = _cols(q, v, cols)
    t_main = (t // c) * c
    state = None if initial_state is None else initial_state.astype(jnp.float32)
    outs = []
    if t_main:
        mask, qdec, kdec, bdec = _decay_tables(decay, c, dk)
        if reverse:  # token i of a block is step C - 1 - i of the reversed scan
            mask, qdec, kdec = jnp.swapaxes(mask, 1, 2), qdec[:, ::-1], kdec[:, ::-1]
        s0 = state if state is not None else jnp.zeros((1, 1, dk, dv), jnp.float32)
        # A ragged length slices the whole blocks' rows off (a copy, of the wide array with cols): Mosaic's TMA
        # lowering rejects a sequence dimension that is not a multiple of its 8-row tiling (reading only the first
        # rows of the whole array in place failed there, 2026-12-01)
        sl = lambda x: x if t_main == t else x[:, :t_main]  # noqa: E731
        o_main, state = run(sl(q), sl(k), sl(v), mask, qdec, kdec, bdec, s0, has_init=state is not None)
        outs.append(o_main)
    if t_main < t:
        o_tail, state = reference.chunked(
            _columns(q, qc, dk)[:, t_main:], _columns(k, kc, dk)[:, t_main:], _columns(v, vc, dv)[:, t_main:],
            decay, initial_state=state, block_size=c
        )
        outs.append(o_tail)
    o = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
    return o, state
