"""Softmax decode attention over a KV cache on a GPU: the XLA path (reads the whole cache), our split-K Pallas
kernel (reads each row's valid slots) and JAX's shipped ``pallas.ops.gpu.decode_attention.gqa`` (valid slots, but
it transposes the cache to [b, K, S, D] on every call), side by side in one process.

    python3 experiments/benchmarks/decode_attention.py --out $OUT/decode_attention.json [--quick]

Shapes: the 1b preset's softmax layer (H 16, K 4, D 128), bf16, a 64K-slot cache, batch 1 / 16 / 64, valid
length 1K .. 64K (every row the same length; start 0). Per case: median wall time of a jitted call (after
warm-up), the floor = valid K/V bytes / measured copy bandwidth, and the max abs error against the fp32 oracle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments.benchmarks.rollout import copy_bandwidth  # noqa: E402
from experiments.benchmarks.timing import median_ms  # noqa: E402
from pallas_kernels.decode_attention import gpu_triton, ops, reference  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="decode_attention.json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--interpret", action="store_true", help="CPU smoke run (tiny shapes)")
    args = ap.parse_args()
    H, K, D = 16, 4, 128
    S = 256 if args.interpret else 65536
    batches = (1, 2) if args.interpret else ((16,) if args.quick else (1, 16, 64))
    lengths = (64, 256) if args.interpret else ((4096, 65536) if args.quick else (1024, 4096, 16384, 65536))
    bw = None if args.interpret else copy_bandwidth(1 << 30)["bandwidth_Bps"]
    dev = jax.devices()[0]
    res = {"device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
           "python": platform.python_version(), "copy_bytes_per_s": bw, "H": H, "K": K, "D": D, "cache_len": S,
           "dtype": "bfloat16", "cases": []}
    print(json.dumps({k: v for k, v in res.items() if k != "cases"}), flush=True)
    xla = jax.jit(ops.xla_decode_attention)
    ours = jax.jit(lambda q, k, v, s, n: gpu_triton.decode_attention(q, k, v, s, n, interpret=args.interpret))
    try:
        from jax.experimental.pallas.ops.gpu import decode_attention as shipped
        theirs = jax.jit(lambda q, k, v, s, n: shipped.gqa(q, k, v, s, n, interpret=args.interpret))
    except Exception as e:  # noqa: BLE001
        theirs, res["shipped_error"] = None, repr(e)
    for b in batches:
        key = jax.random.key(b)
        kq, kk, kv = jax.random.split(key, 3)
        q = jax.random.normal(kq, (b, H, D), jnp.float32).astype(jnp.bfloat16)
        k = jax.random.normal(kk, (b, S, K, D), jnp.float32).astype(jnp.bfloat16)
        v = jax.random.normal(kv, (b, S, K, D), jnp.float32).astype(jnp.bfloat16)
        start = jnp.zeros((b,), jnp.int32)
        for n in lengths:
            length = jnp.full((b,), n, jnp.int32)
            ref = reference.decode_attention(q[:1].astype(jnp.float32), k[:1, :n].astype(jnp.float32),
                                             v[:1, :n].astype(jnp.float32), start[:1], length[:1])
            case = {"batch": b, "valid_len": n, "floor_ms": None if bw is None else
                    1e3 * (2 * b * n * K * D * 2 + b * H * D * 4) / bw}
            for name, fn in (("xla", xla), ("ours", ours), ("jax_gqa", theirs)):
                if fn is None:
                    continue
                try:
                    out = fn(q, k, v, start, length)
                    case[f"{name}_err"] = float(jnp.max(jnp.abs(out[:1].astype(jnp.float32) - ref)))
                    case[f"{name}_ms"] = median_ms(fn, q, k, v, start, length, iters=3 if args.interpret else 20,
                                                   warmup=3)
                except Exception as e:  # noqa: BLE001
                    case[f"{name}_error"] = repr(e)[:300]
            res["cases"].append(case)
            print(json.dumps(case), flush=True)
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
