"""Where the lightning attention layer's time goes: the whole layer against its matmuls and its kernel alone.

    python3 experiments/benchmarks/lightning_layer.py --out $OUT/lightning_layer.md [--trace /tmp/ll]

At the 1b preset's layer (hidden 2048, 16 heads x 128, block 256), one row of --seq tokens (packed documents,
mean --mean-doc), bf16, forward + backward (gradients w.r.t. the parameters and x) unless named fwd:
  * layer: LightningAttention as the model runs it, per --variants (the module's ``fused`` setting: "off" slices
    q / k / v in XLA for the kernel, "on" hands it the interleaved projection, lightning_attention_qkv, when
    differentiated; since 8f31c19 the "layer fwd" row of "on" runs the sliced path too, see lightning_cp);
  * matmuls: the layer's three projections alone (qkv, gate, out), their outputs summed: the matmul floor;
  * kernel: pallas_kernels.lightning_attention alone on q, k, v of the layer's shape, with the segments;
With --trace, each layer variant's kernels are listed (experiments/trace_summary.py) with their JAX op and source
line: the kernel-time totals there, not differences of the wall times, say what the elementwise glue costs (each
wall time also holds its own per-call host overhead, so layer - matmuls - kernel came out negative on an H200).
Median over repeats after warm-up; host clock around block_until_ready.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from experiments.benchmarks.timing import median_ms  # noqa: E402
from experiments.profile_train import module_fwd_bwd, packed_segments, preset_config, write_report  # noqa: E402
from m1jax.model.layers import dense  # noqa: E402
from m1jax.model.lightning import LightningAttention  # noqa: E402
from pallas_kernels.lightning_attention import lightning_attention  # noqa: E402

ROWS: list[tuple] = []
TRACES: list[str] = []


def record(part, variant, ms, note=""):
    ROWS.append((part, variant, f"{ms:.3f}", note))
    print(f"{part:24s} {variant:28s} {ms:9.3f} ms {note}", flush=True)


def trace(f, args, title, trace_dir):
    from experiments.trace_summary import hlo_sources, markdown_table, traced_kernels

    log_dir = os.path.join(trace_dir, title.replace(" ", "_").replace("=", "_"))
    sources = hlo_sources(f.lower(*args).compile().as_text())
    TRACES.append(markdown_table(traced_kernels(lambda: f(*args), 3, log_dir), 3, title, top=30, log_dir=log_dir,
                                 sources=sources))
    print(TRACES[-1], flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--mean-doc", type=float, default=2048.0)
    ap.add_argument("--variants", default="off", help="comma list of the layer's fused setting: off, on")
    ap.add_argument("--trace", default="", help="trace each layer variant here and add its kernel table")
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    c = preset_config("1b")  # its layer 0 is a lightning layer
    rng = np.random.default_rng(0)
    seg = packed_segments(rng, 1, a.seq, a.mean_doc)
    x = jnp.asarray(rng.standard_normal((1, a.seq, c.hidden_size)), jnp.bfloat16)
    H, D, E = c.num_attention_heads, c.head_dim, c.hidden_size
    dev = jax.devices()[0]
    header = (f"device {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, python "
              f"{platform.python_version()}, 1b lightning layer (hidden {E}, {H} heads x {D}, block "
              f"{c.block_size}), 1 x {a.seq} tokens, packed docs mean {a.mean_doc:.0f}, bf16, {datetime.date.today()}")
    print(header, flush=True)

    ws = [jnp.asarray(rng.standard_normal(s) * 0.02, jnp.float32) for s in ((E, 3 * H * D), (E, H * D), (H * D, E))]

    def matmuls(ws, x):
        a = dense(x, ws[0], jnp.bfloat16)
        g = dense(x, ws[1], jnp.bfloat16)
        o = dense(a[..., : H * D], ws[2], jnp.bfloat16)
        return sum(jnp.sum(t.astype(jnp.float32)) for t in (a, g, o))

    mm = jax.jit(jax.value_and_grad(matmuls, argnums=(0, 1)))
    record("matmuls", "qkv + gate + out", median_ms(mm, ws, x))

    q, k, v = (jnp.asarray(rng.standard_normal((1, a.seq, H, D)) * 0.3, jnp.bfloat16) for _ in range(3))
    decay = jnp.asarray(LightningAttention(c, 0, rngs=nnx.Rngs(0)).decay, jnp.float32)

    def kern(q, k, v):
        return jnp.sum(lightning_attention(q, k, v, decay, segment_ids=seg, block_size=c.block_size)
                       .astype(jnp.float32))

    kern_grad = jax.jit(jax.value_and_grad(kern, argnums=(0, 1, 2)))
    record("kernel", "lightning_attention (auto)", median_ms(kern_grad, q, k, v))

    for variant in [v for v in a.variants.split(",") if v]:
        module = LightningAttention(c, 0, rngs=nnx.Rngs(0))
        module.fused = variant == "on"
        try:
            call = lambda m, x: m(x, segment_ids=seg)[0]  # noqa: E731
            f, p = module_fwd_bwd(module, call)
            record("layer", f"fused={variant}", median_ms(f, p, x))
            ff, _ = module_fwd_bwd(module, call, grad=False)
            record("layer fwd", f"fused={variant}", median_ms(ff, p, x))
            if a.trace:
                trace(f, (p, x), f"layer fused={variant}", a.trace)
        except Exception as e:  # noqa: BLE001 - a failed variant is reported, the rest still run
            ROWS.append(("layer", f"fused={variant}", "failed", str(e).splitlines()[0][:160]))
            print("FAILED", variant, e, flush=True)

    if a.out:
        write_report(a.out, "Lightning layer: where the time goes", header, "experiments/benchmarks/lightning_layer.py",
                     "Median ms, forward + backward unless named fwd.", ("part", "variant", "ms", "note"), ROWS,
                     "Kernels", TRACES)


if __name__ == "__main__":
    main()
