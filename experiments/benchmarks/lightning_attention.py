"""Benchmark lightning attention: our kernels vs fla, cuDNN softmax attention and a device copy.

Device runs (the issue's full matrix in TWO calls of the device tool's `run`, each well under its
10-minute limit: the script stops starting new measurements after --budget-s seconds and rewrites its
results after every shape, so a late stop still leaves a table). Each call carries `.whl` (fla-core
0.6.0, ml-collections; see below) and names it in `carry`; run with timeout_s=600:

    Call 1 (copy; B1T4K, B1T16K, B4T16K: fwd and fwd+bwd):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv; PYTHONUNBUFFERED=1 timeout 570 python3 experiments/benchmarks/lightning_attention.py --part 1 --budget-s 480 2>&1 | tee $OUT/bench_part1.log

    Call 2 (copy; B1T64K, B1T128K: fwd and fwd+bwd; decode B 1/64/256):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; PYTHONUNBUFFERED=1 timeout 570 python3 experiments/benchmarks/lightning_attention.py --part 2 --budget-s 480 2>&1 | tee $OUT/bench_part2.log

Each writes $OUT/bench_part{1,2}.md and .json (copy them into experiments/results/ here: files written
under experiments/results/ on the device machine do not come back). The wheels, once, in the repo
root here (the GPU image has torch 2.11, triton 3.6, einops, transformers; it lacks fla-core and
ml-collections; fla-core needs only einops besides torch / triton):
    mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl fla-core==0.6.0 ml-collections==1.1.0

Other uses:
    python3 experiments/benchmarks/lightning_attention.py --shapes B1T4K,B4T16K [--impls triton] [--skip-bwd]
    JAX_PLATFORMS=cpu python3 experiments/benchmarks/lightning_attention.py --smoke   # CPU, interpret mode
    python3 experiments/benchmarks/lightning_attention.py --shapes B1T16K --skip-bwd --skip-fla \
        --mosaic-variants bv64,bv32,bv32lean,bv64lean,slots3          # Mosaic forward layouts side by side

What is timed, at H=64, D=128, bf16 (MiniMax-M1's lightning layer), MiniMax layer-0 slopes:
  * ours: pallas_kernels.lightning_attention(impl=...) for "mosaic_gpu" (Mosaic GPU Hopper forward; its
    fwd+bwd is that forward + the Triton backward), "triton" (C=64) and "reference" (jnp, C=256);
    fwd, and fwd+bwd = jax.value_and_grad of sum(o) w.r.t. q, k, v (the reference's fwd+bwd is skipped above
    --ref-bwd-max-tokens tokens: its scan residuals at T128K take tens of GB and minutes). Until 2026-12-01 this
    was jax.grad, under which JAX dropped our forward kernel (its output is dead: the custom_vjp saves only the
    inputs), so the fwd+bwd rows recorded before then time our backward alone, while fla's ran its forward too;
  * fla 0.6: fla.ops.simple_gla.chunk_simple_gla(q, k, v, g_gamma=-s, scale=1.0), via torch;
  * with --mosaic-variants (a comma list of specs joining bv32 / bv64, lean, slots2 / slots3, e.g.
    bv32lean): gpu_mosaic.lightning_attention_fwd(q, k, v, decay, block_v=, lean=, num_slots=) called
    directly (no ops adapter, no seq_split), fwd only, rows "mosaic_gpu fwd bv32 lean" etc.; "bv64" is
    the default layout called the same way; "ws" / "ws3": gpu_mosaic_ws.lightning_attention_fwd_ws
    (warp-specialised, num_slots 2 / 3), rows "mosaic_gpu fwd ws slots2" / "... slots3";
  * with --bwd-variants (a comma list of "default" and b<tile> w<warps> s<stages> p<sequence parts> joined, e.g.
    default,s2,b128w8p2):
    the Mosaic forward + the Triton backward with those launch knobs, fwd+bwd rows "mosaic_gpu fwd + triton bwd
    s2", and the backward alone (cotangent of sum(o), zero final-state cotangent), rows "triton bwd s2" in a "bwd"
    section;
  * cuDNN causal softmax attention forward: jax.nn.dot_product_attention(implementation="cudnn");
  * a device copy: torch copy_ of 2 GiB (when torch sees the GPU) and JAX x + 1 over 2 GiB;
  * decode (one token, fp32 state [B, H, D, D]) at B = 1, 64, 256: ours via
    pallas_kernels.lightning_attention_decode(impl="triton" / "reference") per step inside a jitted
    20-step loop and per host call (state donated); fla fused_recurrent_simple_gla with an fp32
    state, per call and per step of 20 chained back-to-back calls.
Timing: each sample runs n back-to-back calls (n chosen so a sample lasts >= ~2 ms) and is divided by
n; the median over samples is reported (JAX: host clock around jax.block_until_ready; torch: CUDA
events). GB/s counts q, k, v read + o written once (4 B T H D x 2 bytes; also for fwd+bwd, a
yardstick, not the traffic); decode counts the fp32 state read + written. "% copy" = GB/s / the best
measured copy GB/s; "x fla" = fla's time / this time (> 1: faster than fla).
"""  # noqa: E501

