"""The Mosaic GPU lightning forward's layout bookkeeping (gpu_mosaic.py's kernel reads it; gpu_mosaic re-exports
it): the per-head decay tables, the shared-memory buffers of a configuration and their byte count, the layout the ops
adapters run (``auto_layout``) and the persistent grid's size. Read gpu_mosaic.py's docstring first."""

from __future__ import annotations

import math

import jax.numpy as jnp

try:  # Mosaic GPU Pallas; the API below is the one of JAX 0.11.x.
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu
except ImportError:  # pragma: no cover
    pl = plgpu = None

BLOCK_V = 64
TWO_CTAS_PER_SM = 113 * 1024  # H100 / H200: 228 KB of SMEM per SM, 1 KB of it reserved per CTA


def _t(ref):
    """Transposed view of a 2-D SMEM ref (``ref.transpose`` on 0.11+, ``transpose_ref`` before)."""
    if hasattr(ref, "transpose"):
        return ref.transpose((1, 0))
    return plgpu.transpose_ref(ref, (1, 0))


def _load(ref, layout):
    try:
        return plgpu.load(ref, layout=layout)
    except TypeError:  # 0.10.x: load(ref, idx, *, layout)
        return plgpu.load(ref, (), layout=layout)


def _decay_tables(decay, c, dk):
    """Per-head fp32 factors, every exponent <= 0: mask [H,C,C], q row [H,C], k row [H,C], e^{-sC} [H,dk]."""
    s = decay.astype(jnp.float32)
    pos = jnp.arange(c, dtype=jnp.float32)
    dist = pos[:, None] - pos[None, :]
    causal = dist >= 0
    mask = jnp.where(causal[None], jnp.exp(-s[:, None, None] * jnp.where(causal, dist, 0.0)[None]), 0.0)
    qdec = jnp.exp(-s[:, None] * (pos + 1.0)[None])
    kdec = jnp.exp(-s[:, None] * (c - 1.0 - pos)[None])
    bdec = jnp.broadcast_to(jnp.exp(-s * c)[:, None], (s.shape[0], dk))
    return mask, qdec, kdec, bdec


