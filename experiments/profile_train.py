"""Where a training step's time goes: each part of a decoder layer timed alone, then whole train steps.

Run on the GPU (one process; median over repeats after warm-up, host clock around block_until_ready):

    python3 experiments/profile_train.py --preset 1b --batch 1 --seq 8192 --out $OUT/profile.md

Parts, each forward + backward (gradients w.r.t. the parameters and the input) at the preset's shape:
lightning attention layer; softmax attention layer (einsum / cuDNN sdpa); MoE (grouped ragged_dot /
dense); LM head (fp32 full precision / bf16); a raw ragged_dot vs a dense matmul of the same FLOPs.
Then full train steps (AdamW, --steps-timed steps) for the kernel variants in --variants, with tokens/s
and MFU counted as `m1jax train` counts them (m1jax.train.flops). Batches are packed documents of
random lengths (segment ids), like the training data.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from m1jax.config import ModelConfig, hybrid_layout  # noqa: E402
from m1jax.model.attention import SoftmaxAttention  # noqa: E402
from m1jax.model.lightning import LightningAttention  # noqa: E402
from m1jax.model.moe import MoE  # noqa: E402
from m1jax.train.config import model_config  # noqa: E402
from m1jax.train.flops import device_peak_flops, flops_per_token, mfu, param_counts  # noqa: E402
from m1jax.train.step import init_params, init_train_state, make_train_step, model_graphdef  # noqa: E402

ROWS: list[tuple] = []
PARTS = ("lightning", "softmax", "moe", "head", "expert_matmul")


def timed(fn, *args, repeats=10):
    """Median seconds per call after compile + 2 warm-up calls."""
    jax.block_until_ready(fn(*args))
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def record(part, variant, seconds, flops=None, note=""):
    tf = "" if flops is None else f"{flops / seconds / 1e12:.0f}"
    ROWS.append((part, variant, f"{seconds * 1e3:.2f}", tf, note))
    print(f"{part:28s} {variant:28s} {seconds * 1e3:9.2f} ms {tf:>6s} TFLOP/s {note}", flush=True)


def try_record(part, variant, thunk, flops=None):
    try:
        record(part, variant, thunk(), flops)
    except Exception as e:  # noqa: BLE001 - a failed variant is reported, the rest still run
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        ROWS.append((part, variant, "failed", "", msg))
        print(f"{part:28s} {variant:28s} FAILED {msg}", flush=True)


def packed_segments(rng, b, n, mean_doc):
    """[b, n] int32 segment ids 1, 2, ... of documents with exponential lengths (mean ``mean_doc``)."""
    out = np.zeros((b, n), np.int32)
    for r in range(b):
        pos, seg = 0, 1
        while pos < n:
            length = max(1, int(rng.exponential(mean_doc)))
            out[r, pos : pos + length] = seg
            pos, seg = pos + length, seg + 1
    return jnp.asarray(out)


def module_fwd_bwd(module, call, *, grad: bool = True):
    """(jit(params, x) -> (loss, grads), params): forward + backward of sum(call(module, x)) in fp32; with
    ``grad=False`` the jitted forward alone (-> loss)."""
    graphdef, params = nnx.split(module, nnx.Param)

    def loss(params, x):
        y = call(nnx.merge(graphdef, params), x)
        return jnp.sum(y.astype(jnp.float32))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)) if grad else loss), params


def profile_parts(c: ModelConfig, b, n, seg, rng, only):
    x = jnp.asarray(rng.standard_normal((b, n, c.hidden_size)), c.jnp_dtype)
    pos = jnp.broadcast_to(jnp.arange(n), (b, n))
    t = b * n
    if "lightning" in only:
        profile_lightning(c, x, seg, t)
    if "softmax" in only:
        profile_softmax(c, x, pos, seg, t, n)
    if "moe" in only:
        profile_moe(c, x, t)
    if "head" in only:
        profile_head(c, x, t, rng)
    if "expert_matmul" in only:
        profile_expert_matmul(c, t, rng)


def profile_lightning(c, x, seg, t):
    D, H, Dh = c.hidden_size, c.num_attention_heads, c.head_dim
    light = LightningAttention(c, 0, rngs=nnx.Rngs(0))
    f, p = module_fwd_bwd(light, lambda m, x: m(x, segment_ids=seg)[0])
    flops = 3 * 2 * t * (5 * D * H * Dh + 2 * H * Dh * (c.block_size + 1) / 2 + 2 * H * Dh * Dh)
    try_record("lightning attention layer", f"impl={light.kernel_impl}", lambda: timed(f, p, x), flops)


def profile_softmax(c, x, pos, seg, t, n):
    D, H, Dh = c.hidden_size, c.num_attention_heads, c.head_dim
    soft = SoftmaxAttention(c, 7, rngs=nnx.Rngs(0))
    K = c.num_key_value_heads
    flops = 3 * 2 * t * (2 * D * H * Dh + 2 * D * K * Dh + 2 * H * Dh * (n + 1) / 2)
    for impl in ("einsum", "sdpa", "segment"):
        soft.impl = impl
        for name, s in (("packed", seg), ("one doc", None)):
            f, p = module_fwd_bwd(soft, lambda m, x, s=s: m(x, positions=pos, segment_ids=s)[0])
            try_record("softmax attention layer", f"{impl}, {name}", lambda f=f, p=p: timed(f, p, x), flops)


def profile_moe(c, x, t):
    D = c.hidden_size
    moe = MoE(c, rngs=nnx.Rngs(0))
    flops = 3 * 2 * t * (D * c.num_local_experts + c.num_experts_per_tok * 3 * D * c.intermediate_size)
    for impl, mm, fuse in (("grouped", "xla", True), ("grouped", "auto", False), ("grouped", "auto", True),
                           ("dense", "auto", True)):
        moe.matmul_impl, moe.fuse_up = mm, fuse
        f, p = module_fwd_bwd(moe, lambda m, x, impl=impl: m(x, impl=impl)[0])
        name = f"{impl}, expert_matmul={mm}" + ("" if impl == "dense" else f", fuse_up={fuse}")
        try_record("MoE", name, lambda f=f, p=p: timed(f, p, x), flops)


def profile_head(c, x, t, rng):
    D = c.hidden_size
    w = jnp.asarray(rng.standard_normal((D, c.vocab_size)) / np.sqrt(D), jnp.float32)
    flops = 3 * 2 * t * D * c.vocab_size
    for name, dt, prec in (("fp32 HIGHEST", jnp.float32, jax.lax.Precision.HIGHEST),
                           ("fp32 DEFAULT (tf32)", jnp.float32, None), ("bf16", jnp.bfloat16, None)):
        def head(w, x, dt=dt, prec=prec):
            y = jnp.einsum("bnd,dv->bnv", x.astype(dt), w.astype(dt), precision=prec,
                           preferred_element_type=jnp.float32)
            return jnp.sum(jax.nn.log_softmax(y)[..., 0])
        f = jax.jit(jax.value_and_grad(head, argnums=(0, 1)))
        try_record("LM head + log_softmax", name, lambda f=f: timed(f, w, x), flops)


def profile_expert_matmul(c, t, rng):
    """The expert matmul alone: x [t * k, D] grouped over E experts, vs one dense matmul of the same FLOPs."""
    D, E, k, F = c.hidden_size, c.num_local_experts, c.num_experts_per_tok, c.intermediate_size
    rows = jnp.asarray(rng.standard_normal((t * k, D)), jnp.bfloat16)
    we = jnp.asarray(rng.standard_normal((E, D, F)) / np.sqrt(D), jnp.bfloat16)
    sizes = jnp.asarray(np.bincount(rng.integers(0, E, t * k), minlength=E), jnp.int32)
    flops = 2 * t * k * D * F
    rd = jax.jit(lambda a, w, s: jax.lax.ragged_dot(a, w, s, preferred_element_type=jnp.float32).astype(a.dtype))
    try_record("expert matmul fwd", "lax.ragged_dot", lambda: timed(rd, rows, we, sizes), flops)
    mm = jax.jit(lambda a, w: jnp.dot(a, w[0], preferred_element_type=jnp.float32).astype(a.dtype))
    try_record("expert matmul fwd", "dense dot, same FLOPs", lambda: timed(mm, rows, we), flops)
    if importlib.util.find_spec("jax.experimental.pallas.ops.gpu.ragged_dot_mgpu") and jax.default_backend() == "gpu":
        from jax.experimental.pallas.ops.gpu import ragged_dot_mgpu

        def mg(a, w, s):
            return ragged_dot_mgpu.ragged_dot(a, w, group_sizes=s, block_m=128, block_n=128, block_k=64,
                                              max_concurrent_steps=4, grid_block_n=2)
        try_record("expert matmul fwd", "pallas ragged_dot_mgpu", lambda: timed(jax.jit(mg), rows, we, sizes), flops)


TRACES = []  # markdown tables of --trace


def trace_steps(step, state, batch, variant, trace_dir):
    """Kernel-level profile of 2 train steps (experiments/trace_summary.py), each kernel named with its JAX op and
    source line from the compiled HLO (also written next to the trace); returns the advanced state."""
    from experiments.trace_summary import hlo_sources, markdown_table, traced_kernels

    box = [state]

    def call():
        box[0], m = step(box[0], batch)
        return m

    log_dir = os.path.join(trace_dir, variant.replace("/", "_").replace(":", "_"))
    try:
        sources = {}
        try:
            hlo = step.lower(state, batch).compile().as_text()
            os.makedirs(log_dir, exist_ok=True)
            with open(os.path.join(log_dir, "step.hlo.txt"), "w") as fh:
                fh.write(hlo)
            sources = hlo_sources(hlo)
        except Exception as e:  # noqa: BLE001 - the sources are a side note of a side note
            print(f"no HLO sources: {type(e).__name__}: {str(e)[:200]}", flush=True)
        TRACES.append(markdown_table(traced_kernels(call, 2, log_dir), 2, f"train step {variant}", top=40,
                                     log_dir=log_dir, sources=sources))
    except Exception as e:  # noqa: BLE001 - the trace is a side note
        TRACES.append(f"### train step {variant}\n\ntrace failed: {type(e).__name__}: {str(e)[:300]}\n")
    print(TRACES[-1], flush=True)
    return box[0]


def profile_steps(c: ModelConfig, b, n, seg, rng, variants, steps_timed, remat, trace_dir=""):
    peak = device_peak_flops()
    fpt = flops_per_token(c, n)["total"]
    tokens = jnp.asarray(rng.integers(0, c.vocab_size, (b, n)), jnp.int32)
    batch = {"tokens": tokens, "segment_ids": seg,
             "positions": jnp.asarray(np.concatenate([np.arange(n)[None]] * b)), "loss_mask": jnp.ones((b, n))}
    for variant in variants:
        moe, soft, head = variant.split("/")
        moe, _, matmul = moe.partition(":")
        cfg = c.replace(lm_head_dtype=head)
        kernels = {"moe": moe, "expert_matmul": matmul or "auto", "softmax": soft}
        graphdef, _ = model_graphdef(cfg, kernels, remat=remat)
        tx = optax.adamw(1e-4, b1=0.9, b2=0.95, eps=1e-15)
        sched = optax.constant_schedule(1e-4)
        try:
            state = init_train_state(init_params(cfg, 0), tx)
            step = make_train_step(graphdef, tx, sched, cfg)
            t0 = time.perf_counter()
            state, m = step(state, batch)
            jax.block_until_ready(m)
            compile_s = time.perf_counter() - t0
            state, m = step(state, batch)
            jax.block_until_ready(m)
            ts = []
            for _ in range(steps_timed):
                t0 = time.perf_counter()
                state, m = step(state, batch)
                jax.block_until_ready(m)
                ts.append(time.perf_counter() - t0)
            s = float(np.median(ts))
            mem = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**30
            util = mfu(b * n * fpt / s, peak)
            util = "n/a" if util is None else f"{100 * util:.1f}%"
            note = (f"{b * n / s / 1e3:.1f}k tok/s, MFU {util}, peak {mem:.1f} GiB, "
                    f"first step {compile_s:.0f} s, loss {float(m['loss']):.3f}")
            record("train step", f"{variant}{' remat' if remat else ''}", s, b * n * fpt, note)
            if trace_dir:
                state = trace_steps(step, state, batch, variant, trace_dir)
        except Exception as e:  # noqa: BLE001
            msg = str(e).splitlines()[0][:160]
            ROWS.append(("train step", variant, "failed", "", msg))
            print(f"train step {variant} FAILED {msg}", flush=True)
        finally:
            state = step = None
            jax.clear_caches()


def preset_config(name: str) -> ModelConfig:
    """The model config of an experiments/pretrain.py preset ("1b", "100m", ...)."""
    spec = importlib.util.spec_from_file_location("pretrain", os.path.join(ROOT, "experiments", "pretrain.py"))
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    return model_config(pretrain.get_config(name))


def write_report(path, title, header, script, intro, columns, rows, traces_heading, traces):
    """A markdown result file: title, device header, the command line that made it (this process's argv), the
    table of ``rows`` (tuples of strings) under ``columns``, then the kernel ``traces`` (markdown) if any."""
    with open(path, "w") as fh:
        fh.write(f"# {title}\n\n{header}\n\n`python3 {script} {' '.join(sys.argv[1:])}`\n\n{intro}\n\n"
                 f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n")
        fh.writelines(f"| {' | '.join(r)} |\n" for r in rows)
        if traces:
            fh.write(f"\n## {traces_heading}\n\n" + "\n".join(traces))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1b")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--mean-doc", type=float, default=2048.0, help="mean packed document length")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS} ('' for none)")
    ap.add_argument("--variants", default="grouped:xla/einsum/float32,grouped/sdpa/bfloat16",
                    help="comma-separated moe[:expert_matmul]/softmax/lm_head_dtype train-step variants "
                    "('' for none)")
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--layers", type=int, default=0, help="override the preset's layer count (hybrid layout)")
    ap.add_argument("--steps-timed", type=int, default=5)
    ap.add_argument("--out", default="")
    ap.add_argument("--trace", default="", help="also trace 2 steps of each variant here and add their kernel "
                    "tables (experiments/trace_summary.py) to --out")
    args = ap.parse_args()

    c = preset_config(args.preset)
    if args.layers:
        c = c.replace(num_hidden_layers=args.layers, attn_type_list=hybrid_layout(args.layers))
    rng = np.random.default_rng(0)
    b, n = args.batch, args.seq
    seg = packed_segments(rng, b, n, args.mean_doc)
    dev = jax.devices()[0]
    header = (f"device {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, python "
              f"{platform.python_version()}, preset {args.preset} ({c.num_hidden_layers} layers, "
              f"{param_counts(c)['active'] / 1e9:.2f}B active), "
              f"batch {b} x {n}, packed docs mean {args.mean_doc:.0f}, {datetime.date.today()}")
    print(header, flush=True)
    only = [p for p in args.parts.split(",") if p]
    if any(p not in PARTS for p in only):
        ap.error(f"--parts: choose from {PARTS}")
    profile_parts(c, b, n, seg, rng, only)
    variants = [v for v in args.variants.split(",") if v]
    profile_steps(c, b, n, seg, rng, variants, args.steps_timed, args.remat, args.trace)
    if args.out:
        write_report(args.out, "Train-step profile", header, "experiments/profile_train.py",
                     "Median over repeats after warm-up; forward + backward unless named fwd. TFLOP/s counts model "
                     "FLOPs (m1jax.train.flops).", ("part", "variant", "ms", "TFLOP/s", "note"), ROWS,
                     "Kernels of the traced train steps", TRACES)


if __name__ == "__main__":
    main()
