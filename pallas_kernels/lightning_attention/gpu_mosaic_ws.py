"""Warp-specialised lightning attention forward for Hopper in Pallas Mosaic GPU (JAX 0.11.2). Correct on an H200, and
no faster than gpu_mosaic's single-warpgroup kernel (measured below), so it is not what the ops adapter runs.

Same math, precision, grid and limits as gpu_mosaic.py (read its docstring first), but each CTA runs three
warpgroups (``plgpu.kernel(num_threads=3, thread_name="wg")``) so the state-independent intra-block work
overlaps the serial state chain instead of following it. Per CTA = (value block of 64 columns, head, batch),
per block j of C = 64 tokens (slot = j % num_slots, buffer b = j % 2):

  * "mem" (wg 2, 40 registers): TMA loads of the q, k, v blocks into ``num_slots`` slots; it refills a slot
    only once both compute warpgroups have released it (``consumed``).
  * "intra" (wg 0, 232 registers): A = Q K^T (wgmma); P = (A * M) as bf16; O_intra = P V (wgmma);
    releases the slot; waits for the inter term oi[b] of this block, reads it, releases oi[b];
    O = O_intra + oi, stored (bf16) through o_smem by TMA.
  * "state" (wg 1, 232 registers): keeps S [dk, 64] fp32 in registers for the whole sequence;
    Oi = Q S_bf16 (wgmma, S_bf16 = sb_smem) and, while it runs, Kw = K * e^{-s(C-1-u)} -> kw_smem;
    U = Kw^T V (wgmma); releases the slot; oi[b] = Oi * e^{-s(t+1)} (fp32 SMEM, after the intra
    warpgroup released oi[b] two blocks ago); S = e^{-sC} S + U; sb_smem = S as bf16 (the B operand of
    the next block's Q S). Reads the initial state at the start and writes the final state at the end.

The operations and their order per element are those of gpu_mosaic's default step (P, Kw and S rounded to
the input dtype as wgmma operands, everything else fp32; O = P V + (Q S) * qdec), so the results agree with
``gpu_mosaic.lightning_attention_fwd`` to rounding (bit for bit in the GPU interpret mode).

Barriers (mbarriers; each waiter waits every phase once, in order, so no waiter can fall two phases behind):

    barrier            arrivals              arrive                          wait
    q/k/v_bar[slot]    1 (TMA bytes)         mem (copy_gmem_to_smem)         intra, state: before using the slot
    consumed[slot]     2                     intra, state: after their       mem: before refilling the slot
                                             wgmmas / loads of the slot      (blocks j >= num_slots), and
                                                                             the last num_slots phases at its end
    oi_ready[b]        1                     state: after writing oi[b]      intra: before reading oi[b]
    oi_free[b]         1                     intra: after reading oi[b]      state: before rewriting oi[b] (j >= 2)
                                                                             and, at the end, before staging
                                                                             the final state over oi
    t_bar[0]           1 (TMA)               intra (decay mask)              intra
    t_bar[1..4]        1 (TMA)               state (qdec, kdec, e^{-sC}, s0) state

SMEM written by one warpgroup and read by itself only: sb_smem and kw_smem (state; each rewritten only after
the wgmma that read it has been waited for), o_smem (intra; rewritten after ``wait_smem_to_gmem(0,
wait_read_only=True)``), p_smem (intra, interpret mode only). The fp32 state staging buffer (initial state
in, final state out) is the oi double buffer itself: oi_smem is [2C, 64] fp32 and the state is its first dk
rows; the initial state is read (and a warpgroup barrier passed) before oi[0] is first written, and the final
state is written after the last two oi_free phases. ``smem_bytes`` (dk = 128, bf16, barriers included):
2 slots 175240 (171 KB), 3 slots 216232 (211 KB); 4 slots would not fit (256 KB > 227 KB).
Registers: 128 x (232 + 232 + 40) = 64512 <= 65536 per SM.

Limits (ValueError otherwise; as gpu_mosaic with block_v = 64, no lean / fused options): q, k, v [B, T, H, D]
bf16 or f16, dk in {64, 128}, dv a multiple of 64, block_size 64, num_slots 2 or 3; any T (the T % 64 tail
runs in the jnp reference from the kernel's final state); forward only; sm_90 only.

Status: checked in JAX's GPU interpret mode (against the reference and against gpu_mosaic) and through
Mosaic GPU's lowering passes (jax.export for CUDA on a CPU). On one H200 (2026-12-01) it runs, agrees with gpu_mosaic
to one bf16 ulp of o (relative 2.7e-3 of max |o|; state identical) and passes check_gpu_kernels' forward cases
(experiments/results/gpu_kernel_check_stop19_ws_h200.md). Speed, side by side with gpu_mosaic's default layout and fla
(experiments/results/lightning_ws_h200.md, fwd ms): B1 T4K 0.148 / 0.147 (2 / 3 slots) vs 0.142; B1 T16K 0.505 /
0.550 vs 0.513; B4 T16K 2.069 / 2.069 vs 2.011. Overlapping the intra-block products with the state chain buys nothing
here: the state warpgroup's chain (Q S, Kw^T V, the fp32 update, the bf16 store) stays the critical path, and the
extra 32 KB per block of oi traffic through shared memory eats what the overlap saves. A barrier mistake on the GPU
would show as a hang rather than a wrong answer. The GPU interpret mode (``interpret=True``) on a host with
few cores needs XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false set before JAX starts:
otherwise the simulated warpgroups' blocking barrier waits can take all of XLA's callback threads and the
interpreter (not the kernel) hangs (seen on 2 cores; tests/kernels/test_gpu_mosaic_ws.py runs it in a subprocess).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.lightning_attention.gpu_mosaic import (
    BLOCK_V,
    _load,
    _smem_types,
    _t,
    check_supported,
    pl,
    plgpu,
)
from pallas_kernels.lightning_attention.gpu_mosaic_call import _launch, with_tail

INTRA, STATE, MEM = 0, 1, 2  # warpgroup indices
COMPUTE_REGS, MEM_REGS = 232, 40  # 128 * (2 * 232 + 40) = 64512 <= 65536 registers per SM


def _buffers(c, dk, block_v, num_slots, p_in_smem):
    """SMEM buffers name -> (shape, dtype; None = the input dtype) and barriers name -> (count, arrivals)."""
    f32 = jnp.float32
    bufs = {
        "m_smem": ((c, c), f32),  # decay mask (intra)
        "qd_smem": ((c,), f32),  # e^{-s(t+1)} (state)
        "kd_smem": ((c,), f32),  # e^{-s(C-1-u)} (state)
        "bd_smem": ((dk,), f32),  # e^{-sC} (state)
        "q_smem": ((num_slots, c, dk), None),
        "k_smem": ((num_slots, c, dk), None),
        "v_smem": ((num_slots, c, block_v), None),
        "sb_smem": ((dk, block_v), None),  # S in bf16 (state)
        "kw_smem": ((c, dk), None),  # K * decay (state)
        "o_smem": ((c, block_v), None),  # O staging for the TMA store (intra)
        "oi_smem": ((2 * c, block_v), f32),  # oi double buffer (state -> intra); first dk rows: state staging
    }
    if p_in_smem:
        bufs["p_smem"] = ((c, c), None)  # P (GPU interpret mode only)
    barriers = {
        "q_bar": (num_slots, 1), "k_bar": (num_slots, 1), "v_bar": (num_slots, 1),
        "consumed": (num_slots, 2), "oi_ready": (2, 1), "oi_free": (2, 1), "t_bar": (5, 1),
    }
    return bufs, barriers


def smem_bytes(dk, num_slots=2, *, p_in_smem=False, c=64, itemsize=2):
    """Dynamic SMEM bytes per CTA (every buffer starts on 1 KB, 8 bytes per mbarrier), as gpu_mosaic.smem_bytes."""
    bufs, barriers = _buffers(c, dk, BLOCK_V, num_slots, p_in_smem)
    total = 0
    for shape, dtype in bufs.values():
        nbytes = math.prod(shape) * (itemsize if dtype is None else jnp.dtype(dtype).itemsize)
        total += -(-nbytes // 1024) * 1024
    return total + 8 * sum(n for n, _ in barriers.values())


def _kernel_call(q, k, v, mask, qdec, kdec, bdec, s0, *, c, has_init, interpret, num_slots, p_in_smem):
    t, dk = q.shape[1], q.shape[3]
    block_v = BLOCK_V
    nblk = t // c
    dtype = q.dtype
    f32 = jnp.float32
    wgmma_layout = plgpu.Layout.WGMMA
    row_layout = plgpu.Layout.WGMMA.reduce(1)
    bufs, barriers = _buffers(c, dk, block_v, num_slots, p_in_smem)
    scratch = _smem_types(bufs, dtype=dtype, block_v=block_v)
    for name, (n, arrivals) in barriers.items():
        scratch[name] = plgpu.Barrier(num_arrivals=arrivals, num_barriers=n)

    def body(q_ref, k_ref, v_ref, m_ref, qd_ref, kd_ref, bd_ref, s0_ref, o_ref, sf_ref, *,
             m_smem, qd_smem, kd_smem, bd_smem, q_smem, k_smem, v_smem, sb_smem, kw_smem, o_smem, oi_smem,
             q_bar, k_bar, v_bar, consumed, oi_ready, oi_free, t_bar, p_smem=None):
        wg = lax.axis_index("wg")
        iv = lax.axis_index("v")
        hh = lax.axis_index("h")
        bb = lax.axis_index("b")
        v0 = iv * block_v
        st_smem = oi_smem.at[pl.ds(0, dk)]  # fp32 state staging (initial / final), aliases oi

        def oi_buf(buf):
            return oi_smem.at[pl.ds(buf * c, c)]

        def rows(x_ref, n):
            return lax.broadcast_in_dim(_load(x_ref, row_layout), (n, block_v), [0])

        def await_block(j):
            slot = lax.rem(j, num_slots)
            plgpu.barrier_wait(q_bar.at[slot])
            plgpu.barrier_wait(k_bar.at[slot])
            plgpu.barrier_wait(v_bar.at[slot])
            return slot, q_smem.at[slot], k_smem.at[slot], v_smem.at[slot]

        @pl.when(wg == MEM)
        def _mem():
            plgpu.set_max_registers(MEM_REGS, action="decrease")

            def issue(j, slot):
                r = pl.ds(j * c, c)
                plgpu.copy_gmem_to_smem(q_ref.at[bb, r, hh], q_smem.at[slot], q_bar.at[slot])
                plgpu.copy_gmem_to_smem(k_ref.at[bb, r, hh], k_smem.at[slot], k_bar.at[slot])
                plgpu.copy_gmem_to_smem(v_ref.at[bb, r, hh, pl.ds(v0, block_v)], v_smem.at[slot], v_bar.at[slot])

            for i in range(min(num_slots, nblk)):
                issue(i, i)

            def refill(j, carry):
                slot = lax.rem(j, num_slots)
                plgpu.barrier_wait(consumed.at[slot])  # both compute warpgroups are done with block j - num_slots
                issue(j, slot)
                return carry

            if nblk > num_slots:
                lax.fori_loop(num_slots, nblk, refill, None)
            for j in range(max(0, nblk - num_slots), nblk):  # observe the last phases too (none left pending)
                plgpu.barrier_wait(consumed.at[j % num_slots])

        @pl.when(wg == INTRA)
        def _intra():
            plgpu.set_max_registers(COMPUTE_REGS, action="increase")
            plgpu.copy_gmem_to_smem(m_ref.at[hh], m_smem, t_bar.at[0])
            plgpu.barrier_wait(t_bar.at[0])

            def step(j, carry):
                slot, qs, ks, vs = await_block(j)
                buf = lax.rem(j, 2)

                def scores(a_ref):
                    plgpu.wgmma(a_ref, qs, _t(ks))
                    return a_ref[...]

                a = pl.run_scoped(scores, plgpu.ACC((c, c), f32))
                p = (a * _load(m_smem, wgmma_layout)).astype(dtype)
                if p_smem is not None:  # GPU interpret mode takes wgmma operands from SMEM only
                    p_smem[...] = p
                    plgpu.commit_smem()
                    p = p_smem
                else:
                    p = lax.optimization_barrier(p)

                def intra(acc_ref):
                    plgpu.wgmma(acc_ref, p, vs)
                    return acc_ref[...]

                o = pl.run_scoped(intra, plgpu.ACC((c, block_v), f32))
                plgpu.barrier_arrive(consumed.at[slot])  # Q K^T and P V (waited for) have read the slot
                plgpu.barrier_wait(oi_ready.at[buf])
                oi = _load(oi_buf(buf), wgmma_layout)
                plgpu.barrier_arrive(oi_free.at[buf])
                o = o + oi
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous O store has left o_smem
                o_smem[...] = o.astype(dtype)
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(o_smem, o_ref.at[bb, pl.ds(j * c, c), hh, pl.ds(v0, block_v)])
                return carry

            lax.fori_loop(0, nblk, step, None)
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg == STATE)
        def _state():
            plgpu.set_max_registers(COMPUTE_REGS, action="increase")
            plgpu.copy_gmem_to_smem(qd_ref.at[hh], qd_smem, t_bar.at[1])
            plgpu.copy_gmem_to_smem(kd_ref.at[hh], kd_smem, t_bar.at[2])
            plgpu.copy_gmem_to_smem(bd_ref.at[hh], bd_smem, t_bar.at[3])
            if has_init:
                plgpu.copy_gmem_to_smem(s0_ref.at[bb, hh, :, pl.ds(v0, block_v)], st_smem, t_bar.at[4])
            for i in (1, 2, 3):
                plgpu.barrier_wait(t_bar.at[i])
            if has_init:
                plgpu.barrier_wait(t_bar.at[4])
                s_init = _load(st_smem, wgmma_layout)
            else:
                s_init = plgpu.layout_cast(jnp.zeros((dk, block_v), f32), wgmma_layout)
            sb_smem[...] = s_init.astype(dtype)
            plgpu.commit_smem()  # also: every thread has read st_smem before oi[0] (its bytes) is written

            def step(j, s):
                slot, qs, ks, vs = await_block(j)
                buf = lax.rem(j, 2)

                def products(oi_ref, up_ref):
                    plgpu.wgmma(oi_ref, qs, sb_smem)
                    # Kw while Q S runs: kw_smem was last read by the previous block's (waited) update wgmma.
                    kk = _load(ks, wgmma_layout).astype(f32)
                    kw_smem[...] = (kk * lax.broadcast_in_dim(_load(kd_smem, row_layout), (c, dk), [0])).astype(dtype)
                    plgpu.commit_smem()
                    plgpu.wgmma(up_ref, _t(kw_smem), vs)
                    return oi_ref[...], up_ref[...]

                oi, up = pl.run_scoped(products, plgpu.ACC((c, block_v), f32), plgpu.ACC((dk, block_v), f32))
                plgpu.barrier_arrive(consumed.at[slot])  # Q S, the K load and Kw^T V (waited for) read the slot
                oi = oi * rows(qd_smem, c)

                @pl.when(j >= 2)
                def _():
                    plgpu.barrier_wait(oi_free.at[buf])  # the intra warpgroup has read oi[buf] (block j - 2)

                oi_buf(buf)[...] = oi
                plgpu.barrier_arrive(oi_ready.at[buf])  # release: each thread's oi writes precede its arrival
                s = s * rows(bd_smem, dk) + up
                sb_smem[...] = s.astype(dtype)  # Q S of this block (above) is done
                plgpu.commit_smem()  # visible to the next block's wgmma
                return s

            s = lax.fori_loop(0, nblk, step, s_init)
            for j in range(max(0, nblk - 2), nblk):  # the last oi buffers were read: st_smem may be written
                plgpu.barrier_wait(oi_free.at[j % 2])
            st_smem[...] = s
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(st_smem, sf_ref.at[bb, hh, :, pl.ds(v0, block_v)])
            plgpu.wait_smem_to_gmem(0)

    return _launch(body, scratch, (q, k, v, mask, qdec, kdec, bdec, s0), block_v=block_v, interpret=interpret,
                   num_threads=3, thread_name="wg")


@functools.partial(jax.jit, static_argnames=("block_size", "interpret", "num_slots", "p_in_smem"))
def lightning_attention_fwd_ws(q, k, v, decay, *, initial_state=None, block_size=64, interpret=False, num_slots=2,
                               p_in_smem=None):
    """Forward of lightning attention, warp-specialised. q, k [B,T,H,dk], v [B,T,H,dv] bf16/f16; decay [H].

    Returns (o [B,T,H,dv] in q.dtype, final state [B,H,dk,dv] fp32); see the module docstring. ``p_in_smem``
    (default: = interpret) passes P to the P V wgmma through SMEM instead of registers.
    """
    check_supported(q, k, v, decay, initial_state, block_size)
    if num_slots not in (2, 3):
        raise ValueError(f"num_slots must be 2 or 3, got {num_slots!r}")
    c = int(block_size)
    run = functools.partial(_kernel_call, c=c, interpret=interpret, num_slots=int(num_slots),
                            p_in_smem=bool(interpret) if p_in_smem is None else bool(p_in_smem))
    return with_tail(run, q, k, v, decay, initial_state, c)


__all__ = ["lightning_attention_fwd_ws", "smem_bytes"]