from __future__ import annotations

import argparse
import datetime
import json
import math
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
from experiments.benchmarks import bwd_variants, mosaic_layouts  # noqa: E402
from experiments.benchmarks.timing import time_jax, time_torch  # noqa: E402
from pallas_kernels.lightning_attention import ops  # noqa: E402

H, D = 64, 128
SHAPES = {
    "B1T4K": (1, 4096),
    "B1T8K": (1, 8192),
    "B1T16K": (1, 16384),
    "B2T16K": (2, 16384),
    "B3T16K": (3, 16384),
    "B4T16K": (4, 16384),
    "B1T64K": (1, 65536),
    "B1T128K": (1, 131072),
}
PARTS = {  # --part N: the shapes and whether decode runs; together the whole matrix
    1: (("B1T4K", "B1T16K", "B4T16K"), False),
    2: (("B1T64K", "B1T128K"), True),
}
SMOKE_SHAPES = {"B1T256": (1, 256)}
DECODE_BATCHES = (1, 64, 256)
DECODE_STEPS = 20
OUR_IMPLS = ("mosaic_gpu", "triton", "reference")
BLOCK = {"reference": 256, "triton": 64, "mosaic_gpu": 64}
COPY_BYTES = 2 << 30

ROWS: list[dict] = []
NOTES: list[str] = []
STATE = {"t0": time.time(), "budget_s": math.inf, "writer": None}


def note(msg):
    print(f"  note: {msg}", flush=True)
    NOTES.append(msg)


def out_of_time() -> bool:
    return time.time() - STATE["t0"] > STATE["budget_s"]


def minimax_decay(h, layer=0, num_layers=80):
    slope = 2.0 ** (-8.0 * (np.arange(h) + 1) / h)
    return (slope * (1 - layer / (num_layers - 1) + 1e-5)).astype(np.float32)


def short_err(e):
    s = f"{type(e).__name__}: {e}"
    return re.sub(r"\s+", " ", s)[:200]


def add(section, shape, impl, ms=None, nbytes=None, err=None):
    row = {"section": section, "shape": shape, "impl": impl, "ms": ms, "bytes": nbytes, "err": err}
    ROWS.append(row)
    if err is not None:
        print(f"  {section:<8} {shape:<8} {impl:<36} {err}", flush=True)
    else:
        gbs = f"{nbytes / ms / 1e6:8.0f} GB/s" if nbytes else ""
        print(f"  {section:<8} {shape:<8} {impl:<36} {ms:10.4f} ms {gbs}", flush=True)


def measure(section, shape, impl, nbytes, timer, *targs, skip=None, per=1):
    """Records timer(*targs) / per (ms); records a skip or the failure instead where needed."""
    if skip:
        add(section, shape, impl, err=f"skipped: {skip}")
        return None
    if out_of_time():
        add(section, shape, impl, err=f"skipped: time budget ({STATE['budget_s']:.0f} s) spent")
        return None
    try:
        ms = timer(*targs) / per
    except Exception as e:  # noqa: BLE001
        add(section, shape, impl, err=f"failed: {short_err(e)}")
        return None
    add(section, shape, impl, ms, nbytes)
    return ms


# ------------------------------------------------------------------------------------------- timing


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
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

        return torch, (chunk_simple_gla, fused_recurrent_simple_gla)
    except Exception as e:  # noqa: BLE001
        note(f"fla not importable ({short_err(e)}): fla rows skipped (carry the .whl wheels?)")
        return torch, None


