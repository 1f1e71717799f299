"""Lightning decode step (Triton kernel, pallas_kernels/lightning_attention/decode.py) over its tile settings at
B 64 and 256 (H 64, D 128, fp32 state), side by side with copies: the 2 GiB copy the issue's "% of copy" uses and a
copy of the state's own size (x + 1 over [B, H, D, D] fp32, timed the same way).

Timing as lightning_attention.py's "unrolled, donated" decode rows: 20 steps unrolled in one jit, an optimization
barrier after each (else XLA fuses the steps), the state donated; median over repeats, per step. GB/s counts the fp32
state read + written.

    python3 experiments/benchmarks/lightning_decode_tiles.py --out $OUT/lightning_decode_tiles_h200.md
    JAX_PLATFORMS=cpu python3 experiments/benchmarks/lightning_decode_tiles.py --small   # CPU, interpret mode
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pallas_kernels.lightning_attention import decode  # noqa: E402

STEPS = 20


def per_step_ms(step, s0, repeats=15):
    """Median ms per step of ``step(i, state) -> state`` over STEPS unrolled, fenced steps (state donated)."""
    def fenced(i, st):
        return jax.lax.optimization_barrier(step(i, st))

    run = jax.jit(lambda st: jax.lax.fori_loop(0, STEPS, fenced, st, unroll=True), donate_argnums=0)
    st = run(s0 + 0.0)
    jax.block_until_ready(st)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        st = run(st)
        jax.block_until_ready(st)
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts)) / STEPS


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="lightning_decode_tiles.md")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--tiles", default="32x4,64x4,64x8,128x4,128x8,128x16", help="{block_v}x{num_warps} list")
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    on_gpu = jax.default_backend() == "gpu"
    h, d = (64, 128) if not args.small else (4, 32)
    batches = [int(b) for b in args.batches.split(",")] if not args.small else [2]
    tiles = [tuple(int(x) for x in t.split("x")) for t in args.tiles.split(",")]
    if args.small:
        tiles = [(16, 4), (32, 4)]
    lines = [f"# Lightning decode tiles\n\n{jax.devices()[0].device_kind}, jax {jax.__version__}, "
             f"{time.strftime('%Y-%m-%d')}; H {h}, D {d}, fp32 state; {STEPS} steps unrolled + fenced, donated.\n"]
    n = (2 << 30) // 4 if on_gpu else 1 << 20
    big = per_step_ms(lambda i, x: x + 1.0, jnp.zeros((n,), jnp.float32), repeats=5)
    best = 2 * n * 4 / big / 1e6
    lines += [f"2 GiB copy (x + 1, same timing): {best:.0f} GB/s\n",
              "| B | block_v | warps | us / step | GB/s | % of 2 GiB copy | % of same-size copy |",
              "|---|---|---|---|---|---|---|"]
    decay = jnp.asarray(np.linspace(0.01, 0.9, h), jnp.float32)
    for b in batches:
        nbytes = 2 * b * h * d * d * 4
        s0 = jax.random.normal(jax.random.key(2), (b, h, d, d), jnp.float32)
        qs = (jax.random.normal(jax.random.key(1), (STEPS, b, h, d), jnp.float32) * 0.1).astype(jnp.bfloat16)
        same = per_step_ms(lambda i, x: x + 1.0, s0)
        same_gbs = nbytes / same / 1e6
        lines.append(f"| {b} | copy | - | {1e3 * same:.1f} | {same_gbs:.0f} | {100 * same_gbs / best:.0f}% | 100% |")
        ref = per_step_ms(lambda i, st, qs=qs: decode.lightning_attention_decode(qs[i], qs[i], qs[i], decay, st,
                                                                                 impl="reference")[1], s0)
        ref_gbs = nbytes / ref / 1e6
        lines.append(f"| {b} | XLA (reference.step, auto on GPU) | - | {1e3 * ref:.1f} | {ref_gbs:.0f} | "
                     f"{100 * ref_gbs / best:.0f}% | {100 * ref_gbs / same_gbs:.0f}% |")
        for bv, nw in tiles:
            if d % bv:
                continue

            def step(i, st, bv=bv, nw=nw, qs=qs):
                x = qs[i]
                return decode._decode_triton(x, x, x, decay, st, block_v=bv, num_warps=nw, interpret=not on_gpu)[1]

            try:
                ms = per_step_ms(step, s0)
                gbs = nbytes / ms / 1e6
                lines.append(f"| {b} | {bv} | {nw} | {1e3 * ms:.1f} | {gbs:.0f} | {100 * gbs / best:.0f}% | "
                             f"{100 * gbs / same_gbs:.0f}% |")
            except Exception as e:  # noqa: BLE001 - a tile that does not compile is a row, not a crash
                lines.append(f"| {b} | {bv} | {nw} | failed: {type(e).__name__} | | | |")
            print(lines[-1], flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
