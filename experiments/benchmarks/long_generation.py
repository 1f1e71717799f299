"""Long-context generation on one GPU: decode-step latency vs context length and prefill time / memory vs prompt
length, for the `1b` preset's hybrid model and its all-softmax twin, side by side in one process (issue 12, item 4).

    python3 experiments/benchmarks/long_generation.py --out $OUT [--parts decode,prefill,memory] [--models ...]
    JAX_PLATFORMS=cpu python3 experiments/benchmarks/long_generation.py --small --out /tmp/lg  # CPU check, < 1 min
    python3 experiments/benchmarks/long_generation.py --merge a.json b.json c.json --out experiments/results \
        --name long_generation_h200                                                         # join runs here

A full run takes 3 device calls of one GPU each (decode hybrid ~3.5 min, decode softmax ~2.5 min, prefill + memory
~2.5 min on an H200), or two calls of a 2-GPU machine with experiments/benchmarks/long_generation_gpu.sh (how
experiments/results/long_generation_h200 was made). --budget-s: no new measurement starts after it; the rest are
recorded as skipped, and every case is written to --out as it ends; then --merge here.
Cases a budget skipped can be rerun alone with --contexts / --batches / --prompts. --quick (GPU): contexts 4K and
64K at batch 16, prompts 4K and 64K, both models, every part (~3-4 min).

Models: experiments/pretrain.py `1b` (m1jax.train.config.model_config(get_config("1b")): 16 layers, 7:1
lightning:softmax, hidden 2048, 16 heads x 128, 4 kv heads, 8 experts top-2 of 2816, vocab 32768, bf16
activations) with bf16 parameters; where ml-collections is missing (the GPU image) the same shape is built by
experiments/benchmarks/rollout.py's model_config, which checks itself against the preset where it can. "softmax" is
the same config with every layer softmax. Random weights: the model's own init, normal with std 0.02 (a scaled
normal: activations stay finite; each case records whether its logits are). --small: rollout's toy shape (2 layers
L S, hidden 64, 4 heads x 16, 2 kv heads), still bf16, on a CPU.

1. decode: --steps-per-call (8) cached greedy decode steps, model.forward(tokens[:, None], cache=cache), in one
   on-device fori_loop as the sampler runs them (with 1, every step also pays a host dispatch and sync: on the H200
   1b shape 5.0-5.8 ms per step at a 1K-4K context against 3.2-4.0 ms in the loop; the first run measured that
   way, experiments/results/long_generation_h200_dispatch_*), jitted with the cache donated, for each context in
   (1K, 4K, 16K, 64K; 128K hybrid only) and batch in (1, 16, 64). The cache (model.init_cache, zeros) has max_len
   = context rounded up to a multiple of 64, plus the slack the timed calls need, and its index set to `context`:
   the first step writes slot `context` and attends to context + 1 slots. Each decode path of --decode-impls is
   timed in turn on a fresh cache: "auto" (the default: on one GPU the softmax layers run
   pallas_kernels.decode_attention's split-K kernel, which reads only the valid slots; the path it resolved to is
   recorded) and "xla" (m1jax.train.step.set_kernels(model, decode="xla"): scores over every slot of the cache).
   Lightning layers cost the same at any context. Timing: one call that compiles, --warmup calls, then --iters
   timed calls, each to jax.block_until_ready on the host clock; median, min and max of call time / steps per
   call. The index advances steps-per-call slots per call (inside the slack), so the context grows by that much
   (at most 144 slots by default) during the timing. tokens/s = batch / median step time.
   Skipped (recorded with the reason): cases whose cache exceeds --mem-limit-gib (120), estimated as
   2 x softmax layers x batch x max_len x kv_heads x head_dim x 2 bytes + lightning layers x batch x heads x D x
   D x 4 bytes (the all-softmax model at 64K x 64 rows: 128 GiB).
   Memory floor per step (bytes a step must move at least, over the measured copy bandwidth):
   m1jax.generation_cost.decode_cost(config, position=context + 1, batch)["bytes_per_step"]: every non-expert
   weight incl. the LM head, the expected experts the batch touches (E (1 - (1 - k/E)^batch) per layer: 2 of 8 at
   batch 1, ~all from 16 rows on), `batch` embedding rows, the lightning states read + written (2 x H D^2 x 4
   bytes per layer and row) and the valid K/V read (2 x kv_heads x D x 2 bytes x (context + 1) per softmax layer
   and row). Copy bandwidth: rollout.py's copy_bandwidth (jit(x + 1) over --copy-gib fp32, read + write counted).
   step/floor = median step ms / floor ms (1.0: a step at copy speed).
2. prefill: m1jax.sampling._prefill (the sampler's prefill: model.forward(..., cache_empty=True) over the prompt,
   LM head on the last position, cache allocated inside) at batch 1 for prompts of 1K, 4K, 16K, 64K tokens, cache
   max_len = prompt rounded up to 64, plus 64. Compiled ahead of time (compile seconds recorded), then --warmup +
   --iters timed calls; tokens/s = prompt / median. Each program's XLA memory analysis is recorded too.
3. memory: the compiled prefill's memory analysis (jax.jit(...).lower(...).compile().memory_analysis(): temp =
   scratch, output = the cache + logits, argument = parameters + prompt) for a 4K prompt into a 4K-ish cache
   (4160 slots) vs a 64K cache (65536 slots), and for a 16K prompt likewise (16448 vs 65536): the target is temp
   growing with the prompt, not with max_len (output grows with max_len: it is the cache). Compiled, not run.

Outputs under --out: <name>.json (device, versions, shapes, copy bandwidth, every case with its medians, min /
max and all timings; rewritten after each case so a timeout still leaves data) and <name>.md (tables). One JSON
line per case on stdout as it goes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
# The largest case run holds a 32 GiB cache (plus ~5 GiB of parameters); let XLA's pool take more than its default
# 75% of the GPU anyway, so that --mem-limit-gib (120) is what decides.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
from flax import nnx  # noqa: E402

from experiments.benchmarks.rollout import check_preset, copy_bandwidth, param_counts  # noqa: E402
from experiments.benchmarks.rollout import model_config as rollout_config  # noqa: E402
from m1jax.config import FULL, ModelConfig  # noqa: E402
from m1jax.model import MiniMaxM1  # noqa: E402
from m1jax.model.attention import DECODE_BLOCK  # noqa: E402
from m1jax.sampling import _prefill  # noqa: E402

from m1jax.generation_cost import decode_cost  # noqa: E402
from m1jax.train.step import set_kernels  # noqa: E402  (m1jax.train.step needs no ml-collections)

GiB = 2**30
PARTS = ("decode", "prefill", "memory")
MODELS = ("hybrid", "softmax")


# ------------------------------------------------------------------------------------------------ setup


def round_up(n: int, m: int = DECODE_BLOCK) -> int:
    return -(-n // m) * m


def base_config(small: bool) -> tuple[ModelConfig, str]:
    """The 1b preset with bf16 parameters (or rollout's toy shape with --small), and where it came from."""
    if small:
        return rollout_config("bfloat16", True), "rollout.py's --quick toy shape (bf16)"
    try:
        from experiments.pretrain import get_config
        from m1jax.train.config import model_config
    except ImportError as e:
        c = rollout_config("bfloat16", False)
        return c, f"rollout.py's copy of experiments/pretrain.py:1b (bf16 params); {check_preset(c)} ({e.name})"
    c = model_config(get_config("1b")).replace(param_dtype="bfloat16")
    return c, "model_config(get_config('1b')) with param_dtype bfloat16"


def configs(small: bool) -> tuple[dict[str, ModelConfig], str]:
    hybrid, source = base_config(small)
    softmax = hybrid.replace(attn_type_list=tuple(FULL for _ in range(hybrid.num_hidden_layers)))
    return {"hybrid": hybrid, "softmax": softmax}, source


def layer_counts(c: ModelConfig) -> tuple[int, int]:
    n_light = sum(c.is_lightning(i) for i in range(c.num_hidden_layers))
    return n_light, c.num_hidden_layers - n_light


def cache_bytes(c: ModelConfig, batch: int, max_len: int) -> int:
    n_light, n_soft = layer_counts(c)
    kv = 2 * n_soft * batch * max_len * c.num_key_value_heads * c.head_dim * jnp.dtype(c.dtype).itemsize
    return kv + n_light * batch * c.num_attention_heads * c.head_dim * c.head_dim * 4


def describe(c: ModelConfig) -> str:
    layout = "".join("L" if c.is_lightning(i) else "S" for i in range(c.num_hidden_layers))
    return (f"{c.num_hidden_layers} layers {layout}, hidden {c.hidden_size}, {c.num_attention_heads} heads x "
            f"{c.head_dim}, {c.num_key_value_heads} kv heads, {c.num_local_experts} experts top-"
            f"{c.num_experts_per_tok} x {c.intermediate_size}, vocab {c.vocab_size}, params / activations "
            f"{c.param_dtype} / {c.dtype}")


def make_step(graphdef, steps_per_call: int = 1):
    """``steps_per_call`` greedy decode steps in one on-device loop (as the sampler runs them: no host round trip
    per token), the cache donated: (state, tokens [b], cache) -> (last tokens [b], all logits finite, cache)."""

    def step(state, tokens, cache):
        model = nnx.merge(graphdef, state)

        def body(_, carry):
            tok, finite, cache = carry
            out = model.forward(tok[:, None], cache=cache)
            logits = out.logits[:, -1]
            return jnp.argmax(logits, -1).astype(tok.dtype), finite & jnp.all(jnp.isfinite(logits)), out.cache

        return jax.lax.fori_loop(0, steps_per_call, body, (tokens, jnp.bool_(True), cache))

    return jax.jit(step, donate_argnums=(2,))


def slack(args) -> int:
    """Cache slots past the context: every timed, warm-up and compiling call advances the index by
    --steps-per-call, rounded up to whole blocks of 64."""
    return round_up((1 + args.warmup + args.iters) * args.steps_per_call + 1)


def mem_stats(compiled) -> dict | None:
    try:
        ma = compiled.memory_analysis()
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    if ma is None:
        return None
    keys = ("temp_size_in_bytes", "output_size_in_bytes", "argument_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes")
    return {k.replace("_size_in_bytes", "_bytes"): int(getattr(ma, k)) for k in keys if hasattr(ma, k)}


def stats_ms(ts: list[float]) -> dict:
    ms = [1e3 * t for t in ts]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "times_ms": ms}