def bench_torch(torch, fla_ops, shapes, args, decode):
    print("\n== torch / fla ==", flush=True)
    dev = torch.device("cuda")
    n = COPY_BYTES // 4
    src = torch.empty(n, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    measure("copy", "2GiB", "torch copy_", 2 * n * 4, time_torch, torch, lambda dst=dst, src=src: dst.copy_(src))
    del src, dst
    torch.cuda.empty_cache()
    if fla_ops is None:
        return
    chunk_simple_gla, fused_recurrent_simple_gla = fla_ops
    g_gamma = -torch.tensor(minimax_decay(H), device=dev, dtype=torch.float32)
    for name, (b, t) in shapes.items():
        nbytes = 4 * b * t * H * D * 2
        gen = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(b, t, H, D, device=dev, dtype=torch.bfloat16, generator=gen) / D**0.25
                   for _ in range(3))

        def fwd(q=q, k=k, v=v):
            with torch.no_grad():
                return chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0, output_final_state=True)

        measure("fwd", name, "fla chunk_simple_gla", nbytes, time_torch, torch, fwd)
        if not args.skip_bwd:
            qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))

            def fwd_bwd(qg=qg, kg=kg, vg=vg):
                o, _ = chunk_simple_gla(qg, kg, vg, g_gamma=g_gamma, scale=1.0)
                o.float().sum().backward()
                qg.grad = kg.grad = vg.grad = None

            measure("fwd+bwd", name, "fla chunk_simple_gla", nbytes, time_torch, torch, fwd_bwd)
            del qg, kg, vg
        del q, k, v
        torch.cuda.empty_cache()
        STATE["writer"]()
    if not decode:
        return
    for b in DECODE_BATCHES:
        nbytes = 2 * b * H * D * D * 4
        q, k, v = (torch.randn(b, 1, H, D, device=dev, dtype=torch.bfloat16) * 0.1 for _ in range(3))
        s = torch.randn(b, H, D, D, device=dev, dtype=torch.float32)
        carry = {"s": s}

        def step(q=q, k=k, v=v, s=s):
            with torch.no_grad():
                return fused_recurrent_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0, initial_state=s,
                                                  output_final_state=True)

        def chained(q=q, k=k, v=v, carry=carry):
            with torch.no_grad():
                for _ in range(DECODE_STEPS):
                    _, carry["s"] = fused_recurrent_simple_gla(
                        q, k, v, g_gamma=g_gamma, scale=1.0, initial_state=carry["s"], output_final_state=True
                    )

        measure("decode", f"B{b}", "fla fused_recurrent (per call)", nbytes, time_torch, torch, step)
        measure("decode", f"B{b}", "fla fused_recurrent (per step, chained)", nbytes, time_torch, torch, chained,
                per=DECODE_STEPS)
        del q, k, v, s, carry
    torch.cuda.empty_cache()
    STATE["writer"]()


# ---------------------------------------------------------------------------------------------- JAX


def mosaic_interpret_available() -> bool:
    try:
        from jax.experimental.pallas import mosaic_gpu as plgpu
    except ImportError:
        return False
    return hasattr(plgpu, "InterpretGPUParams")


def our_impls(args):
    """(label, callable(q, k, v, decay) -> o) for our implementations, plus cuDNN on a GPU."""
    impls = []
    on_gpu = jax.default_backend() == "gpu"
    for name in OUR_IMPLS:
        if args.impls and name not in args.impls:
            continue
        if name not in ops.IMPLS:
            note(f"impl {name!r} not registered in ops.IMPLS {ops.IMPLS}: skipped")
            continue
        if name == "mosaic_gpu" and not on_gpu and not mosaic_interpret_available():
            note(f"mosaic_gpu skipped: no GPU and JAX {jax.__version__} has no Mosaic GPU interpret mode")
            continue
        bs = args.block_size or BLOCK[name]

        def fn(q, k, v, d, name=name, bs=bs):
            return pallas_kernels.lightning_attention(q, k, v, d, impl=name, block_size=bs, interpret=not on_gpu)

        label = "mosaic_gpu (fwd: Mosaic GPU; bwd: Triton)" if name == "mosaic_gpu" else f"{name} (C={bs})"
        impls.append((name, label, fn))
    return impls


def mosaic_variants(args):
    """(label, jitted (q, k, v, decay) -> o) for --mosaic-variants; [] without the flag."""
    if not args.mosaic_variants:
        return []
    on_gpu = jax.default_backend() == "gpu"
    if not on_gpu and not mosaic_interpret_available():
        note(f"--mosaic-variants skipped: no GPU and JAX {jax.__version__} has no Mosaic GPU interpret mode")
        return []
    return mosaic_layouts.forward_fns(args.mosaic_variants, interpret=not on_gpu)


