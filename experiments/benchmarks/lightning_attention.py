"""Benchmark lightning attention implementations against fla, cuDNN softmax attention and a device copy.

Run on one GPU (one process; JAX and, if importable, torch + fla):
    PYTHONUNBUFFERED=1 python3 experiments/benchmarks/lightning_attention.py [--skip-bwd] \
        [--shapes B1T4K,B4T16K] [--impls reference,triton,mosaic_gpu]
Smoke test on a CPU (tiny shapes, Pallas kernels in interpret mode, no fla/cuDNN):
    JAX_PLATFORMS=cpu python3 experiments/benchmarks/lightning_attention.py --smoke

What is timed (median over repeats after warm-up; JAX with jax.block_until_ready and a host clock,
torch with CUDA events), at H=64, D=128, bf16 (MiniMax-M1's lightning layer), MiniMax slopes:
  * ours: pallas_kernels.lightning_attention(impl=...) for "reference", "triton", "mosaic_gpu" where
    registered in ops.IMPLS (if "mosaic_gpu" is not registered, gpu_mosaic.lightning_attention is
    called directly and labelled so); fwd, and fwd+bwd = jax.grad of the sum of the outputs;
  * fla 0.6.x: fla.ops.simple_gla.chunk_simple_gla(q, k, v, g_gamma=-s, scale=1.0) via torch;
  * cuDNN causal softmax attention: jax.nn.dot_product_attention(implementation="cudnn", is_causal=True);
  * a device copy (JAX x + 1 over 2 GiB; torch copy_ too when torch sees the GPU), bytes read+written;
  * decode (one token, fp32 state [B, H, D, D]) at B = 1, 64, 256: ours via
    pallas_kernels.lightning_attention_decode(impl=...) timed per step inside a jitted 20-step loop
    and per host call (dispatch included); fla fused_recurrent_simple_gla per call.
Effective GB/s counts q, k, v read + o written once (4 B T H D x 2 bytes), also for fwd+bwd (a
yardstick, not the traffic); decode GB/s counts the fp32 state read + written. "x fla" = fla's time /
this time (> 1: faster than fla). Missing impls are skipped with a note. The markdown table is printed
and written to experiments/results/.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import pallas_kernels  # noqa: E402
from pallas_kernels.lightning_attention import ops  # noqa: E402

H, D = 64, 128
SHAPES = {"B1T4K": (1, 4096), "B1T16K": (1, 16384), "B1T64K": (1, 65536), "B4T16K": (4, 16384),
          "B1T128K": (1, 131072)}
SMOKE_SHAPES = {"B1T256": (1, 256)}
DECODE_BATCHES = (1, 64, 256)
BLOCK = {"reference": 256, "triton": 64, "mosaic_gpu": 64}

ROWS: list[dict] = []
NOTES: list[str] = []


def note(msg):
    print(f"  note: {msg}")
    NOTES.append(msg)


def minimax_decay(h, layer=0, num_layers=80):
    slope = 2.0 ** (-8.0 * (np.arange(h) + 1) / h)
    return (slope * (1 - layer / (num_layers - 1) + 1e-5)).astype(np.float32)


def add(section, shape, impl, ms, nbytes=None, err=None):
    row = {"section": section, "shape": shape, "impl": impl, "ms": ms, "bytes": nbytes, "err": err}
    ROWS.append(row)
    if err is not None:
        print(f"  {section:<10} {shape:<9} {impl:<34} failed: {err}")
    else:
        gbs = f"{nbytes / ms / 1e6:8.0f} GB/s" if nbytes else ""
        print(f"  {section:<10} {shape:<9} {impl:<34} {ms:10.3f} ms {gbs}")


def short_err(e):
    s = f"{type(e).__name__}: {e}"
    s = re.sub(r"\s+", " ", s)
    return s[:160]


# ------------------------------------------------------------------------------------------- timing


def time_jax(fn, *args, warmup=2, budget_s=1.5, min_rep=3, max_rep=20):
    jax.block_until_ready(fn(*args))  # compile + first run
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        jax.block_until_ready(fn(*args))
    reps = int(min(max_rep, max(min_rep, budget_s / max(first, 1e-6))))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def time_torch(torch, fn, warmup=2, budget_s=1.5, min_rep=3, max_rep=20):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        fn()
    reps = int(min(max_rep, max(min_rep, budget_s / max(first, 1e-6))))
    ts = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        ts.append(start.elapsed_time(end))
    return float(np.median(ts))


# -------------------------------------------------------------------------------------------- torch


def import_torch_fla():
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        note(f"torch not importable ({short_err(e)}): fla and the torch copy skipped")
        return None, None
    if not torch.cuda.is_available():
        note("torch sees no CUDA device: fla and the torch copy skipped")
        return torch, None
    try:
        import fla  # noqa: F401
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

        return torch, (chunk_simple_gla, fused_recurrent_simple_gla)
    except Exception as e:  # noqa: BLE001
        note(f"fla not importable ({short_err(e)}): fla rows skipped")
        return torch, None


def bench_torch(torch, fla_ops, shapes, args):
    print("\n== torch / fla ==")
    dev = torch.device("cuda")
    try:
        n = (2 << 30) // 4
        src = torch.empty(n, dtype=torch.float32, device=dev).uniform_()
        dst = torch.empty_like(src)
        ms = time_torch(torch, lambda: dst.copy_(src))
        add("copy", "2GiB", "torch copy_", ms, 2 * n * 4)
        del src, dst
    except Exception as e:  # noqa: BLE001
        add("copy", "2GiB", "torch copy_", None, err=short_err(e))
    if fla_ops is None:
        return
    chunk_simple_gla, fused_recurrent_simple_gla = fla_ops
    g_gamma = -torch.tensor(minimax_decay(H), device=dev, dtype=torch.float32)
    for name, (b, t) in shapes.items():
        nbytes = 4 * b * t * H * D * 2
        try:
            gen = torch.Generator(device=dev).manual_seed(0)
            q, k, v = (torch.randn(b, t, H, D, device=dev, dtype=torch.bfloat16, generator=gen) / D**0.25
                       for _ in range(3))

            def fwd(q=q, k=k, v=v):
                return chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0, output_final_state=True)

            with torch.no_grad():
                add("fwd", name, "fla chunk_simple_gla", time_torch(torch, fwd), nbytes)
        except Exception as e:  # noqa: BLE001
            add("fwd", name, "fla chunk_simple_gla", None, err=short_err(e))
        if not args.skip_bwd:
            try:
                qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))

                def fwd_bwd():
                    o, _ = chunk_simple_gla(qg, kg, vg, g_gamma=g_gamma, scale=1.0)
                    o.float().sum().backward()
                    qg.grad = kg.grad = vg.grad = None

                add("fwd+bwd", name, "fla chunk_simple_gla", time_torch(torch, fwd_bwd), nbytes)
                del qg, kg, vg
            except Exception as e:  # noqa: BLE001
                add("fwd+bwd", name, "fla chunk_simple_gla", None, err=short_err(e))
        q = k = v = None
        torch.cuda.empty_cache()
    for b in DECODE_BATCHES:
        nbytes = 2 * b * H * D * D * 4
        try:
            q, k, v = (torch.randn(b, 1, H, D, device=dev, dtype=torch.bfloat16) * 0.1 for _ in range(3))
            s = torch.randn(b, H, D, D, device=dev, dtype=torch.float32)

            def step():
                return fused_recurrent_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0, initial_state=s,
                                                  output_final_state=True)

            with torch.no_grad():
                add("decode", f"B{b}", "fla fused_recurrent (per call)", time_torch(torch, step), nbytes)
        except Exception as e:  # noqa: BLE001
            add("decode", f"B{b}", "fla fused_recurrent (per call)", None, err=short_err(e))
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- JAX


def our_impls(args):
    """(label, callable(q, k, v, decay) -> o) for our forward implementations."""
    impls = []
    interp = bool(args.smoke)
    for name in ("reference", "triton", "mosaic_gpu"):
        if args.impls and name not in args.impls:
            continue
        bs = args.block_size or BLOCK[name]
        if name in ops.IMPLS:
            def fn(q, k, v, d, name=name, bs=bs):
                return pallas_kernels.lightning_attention(
                    q, k, v, d, impl=name, block_size=bs, interpret=interp
                )

            impls.append((f"{name} (C={bs})", fn))
        elif name == "mosaic_gpu":
            try:
                from pallas_kernels.lightning_attention import gpu_mosaic

                def fn(q, k, v, d):
                    return gpu_mosaic.lightning_attention(q, k, v, d, interpret=interp)[0]

                impls.append(("mosaic_gpu (module; not in ops.IMPLS)", fn))
                note("mosaic_gpu is not registered in ops.IMPLS: calling gpu_mosaic.lightning_attention "
                     "directly (its backward is the jnp reference VJP)")
            except Exception as e:  # noqa: BLE001
                note(f"mosaic_gpu unavailable: {short_err(e)}")
        else:
            note(f"impl {name!r} not registered in ops.IMPLS {ops.IMPLS}: skipped")
    return impls


def bench_jax(shapes, args):
    print("\n== JAX ==")
    on_gpu = jax.default_backend() == "gpu"
    try:
        n = (64 << 20) // 4 if args.smoke else (2 << 30) // 4
        x = jnp.ones((n,), jnp.float32)
        f = jax.jit(lambda x: x + 1.0)
        add("copy", "2GiB" if not args.smoke else "64MiB", "jax x + 1", time_jax(f, x), 2 * n * 4)
        del x
    except Exception as e:  # noqa: BLE001
        add("copy", "2GiB", "jax x + 1", None, err=short_err(e))

    decay = jnp.asarray(minimax_decay(H))
    impls = our_impls(args)
    if on_gpu and not args.skip_cudnn:
        def cudnn(q, k, v, d):
            del d
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")

        impls.append(("cuDNN causal softmax", cudnn))
    elif not on_gpu:
        note("not on a GPU: cuDNN attention skipped")

    for name, (b, t) in shapes.items():
        nbytes = 4 * b * t * H * D * 2
        ks = jax.random.split(jax.random.PRNGKey(0), 3)
        q, k, v = (jax.random.normal(kk, (b, t, H, D), jnp.float32).astype(jnp.bfloat16) / D**0.25
                   for kk in ks)
        for label, fn in impls:
            try:
                f = jax.jit(lambda q, k, v, fn=fn: fn(q, k, v, decay))
                add("fwd", name, label, time_jax(f, q, k, v), nbytes)
            except Exception as e:  # noqa: BLE001
                add("fwd", name, label, None, err=short_err(e))
            if args.skip_bwd:
                continue
            try:
                loss = lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v, decay).astype(jnp.float32))  # noqa: E731
                g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
                add("fwd+bwd", name, label, time_jax(g, q, k, v), nbytes)
            except Exception as e:  # noqa: BLE001
                add("fwd+bwd", name, label, None, err=short_err(e))
        del q, k, v

    # decode
    dec_impls = [i for i in ("reference", "triton") if not args.impls or i in args.impls]
    steps = 20
    for b in DECODE_BATCHES if not args.smoke else (2,):
        nbytes = 2 * b * H * D * D * 4
        qs = jax.random.normal(jax.random.PRNGKey(1), (steps, b, H, D), jnp.float32)
        qs = (qs * 0.1).astype(jnp.bfloat16)
        s0 = jax.random.normal(jax.random.PRNGKey(2), (b, H, D, D), jnp.float32)
        for impl in dec_impls:
            def one(x, st, impl=impl):
                return pallas_kernels.lightning_attention_decode(x, x, x, decay, st, impl=impl,
                                                                 interpret=bool(args.smoke))

            try:
                body = lambda i, st, one=one: one(qs[i], st)[1]  # noqa: E731
                loop = jax.jit(lambda st, body=body: jax.lax.fori_loop(0, steps, body, st))
                add("decode", f"B{b}", f"{impl} (per step, jitted loop)", time_jax(loop, s0) / steps, nbytes)
                single = jax.jit(one, donate_argnums=1)
                state = {"s": s0 + 0.0}

                def call():
                    o, state["s"] = single(qs[0], state["s"])
                    return o

                add("decode", f"B{b}", f"{impl} (per call, donated)", time_jax(call), nbytes)
            except Exception as e:  # noqa: BLE001
                add("decode", f"B{b}", impl, None, err=short_err(e))


# --------------------------------------------------------------------------------------------- main


def versions(torch):
    v = {"python": platform.python_version(), "jax": jax.__version__}
    try:
        import jaxlib

        v["jaxlib"] = jaxlib.__version__
    except Exception:  # noqa: BLE001
        pass
    if torch is not None:
        v["torch"] = torch.__version__
    for mod in ("triton", "fla"):
        try:
            m = __import__(mod)
            v[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            pass
    return v


def table(device, vers, shapes):
    fla = {(r["section"], r["shape"]): r["ms"] for r in ROWS
           if r["impl"].startswith("fla") and r["ms"] is not None}
    lines = [
        f"# Lightning attention benchmark ({device})",
        "",
        f"{datetime.datetime.now().isoformat(timespec='seconds')}; "
        + ", ".join(f"{k} {val}" for k, val in vers.items()),
        f"H={H}, D={D}, bf16 q/k/v, MiniMax slopes; median ms; GB/s = (q,k,v read + o written) / time "
        "(decode: fp32 state read + written); x fla = fla time / this time.",
        "",
        "| section | shape | impl | median ms | GB/s | x fla |",
        "|---|---|---|---|---|---|",
    ]
    for r in ROWS:
        if r["err"] is not None:
            lines.append(f"| {r['section']} | {r['shape']} | {r['impl']} | failed | | {r['err']} |")
            continue
        gbs = f"{r['bytes'] / r['ms'] / 1e6:.0f}" if r["bytes"] else ""
        ref = fla.get((r["section"], r["shape"]))
        ratio = f"{ref / r['ms']:.2f}" if ref and not r["impl"].startswith("fla") else ""
        lines.append(f"| {r['section']} | {r['shape']} | {r['impl']} | {r['ms']:.3f} | {gbs} | {ratio} |")
    if NOTES:
        lines += ["", "Notes:"] + [f"- {n}" for n in dict.fromkeys(NOTES)]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=None, help=f"comma list of {','.join(SHAPES)}")
    ap.add_argument("--impls", default=None, help="comma list of reference,triton,mosaic_gpu (default all)")
    ap.add_argument("--block-size", type=int, default=None, help=f"override the per-impl chunk sizes {BLOCK}")
    ap.add_argument("--skip-bwd", action="store_true")
    ap.add_argument("--skip-fla", action="store_true")
    ap.add_argument("--skip-cudnn", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke test: tiny shapes, interpret mode")
    ap.add_argument("--out", default=None, help="markdown output (default experiments/results/...)")
    args = ap.parse_args()
    args.impls = set(args.impls.split(",")) if args.impls else None
    if args.smoke:
        shapes = SMOKE_SHAPES
        global DECODE_BATCHES, H
        DECODE_BATCHES, H = (2,), 4
    elif args.shapes:
        shapes = {s: SHAPES[s] for s in args.shapes.split(",")}
    else:
        shapes = SHAPES

    dev = jax.devices()[0]
    device = f"{dev.device_kind} ({dev.platform})"
    torch, fla_ops = (None, None) if args.smoke or args.skip_fla else import_torch_fla()
    vers = versions(torch)
    print(f"device: {device}; " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    if torch is not None and torch.cuda.is_available():
        print(f"torch device: {torch.cuda.get_device_name(0)}")
        try:
            bench_torch(torch, fla_ops, shapes, args)  # first, then release its cache for JAX
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            note("torch section crashed (see log)")
    try:
        bench_jax(shapes, args)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        note("JAX section crashed (see log)")

    md = table(device, vers, shapes)
    print("\n" + md)
    out = args.out
    if out is None:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", dev.device_kind).strip("_").lower()
        stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M")
        out = os.path.join(ROOT, "experiments", "results", f"lightning_attention_bench_{slug}_{stamp}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(md)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
