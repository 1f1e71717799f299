"""The whole LM head (fp32 RMSNorm, matmul, log-softmax) under each ``lm_head_precision``, side by side in one
process: median time of the forward and of forward + backward, and the error against float64 (numpy) on 512 rows.

    python3 experiments/benchmarks/lm_head.py --out $OUT/lm_head.json [--rows 8192 --hidden 2048 --vocab 32768]
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
import numpy as np  # noqa: E402

from experiments.benchmarks.timing import median_ms  # noqa: E402
from m1jax.model.head import HEAD_PRECISIONS, lm_head_logits  # noqa: E402

CHOICES = [("bfloat16", None)] + [("float32", p) for p in ("tf32", "bf16x3", "bf16x6", "highest")]


def head(x, g, w, dtype, precision):
    h = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * g
    return jax.nn.log_softmax(lm_head_logits(h, w, dtype=dtype, precision=precision or "highest"), axis=-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="lm_head.json")
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--check-rows", type=int, default=512)
    args = ap.parse_args()
    assert set(p for _, p in CHOICES if p) <= set(HEAD_PRECISIONS)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.rows, args.hidden)), jnp.float32)
    g = jnp.asarray(1 + 0.1 * rng.standard_normal(args.hidden), jnp.float32)
    w = jnp.asarray(rng.standard_normal((args.hidden, args.vocab)) / np.sqrt(args.hidden) * 4, jnp.float32)
    # float64 reference on the first rows (numpy on the host)
    xr, gr, wr = (np.asarray(a, np.float64) for a in (x[: args.check_rows], g, w))
    hr = xr / np.sqrt(np.mean(xr * xr, -1, keepdims=True) + 1e-6) * gr
    lr = hr @ wr
    lpr = lr - (np.log(np.sum(np.exp(lr - lr.max(-1, keepdims=True)), -1, keepdims=True)) + lr.max(-1, keepdims=True))
    dev = jax.devices()[0]
    res = {"device": dev.device_kind, "jax": jax.__version__, "python": platform.python_version(),
           "rows": args.rows, "hidden": args.hidden, "vocab": args.vocab, "check_rows": args.check_rows, "cases": []}
    for dtype, prec in CHOICES:
        name = "bf16 head" if dtype == "bfloat16" else prec
        fwd = jax.jit(lambda x, g, w, d=dtype, p=prec: head(x, g, w, d, p))
        logits = jax.jit(lambda x, g, w, d=dtype, p=prec: lm_head_logits(
            x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * g, w, dtype=d, precision=p or "highest"))
        grad = jax.jit(jax.grad(lambda x, g, w, d=dtype, p=prec: jnp.sum(head(x, g, w, d, p)[:, :8]), argnums=(0, 2)))
        case = {"head": name}
        try:
            lg = np.asarray(logits(x[: args.check_rows], g, w), np.float64)
            lp = np.asarray(fwd(x[: args.check_rows], g, w), np.float64)
            case["max_rel_logit_err"] = float(np.max(np.abs(lg - lr)) / np.max(np.abs(lr)))
            case["max_abs_logprob_err"] = float(np.max(np.abs(lp - lpr)))
            case["fwd_ms"] = median_ms(fwd, x, g, w)
            case["fwd_bwd_ms"] = median_ms(grad, x, g, w)
        except Exception as e:  # noqa: BLE001
            case["error"] = repr(e)[:300]
        res["cases"].append(case)
        print(json.dumps(case), flush=True)
    base = next(c for c in res["cases"] if c["head"] == "bf16 head")
    for c in res["cases"]:
        if "fwd_ms" in c and "fwd_ms" in base:
            c["fwd_x_bf16"] = c["fwd_ms"] / base["fwd_ms"]
            c["fwd_bwd_x_bf16"] = c["fwd_bwd_ms"] / base["fwd_bwd_ms"]
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res["cases"]))


if __name__ == "__main__":
    main()
