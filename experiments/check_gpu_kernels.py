"""Check the GPU lightning-attention kernels against the fp32 jnp reference; exit non-zero on failure.

On a GPU (JAX 0.11.x with CUDA):
    PYTHONUNBUFFERED=1 python3 experiments/check_gpu_kernels.py [--out results.md] [--no-timing]
checks
  * gpu_mosaic.lightning_attention_fwd (Pallas Mosaic GPU, Hopper) and its variants,
  * gpu_triton.lightning_attention (Pallas Triton) forward, if the module is present,
  * decode.lightning_attention_decode(impl="triton") (one step, chained steps, in-place state),
against reference.chunked / reference.step / reference.recurrent computed in fp32 (HIGHEST precision)
on the same (bf16-rounded) inputs, printing relative Frobenius and max abs errors. Quick timings
(median of a few repeats) are printed too unless --no-timing.

On a CPU (for development) ``--interpret`` runs small shapes in interpret mode (Mosaic GPU needs
JAX >= 0.11 for its GPU interpret mode).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from pallas_kernels.lightning_attention import decode, reference  # noqa: E402

try:
    from pallas_kernels.lightning_attention import gpu_mosaic
except Exception as e:  # noqa: BLE001
    gpu_mosaic, _MOSAIC_ERR = None, repr(e)
try:
    from pallas_kernels.lightning_attention import gpu_triton
except Exception as e:  # noqa: BLE001
    gpu_triton, _TRITON_ERR = None, repr(e)

F32 = jnp.float32
# (label, extra kwargs of gpu_mosaic.lightning_attention_fwd); the first is the default configuration
MOSAIC_VARIANTS = [
    ("mosaic_gpu", {}),
    ("mosaic_gpu fused", {"fused": True}),
    ("mosaic_gpu fused slots=3", {"fused": True, "num_slots": 3}),
]
ROWS: list[tuple] = []  # (check, shape, metric, value, limit, ok)
FAILED: list[str] = []


def minimax_decay(h, layer=0, num_layers=80):
    slope = 2.0 ** (-8.0 * (np.arange(h) + 1) / h)
    return jnp.asarray(slope * (1 - layer / (num_layers - 1) + 1e-5), F32)


def rel_err(x, ref):
    x = np.asarray(jnp.asarray(x, F32), np.float64)
    ref = np.asarray(jnp.asarray(ref, F32), np.float64)
    if not np.all(np.isfinite(x)):
        return float("inf"), float("inf")
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30)), float(np.max(np.abs(x - ref)))


def record(check, shape, name, x, ref, limit):
    r, m = rel_err(x, ref)
    ok = r <= limit
    ROWS.append((check, shape, name, r, m, limit, ok))
    flag = "ok  " if ok else "FAIL"
    print(f"  {flag} {check:<28} {shape:<28} {name:<6} rel {r:.2e}  max {m:.2e}  (limit {limit:.0e})")
    if not ok:
        FAILED.append(f"{check} {shape} {name}")


def guarded(check, fn):
    try:
        fn()
    except Exception:  # noqa: BLE001
        print(f"  FAIL {check}: exception")
        traceback.print_exc()
        FAILED.append(f"{check}: exception")
        ROWS.append((check, "-", "exception", float("inf"), float("inf"), 0, False))


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
    out = fn(*args)
    jax.block_until_ready(out)
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


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
    ]


def check_forward(args):
    print("\n== forward vs reference.chunked (fp32 on the same bf16 inputs) ==")
    impls = []
    if gpu_mosaic is not None:
        impls.append(("mosaic_gpu", lambda q, k, v, d, s: gpu_mosaic.lightning_attention_fwd(
            q, k, v, d, initial_state=s, interpret=args.interpret)))
        if not args.interpret:
            for label, kw in MOSAIC_VARIANTS[1:]:
                impls.append((label, lambda q, k, v, d, s, kw=kw: gpu_mosaic.lightning_attention_fwd(
                    q, k, v, d, initial_state=s, **kw)))
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
    for i, (b, t, h, dk, dv, dk_kind, init) in enumerate(fwd_cases(args.interpret, args.quick)):
        q, k, v, decay, s0 = make_inputs(
            jax.random.fold_in(key, i), b, t, h, dk, dv, jnp.bfloat16, dk_kind, init
        )
        ro, rs = ref_fwd(q, k, v, decay, s0)
        shape = f"B{b} T{t} H{h} D{dk}/{dv} {dk_kind[:4]}{' s0' if init else ''}"
        for name, fn in impls:
            if name != "mosaic_gpu" and i not in (0, 1, 2):  # variants on the first cases only
                continue

            def run(name=name, fn=fn):
                o, s = jax.jit(fn)(q, k, v, decay, s0)
                record(name, shape, "o", o, ro, 1e-2)
                record(name, shape, "state", s, rs, 1e-2)

            guarded(f"{name} {shape}", run)


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

            def run(q=q, kk=kk, v=v, s=s, ro=ro, rs=rs, shape=shape, dtype=dtype):
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
            loop = jax.jit(lambda st, one=one: jax.lax.fori_loop(0, n, lambda i, st: one(q[i], st), st))
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
    check_forward(args)
    check_decode(args)
    timings(args)
    print(f"\nchecks took {time.time() - t0:.1f} s")
    lines = [f"device: {dev.device_kind}; {versions}", "",
             "| check | shape | out | rel err | max abs | limit | ok |", "|---|---|---|---|---|---|---|"]
    for c, s, n, r, m, lim, ok in ROWS:
        lines.append(f"| {c} | {s} | {n} | {r:.2e} | {m:.2e} | {lim:.0e} | {'yes' if ok else 'NO'} |")
    summary = "\n".join(lines)
    if args.out:
        with open(args.out, "w") as f:
            f.write(summary + "\n")
    if FAILED:
        print(f"\nFAILED ({len(FAILED)}): " + "; ".join(FAILED))
        sys.exit(1)
    print("\nALL CHECKS PASSED")


if __name__ == "__main__":
    main()
