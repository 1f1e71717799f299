"""The lightning layer's silu inside the attention kernels vs as XLA passes, in interleaved rounds.

    python3 experiments/benchmarks/qkv_silu.py [--rounds 15] [--inner 10] [--out results.md]
    JAX_PLATFORMS=cpu python3 experiments/benchmarks/qkv_silu.py --smoke        # tiny, interpret mode

At the 1b preset's lightning layer (B1 T8192 H16 D128, bf16), forward + backward (jax.value_and_grad of sum(o) in fp32
w.r.t. the pre-activations) of
  * fused: ``lightning_attention_qkv(pre, activation="silu")``: the Triton kernels apply silu to each q, k, v tile as
    they load it and multiply by silu' as they write d qkv (the model's call since this change);
  * xla: ``lightning_attention_qkv(jax.nn.silu(pre))``: silu and its gradient as XLA passes over [T, 3 H D] (the
    model's call before);
with packed documents (segment ids of mean length 2048: the training rows; Triton kernels) and without (impl auto:
on Hopper the Mosaic kernels, where "fused" is the same XLA silu). Every entry once a round in a shuffled order
(timing.run_rounds); ms medians and the per-round ratio xla / fused with a bootstrap 95% interval.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import pallas_kernels  # noqa: E402
from experiments.benchmarks.lightning_attention import minimax_decay  # noqa: E402
from experiments.benchmarks.timing import finish, median_ci, run_rounds  # noqa: E402
from experiments.profile_train import packed_segments  # noqa: E402


def entries(b, t, h, d, seg, interpret):
    """{(rows, variant): fn} for variant fused / xla, rows "packed" (segment ids) or "one doc"."""
    decay = jnp.asarray(minimax_decay(h))
    pre = jax.random.normal(jax.random.key(0), (b, t, h, 3 * d), jnp.float32).astype(jnp.bfloat16)
    impl = "triton" if interpret else "auto"
    out = {}
    for rows, s in (("packed", seg), ("one doc", None)):
        for variant in ("fused", "xla"):
            def loss(x, s=s, variant=variant):
                act = "silu" if variant == "fused" else None
                x = x if act else jax.nn.silu(x)
                o = pallas_kernels.lightning_attention_qkv(x, decay, segment_ids=s, impl=impl, interpret=interpret,
                                                           activation=act)
                return jnp.sum(o.astype(jnp.float32))

            fn = jax.jit(jax.value_and_grad(loss))
            out[(rows, variant)] = (lambda fn=fn: fn(pre), jax.block_until_ready)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="CPU: T 128, H 2, D 16, interpret mode, 2 rounds")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    b, t, h, d = (1, 128, 2, 16) if args.smoke else (1, 8192, 16, 128)
    rounds, inner = (2, 1) if args.smoke else (args.rounds, args.inner)
    seg = packed_segments(np.random.default_rng(0), b, t, 32.0 if args.smoke else 2048.0)
    times = run_rounds(entries(b, t, h, d, seg, interpret=args.smoke), rounds, inner)
    dev = jax.devices()[0]
    lines = [
        "# The lightning layer's silu: in the kernels vs XLA passes (fwd+bwd of lightning_attention_qkv)",
        "",
        f"{dev.device_kind}; {datetime.datetime.now():%Y-%m-%d %H:%M}; jax {jax.__version__}; B{b} T{t} H{h} D{d} "
        f"bf16; {rounds} rounds x {inner} calls; ms per call (median over rounds); xla / fused per round, median "
        "[bootstrap 95% CI]",
        "",
        "| rows | fused ms | xla ms | xla / fused |",
        "|---|---|---|---|",
    ]
    for rows in ("packed", "one doc"):
        f, x = times[(rows, "fused")], times[(rows, "xla")]
        lines.append(f"| {rows} | {np.median(f):.3f} | {np.median(x):.3f} | {median_ci(x / f, 3)} |")
    finish(lines, args.out)


if __name__ == "__main__":
    main()
