"""Where a decode step's time goes: each part of the 1b hybrid model's one-token step timed alone, at several batches.

    python3 experiments/profile_decode.py --out $OUT/profile_decode.md [--batches 1,16,64] [--parts ...] \
        [--iters 16] [--budget-s S]
    JAX_PLATFORMS=cpu python3 experiments/profile_decode.py --small --out /tmp/pd/profile_decode.md  # CPU check

One GPU process. Model: long_generation.py's base_config (the `1b` preset, bf16 params; rollout.py's copy of it
where ml-collections is missing, as on the GPU image); --small: ModelConfig.tiny (L S L S, hidden 64) in bf16.
Each part runs --iters times in one jitted lax.fori_loop (as the sampler's loop: no host dispatch per iteration),
its output fed back as the next input, the carry (caches, states) donated; us/iter = timing.median_ms of --repeats
calls (after a compiling call and --warmup calls) / --iters. Parts (--parts), at each batch of --batches:
  lightning_layer  a lightning DecoderLayer step with its fp32 state [b, H, D, D] (its cache entry); its attention
                   module alone; the op pallas_kernels.lightning_attention_decode alone (auto: XLA's reference.step
                   on a GPU; triton).
  softmax_layer    a softmax DecoderLayer step over a KV cache of max_len --context + 64 at index --context (each
                   iteration rewrites slot `context`, attends to context + 1 slots), and its attention module alone,
                   decode_impl auto (the Triton split-K kernel on a GPU) and xla.
  moe              the MoE block on [b, 1, hidden]: grouped with matmul_impl auto (Mosaic ragged dot on Hopper) and
                   xla (lax.ragged_dot), and dense; x + moe(x) is fed back (routing stays data dependent).
  head             final norm + lm_head_logits + argmax on [b, hidden]: bf16, fp32 highest, fp32 bf16x3 (a CPU
                   computes every fp32 head in IEEE fp32).
  embed            the embedding lookup (next tokens: the argmax over hidden of the rows).
  step             the whole greedy decode step (long_generation.make_step: model.forward(tokens[:, None],
                   cache=cache) + argmax) at --context, decode auto and xla; the cache index is reset every call.
Floor = bytes the part must read / rollout.copy_bandwidth (jit(x + 1)): parameters in their stored dtype (experts
times the expected fraction hit, 1 - (1 - k/E)^batch), lightning state read + written, valid K/V, embedding rows;
the step's is long_generation.step_floor; ratio = us / floor. "Sum of parts" = lightning layers x lightning_layer +
softmax layers x softmax_layer + embed + head (the config's), next to step. Writes --out (markdown) and the same
stem .json (device, versions, shapes, every case) after each case; --budget-s: no case starts after that many
seconds (recorded as skipped).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from experiments.benchmarks.long_generation import (  # noqa: E402
    GiB, Bench, base_config, describe, layer_counts, make_step, set_kernels, skip_reason, step_floor)
from experiments.benchmarks.rollout import copy_bandwidth, param_counts  # noqa: E402
from experiments.benchmarks.timing import median_ms  # noqa: E402
from m1jax.config import ModelConfig  # noqa: E402
from m1jax.model import MiniMaxM1  # noqa: E402
from m1jax.model.head import lm_head_logits  # noqa: E402
from pallas_kernels import lightning_attention_decode  # noqa: E402

PARTS = ("loop", "lightning_layer", "softmax_layer", "moe", "head", "embed", "step")
HEADS = (("bfloat16", "highest"), ("float32", "highest"), ("float32", "bf16x3"))
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")  # CPU: no donation


def chained(f, consts, carry):
    """A zero-argument call for median_ms: f(consts, carry) -> carry, each call's carry the previous call's result."""
    box = [carry]

    def call():
        box[0] = f(consts, box[0])
        return box[0]

    return call


UNROLL = [1]  # --unroll: fori_loop's unroll in looped()


def looped(fn, iters, consts, carry):
    """chained() of ``iters`` applications of fn(consts, carry) -> carry in one jitted fori_loop, carry donated."""
    f = jax.jit(lambda consts, carry: jax.lax.fori_loop(0, iters, lambda _, c: fn(consts, c), carry,
                                                        unroll=UNROLL[0]), donate_argnums=(1,))
    return chained(f, consts, carry)


def module_call(module, fn, iters, consts, carry):
    """looped() of fn(module, consts, carry) -> carry, the module's state passed in (split / merged)."""
    graphdef, state = nnx.split(module)
    return looped(lambda sc, c: fn(nnx.merge(graphdef, sc[0]), sc[1], c), iters, (state, consts), carry)


