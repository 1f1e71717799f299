"""Lightning attention forward for Hopper in Pallas Mosaic GPU (written against JAX 0.11.2).

One CTA (a single warpgroup) per (value block, head, batch); it walks the sequence in blocks of C = 64
tokens, keeps the fp32 state S [dk, block_v] in registers (WGMMA accumulator layout) for the whole
sequence, and per block does (LA2 forward, docs/model.md §2, item 5):

    A   = Q K^T                                   wgmma, SMEM x SMEM^T         [C, C]
    Oi  = Q S_bf16                                wgmma, SMEM x SMEM           [C, block_v]
    O   = ((A * M) as bf16) V + Oi * e^{-s(t+1)}  wgmma, REGS x SMEM; row scale
    Kw  = K * e^{-s(C-1-u)}    (bf16, to SMEM: kw_smem, or with lean=True the block's k slot)
    S   = e^{-sC} S + Kw^T V                      wgmma, SMEM^T x SMEM (transposed A)
    S_bf16 <- S (SMEM, the B operand of the next block's inter-block product)

Q, K, V blocks arrive by TMA (``plgpu.copy_gmem_to_smem`` + ``plgpu.barrier_wait``), with
``num_slots`` - 1 blocks in flight (default 2 slots: block j+1 loads while block j computes). O goes
back by TMA from SMEM. All decay factors (the causal decay mask M, the row factors, e^{-sC}) are
precomputed per head outside the kernel with non-positive exponents and loaded once per CTA.
A ``fused=True`` step (Kw first, the three state-independent products under one wgmma wait) measured no faster
(experiments/results/gpu_kernel_check.md) and was removed on 2026-12-01, when the step below replaced it.

Parallelism: the grid is (dv / block_v, heads, batch) = 2 * B * H CTAs at dv = 128, block_v = 64
(128 CTAs at B1 H64 on 132 SMs). Each value block re-reads Q and K (the sibling CTAs run side by
side, so the second read mostly hits L2). The kernel has no sequence split of its own: when B * H is
small, ops.lightning_attention(seq_split="auto") runs chunks of the sequence as extra batch rows, chained
through their states (split.py). Each CTA is one warpgroup running one serial chain (wgmma -> wait ->
elementwise -> wgmma); with the default layout (171 KB of SMEM) one CTA per SM, so nothing overlaps it.

The step with less shared-memory traffic (static flags; ``auto_layout`` picks what the ops adapters run). Per block
the plain step moves ~220 KB through the SM's shared memory (TMA writes, both SMEM operands of every wgmma, the Kw,
mask and state loads and stores), which at 128 B / clock is about half the block's time, and a wgmma of N = 64 with
both operands in SMEM is itself SMEM-bound. So:
  * ``vdecay``: the in-block decay goes on V's rows, S += K^T (V * kdec): a [C, block_v] scale and store instead of
    [C, dk] (1.14-1.19x at B1, 1.02-1.04x at B4);
  * ``state_t``: the state is kept transposed, S^T [block_v, dk] += (V * kdec)^T K. One wgmma of N = dk instead of
    two of M = 64 that each read V; its A operand (V^T, read transposed from v's slot, times kdec) comes from
    registers, so neither Kw nor Vw is stored; Q S reads the bf16 S^T transposed; the state goes in and out as
    [B, H, dv, dk] (transposed in XLA: B H D^2 fp32, small). No kw_smem: 155 KB;
  * ``m_regs``: the decay mask and row factors are read once per CTA and carried in registers; with ``lean`` the mask
    is staged through scoped SMEM, which leaves 107 KB: two CTAs per SM at block_v = 64;
  * ``q_regs``: Q read once into registers as the A operand of Q K^T and Q S (measured no gain on top of the others).
  Measured in interleaved rounds on an H200 (experiments/results/lightning_fwd_st_rounds_h200.md): state_t + m_regs
  runs B1 T16K in 0.383 ms (1.20x the plain step; 0.374 with 3 slots), B1 T64K 1.354 (1.22x; 1.295 with 3 slots).
  ``persistent=True`` launches only as many CTAs as fit at once (two per SM where the layout is <= 113 KB), each
  walking (value block, head, batch) items in order: with the lean layout, 384 / 512 CTAs left to the hardware ran at
  ~61% of copy against 85% for 256, and the persistent grid brings B3 / B4 T16K from 1.27 / 1.65 ms to 1.06 / 1.11
  (lightning_persistent_h200.md: 92% of copy at B4).

Occupancy options (static; defaults = the measured kernel above). Two CTAs per SM, whose chains overlap,
need <= 113 KB of SMEM each (H100/H200: 228 KB per SM, 1 KB reserved per CTA) and enough CTAs:
  * ``block_v=32`` halves the value tile: twice the CTAs (256 at B1 H64 dv128), Q and K read by four
    CTAs instead of two, wgmma N = 32. v, sb_smem, o_smem have 64-byte rows, hence a 64-byte swizzle
    with (8, 32) tiles; the two SMEM operands of a wgmma must share a swizzle (Mosaic's transform
    inference rejects the kernel otherwise), so q, k, kw, p use it as well (all 16-bit buffers follow
    block_v's row width: ``_transforms``); the fp32 buffers keep 128 bytes.
  * ``lean=True`` drops two buffers: Kw is written into the block's k slot once its Q K^T product is done
    (the slot is refilled only by the next block's prefetch), and the fp32 state staging buffer is
    scoped (``pl.run_scoped``) before and after the main loop's buffers, sharing their bytes; with an
    initial state, its load then precedes the first block loads instead of overlapping them. With vdecay or
    state_t there is no Kw to store, and lean only scopes the staging (with m_regs, the mask's too).
``smem_bytes(dk, block_v, num_slots, lean)`` counts a configuration's dynamic SMEM from the buffer list
the kernel allocates (Mosaic GPU starts every buffer on 1 KB; ``test_lowers_for_hopper`` checks the
count against the lowering). At dk = 128, 2 slots (bytes, barriers included):
    block_v=64          175192 (171 KB)      block_v=64 lean   126040 (123 KB)
    block_v=32          138328 (135 KB)      block_v=32 lean   105560 (103 KB: two CTAs per SM)
3 slots: 211 KB at block_v=64 (block_v=32 lean: 139 KB); 4 slots do not fit (251 KB > 227 KB).

Measured on one H200 (JAX 0.11.2), H=64, D=128, bf16, median of 10, run-to-run spread ~10-20%, the plain step as it
was before 2026-12-01 (the step with its flags off is the same math; it now issues the O store under the state
update, not re-timed):
B1 T4K 0.20-0.26 ms, B1 T16K 0.52-0.65 ms, B4 T16K 1.90-2.08 ms, B1 T64K 1.76-1.93 ms, i.e.
1.0-2.4 TB/s on q,k,v,o bytes (fla chunk_simple_gla on the same kind of GPU: 0.44 / 0.74 / 3.13 /
3.04 ms). Errors against the fp32 reference on the same bf16 inputs: o ~2.6e-3, state ~1.6e-3
(relative Frobenius).

Limits (checked, ValueError otherwise):
  * q, k, v [B, T, H, D] in bfloat16 or float16, dk in {64, 128}, dv a multiple of 64;
  * block_size C = 64 (the wgmma M tile; 128 would need more registers); block_v 32 or 64; num_slots 2
    or 3; lean, vdecay, state_t, q_regs, m_regs, persistent, reverse bools; reverse needs T % 64 == 0;
  * T may be anything: the whole blocks run in the kernel, a tail of T % C tokens runs in the jnp
    reference from the kernel's final state (exact, a small XLA computation);
  * no segment_ids;
  * forward only. ``lightning_attention`` (the ops adapter) pairs it with a backward: the Triton kernels of
    gpu_triton.py (impl "mosaic_gpu"), or three passes of this forward (``backward=``, gpu_mosaic_bwd.py: impl
    "mosaic_gpu_all", what "auto" runs on Hopper), and runs the Triton forward and backward instead for segment_ids,
    fp32 or mixed dtypes, other head dims;
  * ``forward_columns`` reads q, k, v at column offsets of wider arrays (the interleaved q|k|v projection, read in
    place by ``lightning_attention_qkv``) and can write o into a ``jax.new_ref`` at a column offset, in place
    (T % 64 == 0 then; the backward passes' d qkv).
The inter-block product uses the state rounded to bf16 (as fla does); the state itself, all
accumulators and the decay math are fp32. Needs sm_90 (wgmma, TMA): Hopper only.

Mosaic GPU API notes (0.11.2): ``plgpu.kernel(body, out_type=, scratch_types=, grid=, grid_names=)``;
default lowering semantics is Warpgroup (layout inference); ``ref.transpose((1, 0))`` replaces
``plgpu.transpose_ref``; ``plgpu.load(ref, layout=...)`` (0.10: ``load(ref, (), layout=...)``);
wgmma A may be a register array in WGMMA layout or a (transposed) swizzled SMEM ref; B is SMEM.
The GPU interpret mode (``interpret=plgpu.InterpretGPUParams()``) runs this kernel on a CPU if P
goes through SMEM and no ``pl.run_state(ACC.init(...))`` is used (both handled here). A dict of
``scratch_types`` (or of ``pl.run_scoped`` types) arrives as keyword refs; sibling ``pl.run_scoped``
scopes share SMEM (Mosaic reserves the larger), nested ones add up. ``jax.export`` for platforms=["cuda"]
runs Mosaic's Python lowering passes on a CPU (how the tests check the lowering without a GPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.lightning_attention import gpu_triton, gpu_triton_qkv
from pallas_kernels.lightning_attention.gpu_mosaic_call import _cols, _launch, qkv_view, with_tail
from pallas_kernels.lightning_attention.gpu_mosaic_layout import (  # noqa: F401  (re-exported)
    BLOCK_V,
    TWO_CTAS_PER_SM,
    _buffers,
    _load,
    _persistent_ctas,
    _smem_types,
    _t,
    auto_layout,
    pl,
    plgpu,
    smem_bytes,
)


def _kernel_call(q, k, v, mask, qdec, kdec, bdec, s0, *, c, block_v, has_init, interpret, p_in_smem=None,
                 num_slots=2, lean=False, vdecay=False, q_regs=False, m_regs=False, state_t=False,
                 grid_ctas=None, reverse=False, cols=None, o_buf=None, o_col=0):
    # cols (q start, k start, v start, dk, dv): q, k, v are read at those columns of wider arrays (the interleaved
    # q|k|v projection); o_buf: a Ref [B, T, H, >= o_col + dv] that o is written into at column o_col, in place.
    qc, kc, vc, dk, dv = _cols(q, v, cols)
    t = q.shape[1]
    nblk = t // c
    dtype = q.dtype
    f32 = jnp.float32
    wgmma_layout = plgpu.Layout.WGMMA
    row_layout = plgpu.Layout.WGMMA.reduce(1)
    # P = (Q K^T) * M is the A operand of the intra-block product: from registers on the GPU (no SMEM
    # round trip), from SMEM in interpret mode (which takes wgmma operands from SMEM only).
    p_in_smem = bool(interpret) if p_in_smem is None else bool(p_in_smem)
    # Q as a register A operand: on the GPU only (interpret mode takes wgmma operands from SMEM, as for P).
    q_regs = bool(q_regs) and not p_in_smem
    permanent, main_loop, staging, barriers = _buffers(c, dk, block_v, num_slots, lean, p_in_smem, vdecay, state_t,
                                                       m_regs)
    mask_staging = {"m_smem": staging.pop("m_smem")} if "m_smem" in staging else None
    col_layout = plgpu.Layout.WGMMA.reduce(0)
    # The two SMEM operands of a wgmma must share one swizzle, and v / sb_smem have rows of block_v
    # elements (64 bytes at block_v = 32), so every 16-bit buffer uses that row width's swizzle; the fp32
    # ones (mask, state staging) are never wgmma operands and use their own rows' (128 bytes or more).
    smem_types = functools.partial(_smem_types, dtype=dtype, block_v=block_v)

    def body_item(iv, hh, bb, q_ref, k_ref, v_ref, m_ref, qd_ref, kd_ref, bd_ref, s0_ref, o_ref, sf_ref, *,
                  qd_smem, kd_smem, bd_smem, q_bar, k_bar, v_bar, c_bar, m_smem=None, st_smem=None):
        """One (value block iv, head hh, batch bb) item: the whole sequence."""
        v0 = iv * block_v

        def with_state_buffer(fn):
            """fn(st_smem) on the fp32 state staging buffer: permanent, or (lean) SMEM scoped to this call."""
            if lean:
                return pl.run_scoped(fn, **smem_types(staging))
            return fn(st_smem=st_smem)

        def fetch_initial_state(st_smem):
            src = s0_ref.at[bb, hh, pl.ds(v0, block_v), :] if state_t else s0_ref.at[bb, hh, :, pl.ds(v0, block_v)]
            plgpu.copy_gmem_to_smem(src, st_smem, c_bar.at[4])

        def read_initial_state(st_smem):
            plgpu.barrier_wait(c_bar.at[4])
            s = _load(st_smem, wgmma_layout)
            plgpu.commit_smem()  # every thread has read st_smem (lean: the main loop's TMA loads reuse it)
            return s

        def fetch_and_read_initial_state(st_smem):
            fetch_initial_state(st_smem)
            return read_initial_state(st_smem)

        m_pre = None
        if mask_staging is not None:  # lean + m_regs: the mask goes to registers through scoped SMEM, first

            def fetch_and_read_mask(m_smem):
                plgpu.copy_gmem_to_smem(m_ref.at[hh], m_smem, c_bar.at[0])
                plgpu.barrier_wait(c_bar.at[0])
                m = _load(m_smem, wgmma_layout)
                plgpu.commit_smem()  # every thread has read m_smem before its bytes are reused
                return m

            m_pre = pl.run_scoped(fetch_and_read_mask, **smem_types(mask_staging))
        else:
            plgpu.copy_gmem_to_smem(m_ref.at[hh], m_smem, c_bar.at[0])
        plgpu.copy_gmem_to_smem(qd_ref.at[hh], qd_smem, c_bar.at[1])
        plgpu.copy_gmem_to_smem(kd_ref.at[hh], kd_smem, c_bar.at[2])
        plgpu.copy_gmem_to_smem(bd_ref.at[hh], bd_smem, c_bar.at[3])
        s_lean_init = None
        if has_init and lean:  # before the main loop's buffers exist: the first block loads wait for it
            s_lean_init = with_state_buffer(fetch_and_read_initial_state)
        elif has_init:
            fetch_initial_state(st_smem)  # read below, overlapping the first block loads

        def block_row(j):
            """The first row of the j-th block walked (reverse: from the end)."""
            return ((nblk - 1 - j) if reverse else j) * c

        def main(*, q_smem, k_smem, v_smem, sb_smem, o_smem, kw_smem=None, vw_smem=None, p_smem=None):
            def issue(j, slot):
                rows = pl.ds(block_row(j), c)
                plgpu.copy_gmem_to_smem(q_ref.at[bb, rows, hh, pl.ds(qc, dk)], q_smem.at[slot], q_bar.at[slot])
                plgpu.copy_gmem_to_smem(k_ref.at[bb, rows, hh, pl.ds(kc, dk)], k_smem.at[slot], k_bar.at[slot])
                v_src = v_ref.at[bb, rows, hh, pl.ds(vc + v0, block_v)]
                plgpu.copy_gmem_to_smem(v_src, v_smem.at[slot], v_bar.at[slot])

            for i in range(min(num_slots - 1, nblk)):
                issue(i, i)
            for i in range(0 if m_pre is None else 1, 4):  # c_bar[0] (the mask) was waited for above
                plgpu.barrier_wait(c_bar.at[i])
            if s_lean_init is not None:
                s_init = s_lean_init
            elif has_init:
                s_init = read_initial_state(st_smem)
            else:
                s_init = plgpu.layout_cast(jnp.zeros((block_v, dk) if state_t else (dk, block_v), f32), wgmma_layout)
            sb_smem[...] = s_init.astype(dtype)
            plgpu.commit_smem()

            def await_block(j):
                """Start loading block j + num_slots - 1 into the slot block j - 1 freed (it is done), then
                wait for block j's q, k, v; returns their SMEM views."""
                slot = lax.rem(j, num_slots)
                ahead = j + num_slots - 1

                @pl.when(ahead < nblk)
                def _prefetch():
                    issue(ahead, lax.rem(ahead, num_slots))

                plgpu.barrier_wait(q_bar.at[slot])
                plgpu.barrier_wait(k_bar.at[slot])
                plgpu.barrier_wait(v_bar.at[slot])
                return q_smem.at[slot], k_smem.at[slot], v_smem.at[slot]

            def store_decayed_keys(ks, kd):
                """Kw = k * (per-row decay to the block end ``kd``), the left operand of the state update, into
                kw_smem; lean: into ks itself (call only once the block's Q K^T product is done). Returns
                the ref written. ks is refilled only by the await_block of block j + 1, after this block."""
                kw = ks if lean else kw_smem
                kk = _load(ks, wgmma_layout).astype(f32)
                kw[...] = (kk * lax.broadcast_in_dim(kd, (c, dk), [0])).astype(dtype)
                plgpu.commit_smem()
                return kw

            def masked_scores(a, m):
                """P = the decayed causal mask times the scores, in the input dtype, as a wgmma operand."""
                p = (a * m).astype(dtype)
                if p_in_smem:  # GPU interpret mode takes wgmma operands from SMEM only
                    p_smem[...] = p
                    plgpu.commit_smem()
                    return p_smem
                return lax.optimization_barrier(p)

            def store_output(j, o):
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous O store has left o_smem
                o_smem[...] = o.astype(dtype)
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(o_smem, o_ref.at[bb, pl.ds(block_row(j), c), hh, pl.ds(o_col + v0, block_v)])

            # The decay mask and the row factors: e^{-s(t+1)} per query row, the in-block decay per key (row
            # layout; state_t on the GPU reads it per block in the column layout, 2 registers rather than 16 live
            # through the loop), e^{-sC} per state row (state_t: of S^T; one value per head, so its first block_v).
            # With m_regs they are read once and carried; else each is read from SMEM where it is used.
            load_m = lambda: _load(m_smem, wgmma_layout) if m_pre is None else m_pre  # noqa: E731
            load_qd = lambda: _load(qd_smem, row_layout)  # noqa: E731
            load_kd = lambda: _load(kd_smem, row_layout)  # noqa: E731
            load_bd = lambda: _load(bd_smem.at[pl.ds(0, block_v)] if state_t else bd_smem, row_layout)  # noqa: E731

            def step(j, carry):
                # Per block, with the flags (each on its own):
                #  * vdecay: the in-block decay of the state update goes on V's rows, S += K^T (V * kdec): a
                #    [C, block_v] scale and store instead of [C, dk], and the update reads k from its slot;
                #  * state_t: the state is kept transposed, S^T [block_v, dk] += (V * kdec)^T K, one wgmma of
                #    N = dk (rather than two of M = 64 that each read V), whose A operand (V * kdec)^T comes from
                #    registers on the GPU (v's slot read transposed; interpret mode: through vw_smem); Q S reads the
                #    bf16 S^T transposed;
                #  * q_regs: Q is read from SMEM once into registers and is the A operand of Q K^T and Q S;
                #  * m_regs: the decay mask and row factors are read once per CTA and carried in registers (else
                #    from SMEM every block).
                # Elementwise work is issued while a product runs: V * kdec under P V, the O epilogue and its
                # store under the state update. Fresh accumulators (run_scoped) rather than
                # pl.run_state(ACC.init(x)): the GPU interpret mode of JAX 0.11 cannot run wgmma under run_state.
                s, tables = carry
                qs, ks, vs = await_block(j)
                qa = _load(qs, wgmma_layout) if q_regs else qs
                m, qd, kd, bd = tables if m_regs else (None,) * 4

                def scores_and_inter(a_ref, oi_ref):
                    plgpu.wgmma(a_ref, qa, _t(ks))
                    plgpu.wgmma(oi_ref, qa, _t(sb_smem) if state_t else sb_smem)
                    return a_ref[...], oi_ref[...]

                a, oi = pl.run_scoped(scores_and_inter, plgpu.ACC((c, c), f32), plgpu.ACC((c, block_v), f32))
                p = masked_scores(a, load_m() if m is None else m)

                def intra(acc_ref):
                    plgpu.wgmma(acc_ref, p, vs)
                    if state_t and not p_in_smem:  # (V * kdec)^T [block_v, C] in registers, returned
                        vv = _load(_t(vs), wgmma_layout).astype(f32)
                        kd_col = _load(kd_smem, col_layout)
                        vt = (vv * lax.broadcast_in_dim(kd_col, (block_v, c), [1])).astype(dtype)
                        return acc_ref[...], vt
                    if vdecay or state_t:
                        vv = _load(vs, wgmma_layout).astype(f32)
                        kd_rows = load_kd() if kd is None else kd
                        vw_smem[...] = (vv * lax.broadcast_in_dim(kd_rows, (c, block_v), [0])).astype(dtype)
                        plgpu.commit_smem()
                    return acc_ref[...], None

                o, vt = pl.run_scoped(intra, plgpu.ACC((c, block_v), f32))
                o = o + oi * lax.broadcast_in_dim(load_qd() if qd is None else qd, (c, block_v), [0])
                if state_t:
                    a_upd, b_upd = (_t(vw_smem) if vt is None else vt), ks
                elif vdecay:
                    a_upd, b_upd = _t(ks), vw_smem
                else:
                    kw = store_decayed_keys(ks, load_kd() if kd is None else kd)  # Q K^T (above) has read ks
                    a_upd, b_upd = _t(kw), vs

                def update(acc_ref):
                    plgpu.wgmma(acc_ref, a_upd, b_upd)
                    store_output(j, o)  # overlaps the product
                    return acc_ref[...]

                s_shape = (block_v, dk) if state_t else (dk, block_v)
                bd = load_bd() if bd is None else bd
                s = s * lax.broadcast_in_dim(bd, s_shape, [0]) + pl.run_scoped(update, plgpu.ACC(s_shape, f32))
                sb_smem[...] = s.astype(dtype)
                plgpu.commit_smem()  # the next block's Q S reads it
                return s, tables

            tables = (load_m(), load_qd(), load_kd(), load_bd()) if m_regs else ()
            return lax.fori_loop(0, nblk, step, (s_init, tables))[0]

        s = pl.run_scoped(main, **smem_types(main_loop))

        def store_final_state(st_smem):
            # The last O store has left o_smem, and (barrier) every thread is past the loop: lean's
            # st_smem reuses the main loop's bytes.
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            st_smem[...] = s
            plgpu.commit_smem()
            dst = sf_ref.at[bb, hh, pl.ds(v0, block_v), :] if state_t else sf_ref.at[bb, hh, :, pl.ds(v0, block_v)]
            plgpu.copy_smem_to_gmem(st_smem, dst)
            plgpu.wait_smem_to_gmem(0)

        with_state_buffer(store_final_state)

    n_v, n_h, n_b = dv // block_v, q.shape[2], q.shape[0]

    def body(*refs, **scratch_refs):
        if grid_ctas is None:  # one CTA per item
            return body_item(lax.axis_index("v"), lax.axis_index("h"), lax.axis_index("b"), *refs, **scratch_refs)
        # persistent: CTA w runs items w, w + grid_ctas, ... in order (barrier phases carry over between items:
        # every arrival is waited for once, in order, within its item)
        n_items = n_v * n_h * n_b
        w = lax.axis_index("w")

        def one(i, carry):
            item = w + i * grid_ctas

            @pl.when(item < n_items)
            def _item():
                body_item(lax.rem(item, n_v), lax.rem(item // n_v, n_h), item // (n_v * n_h), *refs,
                          **scratch_refs)

            return carry

        lax.fori_loop(0, -(-n_items // grid_ctas), one, 0)

    scratch = smem_types(permanent)
    scratch.update({name: plgpu.Barrier(num_barriers=n) for name, n in barriers.items()})
    launch = functools.partial(_launch, block_v=block_v, interpret=interpret, grid_ctas=grid_ctas, dims=(dk, dv),
                               o_buf=o_buf)
    if state_t:
        s0 = jnp.swapaxes(s0, -1, -2)  # [B, H, dv, dk] (an [1, 1, dk, dv] placeholder without an initial state)
    out = launch(body, scratch, (q, k, v, mask, qdec, kdec, bdec, s0), state_t=state_t)
    o, sf = (None, out) if o_buf is not None else out
    return o, (jnp.swapaxes(sf, -1, -2) if state_t else sf)


def check_supported(q, k, v, decay, initial_state=None, block_size=64):
    if plgpu is None:
        raise ImportError("jax.experimental.pallas.mosaic_gpu is not available")
    if q.ndim != 4 or k.shape != q.shape or v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k [B, T, H, dk] and v [B, T, H, dv] expected, got {q.shape} {k.shape} {v.shape}")
    if q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"mosaic_gpu needs bf16/f16 q, k, v of one dtype, got {q.dtype} {k.dtype} {v.dtype}")
    b, _, h, dk = q.shape
    dv = v.shape[-1]
    if dk % 64 or dv % BLOCK_V:
        raise ValueError(f"mosaic_gpu needs dk % 64 == 0 and dv % {BLOCK_V} == 0, got {dk}, {dv}")
    if int(block_size) != 64:
        raise ValueError(f"mosaic_gpu supports block_size=64 only, got {block_size}")
    if dk > 128:
        raise ValueError(f"mosaic_gpu supports dk <= 128 (registers and SMEM), got dk={dk}")
    if decay.shape != (h,):
        raise ValueError(f"decay must be [heads] = ({h},), got {decay.shape}")
    if initial_state is not None and initial_state.shape != (b, h, dk, dv):
        raise ValueError(f"initial_state must be {(b, h, dk, dv)}, got {initial_state.shape}")


_FLAGS = ("lean", "vdecay", "q_regs", "m_regs", "state_t", "persistent", "reverse")


@functools.partial(
    jax.jit, static_argnames=("block_size", "interpret", "p_in_smem", "num_slots", "block_v", *_FLAGS)
)
def lightning_attention_fwd(
    q, k, v, decay, *, initial_state=None, block_size=64, interpret=False, p_in_smem=None, num_slots=2,
    block_v=BLOCK_V, lean=False, vdecay=False, q_regs=False, m_regs=False, state_t=False,
    persistent=False, reverse=False,
):
    """Forward of lightning attention. q, k [B,T,H,dk], v [B,T,H,dv] bf16/f16; decay [H].

    Returns (o [B,T,H,dv] in q.dtype, final state [B,H,dk,dv] fp32). See the module docstring; ``block_v``
    (32 or 64) is the value-column tile of one CTA, ``lean`` the SMEM-saving layout (``smem_bytes``);
    ``vdecay`` / ``state_t`` / ``q_regs`` / ``m_regs`` the step with less SMEM traffic per block, ``persistent``
    the grid of as many CTAs as fit at once (module docstring). The defaults are the plain step; the ops adapters
    (and so ``pallas_kernels.lightning_attention``) run ``auto_layout``'s, 1.2-1.5x faster on an H200.
    ``reverse=True`` runs the scan from the last token to the first: o_t sums over u >= t with weights
    e^{-s(u-t)}, the initial state enters as if after the last token (o_t += e^{-s(T-t)} q_t S0) and the state
    returned is the one reached at the first token; T must be a multiple of 64 (gpu_mosaic_bwd's passes).
    """
    return forward_columns(q, k, v, decay, initial_state=initial_state, block_size=block_size, interpret=interpret,
                           p_in_smem=p_in_smem, num_slots=num_slots, block_v=block_v, lean=lean, vdecay=vdecay,
                           q_regs=q_regs, m_regs=m_regs, state_t=state_t, persistent=persistent, reverse=reverse)


def forward_columns(q, k, v, decay, *, cols=None, o_buf=None, o_col=0, initial_state=None, block_size=64,
                    interpret=False, p_in_smem=None, num_slots=2, block_v=BLOCK_V, **flags):
    """``lightning_attention_fwd`` (not jitted: call it inside a jitted function) on operands read in place.

    ``cols`` = (q start, k start, v start, dk, dv): q, k, v are [B, T, H, >= start + width] arrays (the same array
    may be passed more than once, e.g. the interleaved q|k|v projection) whose columns [start, start + width) the
    TMA loads read; None: the whole last dims. ``o_buf``: a Ref [B, T, H, >= o_col + dv] in q's dtype (``jax.new_ref``)
    that o is written into at columns [o_col, o_col + dv), in place (T a multiple of 64); then o comes back as None
    and the Ref holds it. Returns (o or None, final fp32 state [B, H, dk, dv]). ``flags``: lightning_attention_fwd's
    step and grid flags."""
    for name, flag in flags.items():
        if name not in _FLAGS:
            raise TypeError(f"unknown flag {name!r} (expected one of {_FLAGS})")
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
    qc, kc, vc, dk, dv = _cols(q, v, cols)
    for name, x, start, width in (("q", q, qc, dk), ("k", k, kc, dk), ("v", v, vc, dv)):
        if x.ndim != 4 or not all(isinstance(n, int) for n in (start, width)) or start < 0 or width < 1 or \
                start + width > x.shape[-1]:
            raise ValueError(f"{name}'s columns [{start}, {start + width}) are not within its shape {x.shape}")
    view = lambda x, d: jax.ShapeDtypeStruct((*x.shape[:3], d), x.dtype)  # noqa: E731
    qv, kv, vv = view(q, dk), view(k, dk), view(v, dv)
    check_supported(qv, kv, vv, decay, initial_state, block_size)
    if int(num_slots) not in (2, 3):  # 4 slots: 251 KB of SMEM (smem_bytes) > 227 KB on H100/H200
        raise ValueError(f"num_slots must be 2 or 3, got {num_slots}")
    if block_v not in (32, 64):
        raise ValueError(f"block_v must be 32 or 64, got {block_v!r}")
    c = int(block_size)
    reverse = flags.get("reverse", False)
    if reverse and q.shape[1] % c:
        raise ValueError(f"reverse=True needs a sequence length that is a multiple of {c}, got {q.shape[1]}")
    if o_buf is not None:
        shape, dtype = tuple(o_buf.shape), o_buf.dtype
        if (len(shape) != 4 or shape[:3] != q.shape[:3] or not isinstance(o_col, int) or o_col < 0
                or o_col + dv > shape[-1] or dtype != q.dtype):
            raise ValueError(f"o_buf must be [B, T, H, >= {o_col + dv}] {q.dtype}, got {shape} {dtype}")
        if q.shape[1] % c:
            raise ValueError(f"o_buf needs a sequence length that is a multiple of {c}, got {q.shape[1]}")
    layout = {name: bool(flags.get(name, False)) for name in ("lean", "vdecay", "state_t", "m_regs")}
    grid_ctas = _persistent_ctas(qv, vv, block_v, num_slots, **layout) if flags.get("persistent") else None
    run = functools.partial(_kernel_call, c=c, block_v=int(block_v), interpret=interpret, p_in_smem=p_in_smem,
                            num_slots=int(num_slots), q_regs=bool(flags.get("q_regs", False)), grid_ctas=grid_ctas,
                            reverse=bool(reverse), cols=(qc, kc, vc, dk, dv), o_buf=o_buf, o_col=int(o_col), **layout)
    return with_tail(run, q, k, v, decay, initial_state, c, reverse=bool(reverse), cols=(qc, kc, vc, dk, dv))


# ------------------------------------------------------------------------------------------------
# ops adapter (ops impl "mosaic_gpu"): callable(q, k, v, decay, *, initial_state, segment_ids,
# block_size, interpret) -> (o, final state), differentiable: forward = the kernel above, backward =
# the Triton backward kernels of gpu_triton.py (through its shared custom_vjp).


def unsupported_reason(q, k, v, decay, initial_state=None, segment_ids=None):
    """Why the Mosaic GPU forward cannot take this call (a string), or None if it can."""
    if segment_ids is not None:
        return "segment_ids"
    try:
        check_supported(q, k, v, decay, initial_state, 64)
    except (ValueError, ImportError) as e:
        return str(e)
    return None


def _forward(q, k, v, decay, initial_state, segment_ids, *, interpret):
    del segment_ids  # always None here (unsupported_reason)
    return lightning_attention_fwd(q, k, v, decay, initial_state=initial_state, interpret=interpret,
                                   **auto_layout(q.shape[0], q.shape[2], v.shape[-1]))


@functools.partial(jax.jit, static_argnames=("block_size", "interpret", "backward"))
def lightning_attention(
    q, k, v, decay, *, initial_state=None, segment_ids=None, block_size=64, interpret=False, backward=None
):
    """ops-style entry: Mosaic GPU forward + Triton backward where supported, all-Triton otherwise.

    Falls back to ``gpu_triton.lightning_attention`` (forward and backward) for segment_ids, inputs
    that are not bf16/f16 of one dtype (fp32 included), or head dims the kernel does not take (see
    ``check_supported``). ``block_size`` is passed to the Triton kernels (which clamp it to <= 64);
    the Mosaic forward always uses C = 64. ``backward``: None for the Triton backward kernels, or a
    ``gpu_triton.with_backward`` backward function (gpu_mosaic_bwd.backward_or_triton, ops impl
    "mosaic_gpu_all"). Returns (o in q.dtype, final fp32 state).
    """
    params = gpu_triton.TritonParams.make(block_size=block_size, interpret=interpret)
    if unsupported_reason(q, k, v, decay, initial_state, segment_ids) is not None:
        return gpu_triton.lightning_attention(
            q, k, v, decay, initial_state=initial_state, segment_ids=segment_ids, block_size=block_size,
            interpret=interpret,
        )
    fwd = functools.partial(_forward, interpret=bool(interpret))
    bwd = gpu_triton.backward if backward is None else backward
    return gpu_triton.with_backward(fwd, bwd, params)(q, k, v, decay, initial_state, None)


@functools.partial(jax.jit, static_argnames=("block_size", "interpret", "seq_split", "backward"))
def lightning_attention_qkv(qkv, decay, *, initial_state=None, segment_ids=None, block_size=64, interpret=False,
                            seq_split=1, backward=None):
    """``lightning_attention`` on an interleaved qkv [B, T, H, 3 D] (ops' ``lightning_attention_qkv``): the
    Mosaic forward reading q, k, v in place (``forward_columns``: the TMA loads take their column ranges), and a
    backward writing d qkv interleaved in place: ``backward`` None for the Triton kernels
    (``gpu_triton_qkv.backward_qkv``), or a function with its signature and params keyword
    (gpu_mosaic_bwd.backward_qkv_or_triton: ops impl "mosaic_gpu_all"); on ``seq_split`` chunks of the sequence at
    once when > 1. Where the Mosaic forward does not apply, ``gpu_triton_qkv.lightning_attention_qkv`` (which raises
    ValueError for a head dim the interleaved kernels cannot tile)."""
    d = qkv.shape[-1] // 3
    reason = gpu_triton_qkv.qkv_unsupported_reason(qkv)
    if reason is not None:
        raise ValueError(reason)
    view = qkv_view(qkv)
    if unsupported_reason(view, view, view, decay, initial_state, segment_ids) is not None:
        return gpu_triton_qkv.lightning_attention_qkv(qkv, decay, initial_state=initial_state, segment_ids=segment_ids,
                                                      block_size=block_size, interpret=interpret, seq_split=seq_split)

    def fwd(qkv, decay, initial_state, segment_ids):
        del segment_ids  # None here
        return forward_columns(qkv, qkv, qkv, decay, cols=(0, d, 2 * d, d, d), initial_state=initial_state,
                               interpret=interpret, **auto_layout(qkv.shape[0], qkv.shape[2], d))

    params = gpu_triton.TritonParams.make(block_size=block_size, interpret=interpret)
    return gpu_triton_qkv.qkv_with_backward(fwd, params, seq_split, backward)(qkv, decay, initial_state, None)


__all__ = ["lightning_attention_fwd", "forward_columns", "lightning_attention", "lightning_attention_qkv",
           "check_supported", "unsupported_reason", "auto_layout"]
