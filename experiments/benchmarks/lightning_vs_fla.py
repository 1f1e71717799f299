"""Issue 14's lightning targets in interleaved rounds: our op vs fla, forward and forward + backward, and the copy.

experiments/benchmarks/lightning_attention.py times one row after another, which drifted by up to ~25% between
identical configurations within one call (and fla's fwd+bwd at B1 T16K read 3.27 ms in one session, 4.3 ms in
others). Here every (shape, implementation, pass) is timed once per round in interleaved rounds (timing.run_rounds: a
fresh seeded order each round, ``--inner`` calls between two host syncs on one host clock for JAX and torch), and the
report gives medians over rounds and, per round, fla's time / ours with a bootstrap 95% interval (approximate).

    python3 experiments/benchmarks/lightning_vs_fla.py [--shapes B1T16K,B4T16K,B1T64K] [--rounds 15] [--inner 10]
        [--mosaic-variants bv64vd,vdrqrm] [--impls mosaic_gpu_all] [--out results.md]
    JAX_PLATFORMS=cpu python3 experiments/benchmarks/lightning_vs_fla.py --smoke   # tiny, the jnp reference

Ours: pallas_kernels.lightning_attention(impl="auto") as users call it (on Hopper "mosaic_gpu_all": the Mosaic GPU
forward and the backward as three passes of it; before 2026-12-01's stage 25, Mosaic forward + Triton backward),
fwd+bwd = jax.value_and_grad of sum(o in fp32) w.r.t. q, k, v (jax.grad alone would drop our forward kernel: its
output is dead when the custom_vjp saves only the inputs). fla 0.6: chunk_simple_gla(q, k, v, g_gamma=-s,
scale=1.0), fwd+bwd = backward of o.float().sum(). H 64 (``--heads``), D 128, bf16 q, k, v ~ N(0, 1) / D^(1/4),
MiniMax layer-0 slopes. Copy: torch copy_ of 2 GiB (fp32), timed in the same rounds; % of copy = (q, k, v read + o
written) / time against the copy's bytes / time. ``--mosaic-variants`` (benchmarks/mosaic_layouts.py specs) adds
forward-only rows of the Mosaic kernel's layouts (gpu_mosaic.lightning_attention_fwd called directly) in the same
rounds, each with its ratio to fla and to our op's forward per round; ``--impls`` adds our op with other ``impl``
names (e.g. mosaic_gpu_all: the backward as three Mosaic forward passes), forward and forward + backward.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import pallas_kernels  # noqa: E402
from experiments.benchmarks.lightning_attention import (  # noqa: E402
    COPY_BYTES,
    SHAPES,
    import_torch_fla,
    minimax_decay,
    mosaic_interpret_available,
    versions,
)
from experiments.benchmarks import mosaic_layouts  # noqa: E402
from experiments.benchmarks.timing import finish, median_ci, run_rounds  # noqa: E402


def jax_fns(b, t, h, d, decay, variants=(), interpret=False, impls=(), qkv_impls=()):
    """{(source, pass): fn}: our op as "ours" (impl auto), each extra ops impl name of ``impls`` under its name, each
    impl of ``qkv_impls`` on the interleaved projection (``lightning_attention_qkv`` on q | k | v per head) as
    "qkv <impl>", and each Mosaic layout of ``variants`` (mosaic_layouts.parse) under its label, forward only."""
    ks = jax.random.split(jax.random.key(b * 1_000_003 + t), 3)
    q, k, v = (jax.random.normal(x, (b, t, h, d), jnp.float32).astype(jnp.bfloat16) / d**0.25 for x in ks)

    def timed(op, *xs):
        """{"fwd": op(*xs), "fwd+bwd": value_and_grad of sum(op) w.r.t. xs}, jitted, as thunks. value_and_grad, not
        grad: the kernels' custom_vjp keeps only the inputs as residuals, so under jax.grad alone the forward's
        output is dead and JAX drops the forward kernel (fla's fwd+bwd runs its forward)."""
        fwd = jax.jit(op)
        loss = lambda *a: jnp.sum(op(*a).astype(jnp.float32))  # noqa: E731
        fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(xs)))))
        return {"fwd": lambda: fwd(*xs), "fwd+bwd": lambda: fwd_bwd(*xs)}

    def passes(impl):
        return timed(lambda q, k, v: pallas_kernels.lightning_attention(
            q, k, v, decay, impl=impl, interpret=interpret and impl != "auto"), q, k, v)

    def qkv_passes(impl):
        qkv = jnp.concatenate([q, k, v], axis=-1)  # [b, t, h, 3 d]: the lightning layer's projection, per head
        return timed(lambda x: pallas_kernels.lightning_attention_qkv(
            x, decay, impl=impl, interpret=interpret and impl != "auto"), qkv)

    fns = {("ours", p): fn for p, fn in passes("auto").items()}
    for impl in impls:
        fns.update({(impl, p): fn for p, fn in passes(impl).items()})
    for impl in qkv_impls:
        fns.update({(f"qkv {impl}", p): fn for p, fn in qkv_passes(impl).items()})
    for label, fn in mosaic_layouts.forward_fns(variants, interpret=interpret):
        fns[(label, "fwd")] = lambda fn=fn: fn(q, k, v, decay)
    return fns