def backward_variants(args):
    """--bwd-variants' (label, spec, fwd+bwd fn, bwd fn) (bwd_variants.fns), [] without the flag."""
    if not args.bwd_variants:
        return []
    on_gpu = jax.default_backend() == "gpu"
    return bwd_variants.fns(args.bwd_variants, use_mosaic=on_gpu or mosaic_interpret_available(),
                            interpret=not on_gpu)


def cudnn_attention(q, k, v, d):
    del d
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


def bench_jax(shapes, args, decode):
    print("\n== JAX ==", flush=True)
    on_gpu = jax.default_backend() == "gpu"
    n = (64 << 20) // 4 if args.smoke else COPY_BYTES // 4
    x = jnp.ones((n,), jnp.float32)
    measure("copy", "2GiB" if not args.smoke else "64MiB", "jax x + 1", 2 * n * 4, time_jax,
            jax.jit(lambda x: x + 1.0), x)
    del x
    STATE["writer"]()

    decay = jnp.asarray(minimax_decay(H))
    impls = our_impls(args)
    variants = mosaic_variants(args)
    bwd_fns = backward_variants(args)
    use_cudnn = on_gpu and not args.skip_cudnn
    if not on_gpu:
        note("not on a GPU: cuDNN attention skipped")
    for name, (b, t) in shapes.items():
        nbytes = 4 * b * t * H * D * 2
        q = k = v = None  # past the time budget every row below is marked skipped
        if not out_of_time():
            ks = jax.random.split(jax.random.PRNGKey(0), 3)
            q, k, v = (jax.random.normal(kk, (b, t, H, D), jnp.float32).astype(jnp.bfloat16) / D**0.25
                       for kk in ks)
        for impl, label, fn in impls:
            f = jax.jit(lambda q, k, v, fn=fn: fn(q, k, v, decay))
            measure("fwd", name, label, nbytes, time_jax, f, q, k, v)
            if args.skip_bwd:
                continue
            skip = None
            if impl == "reference" and b * t > args.ref_bwd_max_tokens:
                skip = (f"reference fwd+bwd above {args.ref_bwd_max_tokens} tokens (memory/time guard; "
                        "--ref-bwd-max-tokens)")
            loss = lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v, decay).astype(jnp.float32))  # noqa: E731
            g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            measure("fwd+bwd", name, label, nbytes, time_jax, g, q, k, v, skip=skip)
        for label, f in variants:  # forward only
            measure("fwd", name, label, nbytes, time_jax, f, q, k, v, decay)
        for label, spec, fwd_bwd, bwd in bwd_fns:
            loss = lambda q, k, v, fn=fwd_bwd: jnp.sum(fn(q, k, v, decay).astype(jnp.float32))  # noqa: E731
            g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            measure("fwd+bwd", name, label, nbytes, time_jax, g, q, k, v)
            do = None if q is None else jnp.ones_like(v)  # the cotangent of sum(o), as in the fwd+bwd rows
            measure("bwd", name, f"triton bwd {spec}", nbytes, time_jax, bwd, q, k, v, decay, do)
            del do
        if use_cudnn:
            f = jax.jit(lambda q, k, v: cudnn_attention(q, k, v, decay))
            measure("fwd", name, "cuDNN causal softmax", nbytes, time_jax, f, q, k, v)
        del q, k, v
        STATE["writer"]()

    if not decode:
        return
    dec_impls = [i for i in ("triton", "reference") if not args.impls or i in args.impls]
    steps = DECODE_STEPS
    for b in DECODE_BATCHES:
        nbytes = 2 * b * H * D * D * 4
        qs = (jax.random.normal(jax.random.PRNGKey(1), (steps, b, H, D), jnp.float32) * 0.1).astype(jnp.bfloat16)
        s0 = jax.random.normal(jax.random.PRNGKey(2), (b, H, D, D), jnp.float32)
        for impl in dec_impls:
            def one(x, st, impl=impl):
                return pallas_kernels.lightning_attention_decode(x, x, x, decay, st, impl=impl, interpret=not on_gpu)

            def body(i, st, one=one, qs=qs):
                return one(qs[i], st)[1]

            loop = jax.jit(lambda st, body=body: jax.lax.fori_loop(0, steps, body, st))
            measure("decode", f"B{b}", f"{impl} (per step, jitted loop)", nbytes, time_jax, loop, s0, per=steps)
            # the same steps unrolled, the state donated: no while-loop iteration cost, no copy of the input state;
            # an optimization barrier after each step keeps XLA from fusing the unrolled steps into one pass over
            # the state (without it, reference "ran" at 5x the copy bandwidth on an H200)
            def fenced(i, st, body=body):
                return jax.lax.optimization_barrier(body(i, st))

            unrolled = jax.jit(lambda st, fenced=fenced: jax.lax.fori_loop(0, steps, fenced, st, unroll=True),
                               donate_argnums=0)
            box = {"s": s0 + 0.0}

            def chained(unrolled=unrolled, box=box):
                box["s"] = unrolled(box["s"])
                return box["s"]

            measure("decode", f"B{b}", f"{impl} (per step, unrolled loop, donated)", nbytes, time_jax, chained,
                    per=steps)
            single = jax.jit(one, donate_argnums=1)
            carry = {"s": s0 + 0.0}

            def call(single=single, carry=carry, qs=qs):
                o, carry["s"] = single(qs[0], carry["s"])
                return o

            measure("decode", f"B{b}", f"{impl} (per call, donated)", nbytes, time_jax, call)
        STATE["writer"]()


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
        v["torch cuda"] = str(torch.version.cuda)
    for mod in ("triton", "fla"):
        try:
            m = __import__(mod)
            v[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            pass
    return v


def best_copy_gbs():
    gbs = [r["bytes"] / r["ms"] / 1e6 for r in ROWS if r["section"] == "copy" and r["ms"]]
    return max(gbs) if gbs else None


def table(title, device, vers):
    copy = best_copy_gbs()
    fla = {}
    for r in ROWS:
        if r["impl"].startswith("fla") and r["ms"] is not None:
            key = (r["section"], r["shape"], "chained" in r["impl"])
            fla[key] = r["ms"]
    lines = [
        f"# {title}",
        "",
        f"Device: {device}. {datetime.datetime.now().isoformat(timespec='seconds')}; "
        + ", ".join(f"{k} {val}" for k, val in vers.items()) + ".",
        f"H={H}, D={D}, bf16 q/k/v, MiniMax slopes; median ms per call; GB/s = (q, k, v read + o written) / "
        "time (decode: fp32 state read + written); % copy = GB/s / best copy GB/s"
        + (f" ({copy:.0f} GB/s)" if copy else "") + "; x fla = fla time / this time (decode per-step rows "
        "vs fla chained per step, per-call rows vs fla per call).",
        "",
        "| section | shape | impl | median ms | GB/s | % copy | x fla |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ROWS:
        if r["err"] is not None:
            lines.append(f"| {r['section']} | {r['shape']} | {r['impl']} | {r['err']} | | | |")
            continue
        gbs = r["bytes"] / r["ms"] / 1e6 if r["bytes"] else None
        pct = f"{100 * gbs / copy:.0f}%" if gbs and copy else ""
        per_step = "per step" in r["impl"]
        ref = fla.get((r["section"], r["shape"], per_step))
        ratio = f"{ref / r['ms']:.2f}" if ref and not r["impl"].startswith("fla") else ""
        gbs_s = f"{gbs:.0f}" if gbs else ""
        lines.append(f"| {r['section']} | {r['shape']} | {r['impl']} | {r['ms']:.4f} | {gbs_s} | {pct} | {ratio} |")
    if NOTES:
        lines += ["", "Notes:"] + [f"- {n}" for n in dict.fromkeys(NOTES)]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", type=int, choices=sorted(PARTS), default=None,
                    help="; ".join(f"{p}: {', '.join(s)}{' + decode' if d else ''}" for p, (s, d) in PARTS.items()))
    ap.add_argument("--shapes", default=None, help=f"comma list of {','.join(SHAPES)} (default: all)")
    ap.add_argument("--decode", action=argparse.BooleanOptionalAction, default=None,
                    help="run the decode section (default: with --part 2 or when neither --part nor --shapes)")
    ap.add_argument("--impls", default=None, help=f"comma list of {','.join(OUR_IMPLS)} (default all)")
    ap.add_argument("--block-size", type=int, default=None, help=f"override the per-impl chunk sizes {BLOCK}")
    ap.add_argument("--ref-bwd-max-tokens", type=int, default=65536,
                    help="skip the jnp reference's fwd+bwd above B*T tokens (default 65536: skips T128K)")
    ap.add_argument("--budget-s", type=float, default=math.inf,
                    help="start no new measurement after this many seconds (the rest is marked skipped)")
    ap.add_argument("--skip-bwd", action="store_true")
    ap.add_argument("--skip-fla", action="store_true")
    ap.add_argument("--skip-cudnn", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke test: tiny shapes, interpret mode")
    ap.add_argument("--mosaic-variants", type=mosaic_layouts.parse, default=None,
                    help="also time the Mosaic GPU forward in these layouts (fwd only), a comma list of specs "
                    "joining bv32 / bv64, lean, slots2 / slots3, e.g. bv32,bv32lean,bv64lean,slots3; ws / ws3: the "
                    "warp-specialised forward (gpu_mosaic_ws) with 2 / 3 slots")
    ap.add_argument("--bwd-variants", type=bwd_variants.parse, default=None,
                    help="also time the Mosaic forward + Triton backward (fwd+bwd) and the backward alone (bwd) with "
                    "these backward launch knobs: default, or b<tile> w<warps> s<stages> p<sequence parts> joined, "
                    "e.g. default,s2,b128w8p2")
    ap.add_argument("--out", default=None, help="markdown output (default experiments/results/...; also $OUT)")
    args = ap.parse_args()
    args.impls = set(args.impls.split(",")) if args.impls else None
    STATE["budget_s"] = args.budget_s

    global DECODE_BATCHES, H
    tag = "all"
    if args.smoke:
        shapes, decode, tag = SMOKE_SHAPES, True, "smoke"
        DECODE_BATCHES, H = (2,), 4
    elif args.part:
        names, decode = PARTS[args.part]
        shapes, tag = {s: SHAPES[s] for s in names}, f"part{args.part}"
    elif args.shapes:
        shapes, decode, tag = {s: SHAPES[s] for s in args.shapes.split(",")}, False, "shapes"
    else:
        shapes, decode = SHAPES, True
    if args.decode is not None:
        decode = args.decode

    dev = jax.devices()[0]
    cc = getattr(dev, "compute_capability", None)
    device = f"{dev.device_kind} ({dev.platform}{f', compute capability {cc}' if cc else ''})"
    torch, fla_ops = (None, None) if args.smoke or args.skip_fla else import_torch_fla()
    vers = versions(torch)
    title = f"Lightning attention benchmark, {tag}"
    print(f"device: {device}; " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    print(f"impl auto -> {ops._auto_impl()}; shapes {list(shapes)}; decode {decode}; budget {args.budget_s} s",
          flush=True)

    slug = re.sub(r"[^A-Za-z0-9]+", "_", dev.device_kind).strip("_").lower()
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M")
    paths = [args.out or os.path.join(ROOT, "experiments", "results",
                                      f"lightning_attention_bench_{tag}_{slug}_{stamp}.md")]
    if os.environ.get("OUT"):
        paths.append(os.path.join(os.environ["OUT"], f"bench_{tag}.md"))

    def write():
        md = table(title, device, vers)
        data = {"title": title, "device": device, "versions": vers, "rows": ROWS, "notes": NOTES,
                "best_copy_gbs": best_copy_gbs(), "elapsed_s": time.time() - STATE["t0"]}
        for p in paths:
            os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
            with open(p, "w") as f:
                f.write(md)
            with open(os.path.splitext(p)[0] + ".json", "w") as f:
                json.dump(data, f, indent=1)
        return md

    STATE["writer"] = write
    if torch is not None and torch.cuda.is_available():
        print(f"torch device: {torch.cuda.get_device_name(0)}")
        try:
            bench_torch(torch, fla_ops, shapes, args, decode)  # first, then release its cache for JAX
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            note("torch section crashed (see log)")
    try:
        bench_jax(shapes, args, decode)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        note("JAX section crashed (see log)")
    copy = best_copy_gbs()
    print(f"\ncopy bandwidth (best measured): {copy:.0f} GB/s" if copy else "\ncopy bandwidth: not measured")
    print(f"elapsed {time.time() - STATE['t0']:.0f} s")
    md = write()
    print("\n" + md)
    print("written to " + ", ".join(paths))


if __name__ == "__main__":
    main()
