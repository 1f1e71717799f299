"""The Triton lightning backward's software-pipelining stages, timed in interleaved rounds (timing.run_rounds; the
evidence for gpu_triton_config._auto_bwd_stages): per shape, each variant's median over the rounds and the median of the
per-round ratio to the library default with a bootstrap 95% interval.

    python3 experiments/benchmarks/lightning_bwd_stages.py [--shapes B1T16K,B2T16K,B4T16K] [--stages 2,3]
        [--rounds 15] [--inner 10] [--out results.md]
    JAX_PLATFORMS=cpu python3 experiments/benchmarks/lightning_bwd_stages.py --smoke   # interpret mode, tiny

H=64, D=128, bf16, MiniMax layer-0 slopes; the backward alone (gpu_triton.backward, cotangent of o all ones, zero
final-state cotangent), fresh random q, k, v per shape.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import functools

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments.benchmarks.lightning_attention import SHAPES, minimax_decay  # noqa: E402
from experiments.benchmarks.timing import finish, median_ci, run_rounds  # noqa: E402
from pallas_kernels.lightning_attention import gpu_triton, split  # noqa: E402


def backward_fn(stages, interpret):
    """jitted (q, k, v, decay, do) -> (dq, dk, dv) with the backward's stages fixed (None: the library's choice)."""
    params = gpu_triton.TritonParams.make(interpret=interpret, num_stages=(3, stages))

    def bwd(q, k, v, d, do):
        dst = jnp.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), jnp.float32)
        return gpu_triton.backward(q, k, v, d, None, None, do, dst, params=params)[:3]

    return jax.jit(bwd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="B1T16K,B2T16K,B4T16K")
    ap.add_argument("--stages", default="2,3", help="fixed backward stages to time beside the default")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=10, help="calls per timing (between two host syncs)")
    ap.add_argument("--smoke", action="store_true", help="CPU: interpret mode, H=2, T=128, 3 rounds")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    on_gpu = jax.default_backend() == "gpu"
    h, d = (2, 128) if args.smoke else (64, 128)
    shapes = {"B1T128": (1, 128)} if args.smoke else {s: SHAPES[s] for s in args.shapes.split(",")}
    rounds, inner = (3, 1) if args.smoke else (args.rounds, args.inner)
    variants = [("default", None)] + [(f"s{s}", int(s)) for s in args.stages.split(",")]
    fns = {name: backward_fn(st, not on_gpu) for name, st in variants}
    decay = jnp.asarray(minimax_decay(h))
    dev = jax.devices()[0]
    lines = [
        "# Lightning backward stages, interleaved rounds",
        "",
        f"{dev.device_kind}, jax {jax.__version__}, {datetime.datetime.now():%Y-%m-%d %H:%M}; H {h}, D {d}, bf16; "
        f"{rounds} rounds x {inner} calls per variant; ms per call; ratio = variant / default per round, median "
        f"[bootstrap 95% CI, approximate]; programs per backward kernel; SMs {split.num_sms()}",
        "",
        "| shape | programs | default stages | variant | median ms | min ms | ratio to default |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (b, t) in shapes.items():
        ks = jax.random.split(jax.random.key(b * 1_000_003 + t), 3)
        q, k, v = (jax.random.normal(x, (b, t, h, d), jnp.float32).astype(jnp.bfloat16) / d**0.25 for x in ks)
        do = jnp.ones_like(v)
        times = run_rounds({n: (functools.partial(f, q, k, v, decay, do), jax.block_until_ready)
                            for n, f in fns.items()}, rounds, inner)
        base = times["default"]
        cfg = gpu_triton._config(gpu_triton.TritonParams(), b, t, h, d, d, False)  # what the library launches
        programs = b * h * max(d // cfg.block_k, d // cfg.block_v)
        auto = cfg.num_stages[1]
        for n, x in times.items():
            lines.append(f"| {name} | {programs} | {auto} | {n} | {np.median(x):.3f} | {x.min():.3f} | "
                         f"{median_ci(x / base, 3)} |")
        print("\n".join(lines[-len(fns):]), flush=True)
        del q, k, v, do
    finish(lines, args.out)


if __name__ == "__main__":
    main()