def _transforms(row_bytes, itemsize):
    """Tiling + swizzle of a 2-D SMEM tile with rows of ``row_bytes``: swizzle min(row, 128) bytes, (8, that) tiles."""
    swizzle = min(int(row_bytes), 128)
    return plgpu.TilingTransform((8, swizzle // itemsize)), plgpu.SwizzleTransform(swizzle)


def _buffers(c, dk, block_v, num_slots, lean, p_in_smem, vdecay=False, state_t=False, m_regs=False):
    """The kernel's SMEM buffers, name -> (shape, dtype; None = the input dtype), and its barriers.

    Returns (permanent, main_loop, staging, barriers): ``permanent`` lives for the whole kernel, ``main_loop``
    in a ``pl.run_scoped`` around the block loop, ``staging`` (lean only) in ``pl.run_scoped`` calls before
    and after it, so it reuses the main loop's bytes (lean with m_regs: the decay mask too, read into
    registers before the loop).
    """
    f32 = jnp.float32
    permanent = {
        "m_smem": ((c, c), f32),  # decay mask
        "qd_smem": ((c,), f32),  # e^{-s(t+1)}
        "kd_smem": ((c,), f32),  # e^{-s(C-1-u)}
        "bd_smem": ((dk,), f32),  # e^{-sC}
    }
    main_loop = {
        "q_smem": ((num_slots, c, dk), None),
        "k_smem": ((num_slots, c, dk), None),  # lean: K * decay overwrites the block's K after Q K^T
        "v_smem": ((num_slots, c, block_v), None),
        # state in bf16 (B of the inter-block product; state_t: S^T, read transposed)
        "sb_smem": ((block_v, dk) if state_t else (dk, block_v), None),
        "o_smem": ((c, block_v), None),
    }
    if vdecay or (state_t and p_in_smem):  # state_t on the GPU: (V * decay)^T in registers
        main_loop["vw_smem"] = ((c, block_v), None)  # V * decay (B of the state update K^T Vw)
    elif not lean and not state_t:
        main_loop["kw_smem"] = ((c, dk), None)  # K * decay (A^T of the state update)
    if p_in_smem:
        main_loop["p_smem"] = ((c, c), None)  # P (GPU interpret mode only)
    staging = {"st_smem": ((block_v, dk) if state_t else (dk, block_v), f32)}  # initial / final state
    if not lean:
        permanent.update(staging)
        staging = {}
    elif m_regs:
        staging["m_smem"] = permanent.pop("m_smem")
    barriers = {"q_bar": num_slots, "k_bar": num_slots, "v_bar": num_slots, "c_bar": 5}
    return permanent, main_loop, staging, barriers


def _smem_types(group, *, dtype, block_v):
    """{name: plgpu.SMEM} for a ``_buffers``-style group {name: (shape, dtype or None = the input dtype)}.

    The two SMEM operands of a wgmma must share one swizzle, and v / the bf16 state have rows of block_v elements
    (64 bytes at block_v = 32), so every 16-bit buffer uses that row width's swizzle; fp32 ones (never wgmma
    operands) use their own rows'."""
    transforms16 = _transforms(block_v * dtype.itemsize, dtype.itemsize)
    types = {}
    for name, (shape, dt) in group.items():
        dt = dtype if dt is None else jnp.dtype(dt)
        if len(shape) == 1:
            types[name] = plgpu.SMEM(shape, dt)
        else:
            tr = transforms16 if dt == dtype else _transforms(shape[-1] * dt.itemsize, dt.itemsize)
            types[name] = plgpu.SMEM(shape, dt, transforms=tr)
    return types


def smem_bytes(dk, block_v=BLOCK_V, num_slots=2, lean=False, *, p_in_smem=False, c=64, itemsize=2, vdecay=False,
               state_t=False, m_regs=False):
    """Dynamic SMEM bytes per CTA of the kernel (buffers as allocated by Mosaic GPU, barriers included).

    Mosaic GPU starts every SMEM buffer on a 1024-byte boundary; sibling ``pl.run_scoped`` scopes share
    their bytes (the larger one counts); each mbarrier takes 8 bytes. Two CTAs per SM on an H100 / H200
    need <= 113 KB (228 KB per SM, 1 KB of it reserved per CTA).
    """
    permanent, main_loop, staging, barriers = _buffers(c, dk, block_v, num_slots, lean, p_in_smem, vdecay, state_t,
                                                       m_regs)

    def size(group):
        total = 0
        for shape, dtype in group.values():
            nbytes = math.prod(shape) * (itemsize if dtype is None else jnp.dtype(dtype).itemsize)
            total += -(-nbytes // 1024) * 1024
        return total

    # lean + m_regs: the mask and the state are staged in sibling scopes (each alone, not together)
    stage = max(size({n: b for n, b in staging.items() if n != "m_smem"}), size({n: b for n, b in staging.items()
                                                                                 if n == "m_smem"}))
    return size(permanent) + max(size(main_loop), stage) + 8 * sum(barriers.values())


def _persistent_ctas(q, v, block_v, num_slots, lean, vdecay, state_t, m_regs, num_sms=None):
    """The persistent grid: as many CTAs as fit at once (two per SM where ``smem_bytes`` <= 113 KB), at most one
    per item."""
    from pallas_kernels.lightning_attention import split

    per_sm = 2 if smem_bytes(q.shape[-1], block_v, num_slots, lean, vdecay=vdecay, state_t=state_t,
                             m_regs=m_regs) <= TWO_CTAS_PER_SM else 1
    items = q.shape[0] * q.shape[2] * (v.shape[-1] // block_v)
    return max(1, min(items, per_sm * (split.num_sms() if num_sms is None else num_sms)))


def auto_layout(b: int, h: int, dv: int, num_sms: int | None = None) -> dict:
    """The forward layout the ops adapters run: lightning_attention_fwd keyword arguments for a launch of
    b * h * dv / 64 items (value block, head, batch). The transposed state and the mask in registers always
    (state_t, m_regs: 1.20-1.22x the plain step at B1, 1.04x at B4); then by launch size, as the backward's stages
    (gpu_triton_config): at most one item per SM (one wave) takes 3 slots (a deeper prefetch for the CTA alone on
    its SM); more takes the lean layout (107 KB of SMEM: two CTAs per SM) on a persistent grid of two CTAs per SM
    that walk the items. Measured in interleaved rounds on an H200 (ms): B1 T16K 0.374 (3 slots) / 0.383 (lean),
    B1 T64K 1.295 / 1.360 (lightning_fwd_st_rounds_h200.md); lean at B2 / B3 / B4 T16K 0.599 / 1.271 / 1.655 with
    the hardware's CTA scheduling, 0.587 / 1.061 / 1.106 persistent (lightning_persistent_h200.md). Without the
    persistent grid, 384 or 512 CTAs ran at ~61% of copy against 85% for 256 (not profiled why)."""
    from pallas_kernels.lightning_attention import split

    ctas = b * h * (dv // BLOCK_V)
    one_wave = ctas <= (split.num_sms() if num_sms is None else num_sms)
    layout = {"state_t": True, "m_regs": True}
    layout.update({"num_slots": 3} if one_wave else {"lean": True, "persistent": True})
    return layout
