"""Sequence split on the GPU: pallas_kernels.lightning_attention with seq_split=1 vs "auto" / 2 / 4 / 8.

    python3 experiments/benchmarks/seq_split.py --out $OUT/seq_split.md

bf16 q, k, v with MiniMax layer-0 slopes, impl="auto" (on Hopper since 2026-12-01 mosaic_gpu_all: the Mosaic forward
and its three-pass backward; the results file predates it: Mosaic forward + Triton backward); median ms per call
(experiments/benchmarks/timing.time_jax); fwd and fwd+bwd (grad of sum(o) w.r.t. q, k, v). Shapes with few (batch,
head) pairs, where one thread block per pair and value slice leaves SMs idle, plus a control shape that already
fills the GPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import pallas_kernels  # noqa: E402
from experiments.benchmarks.lightning_attention import minimax_decay  # noqa: E402
from experiments.benchmarks.timing import time_jax  # noqa: E402
from pallas_kernels.lightning_attention import ops  # noqa: E402

SHAPES = ((1, 8192, 16), (1, 32768, 8), (2, 16384, 16), (1, 16384, 64))  # (B, T, H), D = 128


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    dev = jax.devices()[0]
    rows = [f"# lightning attention sequence split\n\n{dev.device_kind}, jax {jax.__version__}, "
            f"{datetime.date.today()}; D 128 bf16, impl auto; median ms\n",
            "| B | T | H | seq_split | parts | fwd ms | fwd+bwd ms |", "|---|---|---|---|---|---|---|"]
    for b, t, h in SHAPES:
        key = jax.random.split(jax.random.key(t + h), 3)
        q, k, v = (jax.random.normal(kk, (b, t, h, 128), jnp.float32).astype(jnp.bfloat16) * 0.1 for kk in key)
        decay = minimax_decay(h)
        for split in ("1", "auto", "2", "4", "8"):
            s = split if split == "auto" else int(split)
            parts = ops._seq_parts(s, ops._auto_impl(), q, v)
            if split == "auto" and parts == 1 or parts > 1 and t // parts < 1024:
                continue
            fwd = jax.jit(lambda q, k, v, s=s, d=decay: pallas_kernels.lightning_attention(q, k, v, d, seq_split=s))
            bwd = jax.jit(jax.value_and_grad(lambda q, k, v, s=s, d=decay: jnp.sum(
                pallas_kernels.lightning_attention(q, k, v, d, seq_split=s).astype(jnp.float32)), (0, 1, 2)))
            try:
                tf, tb = time_jax(fwd, q, k, v), time_jax(bwd, q, k, v)
                rows.append(f"| {b} | {t} | {h} | {split} | {parts} | {tf:.3f} | {tb:.3f} |")
            except Exception as e:  # noqa: BLE001
                rows.append(f"| {b} | {t} | {h} | {split} | {parts} | failed: {str(e).splitlines()[0][:120]} | |")
            print(rows[-1], flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
