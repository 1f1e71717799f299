"""The expert matmul's Mosaic kernels (pallas_kernels.grouped_matmul "mosaic_gpu": JAX's ragged_dot_mgpu for the
forward and dx, transposed_ragged_dot_mgpu for dw) over their tile settings, at the 1b preset's MoE shapes, side by
side with a dense matmul of the same FLOPs; one process, one GPU.

Shapes: 8192 tokens x top-2 = 16384 rows over 8 experts (multinomial group sizes), hidden 2048, expert width 2816:
  up    x [16384, 2048] @ w [8, 2048, 2816]     (w1 and w3: twice per layer)
  down  x [16384, 2816] @ w [8, 2816, 2048]
  dx    dy [16384, n] @ w[g]^T                   (ragged_dot with transpose_rhs)
  dw    x_g^T dy_g -> [8, k, n]                  (transposed_ragged_dot)
  up fused  w1 and w3 as one [8, 2048, 5632] matmul (would one launch beat two?)
A config is block_m x block_n x block_k, max_concurrent_steps, grid_block_n. Median ms of 20 calls.

    python3 experiments/benchmarks/grouped_matmul_tiles.py --out $OUT/grouped_matmul_tiles_h200.md
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

from experiments.benchmarks.timing import median_ms  # noqa: E402

CONFIGS = "128x128x64s4g2,128x128x64s4g1,128x128x64s4g4,128x128x64s5g2,128x128x64s3g2,128x128x128s3g2," \
          "128x128x128s4g2,64x256x64s4g2,128x256x64s3g2,128x192x64s4g2,256x128x64s3g2"


def parse(spec):
    tiles, rest = spec.split("s")
    bm, bn, bk = (int(x) for x in tiles.split("x"))
    steps, gbn = (int(x) for x in rest.split("g"))
    return dict(block_m=bm, block_n=bn, block_k=bk, max_concurrent_steps=steps, grid_block_n=gbn)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="grouped_matmul_tiles.md")
    ap.add_argument("--configs", default=CONFIGS)
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--budget-s", type=float, default=240)
    args = ap.parse_args()
    from jax.experimental.pallas.ops.gpu import ragged_dot_mgpu, transposed_ragged_dot_mgpu

    t0 = time.time()
    rng = np.random.default_rng(0)
    E, m = 8, args.rows
    sizes = jnp.asarray(rng.multinomial(m, np.full(E, 1 / E)), jnp.int32)
    bf = jnp.bfloat16
    shapes = {"up": (2048, 2816), "down": (2816, 2048), "up fused": (2048, 5632)}
    data = {}
    for name, (k, n) in shapes.items():
        normal = lambda *shape: rng.standard_normal(shape)  # noqa: E731
        data[name] = tuple(jnp.asarray(a, bf) for a in (normal(m, k), normal(E, k, n) / 40, normal(m, n)))
    lines = [f"# Expert matmul tiles\n\n{jax.devices()[0].device_kind}, jax {jax.__version__}, "
             f"{time.strftime('%Y-%m-%d')}; {m} rows, {E} experts, bf16; median ms (TFLOP/s).\n"]
    dense = []
    for name, (x, w, _) in data.items():
        f = jax.jit(lambda a, b: jnp.dot(a, b[0], preferred_element_type=jnp.float32).astype(bf))
        ms = median_ms(f, x, w, iters=20)
        dense.append(f"{name} {ms:.3f} ({2 * x.shape[0] * x.shape[1] * w.shape[2] / ms / 1e9:.0f})")
    lines.append("Dense matmul of the same FLOPs: " + ", ".join(dense) + "\n")
    lines += ["| config | up fwd | up dx | up dw | down fwd | down dx | down dw | up fused fwd | up fused dx | "
              "up fused dw | sum (2 up + down) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for spec in args.configs.split(","):
        if time.time() - t0 > args.budget_s:
            lines.append(f"| {spec} | skipped: over --budget-s | | | | | | |")
            continue
        kw = parse(spec)
        cells, total = [], 0.0
        for name, (x, w, dy) in data.items():
            flops = 2 * x.shape[0] * x.shape[1] * w.shape[2]
            weight = {"up": 2, "down": 1}.get(name, 0)  # the layer runs up twice (w1, w3) and down once
            fns = (
                (jax.jit(lambda a, b, kw=kw: ragged_dot_mgpu.ragged_dot(a, b, group_sizes=sizes, **kw)), (x, w)),
                (jax.jit(lambda a, b, kw=kw: ragged_dot_mgpu.ragged_dot(a, b, group_sizes=sizes, transpose_rhs=True,
                                                                        **kw)), (dy, w)),
                (jax.jit(lambda a, b, kw=kw: transposed_ragged_dot_mgpu.transposed_ragged_dot(
                    a, b, group_sizes=sizes, **kw)), (x, dy)),
            )
            for fn, fargs in fns:
                try:
                    ms = median_ms(fn, *fargs, iters=20)
                    total += weight * ms
                    cells.append(f"{ms:.3f} ({flops / ms / 1e9:.0f})")
                except Exception as e:  # noqa: BLE001 - a config that does not compile is a cell, not a crash
                    total = float("nan")
                    cells.append(f"fails: {type(e).__name__}")
        lines.append(f"| {spec} | {' | '.join(cells)} | {total:.3f} |")
        print(lines[-1], flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