# ------------------------------------------------------------------------------------------------ bench


class Bench:
    def __init__(self, args, meta):
        self.args, self.meta, self.t0 = args, meta, time.time()
        self.cases: list[dict] = []
        self.notes: list[str] = []

    def out_of_time(self) -> bool:
        return self.args.budget_s > 0 and time.time() - self.t0 > self.args.budget_s

    def record(self, case: dict):
        case["t_s"] = round(time.time() - self.t0, 1)
        self.cases.append(case)
        print(json.dumps({k: v for k, v in case.items() if k != "times_ms"}, default=float), flush=True)
        self.write()

    def note(self, msg: str):
        print(f"note: {msg}", flush=True)
        self.notes.append(msg)
        self.write()

    def write(self):
        write_outputs(self.args.out, self.args.name, self.meta, self.cases, self.notes)


def skip_reason(bench) -> str | None:
    return f"skipped: --budget-s {bench.args.budget_s:.0f} spent" if bench.out_of_time() else None


def step_floor(config: ModelConfig, context: int, batch: int) -> dict:
    """Bytes one decode step at `context` must move (module docstring): generation_cost.decode_cost with one new
    token (mean KV length context + 1)."""
    b = decode_cost(config, context + 1, batch, dtype_bytes=jnp.dtype(config.param_dtype).itemsize,
                    kv_bytes=jnp.dtype(config.dtype).itemsize)["bytes_per_step"]
    return {k: float(b[k]) for k in ("weights", "kv_cache", "lightning_state", "total")}


