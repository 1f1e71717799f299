"""Packed-document softmax attention on a GPU: the Pallas segment kernel (pallas_kernels.segment_attention) against
cuDNN with the dense [t, t] run mask (what the softmax layer ran before) and cuDNN causal over one document, side by
side in one process; plus the kernel's error against the fp32 reference on the GPU.

Shapes: the 1b preset's softmax layer (16 query heads, 4 kv heads, head_dim 128, bf16), one row of --seq tokens
packed with documents of exponential lengths (mean --doc-means; "one" = a single document). Per case: median ms of
the forward and of forward + backward (jax.grad of sum(o * do)), TFLOP/s of the useful (in-segment, causal) work,
and for the kernel its max relative error (o, dq, dk, dv) against the fp32 reference.

    python3 experiments/benchmarks/segment_attention.py --out $OUT/segment_attention_h200.json
    JAX_PLATFORMS=cpu python3 experiments/benchmarks/segment_attention.py --small --out /tmp/sa.json  # CPU check
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmarks.timing import median_ms  # noqa: E402
from pallas_kernels.segment_attention import Params, gpu_triton, reference  # noqa: E402


def packed_ids(rng, t, mean):
    if mean == "one":
        return np.ones((1, t), np.int32)
    ids, pos, seg = np.zeros(t, np.int32), 0, 1
    while pos < t:
        n = max(1, int(rng.exponential(float(mean))))
        ids[pos:pos + n] = seg
        pos, seg = pos + n, seg + 1
    return ids[None]


def useful_flops(ids, h, d):
    """4 h d per visible (query, key) pair, forward."""
    counts = np.diff(np.flatnonzero(np.concatenate([[1], np.diff(ids[0]) != 0, [1]])))  # run lengths
    return float(sum(4 * h * d * n * (n + 1) / 2 for n in counts))


def _rel(a, b):
    return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)) / jnp.max(jnp.abs(b)))


def run_case(args, rng, mean, arrays, params, names, fwd_bwd, on_gpu):
    """The rows of one document-length case (a generator: each row is saved as soon as it is measured)."""
    q, k, v, _ = arrays
    t, h, d = args.seq, args.heads, args.head_dim
    ids_np = packed_ids(rng, t, mean)
    ids = jnp.asarray(ids_np)
    flops = useful_flops(ids_np, h, d)
    impls = {f"segment {n}": functools.partial(gpu_triton.segment_attention, segment_ids=ids, params=p)
             for n, p in zip(names, params, strict=True)}
    if on_gpu:
        mask = reference.run_mask(ids)[:, None]
        sdpa = functools.partial(jax.nn.dot_product_attention, scale=1.0 / np.sqrt(d), is_causal=True,
                                 implementation="cudnn")
        impls["cuDNN dense run mask"] = functools.partial(sdpa, mask=mask)
        impls["cuDNN causal (ignores the documents)"] = sdpa
    ref = functools.partial(reference.segment_attention, segment_ids=ids)
    up = [x.astype(jnp.float32) for x in (q, k, v)]
    ref_o, ref_g = None, None
    for name, fn in impls.items():
        row = {"doc_mean": mean, "docs": int(len(np.unique(ids_np))), "impl": name, "useful_gflop_fwd": flops / 1e9}
        try:
            jf, fb = jax.jit(fn), fwd_bwd(fn)
            row["fwd_ms"] = median_ms(jf, q, k, v, iters=args.iters)
            row["fwd_bwd_ms"] = median_ms(fb, q, k, v, iters=args.iters)
            row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
            if name.startswith("segment"):
                if ref_o is None:
                    ref_o, ref_g = jax.jit(ref)(*up), fwd_bwd(ref)(*up)[1]
                g = fb(q, k, v)[1]
                row["rel_err"] = {"o": _rel(jf(q, k, v), ref_o),
                                  **{n: _rel(a, b) for n, a, b in zip("qkv", g, ref_g, strict=True)}}
        except Exception as e:  # noqa: BLE001 - one failing case must not lose the others
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        yield row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="segment_attention.json")
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--doc-means", default="64,512,2048,one")
    ap.add_argument("--configs", default="64x64w4s2,128x64w8s2,64x64w4s3",
                    help="kernel tiles: {block_q}x{block_k}w{warps}s{stages} (forward; the backward uses 64x64w4s2 "
                         "unless the config has a '/bwd' part of the same form)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--small", action="store_true", help="CPU check: 256 tokens, interpret mode")
    args = ap.parse_args()
    on_gpu = jax.default_backend() == "gpu"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.small:
        args.seq, args.heads, args.kv_heads, args.head_dim, args.iters = 256, 4, 2, 32, 2
        args.doc_means, args.configs = "32,one", "32x32w4s2"
    t, h, kv, d = args.seq, args.heads, args.kv_heads, args.head_dim
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(jnp.bfloat16)  # noqa: E731
    q, k, v, do = f(1, t, h, d), f(1, t, kv, d), f(1, t, kv, d), f(1, t, h, d)

    def parse(cfg):
        fwd, _, bwd = cfg.partition("/")

        def one(s):
            tiles, rest = s.split("w")
            bq, bk = (int(x) for x in tiles.split("x"))
            w, st = (int(x) for x in rest.split("s"))
            return bq, bk, w, st
        fq, fk, fw, fs = one(fwd)
        bq, bk, bw, bs = one(bwd) if bwd else (64, 64, 4, 2)
        return Params(block_q=fq, block_k=fk, num_warps=fw, num_stages=fs, bwd_block_q=bq, bwd_block_k=bk,
                      bwd_num_warps=bw, bwd_num_stages=bs, interpret=not on_gpu)

    def fwd_bwd(fn):
        def loss(q, k, v):
            return jnp.sum(fn(q, k, v).astype(jnp.float32) * do.astype(jnp.float32))
        return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))

    res = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d"), "shape": dict(seq=t, heads=h, kv_heads=kv, head_dim=d, dtype="bf16"),
           "cases": []}
    for mean in args.doc_means.split(","):
        for row in run_case(args, rng, mean, (q, k, v, do), [parse(c) for c in args.configs.split(",")],
                            args.configs.split(","), fwd_bwd, on_gpu):
            res["cases"].append(row)
            print(json.dumps(row), flush=True)
            with open(args.out, "w") as fh:
                json.dump(res, fh, indent=1)
    md = [f"# Packed-document softmax attention\n\n{res['device']}, jax {res['jax']}, {res['date']}; one row of {t} "
          f"tokens, {h} q heads / {kv} kv heads, head_dim {d}, bf16; median of {args.iters}.\n",
          "| doc mean | docs | impl | fwd ms | fwd+bwd ms | fwd TFLOP/s (useful) | max rel err o / dq / dk / dv |",
          "|---|---|---|---|---|---|---|"]
    for r in res["cases"]:
        err = r.get("rel_err")
        e = " / ".join(f"{err[n]:.1e}" for n in ("o", "q", "k", "v")) if err else r.get("error", "")
        md.append(f"| {r['doc_mean']} | {r['docs']} | {r['impl']} | {r.get('fwd_ms', float('nan')):.3f} | "
                  f"{r.get('fwd_bwd_ms', float('nan')):.3f} | {r.get('fwd_tflops', float('nan')):.0f} | {e} |")
    with open(os.path.splitext(args.out)[0] + ".md", "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