def fla_fns(torch, chunk_simple_gla, b, t, h, d, decay):
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(b * 1_000_003 + t)
    q, k, v = (torch.randn(b, t, h, d, device=dev, dtype=torch.bfloat16, generator=gen) / d**0.25 for _ in range(3))
    g_gamma = -torch.tensor(np.asarray(decay), device=dev, dtype=torch.float32)
    qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))

    def fwd():
        with torch.no_grad():
            return chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0)[0]

    def fwd_bwd():
        o, _ = chunk_simple_gla(qg, kg, vg, g_gamma=g_gamma, scale=1.0)
        o.float().sum().backward()
        qg.grad = kg.grad = vg.grad = None

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="B1T16K,B4T16K,B1T64K")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="CPU: H 2, T 256, 3 rounds of 1 call, no fla")
    ap.add_argument("--mosaic-variants", type=mosaic_layouts.parse, default=[],
                    help="comma list of Mosaic forward layouts (benchmarks/mosaic_layouts.py), timed forward only")
    ap.add_argument("--impls", default="", help="comma list of other ops impl names to time beside auto")
    ap.add_argument("--qkv-impls", default="", help="comma list of ops impl names (or auto) to time on the interleaved "
                    "q|k|v (lightning_attention_qkv, the lightning layer's call)")
    ap.add_argument("--heads", type=int, default=64, help="H (64: issue 14's shapes; 16: the 1b preset's layer)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    h, d = (2, 128) if args.smoke else (args.heads, 128)
    shapes = {"B1T256": (1, 256)} if args.smoke else {s: SHAPES[s] for s in args.shapes.split(",")}
    rounds, inner = (3, 1) if args.smoke else (args.rounds, args.inner)
    decay = jnp.asarray(minimax_decay(h))
    torch, fla_ops = (None, None) if args.smoke else import_torch_fla()
    on_cuda = torch is not None and torch.cuda.is_available()
    jsync = jax.block_until_ready

    def tsync(_):
        torch.cuda.synchronize()

    entries = {}  # (shape, source, pass) -> (fn, sync); source: "ours", an impl name, a layout label, "fla"
    on_gpu = jax.default_backend() == "gpu"
    # off a GPU, the layouts run in Mosaic's GPU interpret mode (JAX >= 0.11), else not at all
    mosaic_ok = on_gpu or mosaic_interpret_available()
    variants = args.mosaic_variants if mosaic_ok else []
    requested = [i for i in args.impls.split(",") if i]
    impls = [i for i in requested if mosaic_ok or not i.startswith("mosaic")]
    requested_qkv = [i for i in args.qkv_impls.split(",") if i]
    qkv_impls = [i for i in requested_qkv if mosaic_ok or not i.startswith("mosaic")]
    if len(variants) < len(args.mosaic_variants) or len(impls) + len(qkv_impls) < len(requested) + len(requested_qkv):
        print(f"no GPU and JAX {jax.__version__} has no Mosaic GPU interpret mode: Mosaic layouts / impls skipped")
    for name, (b, t) in shapes.items():
        for (source, p), fn in jax_fns(b, t, h, d, decay, variants, interpret=not on_gpu, impls=impls,
                                       qkv_impls=qkv_impls).items():
            entries[(name, source, p)] = (fn, jsync)
        if fla_ops is not None:
            for p, fn in fla_fns(torch, fla_ops[0], b, t, h, d, decay).items():
                entries[(name, "fla", p)] = (fn, tsync)
    if on_cuda:
        src = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device="cuda").uniform_()
        dst = torch.empty_like(src)
        entries[("2GiB", "torch copy_", "copy")] = (lambda: dst.copy_(src), tsync)
    t0 = time.time()
    times = run_rounds(entries, rounds, inner)
    elapsed = time.time() - t0
    copy_gbs = None
    if on_cuda:
        copy_gbs = 2 * COPY_BYTES / np.median(times[("2GiB", "torch copy_", "copy")]) / 1e6
    dev = jax.devices()[0]
    vers = versions(torch)
    lines = [
        "# Lightning attention vs fla, interleaved rounds",
        "",
        f"{dev.device_kind}; {datetime.datetime.now():%Y-%m-%d %H:%M}; " + ", ".join(f"{k} {v}" for k, v in
                                                                                   vers.items()),
        f"H {h}, D {d}, bf16; {rounds} rounds x {inner} calls, every entry once a round ({elapsed:.0f} s); ms per call "
        f"(median over rounds); x fla = fla / ours per round, median [bootstrap 95% CI]; % copy = (q, k, v read + o "
        f"written) / time vs torch copy_ of 2 GiB in the same rounds ({f'{copy_gbs:.0f} GB/s' if copy_gbs else 'n/a'})",
        "",
        "| shape | pass | ours ms | fla ms | x fla | ours % of copy |",
        "|---|---|---|---|---|---|",
    ]
    def pct(name, x):
        """(q, k, v read + o written) / median time, as a share of the copy's bandwidth."""
        b, t = shapes[name]
        return "" if not copy_gbs else f"{4 * b * t * h * d * 2 / np.median(x) / 1e6 / copy_gbs:.0%}"

    def vs_fla(name, p, x):
        fla = times.get((name, "fla", p))
        return "" if fla is None else median_ci(fla / x, 2)

    for name in shapes:
        for p in ("fwd", "fwd+bwd"):
            ours = times[(name, "ours", p)]
            fla = times.get((name, "fla", p))
            fla_ms = "" if fla is None else f"{np.median(fla):.3f}"
            lines.append(f"| {name} | {p} | {np.median(ours):.3f} | {fla_ms} | {vs_fla(name, p, ours)} | "
                         f"{pct(name, ours)} |")
    if impls or qkv_impls:
        lines += ["", "Other impls (qkv: lightning_attention_qkv on the interleaved q | k | v), x ours = our op (impl "
                  "auto, q, k, v) / this, per round:", "",
                  "| shape | pass | impl | ms | x fla | x ours | % of copy |", "|---|---|---|---|---|---|---|"]
        others = {*impls, *(f"qkv {i}" for i in qkv_impls)}
        for (name, impl, p), x in times.items():
            if impl in others:
                lines.append(f"| {name} | {p} | {impl} | {np.median(x):.3f} | {vs_fla(name, p, x)} | "
                             f"{median_ci(times[(name, 'ours', p)] / x, 3)} | {pct(name, x) if p == 'fwd' else ''} |")
    labels = [label for label, _ in variants]
    if labels:
        lines += ["", "Mosaic forward layouts (forward only), x ours = our op's forward / this layout, per round:", "",
                  "| shape | layout | ms | x fla | x ours fwd | % of copy |", "|---|---|---|---|---|---|"]
        for (name, label, _), x in times.items():
            if label in labels:
                lines.append(f"| {name} | {label} | {np.median(x):.3f} | {vs_fla(name, 'fwd', x)} | "
                             f"{median_ci(times[(name, 'ours', 'fwd')] / x, 3)} | {pct(name, x)} |")
    finish(lines, args.out)

if __name__ == "__main__":
    main()
