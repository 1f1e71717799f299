"""Check the GPU lightning-attention kernels against the fp32 jnp reference; exit non-zero on failure.

On a GPU (JAX 0.11.x with CUDA):
    PYTHONUNBUFFERED=1 python3 experiments/check_gpu_kernels.py [--out results.md] [--no-timing]
checks
  * gpu_mosaic.lightning_attention_fwd (Pallas Mosaic GPU, Hopper) and its variants,
  * gpu_triton.lightning_attention (Pallas Triton) forward, if the module is present,
  * the public op ``pallas_kernels.lightning_attention(impl="mosaic_gpu")``: forward, and fwd+bwd
    (Mosaic forward + Triton backward; grads of q, k, v, initial_state for cotangents on o and the
    final state) against ``jax.vjp`` of reference.chunked in fp32; its fp32-input fallback (Triton);
  * ``impl="triton"`` fwd+bwd with segment_ids (packed sequences), and ``impl="mosaic_gpu"`` with
    segment_ids (falls back to Triton);
  * that ``impl="auto"`` resolves to "mosaic_gpu_all" on Hopper (compute capability 9.x) and gives the
    same output as impl="mosaic_gpu_all";
  * ``lightning_attention_qkv`` (interleaved q|k|v) fwd+bwd with "triton", "mosaic_gpu" and "mosaic_gpu_all";
  * decode.lightning_attention_decode(impl="triton") (one step, chained steps, in-place state),
  * pallas_kernels.decode_attention's split-K softmax decode kernel (ragged rows, GQA) vs its fp32 oracle,
  * pallas_kernels.segment_attention (packed documents) forward and gradients, and pallas_kernels.grouped_matmul's
    Mosaic expert matmul (fwd, dx, dw) (both in experiments/gpu_checks_softmax_moe.py),
against reference.chunked / reference.step / reference.recurrent computed in fp32 (HIGHEST precision)
on the same (bf16-rounded) inputs, printing relative Frobenius and max abs errors. Quick timings
(median of a few repeats; forward kernels, fwd+bwd through the op, decode) are printed too unless
--no-timing.

On a CPU (for development) ``--interpret`` runs small shapes in interpret mode (Mosaic GPU needs
JAX >= 0.11 for its GPU interpret mode).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import pallas_kernels  # noqa: E402
from experiments.benchmarks.timing import median_ms  # noqa: E402
from experiments.gpu_check_record import F32, FAILED, ROWS, finish, guarded, record  # noqa: E402
from experiments.gpu_checks_softmax_moe import (  # noqa: E402
    check_decode_attention,
    check_grouped_matmul,
    check_segment_attention,
)
from pallas_kernels.lightning_attention import decode, ops, reference  # noqa: E402

try:
    from pallas_kernels.lightning_attention import gpu_mosaic
except Exception as e:  # noqa: BLE001
    gpu_mosaic, _MOSAIC_ERR = None, repr(e)
try:
    from pallas_kernels.lightning_attention import gpu_triton
except Exception as e:  # noqa: BLE001
    gpu_triton, _TRITON_ERR = None, repr(e)

# (label, extra kwargs of gpu_mosaic.lightning_attention_fwd); the first is the default configuration
MOSAIC_VARIANTS = [
    ("mosaic_gpu", {}),
    ("mosaic_gpu bv64 lean", {"lean": True}),
    ("mosaic_gpu bv32 lean", {"block_v": 32, "lean": True}),
    ("mosaic_gpu vd", {"vdecay": True}),
    ("mosaic_gpu rq", {"q_regs": True}),
    ("mosaic_gpu rm", {"m_regs": True}),
    ("mosaic_gpu vd rq rm", {"vdecay": True, "q_regs": True, "m_regs": True}),
    ("mosaic_gpu vd rq rm slots=3", {"vdecay": True, "q_regs": True, "m_regs": True, "num_slots": 3}),
    ("mosaic_gpu bv64 lean rm", {"lean": True, "m_regs": True}),
    ("mosaic_gpu st", {"state_t": True}),
    ("mosaic_gpu st rq rm", {"state_t": True, "q_regs": True, "m_regs": True}),
    ("mosaic_gpu st lean rm", {"state_t": True, "lean": True, "m_regs": True}),
    ("mosaic_gpu st lean rq rm", {"state_t": True, "lean": True, "q_regs": True, "m_regs": True}),
    ("mosaic_gpu st lean rm persistent", {"state_t": True, "lean": True, "m_regs": True, "persistent": True}),
    ("mosaic_gpu st rm slots=3 persistent", {"state_t": True, "m_regs": True, "num_slots": 3, "persistent": True}),
]


def minimax_decay(h, layer=0, num_layers=80):
    slope = 2.0 ** (-8.0 * (np.arange(h) + 1) / h)
    return jnp.asarray(slope * (1 - layer / (num_layers - 1) + 1e-5), F32)


def make_inputs(key, b, t, h, dk, dv, dtype, decay_kind="minimax", init=False):
    ks = jax.random.split(key, 5)
    # silu(x W)-like magnitudes: q, k of unit scale / sqrt(dk) keep o O(1) without a normaliser
    q = (jax.random.normal(ks[0], (b, t, h, dk), F32) / np.sqrt(dk)).astype(dtype)
    k = (jax.random.normal(ks[1], (b, t, h, dk), F32) / np.sqrt(dk)).astype(dtype)
    v = jax.random.normal(ks[2], (b, t, h, dv), F32).astype(dtype)
    if decay_kind == "minimax":
        decay = minimax_decay(h)
    elif decay_kind == "extreme":  # very fast and very slow decays
        decay = jnp.asarray(np.geomspace(8.0, 1e-4, h), F32)
    else:
        decay = jax.random.uniform(ks[3], (h,), F32, 0.01, 1.0)
    s0 = jax.random.normal(ks[4], (b, h, dk, dv), F32) if init else None
    return q, k, v, decay, s0


def ref_fwd(q, k, v, decay, s0):
    f = jax.jit(lambda q, k, v, d, s: reference.chunked(q, k, v, d, initial_state=s, block_size=64))
    return f(q.astype(F32), k.astype(F32), v.astype(F32), decay, s0)


def bench(fn, *args, warmup=2, iters=10):
    return median_ms(fn, *args, iters=iters, warmup=warmup + 1)


def fwd_cases(interpret, quick=False):
    if quick:
        return [(1, 4096, 64, 128, 128, "minimax", True), (2, 1000, 4, 128, 128, "random", True)]
    if interpret:
        return [
            (1, 192, 2, 64, 128, "random", True),
            (2, 64 * 3 + 21, 2, 64, 64, "extreme", False),  # tail through the reference
        ]
    return [
        (1, 4096, 64, 128, 128, "minimax", False),
        (1, 4096, 64, 128, 128, "minimax", True),
        (2, 1000, 4, 128, 128, "random", True),  # 1000 = 15 * 64 + 40: tail
        (1, 2048, 8, 128, 128, "extreme", True),
        (1, 16384, 16, 128, 128, "minimax", False),
        (4, 2048, 64, 128, 128, "minimax", True),  # 512 CTAs: more than fit at once (persistent: 2 items per CTA)
    ]


def check_forward(args):
    print("\n== forward vs reference.chunked (fp32 on the same bf16 inputs) ==")
    impls = []
    if gpu_mosaic is not None:
        impls.append(("mosaic_gpu", lambda q, k, v, d, s: gpu_mosaic.lightning_attention_fwd(
            q, k, v, d, initial_state=s, interpret=args.interpret)))
        if not args.interpret:
            for label, kw in MOSAIC_VARIANTS[1:]:
                if args.variants and not set(args.variants.split(",")) & set(label.split()):
                    continue
                impls.append((label, lambda q, k, v, d, s, kw=kw: gpu_mosaic.lightning_attention_fwd(
                    q, k, v, d, initial_state=s, **kw)))
            from pallas_kernels.lightning_attention import gpu_mosaic_ws  # warp-specialised (3 warpgroups)

            for slots in (2, 3) if not args.variants else ():
                impls.append((f"mosaic_gpu ws slots={slots}", lambda q, k, v, d, s, n=slots:
                              gpu_mosaic_ws.lightning_attention_fwd_ws(q, k, v, d, initial_state=s, num_slots=n)))
    else:
        print(f"  gpu_mosaic not available: {_MOSAIC_ERR}")
        if not args.interpret:
            FAILED.append("gpu_mosaic import")
    if gpu_triton is not None:
        impls.append(("triton", lambda q, k, v, d, s: gpu_triton.lightning_attention(
            q, k, v, d, initial_state=s, block_size=64, interpret=args.interpret)))
    else:
        print(f"  gpu_triton not importable (skipped): {_TRITON_ERR}")
    key = jax.random.PRNGKey(0)
    cases = fwd_cases(args.interpret, args.quick)
    for i, (b, t, h, dk, dv, dk_kind, init) in enumerate(cases):
        q, k, v, decay, s0 = make_inputs(
            jax.random.fold_in(key, i), b, t, h, dk, dv, jnp.bfloat16, dk_kind, init
        )
        ro, rs = ref_fwd(q, k, v, decay, s0)
        shape = f"B{b} T{t} H{h} D{dk}/{dv} {dk_kind[:4]}{' s0' if init else ''}"
        for name, fn in impls:
            # variants on the first cases only, and the last (more CTAs than fit at once)
            if name != "mosaic_gpu" and i not in (0, 1, 2, len(cases) - 1):
                continue

            def run(name=name, fn=fn, q=q, k=k, v=v, decay=decay, s0=s0, shape=shape, ro=ro, rs=rs):
                o, s = jax.jit(fn)(q, k, v, decay, s0)
                record(name, shape, "o", o, ro, 1e-2)
                record(name, shape, "state", s, rs, 1e-2)

            guarded(f"{name} {shape}", run)


# ------------------------------------------------------------------------------- the public op


def op_vjp(impl, q, k, v, decay, s0, seg, do, dst, interpret):
    """(o, state) and the grads (dq, dk, dv[, ds0]) of pallas_kernels.lightning_attention(impl=...)."""

    def f(q, k, v, *s0_):
        return pallas_kernels.lightning_attention(
            q, k, v, decay, initial_state=s0_[0] if s0_ else None, segment_ids=seg, return_state=True,
            impl=impl, block_size=64, interpret=interpret,
        )

    primals = (q, k, v) if s0 is None else (q, k, v, s0)
    out, pullback = jax.vjp(f, *primals)
    return out, pullback((do.astype(out[0].dtype), dst))


def ref_vjp(q, k, v, decay, s0, seg, do, dst):
    """The same through jax.vjp of reference.chunked, all in fp32 (HIGHEST precision)."""

    def f(q, k, v, *s0_):
        return reference.chunked(
            q, k, v, decay, initial_state=s0_[0] if s0_ else None, segment_ids=seg, block_size=64
        )

    q, k, v, do = (x.astype(F32) for x in (q, k, v, do))
    primals = (q, k, v) if s0 is None else (q, k, v, s0)
    out, pullback = jax.vjp(f, *primals)
    return out, pullback((do, dst))


def make_segments(key, b, t, n_seg):
    """[b, t] int32 ids with n_seg - 1 random boundaries per row (contiguous runs)."""
    rows = []
    for i in range(b):
        cuts = np.sort(np.asarray(jax.random.choice(jax.random.fold_in(key, i), t - 1, (n_seg - 1,),
                                                    replace=False)) + 1)
        row = np.zeros(t, np.int32)
        for c in cuts:
            row[c:] += 1
        rows.append(row)
    return jnp.asarray(np.stack(rows))


def check_grads(check, shape, impl, q, k, v, decay, s0, seg, interpret, key, lim_o, lim_g):
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    kd, ks = jax.random.split(key)
    do = jax.random.normal(kd, (b, t, h, dv), F32).astype(q.dtype)
    dst = jax.random.normal(ks, (b, h, dk, dv), F32)
    (o, st), grads = jax.jit(functools.partial(op_vjp, impl, interpret=interpret))(
        q, k, v, decay, s0, seg, do, dst)
    (ro, rs), rgrads = jax.jit(ref_vjp)(q, k, v, decay, s0, seg, do, dst)
    record(check, shape, "o", o, ro, lim_o)
    record(check, shape, "state", st, rs, lim_o)
    for name, g, r in zip(("dq", "dk", "dv", "ds0"), grads, rgrads, strict=False):
        record(check, shape, name, g, r, lim_g)


def op_cases(interpret, quick):
    # (b, t, h, dk, dv, decay kind, initial state)
    if interpret:
        return [(1, 128 + 21, 2, 64, 64, "random", True)]
    cases = [
        (1, 4096, 64, 128, 128, "minimax", True),
        (2, 1000, 4, 128, 128, "random", True),  # tail of 40 tokens
        (1, 2048, 8, 128, 128, "extreme", False),
        (1, 16384, 16, 128, 128, "minimax", True),
        (4, 2048, 64, 128, 128, "minimax", True),  # 512 programs a backward kernel: 2 stages (gpu_triton)
    ]
    return cases[:2] if quick else cases


def check_op(args):
    print("\n== pallas_kernels.lightning_attention(impl='mosaic_gpu'): fwd, fwd+bwd vs jax.vjp(reference) ==")
    if gpu_mosaic is None:  # on a GPU the import failure is already a FAIL (check_forward)
        print(f"  skipped: gpu_mosaic not available ({_MOSAIC_ERR})")
        return
    key = jax.random.PRNGKey(3)
    for i, (b, t, h, dk, dv, kind, init) in enumerate(op_cases(args.interpret, args.quick)):
        q, k, v, decay, s0 = make_inputs(jax.random.fold_in(key, i), b, t, h, dk, dv, jnp.bfloat16, kind, init)
        shape = f"B{b} T{t} H{h} D{dk}/{dv} {kind[:4]}{' s0' if init else ''}"
        reason = gpu_mosaic.unsupported_reason(q, k, v, decay, s0)
        if reason is not None:
            print(f"  FAIL mosaic_gpu does not take {shape}: {reason}")
            FAILED.append(f"op mosaic_gpu {shape}: falls back ({reason})")

        def run_fwd(q=q, k=k, v=v, decay=decay, s0=s0, shape=shape):
            f = jax.jit(lambda q, k, v, d, s: pallas_kernels.lightning_attention(
                q, k, v, d, initial_state=s, return_state=True, impl="mosaic_gpu", interpret=args.interpret))
            o, st = f(q, k, v, decay, s0)
            ro, rs = ref_fwd(q, k, v, decay, s0)
            record("op mosaic_gpu fwd", shape, "o", o, ro, 1e-2)
            record("op mosaic_gpu fwd", shape, "state", st, rs, 1e-2)

        guarded(f"op mosaic_gpu fwd {shape}", run_fwd)
        guarded(f"op mosaic_gpu fwd+bwd {shape}", functools.partial(
            check_grads, "op mosaic_gpu fwd+bwd", shape, "mosaic_gpu", q, k, v, decay, s0, None,
            args.interpret, jax.random.fold_in(key, 100 + i), 1e-2, 2e-2))
        # the backward as three Mosaic forward passes (gpu_mosaic_bwd; ragged T falls back to the Triton backward)
        guarded(f"op mosaic_gpu_all fwd+bwd {shape}", functools.partial(
            check_grads, "op mosaic_gpu_all fwd+bwd", shape, "mosaic_gpu_all", q, k, v, decay, s0, None,
            args.interpret, jax.random.fold_in(key, 100 + i), 1e-2, 2e-2))

    # fp32 inputs: impl="mosaic_gpu" runs the Triton forward and backward (IEEE fp32 dots)
    b, t, h, d = (1, 80, 2, 64) if args.interpret else (2, 1000, 4, 128)
    q, k, v, decay, s0 = make_inputs(jax.random.fold_in(key, 50), b, t, h, d, d, F32, "random", True)
    guarded("op mosaic_gpu fp32 fallback", functools.partial(
        check_grads, "op mosaic_gpu fp32 (->triton)", f"B{b} T{t} H{h} D{d} rand s0 fp32", "mosaic_gpu",
        q, k, v, decay, s0, None, args.interpret, jax.random.fold_in(key, 51), 1e-4, 1e-4))


def check_segments(args):
    print("\n== segment_ids: impl='triton' (and 'mosaic_gpu' -> triton) fwd+bwd vs jax.vjp(reference) ==")
    key = jax.random.PRNGKey(4)
    if args.interpret:
        cases = [(2, 100, 2, 64, 64, 4)]
    else:
        cases = [(2, 3000, 8, 128, 128, 6), (1, 4096, 64, 128, 128, 9)]
    for i, (b, t, h, dk, dv, n_seg) in enumerate(cases):
        q, k, v, decay, s0 = make_inputs(jax.random.fold_in(key, i), b, t, h, dk, dv, jnp.bfloat16,
                                         "random", True)
        seg = make_segments(jax.random.fold_in(key, 10 + i), b, t, n_seg)
        shape = f"B{b} T{t} H{h} D{dk}/{dv} {n_seg} segs s0"
        for impl in ("triton", "mosaic_gpu") if i == 0 and gpu_mosaic is not None else ("triton",):
            guarded(f"{impl} segments {shape}", functools.partial(
                check_grads, f"op {impl} fwd+bwd segments", shape, impl, q, k, v, decay, s0, seg,
                args.interpret, jax.random.fold_in(key, 20 + i), 1e-2, 2e-2))


def qkv_grads(impl, shape, q, k, v, decay, s0, seg, do, dst, interpret):
    """pallas_kernels.lightning_attention_qkv on the interleaved q|k|v: (o, state) and d qkv (split back into dq, dk,
    dv) and d s0 against jax.vjp of the fp32 reference on q, k, v."""
    d = q.shape[-1]

    def f(x, s):
        return pallas_kernels.lightning_attention_qkv(x, decay, initial_state=s, segment_ids=seg, return_state=True,
                                                      impl=impl, interpret=interpret)

    def vjp(x, s):
        out, pullback = jax.vjp(f, x, s)
        return out, pullback((do, dst))

    (o, st), (dqkv, ds0) = jax.jit(vjp)(jnp.concatenate([q, k, v], axis=-1), s0)
    (ro, rs), rgrads = jax.jit(ref_vjp)(q, k, v, decay, s0, seg, do, dst)
    check = f"qkv {impl} fwd+bwd"
    record(check, shape, "o", o, ro, 1e-2)
    record(check, shape, "state", st, rs, 1e-2)
    got = (dqkv[..., :d], dqkv[..., d: 2 * d], dqkv[..., 2 * d:]) + (() if s0 is None else (ds0,))
    for name, g, r in zip(("dq", "dk", "dv", "ds0")[: len(got)], got, rgrads, strict=True):
        record(check, shape, name, g, r, 2e-2)


def check_qkv(args):
    print("\n== lightning_attention_qkv (interleaved q|k|v in place, d qkv written in place) vs jax.vjp(reference) ==")
    key = jax.random.PRNGKey(6)
    # (b, t, h, d, segments (0: none), initial state); B1 T8192 H16 is the 1b layer (seq_split "auto" splits it in 4;
    # without segments that is the Mosaic forward + split_sequence_qkv)
    # interpret (Mosaic: JAX >= 0.11)
    cases = [(1, 100, 2, 64, 3, True), (1, 130, 2, 64, 0, False), (1, 128, 2, 64, 0, True)]
    if not args.interpret:
        cases = [(1, 8192, 16, 128, 5, True), (1, 8192, 16, 128, 0, False), (2, 2048, 8, 128, 0, True),
                 (2, 1000, 4, 128, 0, True)]
    # mosaic_gpu_all: the three-pass backward reading q | k | v and writing d qkv in place (T % 64 == 0; T = 1000 and
    # segments fall back to the Triton backward / kernels)
    impls = ("triton", "mosaic_gpu", "mosaic_gpu_all") if gpu_mosaic is not None else ("triton",)
    for i, (b, t, h, d, n_seg, init) in enumerate(cases):
        q, k, v, decay, s0 = make_inputs(jax.random.fold_in(key, i), b, t, h, d, d, jnp.bfloat16, "minimax", init)
        seg = make_segments(jax.random.fold_in(key, 10 + i), b, t, n_seg) if n_seg else None
        kd, ks = jax.random.split(jax.random.fold_in(key, 20 + i))
        do = jax.random.normal(kd, (b, t, h, d), F32).astype(q.dtype)
        dst = jax.random.normal(ks, (b, h, d, d), F32)
        shape = f"B{b} T{t} H{h} D{d}{f' {n_seg} segs' if n_seg else ''}{' s0' if init else ''}"
        for impl in impls:
            guarded(f"qkv {impl} {shape}", functools.partial(
                qkv_grads, impl, shape, q, k, v, decay, s0, seg, do, dst, args.interpret))


def check_auto(args):
    print("\n== impl='auto' resolution ==")
    dev = jax.devices()[0]
    cc = str(getattr(dev, "compute_capability", "") or "")
    auto = ops._auto_impl()
    hopper = jax.default_backend() == "gpu" and cc.split(".")[0] == "9"
    want = "mosaic_gpu_all" if hopper else ("triton" if jax.default_backend() == "gpu" else "reference")
    ok = auto == want
    print(f"  {'ok  ' if ok else 'FAIL'} backend {jax.default_backend()}, compute capability {cc or '-'}: "
          f"auto -> {auto!r} (expected {want!r})")
    ROWS.append(("impl auto", f"cc {cc or '-'}", f"-> {auto}", 0.0 if ok else float("inf"), 0.0, 0, ok))
    if not ok:
        FAILED.append(f"impl auto resolved to {auto!r}, expected {want!r}")
    if not hopper:
        return

    def run_same():
        q, k, v, decay, s0 = make_inputs(jax.random.PRNGKey(5), 1, 4096, 64, 128, 128, jnp.bfloat16)
        outs, hlo = {}, {}
        for impl in ("auto", "mosaic_gpu_all"):
            f = jax.jit(lambda q, k, v, d, impl=impl: pallas_kernels.lightning_attention(q, k, v, d, impl=impl))
            outs[impl] = np.asarray(f(q, k, v, decay).astype(F32))
            hlo[impl] = f.lower(q, k, v, decay).as_text()
        same = bool(np.array_equal(outs["auto"], outs["mosaic_gpu_all"]))
        mosaic_call = "custom_call @mosaic_gpu" in hlo["auto"]  # the Mosaic GPU kernel's custom call
        # the forward alone is the same kernel for mosaic_gpu: the backward tells them apart (three Mosaic passes)
        loss = lambda q, k, v, d: jnp.sum(pallas_kernels.lightning_attention(q, k, v, d).astype(F32))  # noqa: E731
        grad_hlo = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, k, v, decay).as_text()
        n_mosaic = grad_hlo.count("custom_call @mosaic_gpu")
        ok = same and mosaic_call and n_mosaic == 4
        print(f"  {'ok  ' if ok else 'FAIL'} impl='auto' output == impl='mosaic_gpu_all' output: {same}; "
              f"auto's HLO calls the Mosaic GPU kernel: {mosaic_call}; its fwd+bwd, 4 Mosaic kernels: {n_mosaic}")
        ROWS.append(("impl auto == mosaic_gpu_all", "B1 T4096 H64 D128", "o", 0.0 if ok else float("inf"), 0.0, 0, ok))
        if not ok:
            FAILED.append("impl auto does not run the mosaic_gpu kernel")

    guarded("impl auto output", run_same)


def check_decode(args):
    print("\n== decode (impl=triton) vs reference.step / reference.recurrent ==")
    key = jax.random.PRNGKey(1)
    h, d = (8, 32) if args.interpret else (64, 128)
    batches = (2,) if args.interpret else ((64,) if args.quick else (1, 64))
    for b in batches:
        for dtype in (jnp.float32, jnp.bfloat16):
            ks = jax.random.split(jax.random.fold_in(key, b), 4)
            q = jax.random.normal(ks[0], (b, h, d), F32).astype(dtype)
            kk = jax.random.normal(ks[1], (b, h, d), F32).astype(dtype)
            v = jax.random.normal(ks[2], (b, h, d), F32).astype(dtype)
            s = jax.random.normal(ks[3], (b, h, d, d), F32)
            decay = minimax_decay(h)
            ro, rs = reference.step(q, kk, v, decay, s)
            shape = f"B{b} H{h} D{d} {jnp.dtype(dtype).name}"

            def run(q=q, kk=kk, v=v, s=s, ro=ro, rs=rs, shape=shape, dtype=dtype, decay=decay):
                o, ns = decode.lightning_attention_decode(
                    q, kk, v, decay, s, impl="triton", interpret=args.interpret
                )
                record("decode step", shape, "o", o, ro, 1e-5 if dtype == jnp.float32 else 1e-2)
                record("decode step", shape, "state", ns, rs, 1e-6)

            guarded(f"decode {shape}", run)

    # several steps chained under jit with the state donated (in place) == the recurrent scan
    b, t = (2, 5) if args.interpret else (4, 16)
    ks = jax.random.split(jax.random.fold_in(key, 99), 4)
    q, kk, v = (jax.random.normal(ks[i], (b, t, h, d), F32).astype(jnp.bfloat16) for i in range(3))
    s0 = jax.random.normal(ks[3], (b, h, d, d), F32)
    decay = minimax_decay(h)
    ro, rs = reference.recurrent(q, kk, v, decay, initial_state=s0)

    def run_chain():
        step = jax.jit(
            lambda q, k, v, s: decode.lightning_attention_decode(q, k, v, decay, s, impl="triton",
                                                                 interpret=args.interpret),
            donate_argnums=3,
        )
        s = s0 + 0.0
        first = s
        outs = []
        for i in range(t):
            o, s = step(q[:, i], kk[:, i], v[:, i], s)
            outs.append(o)
        o = jnp.stack(outs, axis=1)
        shape = f"B{b} T{t} H{h} D{d} bf16"
        record("decode chained (donated)", shape, "o", o, ro, 1e-2)
        record("decode chained (donated)", shape, "state", s, rs, 1e-5)
        if not args.interpret:
            print(f"  donated input state deleted (in-place reuse possible): {first.is_deleted()}")

    guarded("decode chained", run_chain)


def timings(args):
    if args.interpret or args.no_timing:
        return
    print("\n== quick timings (median ms; GB/s counts q,k,v read + o written once, bf16) ==")
    key = jax.random.PRNGKey(2)
    for b, t, h in ((1, 4096, 64), (1, 16384, 64), (4, 16384, 64)):
        q, k, v, decay, _ = make_inputs(key, b, t, h, 128, 128, jnp.bfloat16)
        nbytes = 4 * b * t * h * 128 * 2
        fns = []
        if gpu_mosaic is not None:
            for label, kw in MOSAIC_VARIANTS:
                fns.append((label, jax.jit(lambda q, k, v, d, kw=kw: gpu_mosaic.lightning_attention_fwd(
                    q, k, v, d, **kw)[0])))
        if gpu_triton is not None:
            fns.append(("triton", jax.jit(lambda q, k, v, d: gpu_triton.lightning_attention(
                q, k, v, d, block_size=64)[0])))
        if t * b <= 4096:  # the fp32 jnp reference compiles slowly at large shapes
            fns.append(("reference (jnp, C=256)",
                        jax.jit(lambda q, k, v, d: reference.chunked(q, k, v, d)[0])))
        for label, fn in fns:
            try:
                ms = bench(fn, q, k, v, decay)
                print(f"  fwd {label:<24} B{b} T{t} H{h}: {ms:8.3f} ms  {nbytes / ms / 1e6:7.0f} GB/s")
            except Exception as e:  # noqa: BLE001
                print(f"  fwd {label:<24} B{b} T{t} H{h}: failed {type(e).__name__}: {str(e)[:200]}")
        for impl in ("mosaic_gpu", "triton"):  # fwd+bwd through the public op (grads of q, k, v)
            loss = lambda q, k, v, d, impl=impl: jnp.sum(  # noqa: E731
                pallas_kernels.lightning_attention(q, k, v, d, impl=impl).astype(F32))
            fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))  # the value keeps the forward (not DCE'd)
            label = f"op {impl} fwd+bwd"
            try:
                ms = bench(fn, q, k, v, decay)
                print(f"  {label:<28} B{b} T{t} H{h}: {ms:8.3f} ms")
            except Exception as e:  # noqa: BLE001
                print(f"  {label:<28} B{b} T{t} H{h}: failed {type(e).__name__}: {str(e)[:200]}")
    # decode: 20 steps inside one jit (fori_loop, state carried in place), so dispatch is excluded
    h, d, n = 64, 128, 20
    decay = minimax_decay(h)
    for b in (1, 64, 256):
        q = jax.random.normal(key, (n, b, h, d), F32).astype(jnp.bfloat16) * 0.1
        s = jax.random.normal(key, (b, h, d, d), F32)
        nbytes = 2 * b * h * d * d * 4  # fp32 state read + written
        for label, one in (
            ("decode triton", lambda x, st: decode.lightning_attention_decode(x, x, x, decay, st, impl="triton")[1]),
            ("decode reference", lambda x, st: reference.step(x, x, x, decay, st)[1]),
        ):
            loop = jax.jit(lambda st, one=one, q=q: jax.lax.fori_loop(0, n, lambda i, st: one(q[i], st), st))
            try:
                us = bench(loop, s) * 1e3 / n
                print(f"  {label:<18} B{b} H{h} D{d}: {us:8.1f} us/step  {nbytes / us / 1e3:7.0f} GB/s (state)")
            except Exception as e:  # noqa: BLE001
                print(f"  {label:<18} B{b}: failed {type(e).__name__}: {str(e)[:200]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--interpret", action="store_true", help="CPU: small shapes in interpret mode")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer correctness shapes")
    ap.add_argument("--out", default=None, help="write the markdown summary here")
    ap.add_argument("--variants", default="", help="forward: only the Mosaic layouts whose label has one of these "
                    "comma-separated words, e.g. persistent,st (and the default; no warp-specialised kernel)")
    ap.add_argument("--only", default="", help="comma-separated subset of: forward,op,segments,auto,decode,"
                    "decode_attention,segment_attention,grouped_matmul,qkv,timings")
    args = ap.parse_args()
    if args.interpret:
        from jax.experimental.pallas import mosaic_gpu as plgpu

        if not hasattr(plgpu, "InterpretGPUParams"):
            print("Mosaic GPU interpret mode needs JAX >= 0.11; skipping gpu_mosaic")
            globals()["gpu_mosaic"] = None
            globals()["_MOSAIC_ERR"] = "no GPU interpret mode in this JAX"
    dev = jax.devices()[0]
    versions = f"jax {jax.__version__}"
    try:
        import jaxlib

        versions = f"jax {jax.__version__}, jaxlib {jaxlib.__version__}"
    except Exception:  # noqa: BLE001
        pass
    print(f"device: {dev.device_kind} ({dev.platform}), {len(jax.devices())} device(s); {versions}; "
          f"python {platform.python_version()}")
    t0 = time.time()
    parts = {"forward": check_forward, "op": check_op, "segments": check_segments, "auto": check_auto,
             "decode": check_decode, "decode_attention": check_decode_attention,
             "segment_attention": check_segment_attention,
             "grouped_matmul": check_grouped_matmul, "qkv": check_qkv, "timings": timings}
    only = [p for p in args.only.split(",") if p] or list(parts)
    for name in only:
        if name not in parts:
            ap.error(f"--only: unknown part {name!r}; choose from {sorted(parts)}")
        parts[name](args)
    print(f"\nchecks took {time.time() - t0:.1f} s")
    finish(f"device: {dev.device_kind}; {versions}", args.out)


if __name__ == "__main__":
    main()