def weight_bytes(module, batch: int, config: ModelConfig) -> float:
    """Parameter bytes a step reads: everything but experts, plus the expected fraction of experts hit."""
    E, k = config.num_local_experts, config.num_experts_per_tok
    p = param_counts(module)
    return p["experts"]["bytes"] * (1.0 - (1.0 - k / E) ** batch) + sum(p[c]["bytes"] for c in p if c != "experts")


def measure(bench, part, variant, batch, floor_bytes, make, **extra):
    """Time make()'s call (one fori_loop of --iters) and record us/iter next to its memory floor."""
    a = bench.args
    floor_us = 1e6 * floor_bytes / bench.meta["copy"]["bandwidth_Bps"]
    case = dict(part=part, variant=variant, batch=batch, floor_bytes=floor_bytes, floor_us=floor_us, **extra)
    if reason := skip_reason(bench):
        return bench.record(dict(case, skipped=reason))
    try:
        call = make()
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        case["compile_s"] = time.perf_counter() - t0
        case["us"] = 1e3 * median_ms(call, iters=a.repeats, warmup=a.warmup) / a.iters
        case["ratio"] = case["us"] / floor_us if floor_us > 0 else None
    except Exception as e:  # noqa: BLE001 - a failed variant is reported, the rest still run
        traceback.print_exc()
        case["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    bench.record(case)


def layer_step(layer, kw, xs):
    """A DecoderLayer's one-token step: (x, cache entry) -> (x, new entry)."""
    return layer(xs[0], cache_entry=xs[1], **kw)[:2]


def tokens_x(c: ModelConfig, b: int, rng) -> jax.Array:
    return jnp.asarray(rng.standard_normal((b, 1, c.hidden_size)), c.jnp_dtype)


def run_lightning(bench, model, c, b, rng):
    i = next(i for i in range(c.num_hidden_layers) if c.is_lightning(i))
    layer, H, D, it = model.layers[i], c.num_attention_heads, c.head_dim, bench.args.iters
    state = lambda: jnp.zeros((b, H, D, D), jnp.float32)  # noqa: E731
    sbytes = 2 * b * H * D * D * 4
    kw = dict(positions=jnp.zeros((b, 1), jnp.int32), kv_start=jnp.zeros((b,), jnp.int32))

    def attn_fn(m, _, xs):  # the residual keeps the fed-back input's scale
        y, s = m(xs[0], state=xs[1])
        return xs[0] + y, s

    measure(bench, "lightning_layer", "layer", b, weight_bytes(layer, b, c) + sbytes,
            lambda: module_call(layer, layer_step, it, kw, (tokens_x(c, b, rng), state())))
    measure(bench, "lightning_layer", "attn module", b, weight_bytes(layer.self_attn, b, c) + sbytes,
            lambda: module_call(layer.self_attn, attn_fn, it, None, (tokens_x(c, b, rng), state())))
    interpret = jax.default_backend() != "gpu"
    for impl in ("auto", "triton"):
        def op(decay, qs, impl=impl):  # (o, state): o is the next q = k = v
            return lightning_attention_decode(qs[0], qs[0], qs[0], decay, qs[1], impl=impl, interpret=interpret)

        qkv = jnp.asarray(rng.standard_normal((b, H, D)) * 0.1, c.jnp_dtype)
        decay = jnp.asarray(layer.self_attn.decay, jnp.float32)
        measure(bench, "lightning_layer", f"op {impl}", b, sbytes,
                lambda op=op, qkv=qkv, decay=decay: looped(op, it, decay, (qkv, state())))


def run_softmax(bench, model, c, b, rng):
    i = next(i for i in range(c.num_hidden_layers) if not c.is_lightning(i))
    layer, a = model.layers[i], bench.args
    ctx, max_len, K, D = a.context, a.context + 64, c.num_key_value_heads, c.head_dim
    kv = lambda: tuple(jnp.zeros((b, max_len, K, D), c.jnp_dtype) for _ in range(2))  # noqa: E731
    kv_bytes = 2 * b * (ctx + 1) * K * D * c.jnp_dtype.itemsize
    kw = dict(positions=jnp.full((b, 1), ctx, jnp.int32), kv_start=jnp.zeros((b,), jnp.int32),
              cache_index=jnp.asarray(ctx, jnp.int32))

    def attn_fn(m, kw, xs):  # the residual keeps the fed-back input's scale
        y, cache = m(xs[0], positions=kw["positions"], kv_cache=xs[1], cache_index=kw["cache_index"],
                     kv_start=kw["kv_start"])
        return xs[0] + y, cache

    for impl in a.decode_impls:
        layer.self_attn.decode_impl = impl
        path = layer.self_attn.decode_kernel((b, c.num_attention_heads, D), (b, max_len, K, D)) or "xla"
        for name, mod, fn in (("layer", layer, layer_step), ("attn module", layer.self_attn, attn_fn)):
            measure(bench, "softmax_layer", f"{name} {impl}", b, weight_bytes(mod, b, c) + kv_bytes,
                    lambda mod=mod, fn=fn: module_call(mod, fn, a.iters, kw, (tokens_x(c, b, rng), kv())),
                    path=path, context=ctx, max_len=max_len)
    layer.self_attn.decode_impl = "auto"


def run_moe(bench, model, c, b, rng):
    moe = model.layers[0].block_sparse_moe
    mosaic = [("grouped", "mosaic_gpu")] if jax.default_backend() == "gpu" else []  # "auto" is XLA's below 128 rows
    for impl, mm in [("grouped", "auto"), ("grouped", "xla")] + mosaic + [("dense", "auto")]:
        moe.impl, moe.matmul_impl = impl, mm
        fn = lambda m, _, x: x + m(x)[0]  # noqa: E731
        measure(bench, "moe", impl + (f" {mm}" if impl == "grouped" else ""), b, weight_bytes(moe, b, c),
                lambda fn=fn: module_call(moe, fn, bench.args.iters, None, tokens_x(c, b, rng)))
    moe.impl, moe.matmul_impl = "grouped", "auto"


def run_head(bench, model, c, b, rng):
    w = model.lm_head[...]
    for dt, prec in HEADS:
        def head(norm, w, x, dt=dt, prec=prec):
            tok = jnp.argmax(lm_head_logits(norm(x.astype(jnp.float32)), w, dtype=dt, precision=prec), -1)
            return x + 1e-3 * (tok % 2)[:, None].astype(x.dtype)

        x = jnp.asarray(rng.standard_normal((b, c.hidden_size)), c.jnp_dtype)
        measure(bench, "head", dt if dt != "float32" else f"{dt} {prec}", b, w.nbytes + model.norm.weight[...].nbytes,
                lambda head=head, x=x: module_call(model.norm, head, bench.args.iters, w, x),
                config_head=(dt == c.lm_head_dtype and (dt != "float32" or prec == c.lm_head_precision)))


def run_loop(bench, model, c, b, rng):
    """An (almost) empty iteration, x + 1 on [b] int32: what the loop itself costs per iteration."""
    del model, c, rng
    measure(bench, "loop", "x + 1", b, 0.0, lambda: looped(lambda _, x: x + 1, bench.args.iters, None,
                                                            jnp.zeros((b,), jnp.int32)))


def kernel_count(hlo: str) -> dict:
    """Kernels a compiled (GPU) HLO module launches, estimated: fusion and custom-call instructions (plus copies)
    outside fused computations, counted once per computation (a while body's count is per iteration)."""
    counts, inside = {"fusion": 0, "custom-call": 0, "copy": 0}, False
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            name = line.split()[0].lstrip("%")
            inside = "fused" in name or "fusion" in name or name.endswith("_computation") or "computation." in name
            continue
        if inside:
            continue
        for op in counts:
            if f" {op}(" in line:
                counts[op] += 1
    return counts


def run_embed(bench, model, c, b, rng):
    table = model.embed_tokens[...]
    row = c.hidden_size * table.dtype.itemsize

    def embed(t, tok):
        return jnp.argmax(jnp.take(t, tok, axis=0).astype(c.jnp_dtype), -1).astype(jnp.int32) % c.vocab_size

    tok = jnp.asarray(rng.integers(0, c.vocab_size, (b,)), jnp.int32)
    measure(bench, "embed", "take", b, b * row, lambda: looped(embed, bench.args.iters, table, tok))


def run_step(bench, model, c, b, rng):
    a = bench.args
    for impl in a.decode_impls:
        set_kernels(model, decode=impl)
        graphdef, state = nnx.split(model)

        def make(graphdef=graphdef, state=state, impl=impl):
            f = make_step(graphdef, a.iters)
            tok = jnp.asarray(rng.integers(1, c.vocab_size, (b,)), jnp.int32)
            cache = model.init_cache(b, a.context + 64)  # context + iters slots are written per call
            if b == bench.meta["batches"][0]:  # the kernel count hardly depends on the batch: once per path
                try:
                    hlo = f.lower(state, tok, cache).compile().as_text()
                    bench.meta.setdefault("step_kernels", {})[impl] = kernel_count(hlo)
                except Exception as e:  # noqa: BLE001 - the count is a side note
                    bench.notes.append(f"kernel count ({impl}) failed: {type(e).__name__}: {str(e)[:200]}")
            # the index is donated with the cache: a fresh one each call
            return chained(lambda s, tfc: f(s, tfc[0], tfc[2].replace(index=jnp.asarray(a.context, jnp.int32))),
                           state, (tok, jnp.bool_(True), cache))

        measure(bench, "step", impl, b, step_floor(c, a.context, b)["total"], make, context=a.context)
        if a.trace and not skip_reason(bench):
            trace_step(bench, make, f"decode step, batch {b}, decode {impl}, context {a.context}")
    set_kernels(model, decode="auto")


def trace_step(bench, make, title):
    """Kernel-level profile of 3 calls (each --iters steps) of the step: appended to <out stem>_trace.md."""
    from experiments.trace_summary import markdown_table, traced_kernels

    a = bench.args
    log_dir = os.path.join(a.trace, title.replace(" ", "_").replace(",", ""))
    try:
        rows = traced_kernels(make(), 3, log_dir)
        for r in rows:  # per decode step, not per call of --iters steps
            r["us_per_call"] /= a.iters
            r["launches_per_call"] /= a.iters
        text = markdown_table(rows, 3 * a.iters, title + " (per decode step)", log_dir=log_dir)
    except Exception as e:  # noqa: BLE001 - the trace is a side note
        text = f"### {title}\n\ntrace failed: {type(e).__name__}: {str(e)[:300]}\n"
    with open(os.path.splitext(os.path.abspath(a.out))[0] + "_trace.md", "a") as f:
        f.write(text + "\n")


def sum_of_parts(meta, cases) -> list[str]:
    """lightning layers x lightning layer + softmax layers x softmax layer + embed + head vs the measured step."""
    nl, ns = meta["layer_counts"]
    got = {(c["part"], c["variant"], c["batch"]): c["us"] for c in cases if "us" in c}
    heads = {c["batch"]: c["us"] for c in cases if c.get("config_head") and "us" in c}
    out = []
    for (part, impl, b), step in got.items():
        parts = (got.get(("lightning_layer", "layer", b)), got.get(("softmax_layer", f"layer {impl}", b)),
                 got.get(("embed", "take", b)), heads.get(b))
        if part != "step" or None in parts:
            continue
        total = nl * parts[0] + ns * parts[1] + parts[2] + parts[3]
        out.append(f"| {b} | {impl} | {nl} x {parts[0]:.1f} + {ns} x {parts[1]:.1f} + {parts[2]:.1f} + "
                   f"{parts[3]:.1f} | {total:.1f} | {step:.1f} | {step - total:+.1f} |")
    return out


def markdown(m, cases, notes) -> str:
    out = [f"# Decode-step profile: each part alone ({m['device']})", "", f"{m['date']}; jax {m['jax']}, jaxlib "
           f"{m['jaxlib']}, flax {m['flax']}, python {m['python']}; backend {m['backend']}", "", f"`{m['command']}`",
           "", f"Model: {m['model']} ({m['config_source']}). Softmax caches: context {m['context']}, max_len "
           f"{m['context'] + 64}. Each part runs {m['iters']} times in one jitted fori_loop, its output fed back; "
           f"us/iter = median of {m['repeats']} calls / {m['iters']}; the parts' loops unrolled {m.get('unroll', 1)}x; "
           f"XLA_FLAGS `{m.get('xla_flags') or ''}`. Copy bandwidth ({m['copy']['how']}): "
           f"{m['copy']['bandwidth_Bps'] / 1e9:,.0f} GB/s; floor = bytes the part must read / that.", "",
           "| part | variant | batch | us / iter | floor us | ratio | note |", "|---|---|---|---|---|---|---|"]
    for c in cases:
        note = " ".join(x for x in (f"path {c['path']}" if c.get("path") else "",
                                    "(config's head)" if c.get("config_head") else "",
                                    f"compile {c['compile_s']:.1f} s" if "compile_s" in c else "",
                                    c.get("skipped") or c.get("error") or "") if x)
        ratio = "-" if c.get("ratio") is None else f"{c['ratio']:.1f}"
        us = f"{c['us']:.1f} | {c['floor_us']:.2f} | {ratio}" if "us" in c else f"- | {c['floor_us']:.2f} | -"
        out.append(f"| {c['part']} | {c['variant']} | {c['batch']} | {us} | {note} |")
    if m.get("step_kernels"):
        out += ["", "Kernels per decode step (compiled HLO, estimated: fusions / custom calls / copies outside fused "
                "computations): " + "; ".join(f"{k}: {v}" for k, v in m["step_kernels"].items())]
    rows = sum_of_parts(m, cases)
    if rows:
        out += ["", "## Sum of parts vs whole step (us)", "", "| batch | decode | lightning + softmax + embed + "
                "head | sum | step | step - sum |", "|---|---|---|---|---|---|"] + rows
    return "\n".join(out + [""] + [f"- {n}" for n in notes]) + "\n"


class Profile(Bench):
    def write(self):  # --out and the same stem .json (Bench's own write makes long_generation's tables)
        out = os.path.abspath(self.args.out)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        stem = os.path.splitext(out)[0]
        with open(stem + ".json.tmp", "w") as f:
            json.dump({"meta": self.meta, "cases": self.cases, "notes": self.notes}, f, indent=1, default=float)
        os.replace(stem + ".json.tmp", stem + ".json")
        with open(out, "w") as f:
            f.write(markdown(self.meta, self.cases, self.notes))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="markdown path; the JSON goes next to it (same stem)")
    ap.add_argument("--small", action="store_true", help="tiny bf16 model on a CPU (seconds): checks the script")
    ap.add_argument("--batches", default=None, help="default 1,16,64; --small 1,4 (Triton interpret mode is slow)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    ap.add_argument("--iters", type=int, default=16, help="iterations of each part per call (one fori_loop)")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per case (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls after the compiling one")
    ap.add_argument("--context", type=int, default=None, help="softmax KV context (default 4096; --small 256)")
    ap.add_argument("--decode-impls", default=None, help="softmax decode paths (default auto,xla; --small triton,xla)")
    ap.add_argument("--copy-gib", type=float, default=None, help="copy-bandwidth array (default 4; --small 1/16)")
    ap.add_argument("--budget-s", type=float, default=0, help="start no new measurement after this many seconds")
    ap.add_argument("--trace", default="", help="also trace each step case here (experiments/trace_summary.py); "
                    "tables go to <out stem>_trace.md")
    ap.add_argument("--unroll", type=int, default=1, help="fori_loop unroll of each part's loop (not the step's)")
    args = ap.parse_args()
    UNROLL[0] = args.unroll
    parts = [p for p in args.parts.split(",") if p]
    if set(parts) - set(PARTS):
        raise SystemExit(f"--parts: choose from {PARTS}")
    args.context = args.context or (256 if args.small else 4096)
    if args.context % 64 or not 0 < args.iters <= 64:
        raise SystemExit("--context: a multiple of 64 (the decode kernel's block); --iters: 1 to 64 (the step's slack)")
    args.decode_impls = (args.decode_impls or ("triton,xla" if args.small else "auto,xla")).split(",")
    if args.small:
        c = ModelConfig.tiny(dtype="bfloat16", param_dtype="bfloat16", lm_head_dtype="bfloat16")
        source = "ModelConfig.tiny in bf16"
    else:
        c, source = base_config(False)
    batches = [int(b) for b in (args.batches or ("1,4" if args.small else "1,16,64")).split(",") if b]
    meta = dict(device=jax.devices()[0].device_kind, backend=jax.default_backend(), jax=jax.__version__,
                jaxlib=jaxlib.__version__, flax=flax.__version__, python=platform.python_version(),
                date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                command="python3 " + " ".join(sys.argv), model=describe(c), config_source=source,
                config=c.to_dict(), layer_counts=layer_counts(c), parts=parts, batches=batches, context=args.context,
                iters=args.iters, repeats=args.repeats, warmup=args.warmup, decode_impls=args.decode_impls,
                unroll=args.unroll, xla_flags=os.environ.get("XLA_FLAGS", ""))
    meta["copy"] = copy_bandwidth(int((args.copy_gib or (1 / 16 if args.small else 4)) * GiB))
    bench = Profile(args, meta)
    model = MiniMaxM1(c, rngs=nnx.Rngs(0))
    jax.block_until_ready(nnx.state(model))
    rng = np.random.default_rng(0)
    runs = dict(loop=run_loop, lightning_layer=run_lightning, softmax_layer=run_softmax, moe=run_moe, head=run_head,
                embed=run_embed, step=run_step)
    for part in parts:
        for b in batches:
            runs[part](bench, model, c, b, rng)
            jax.clear_caches()
    bench.write()
    print(markdown(bench.meta, bench.cases, bench.notes), flush=True)


if __name__ == "__main__":
    main()