def run_decode(bench, name: str, config: ModelConfig, model, steps: dict, state, contexts, batches):
    a, bw = bench.args, bench.meta["copy"]["bandwidth_Bps"]
    limit = a.mem_limit_gib * GiB
    rng = np.random.default_rng(0)
    soft = next((i for i in range(config.num_hidden_layers) if not config.is_lightning(i)), None)
    for context in contexts:
        for batch in batches:
            max_len = round_up(context) + slack(a)
            est = cache_bytes(config, batch, max_len)
            floor = step_floor(config, context, batch)
            floor_ms = 1e3 * floor["total"] / bw
            E, k = config.num_local_experts, config.num_experts_per_tok
            base = dict(part="decode", model=name, context=context, batch=batch, max_len=max_len,
                        cache_bytes=est, floor_bytes=floor, floor_ms=floor_ms,
                        experts_hit_per_layer=E * (1.0 - (1.0 - k / E) ** batch))
            for impl in steps:
                case = dict(base, impl=impl)
                if est > limit:
                    bench.record(dict(case, skipped=f"cache {est / GiB:.1f} GiB > --mem-limit-gib {a.mem_limit_gib}"))
                    continue
                if reason := skip_reason(bench):
                    bench.record(dict(case, skipped=reason))
                    continue
                if soft is not None:
                    set_kernels(model, decode=impl)
                    attn = model.layers[soft].self_attn
                    kv = (batch, max_len, attn.num_kv_heads, attn.head_dim)
                    case["path"] = attn.decode_kernel((batch, attn.num_heads, attn.head_dim), kv) or "xla"
                cache = None
                try:
                    tokens = jnp.asarray(rng.integers(1, config.vocab_size, (batch,)), jnp.int32)
                    cache = model.init_cache(batch, max_len)
                    cache = cache.replace(index=jnp.asarray(context, jnp.int32))
                    n = a.steps_per_call
                    t0 = time.perf_counter()
                    tokens, finite, cache = jax.block_until_ready(steps[impl](state, tokens, cache))
                    case["compile_s"] = time.perf_counter() - t0
                    case["logits_finite"] = bool(finite)
                    for _ in range(a.warmup):
                        tokens, finite, cache = jax.block_until_ready(steps[impl](state, tokens, cache))
                    ts = []
                    for _ in range(a.iters):
                        t0 = time.perf_counter()
                        tokens, finite, cache = jax.block_until_ready(steps[impl](state, tokens, cache))
                        ts.append((time.perf_counter() - t0) / n)
                    case["logits_finite"] &= bool(finite)
                    case["final_index"] = int(cache.index)
                    case["steps_per_call"] = n
                    case.update(stats_ms(ts))
                    case["tokens_per_s"] = batch / (1e-3 * case["median_ms"])
                    case["step_over_floor"] = case["median_ms"] / floor_ms
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    case["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                del cache
                bench.record(case)
            if soft is not None:
                set_kernels(model, decode="auto")


def run_prefill(bench, name: str, config: ModelConfig, graphdef, state, lengths, memory_only=False):
    """Prefill timing (memory_only=False: lengths are prompts, max_len = round_up + 64) or the memory cases
    (lengths are (prompt, max_len) pairs, compiled only)."""
    a = bench.args
    rng = np.random.default_rng(1)
    for item in lengths:
        n, max_len = (item, round_up(item) + 64) if not memory_only else item
        case = dict(part="memory" if memory_only else "prefill", model=name, prompt=n, batch=1, max_len=max_len,
                    cache_bytes=cache_bytes(config, 1, max_len))
        if reason := skip_reason(bench):
            bench.record(dict(case, skipped=reason))
            continue
        try:
            tokens = jnp.asarray(rng.integers(1, config.vocab_size, (1, n)), jnp.int32)
            start = jnp.zeros((1,), jnp.int32)
            t0 = time.perf_counter()
            compiled = _prefill.lower(graphdef, state, tokens, start, max_len=max_len, num_samples=1).compile()
            case["compile_s"] = time.perf_counter() - t0
            case["memory"] = mem_stats(compiled)
            if not memory_only:
                cache, logits = jax.block_until_ready(compiled(state, tokens, start))
                case["logits_finite"] = bool(jnp.all(jnp.isfinite(logits)))
                del cache, logits
                for _ in range(a.warmup):
                    jax.block_until_ready(compiled(state, tokens, start))
                ts = []
                for _ in range(a.iters):
                    t0 = time.perf_counter()
                    out = jax.block_until_ready(compiled(state, tokens, start))
                    ts.append(time.perf_counter() - t0)
                    del out
                case.update(stats_ms(ts))
                case["tokens_per_s"] = n / (1e-3 * case["median_ms"])
            del compiled
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            case["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        bench.record(case)


# ------------------------------------------------------------------------------------------------ output


def fmt(x, spec, none="-"):
    return none if x is None else format(x, spec)


def gib(x):
    """Bytes -> GiB with 3 decimals, or MiB / KiB below 1 GiB / 1 MiB (the --small shapes)."""
    if x is None:
        return "-"
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= size:
            return f"{x / size:.3f} {unit}"
    return f"{x:.0f} B"


def mem_cells(case: dict, *kinds: str) -> str:
    mem = case.get("memory") or {}
    return " | ".join(gib(mem.get(f"{k}_bytes")) for k in kinds)


def markdown(meta, cases, notes) -> str:
    m = meta
    out = [f"# Long-context generation: hybrid vs all-softmax ({m.get('device', '?')})", "",
           f"{m.get('date')}; jax {m.get('jax')}, jaxlib {m.get('jaxlib')}, flax {m.get('flax')}, python "
           f"{m.get('python')}; backend {m.get('backend')}", "", f"`{m.get('command')}`", ""]
    for name, desc in (m.get("models") or {}).items():
        out.append(f"- {name}: {desc}")
    out += ["", f"Config: {m.get('config_source')}. Timings: median (min-max) of {m.get('iters')} calls after "
            f"{m.get('warmup')} warm-up calls and the compiling call, each blocked on; a decode call runs "
            f"{m.get('steps_per_call', 1)} greedy steps in one on-device loop (as the sampler does), and its time / "
            f"{m.get('steps_per_call', 1)} is the step time (1: one host dispatch per step included)."]
    cp = m.get("copy")
    if cp:
        out += ["", f"Copy bandwidth ({cp['how']}, {cp['bytes'] / GiB:.2f} GiB): {cp['bandwidth_Bps'] / 1e9:,.0f} GB/s"
                " (floor = bytes a decode step moves at least / this; see the script's docstring)."]
    dec = [c for c in cases if c["part"] == "decode"]
    if dec:
        ref = {(c["model"], c["context"], c["batch"]): c for c in dec if c["impl"] == "xla" and "median_ms" in c}
        out += ["", "## Decode step", "",
                "| model | context | batch | decode path | step ms (min-max) | tokens/s | floor ms | step/floor | "
                "x xla | cache | compile s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in dec:
            head = f"| {c['model']} | {c['context']} | {c['batch']} | {c['impl']}"
            if "median_ms" not in c:
                out.append(f"{head} | {c.get('skipped') or c.get('error')} | | {fmt(c.get('floor_ms'), '.3f')} | | | "
                           f"{gib(c['cache_bytes'])} | |")
                continue
            r = ref.get((c["model"], c["context"], c["batch"]))
            speed = f"{r['median_ms'] / c['median_ms']:.2f}" if r and c["impl"] != "xla" else ""
            path = f" ({c['path']})" if c.get("path") and c["path"] != c["impl"] else ""
            out.append(f"{head}{path} | {c['median_ms']:.3f} ({c['min_ms']:.3f}-{c['max_ms']:.3f}) | "
                       f"{c['tokens_per_s']:,.0f} | {c['floor_ms']:.3f} | {c['step_over_floor']:.2f} | {speed} | "
                       f"{gib(c['cache_bytes'])} | {fmt(c.get('compile_s'), '.1f')} |")
    pre = [c for c in cases if c["part"] == "prefill"]
    if pre:
        out += ["", "## Prefill (batch 1, m1jax.sampling._prefill)", "",
                "| model | prompt | max_len | ms (min-max) | tokens/s | temp | output | compile s |",
                "|---|---|---|---|---|---|---|---|"]
        for c in pre:
            timing = (f"{c['median_ms']:.1f} ({c['min_ms']:.1f}-{c['max_ms']:.1f}) | {c['tokens_per_s']:,.0f}"
                      if "median_ms" in c else f"{c.get('skipped') or c.get('error')} | ")
            out.append(f"| {c['model']} | {c['prompt']} | {c['max_len']} | {timing} | {mem_cells(c, 'temp', 'output')}"
                       f" | {fmt(c.get('compile_s'), '.1f')} |")
    mems = [c for c in cases if c["part"] == "memory"]
    if mems:
        out += ["", "## Compiled prefill memory vs cache length (XLA memory analysis; compiled, not run)", "",
                "| model | prompt | max_len | temp | output | argument | cache (expected) | note |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {c['model']} | {c['prompt']} | {c['max_len']} | {mem_cells(c, 'temp', 'output', 'argument')} | "
                f"{gib(c['cache_bytes'])} | {c.get('skipped') or c.get('error') or ''} |" for c in mems]
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def write_outputs(out_dir, name, meta, cases, notes):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"meta": meta, "cases": cases, "notes": notes}, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(markdown(meta, cases, notes))


def merge(paths, out_dir, name):
    parts = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    meta = dict(parts[0]["meta"])
    meta["command"] = " ; ".join(p["meta"].get("command", "") for p in parts)
    meta["models"] = {k: v for p in parts for k, v in (p["meta"].get("models") or {}).items()}
    meta["copy_runs"] = [p["meta"].get("copy") for p in parts]
    meta["copy"] = next((c for c in meta["copy_runs"] if c), None)  # the table's line: the first run's
    cases = [c for p in parts for c in p["cases"]]
    notes = [n for p in parts for n in p["notes"]]
    write_outputs(out_dir, name, meta, cases, notes)
    print(markdown(meta, cases, notes))


# ------------------------------------------------------------------------------------------------ main


def ints(s: str | None, default) -> list[int]:
    """"1k,4096" -> [1024, 4096] (a k suffix means x 1024); None -> default."""
    if not s:
        return list(default)
    return [int(x.strip()[:-1]) * 1024 if x.strip().lower().endswith("k") else int(x) for x in s.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
    ap.add_argument("--name", default="long_generation", help="output stem (<out>/<name>.json, .md)")
    ap.add_argument("--small", action="store_true", help="toy model and shapes on a CPU (seconds): checks the script")
    ap.add_argument("--quick", action="store_true", help="GPU: contexts 4K, 64K at batch 16; prompts 4K, 64K")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
    ap.add_argument("--contexts", default=None, help="decode contexts, e.g. 1k,4k (default 1k,4k,16k,64k,128k; "
                    "128k and above hybrid only)")
    ap.add_argument("--batches", default=None, help="decode batches (default 1,16,64)")
    ap.add_argument("--prompts", default=None, help="prefill prompt lengths (default 1k,4k,16k,64k)")
    ap.add_argument("--decode-impls", default=None,
                    help="decode paths to time (default auto,xla; --small: triton,xla, the kernel in interpret mode)")
    ap.add_argument("--iters", type=int, default=15, help="timed calls per case (>= 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls after the compiling one")
    ap.add_argument("--steps-per-call", type=int, default=8,
                    help="decode steps per timed call, in one on-device loop (1: a host dispatch per step)")
    ap.add_argument("--mem-limit-gib", type=float, default=120.0, help="skip decode cases whose cache exceeds this")
    ap.add_argument("--copy-gib", type=float, default=None, help="copy-bandwidth array (default 4; --small 1/16)")
    ap.add_argument("--budget-s", type=float, default=0, help="start no new measurement after this many seconds")
    ap.add_argument("--merge", nargs="+", default=None, help="join JSON outputs of earlier runs into <out>/<name>")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.out, args.name)
        return
    if args.iters < 10:
        raise SystemExit("--iters must be >= 10")
    if args.steps_per_call < 1:
        raise SystemExit("--steps-per-call must be >= 1")
    parts = [p for p in args.parts.split(",") if p]
    models = [m for m in args.models.split(",") if m]
    if set(parts) - set(PARTS) or set(models) - set(MODELS):
        raise SystemExit(f"--parts from {PARTS}, --models from {MODELS}")
    s, q = args.small, args.quick
    contexts = ints(args.contexts, (64, 256, 512) if s else (4096, 65536) if q else
                    (1024, 4096, 16384, 65536, 131072))
    batches = ints(args.batches, (1, 4) if s else (16,) if q else (1, 16, 64))
    prompts = ints(args.prompts, (64, 256) if s else (4096, 65536) if q else (1024, 4096, 16384, 65536))
    softmax_max = 256 if s else 65536  # contexts above this: hybrid only
    memory_cases = ([(64, 128), (64, 1024), (256, 320), (256, 1024)] if s else
                    [(4096, 4160), (4096, 65536), (16384, 16448), (16384, 65536)])
    impls = [i for i in (args.decode_impls or ("triton,xla" if s else "auto,xla")).split(",") if i]

    cfgs, source = configs(s)
    dev = jax.devices()[0]
    meta = dict(
        device=dev.device_kind, backend=jax.default_backend(), device_count=jax.device_count(), jax=jax.__version__,
        jaxlib=jaxlib.__version__, flax=flax.__version__, python=platform.python_version(),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), command="python " + " ".join(sys.argv),
        small=s, quick=q, parts=parts, model_names=models, contexts=contexts, batches=batches, prompts=prompts,
        memory_cases=memory_cases, decode_impls=impls, iters=args.iters, warmup=args.warmup,
        steps_per_call=args.steps_per_call,
        mem_limit_gib=args.mem_limit_gib, softmax_max_context=softmax_max, config_source=source,
        floor_source="m1jax.generation_cost.decode_cost(config, context + 1, batch)",
        models={k: describe(cfgs[k]) for k in models},
        configs={k: cfgs[k].to_dict() for k in models},
    )
    bench = Bench(args, meta)
    print(json.dumps({k: meta[k] for k in ("device", "backend", "jax", "parts", "models", "config_source")}),
          flush=True)
    if "decode" in parts:
        meta["copy"] = cp = copy_bandwidth(int((args.copy_gib or (1 / 16 if s else 4)) * GiB))
        print(json.dumps({"copy_GBps": cp["bandwidth_Bps"] / 1e9}), flush=True)
    bench.write()

    for name in models:
        config = cfgs[name]
        if bench.out_of_time():
            bench.note(f"{name}: not built (--budget-s spent)")
            continue
        t0, state = time.perf_counter(), None
        model = MiniMaxM1(config, rngs=nnx.Rngs(0))
        jax.block_until_ready(nnx.state(model))
        params = param_counts(model)
        meta.setdefault("params", {})[name] = params
        print(json.dumps({"model": name, "built_s": time.perf_counter() - t0,
                          "param_gib": sum(v["bytes"] for v in params.values()) / GiB}), flush=True)
        if "decode" in parts:
            steps = {}
            for impl in impls:
                set_kernels(model, decode=impl)
                steps[impl] = make_step(nnx.split(model)[0], args.steps_per_call)
            set_kernels(model, decode="auto")
            state = nnx.state(model)
            ctx = [c for c in contexts if name == "hybrid" or c <= softmax_max]
            run_decode(bench, name, config, model, steps, state, ctx, batches)
            del steps
        if "prefill" in parts or "memory" in parts:
            graphdef, state = nnx.split(model)
            if "prefill" in parts:
                run_prefill(bench, name, config, graphdef, state, prompts)
            if "memory" in parts:
                run_prefill(bench, name, config, graphdef, state, memory_cases, memory_only=True)
            del graphdef
        del model, state
        jax.clear_caches()

    bench.write()
    print()
    print(markdown(bench.meta, bench.cases, bench.notes))
    print(f"wrote {os.path.join(args.out, args.name)}.json / .md ({time.time() - bench.t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
