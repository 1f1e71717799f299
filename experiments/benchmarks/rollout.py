"""Rollout throughput on one GPU: the rollout engine m1jax.sampling.sample vs the previous generate.

    PYTHONPATH=. python experiments/benchmarks/rollout.py --out $OUT [--batches 64,256] [--heads bfloat16,float32]
    JAX_PLATFORMS=cpu PYTHONPATH=. python experiments/benchmarks/rollout.py --quick --out /tmp/rb   # CPU check
    python experiments/benchmarks/rollout.py --merge a.json b.json --out experiments/results          # join runs

On one H200 each LM-head setting takes ~5-6 minutes (about half of it compiling 12 programs), so the device
tool's 10-minute limit wants one call per head, then --merge here (default name rollout_bench_h200):
    PYTHONPATH=. timeout 580 python experiments/benchmarks/rollout.py --heads bfloat16 --budget-s 450 \
        --name rollout_bench_h200_bf16head --out $OUT
    PYTHONPATH=. timeout 580 python experiments/benchmarks/rollout.py --heads float32 --budget-s 450 \
        --name rollout_bench_h200_fp32head --out $OUT
--budget-s: no new measurement starts after that many seconds (the rest are recorded as skipped).

Model: the `1b` preset of experiments/pretrain.py (16 layers, 7:1 lightning:softmax, hidden 2048, 16 heads x
128, 4 kv heads, 8 experts top-2 of 2816, vocab 32768, bf16 activations), random init, with bf16 PARAMETERS
(param_dtype bfloat16; the preset trains fp32 ones). The config is built here, not imported: the GPU image
lacks ml-collections, which experiments/pretrain.py needs; where it is installed the script checks that the
shapes equal the preset's. Each LM-head setting of --heads (lm_head_dtype: "bfloat16" is the GPU presets',
"float32" the full-precision head RL uses) is a fresh model with the same seed (same weights); both engines
run under it.

Engines, all in one process:
  legacy_generate  the library's generate before the rollout engine (m1jax/sampling.py at commit 1377a0f),
                   reproduced below unchanged: one nnx.jit program, prefill through model.forward with a
                   cache (full [b, n, vocab] logits) then a lax.scan of decode steps, one shared cache index.
  sample           m1jax.sampling.sample: _prefill (LM head on the last position, within-prompt attention)
                   and the _decode while_loop (donated cache). No stop tokens, so every row runs all steps.
Workloads (prompt 256 tokens, 512 new tokens, temperature 1.0): for each B of --batches, B distinct prompts
(both engines), then sample with num_samples=8 over B/8 prompts (one prefill per prompt, shared by its 8
rows; legacy has no such sharing, so its B-row number is the comparison).

Timing: a warm-up call (compile), then --repeats timed calls, each to jax.block_until_ready on the host
clock; the median is reported; tokens/s = rows x 512 / median. Per decode step:
  sample  _prefill and _decode (the programs sample runs) timed separately, --repeats times:
          decode ms/step = median decode time / steps run (512).
  legacy  one program, so by difference: (median at 512 new tokens - median at 64) / 448; its prefill is
          estimated as median(512) - 512 x ms/step.
Memory floor per decode step (bytes a step must move at least, over the measured copy bandwidth):
  weights   every parameter a step touches in its stored dtype (bf16): all experts' w1/w3/w2 (expected
            fraction of the experts hit by rows x top-2 uniform picks: 1.0 from 16 rows on), every
            attention / norm / router parameter, the LM head; the embedding table only for the rows looked up;
  states    lightning states read + written: 2 x lightning layers x rows x H x D x D x 4 bytes;
  KV        softmax layers' valid keys + values read: 2 x softmax layers x rows x L x kv_heads x D x 2 bytes,
            L = the mean valid length over the decode (prompt + (512 + 1) / 2). Both engines read the whole
            max_len cache under a mask, so this understates what they do read (by 768 / L at most);
  copy      x + 1 over a 4 GiB fp32 array, median of 10; bandwidth = 2 x bytes / time (read + write).
measured/floor = decode ms/step / floor ms/step (1.0 would be a step at copy speed).

Outputs: a markdown table on stdout; <out>/<name>.json and .md (default experiments/results,
rollout_bench_h200), rewritten after every measurement so a run stopped by --budget-s or a timeout
still leaves its rows.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
from flax import nnx  # noqa: E402

from m1jax.config import ModelConfig, hybrid_layout  # noqa: E402
from m1jax.model import MiniMaxM1  # noqa: E402
from m1jax.sampling import SamplingSettings, _decode, _key_data, _prefill, prompt_bucket, sample  # noqa: E402

GROUP = 8  # num_samples of the shared-prefill workload


# ------------------------------------------------------------------------------------------------ legacy
# m1jax/sampling.py as of commit 1377a0f (`git show 1377a0f:m1jax/sampling.py`), the function bodies
# unchanged (names prefixed): it runs against today's model, whose Cache.start defaults to zeros.


def _legacy_pick(logits, key, temperature):
    """logits [b, vocab] fp32 -> next tokens [b]; greedy when temperature == 0."""
    if temperature == 0.0:
        return jnp.argmax(logits, -1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


@functools.partial(nnx.jit, static_argnames=("max_new_tokens", "temperature"))
def legacy_generate(model: MiniMaxM1, prompt, key, *, max_new_tokens: int, temperature: float = 0.0):
    """prompt [b, n] int -> (tokens [b, max_new_tokens], their log-probs [b, max_new_tokens] fp32).

    The KV cache holds prompt + generated tokens; lightning layers carry their fp32 state.
    """
    b, n = prompt.shape
    cache = model.init_cache(b, n + max_new_tokens)
    out = model.forward(prompt, cache=cache)
    graphdef, params = nnx.split(model)

    def step(carry, key):
        logits, cache = carry
        tok = _legacy_pick(logits, key, temperature)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tok[:, None], -1)[:, 0]
        out = nnx.merge(graphdef, params).forward(tok[:, None], cache=cache)
        return (out.logits[:, -1], out.cache), (tok, logp)

    keys = jax.random.split(key, max_new_tokens)
    _, (tokens, logps) = jax.lax.scan(step, (out.logits[:, -1], out.cache), keys)
    return tokens.T, logps.T


# ------------------------------------------------------------------------------------------------ setup


def model_config(head: str, quick: bool) -> ModelConfig:
    """The 1b preset (experiments/pretrain.py `_shape(16, 2048, 16, 4, 128, 8, 2816, **GPU_MODEL)`) with bf16
    params and the given LM-head dtype; --quick: the same layout rules at toy sizes."""
    if quick:
        layers, hidden, heads, kv, hd, experts, inter, vocab, block = 2, 64, 4, 2, 16, 4, 96, 512, 16
        layout = hybrid_layout(layers, period=2)  # lightning, softmax
    else:
        layers, hidden, heads, kv, hd, experts, inter, vocab, block = 16, 2048, 16, 4, 128, 8, 2816, 32768, 256
        layout = hybrid_layout(layers)
    alpha = (2 * layers) ** 0.25
    return ModelConfig(
        num_hidden_layers=layers, attn_type_list=layout, hidden_size=hidden, num_attention_heads=heads,
        num_key_value_heads=kv, head_dim=hd, rotary_dim=hd // 2, num_local_experts=experts, num_experts_per_tok=2,
        intermediate_size=inter, layernorm_full_attention_alpha=alpha, layernorm_linear_attention_alpha=alpha,
        layernorm_mlp_alpha=alpha, vocab_size=vocab, dtype="bfloat16", param_dtype="bfloat16", lm_head_dtype=head,
        block_size=block,
    )


def check_preset(config: ModelConfig) -> str:
    """Compare with experiments/pretrain.py:1b where ml-collections is importable (not on the GPU image)."""
    try:
        from experiments.pretrain import get_config
        from m1jax.train.config import model_config as from_cfg
    except ImportError as e:
        return f"not checked ({e.name or e} not importable)"
    preset = from_cfg(get_config("1b")).replace(param_dtype=config.param_dtype, lm_head_dtype=config.lm_head_dtype)
    if preset != config:
        diff = {k: (v, getattr(config, k)) for k, v in preset.to_dict().items() if getattr(config, k) != v and
                not isinstance(v, list)}
        raise SystemExit(f"the built config differs from experiments/pretrain.py:1b: {diff}")
    return "equal to experiments/pretrain.py:1b (param_dtype / lm_head_dtype overridden)"


def param_counts(model: MiniMaxM1) -> dict:
    """Parameter elements and bytes by class: embed table, expert weights, everything else (incl. LM head)."""
    counts = {"embed": [0, 0], "experts": [0, 0], "lm_head": [0, 0], "other": [0, 0]}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        cls = ("embed" if "embed_tokens" in names else "lm_head" if "lm_head" in names
               else "experts" if names[-1] in ("w1", "w2", "w3") or (len(names) > 1 and names[-2] in ("w1", "w2", "w3"))
               else "other")
        counts[cls][0] += leaf.size
        counts[cls][1] += leaf.size * leaf.dtype.itemsize
    return {k: {"elements": int(v[0]), "bytes": int(v[1])} for k, v in counts.items()}


def floor_bytes(config: ModelConfig, params: dict, rows: int, prompt_len: int, new_tokens: int) -> dict:
    """Bytes one decode step moves at least (see the module docstring)."""
    c = config
    E, k = c.num_local_experts, c.num_experts_per_tok
    expert_frac = 1.0 - (1.0 - k / E) ** rows  # expected fraction of a layer's experts hit
    embed_row = params["embed"]["bytes"] // c.vocab_size
    weights = (params["experts"]["bytes"] * expert_frac + params["other"]["bytes"] + params["lm_head"]["bytes"]
               + min(rows, c.vocab_size) * embed_row)
    n_light = sum(c.is_lightning(i) for i in range(c.num_hidden_layers))
    n_soft = c.num_hidden_layers - n_light
    states = 2 * n_light * rows * c.num_attention_heads * c.head_dim * c.head_dim * 4
    avg_len = prompt_len + (new_tokens + 1) / 2
    kv = 2 * n_soft * rows * avg_len * c.num_key_value_heads * c.head_dim * jnp.dtype(c.dtype).itemsize
    return {"rows": rows, "expert_fraction": expert_frac, "weights": weights, "lightning_states": states,
            "softmax_kv": kv, "avg_kv_len": avg_len, "total": weights + states + kv}


def copy_bandwidth(nbytes: int, repeats: int = 10) -> dict:
    x = jnp.zeros((nbytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a + 1)
    jax.block_until_ready(f(x))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x))
        ts.append(time.perf_counter() - t0)
    del x
    t = statistics.median(ts)
    return {"bytes": nbytes, "median_s": t, "bandwidth_Bps": 2 * nbytes / t, "how": "jit(x + 1), fp32, median of 10"}


# ------------------------------------------------------------------------------------------------ timing


class Bench:
    def __init__(self, args):
        self.args, self.t0 = args, time.time()
        self.rows: list[dict] = []
        self.floors: list[dict] = []
        self.notes: list[str] = []
        self.meta: dict = {}

    def out_of_time(self) -> bool:
        return self.args.budget_s > 0 and time.time() - self.t0 > self.args.budget_s

    def note(self, msg: str):
        print(f"  note: {msg}", flush=True)
        self.notes.append(msg)

    def write(self):
        write_outputs(self.args.out, self.args.name, self.meta, self.rows, self.floors, self.notes)


def timed(fn, repeats: int):
    """(warm-up seconds, [seconds per timed call], last output): fn() blocked on each time."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    warm = time.perf_counter() - t0
    ts = []
    for _ in range(repeats):
        del out
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return warm, ts, out


def sample_arrays(model, prompts, key, new_tokens, temperature, g):
    out = sample(model, prompts, key, max_new_tokens=new_tokens, temperature=temperature, num_samples=g)
    return out.tokens, out.logprobs, out.lengths, out.steps


def _compiled():
    """How many programs _prefill and _decode hold (unknown -> 0: every round counts)."""
    return tuple(getattr(f, "_cache_size", lambda: 0)() for f in (_prefill, _decode))


def time_split(model, prompts, key, new_tokens, temperature, g, repeats):
    """_prefill and _decode (sample's two programs, already compiled by sample) timed apart."""
    graphdef, state = nnx.split(model)
    p, n = prompts.shape
    bucket = max(n, min(prompt_bucket(n), model.config.max_position_embeddings - new_tokens))
    assert bucket == n, (bucket, n)  # the prompts fill their bucket: no padding, same programs as sample
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=float(temperature))
    tokens, start, kd = jnp.asarray(prompts, jnp.int32), jnp.zeros((p,), jnp.int32), _key_data(key)
    pre, dec, steps = [], [], None
    for _ in range(repeats + 1):
        sizes = _compiled()
        t0 = time.perf_counter()
        cache, logits = jax.block_until_ready(_prefill(graphdef, state, tokens, start, max_len=n + new_tokens,
                                                       num_samples=g))
        t1 = time.perf_counter()
        out, cache = jax.block_until_ready(_decode(graphdef, state, cache, logits, kd, settings=settings,
                                                   num_samples=g))
        t2 = time.perf_counter()
        steps = int(out[-1])
        del cache, logits, out
        if _compiled() == sizes:  # a round that compiled does not count
            pre.append(t1 - t0)
            dec.append(t2 - t1)
        if len(pre) == repeats:
            break
    if len(pre) < repeats:
        raise RuntimeError(f"_prefill / _decode recompiled in {repeats + 1 - len(pre)} of {repeats + 1} rounds")
    return pre, dec, steps


def record(bench, row: dict):
    bench.rows.append(row)
    bench.write()
    ms = row.get("median_s")
    msg = f"{ms:.3f} s, {row['tokens_per_s']:,.0f} tok/s" if ms is not None else row.get("error", "")
    print(f"  {row['head']:<8} {row['engine']:<16} {row['prompts']:>4} x {row['num_samples']} "
          f"(T={row['new_tokens']}): {msg}", flush=True)


def run_one(bench, name, fn, *, head, engine, prompts, g, new_tokens, **extra):
    """Time fn (warm-up + repeats) and record a row; budget / failure become rows with an error."""
    base = dict(head=head, engine=engine, prompts=prompts, num_samples=g, rows=prompts * g, new_tokens=new_tokens)
    if bench.out_of_time():
        record(bench, dict(base, error=f"skipped: --budget-s {bench.args.budget_s:.0f} spent"))
        return None
    try:
        warm, ts, out = timed(fn, bench.args.repeats)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        record(bench, dict(base, error=f"failed ({name}): {type(e).__name__}: {str(e)[:300]}"))
        return None
    med = statistics.median(ts)
    row = dict(base, warmup_s=warm, times_s=ts, median_s=med, tokens_per_s=prompts * g * new_tokens / med, **extra)
    record(bench, row)
    return row, out


def greedy_check(model, prompt_len, new_tokens, rows=4, seed=1):
    """Greedy legacy_generate vs sample on the same prompts: fraction of equal tokens, max |log-prob diff|
    over the positions before the first disagreement."""
    V = model.config.vocab_size
    prompts = np.random.default_rng(seed).integers(1, V, (rows, prompt_len), dtype=np.int32)
    key = jax.random.key(0)
    lt, ll = legacy_generate(model, jnp.asarray(prompts), key, max_new_tokens=new_tokens, temperature=0.0)
    s = sample(model, prompts, key, max_new_tokens=new_tokens, temperature=0.0)
    lt, ll, st, sl = (np.asarray(a) for a in (lt, ll, s.tokens, s.logprobs))
    eq = lt == st
    prefix = np.cumprod(eq, axis=1).astype(bool)
    return {"rows": rows, "new_tokens": new_tokens, "token_match": float(eq.mean()),
            "logprob_maxdiff_on_agreeing_prefix": float(np.abs(ll - sl)[prefix].max()) if prefix.any() else None}


# ------------------------------------------------------------------------------------------------ output


def fmt(x, spec, none="-"):
    return none if x is None else format(x, spec)


def markdown(meta, rows, floors, notes) -> str:
    m = meta
    out = [f"# Rollout engine vs legacy generate ({m.get('device', '?')})", "",
           f"{m.get('date')}; jax {m.get('jax')}, jaxlib {m.get('jaxlib')}, flax {m.get('flax')}, "
           f"python {m.get('python')}; backend {m.get('backend')}", "",
           f"`{m.get('command')}`", "",
           f"Model: {m.get('model_desc')}; {m.get('preset_check')}.",
           f"Prompt {m.get('prompt_len')} tokens, {m.get('new_tokens')} new tokens, temperature "
           f"{m.get('temperature')}, no stop tokens (every row runs every step); median of {m.get('repeats')} timed "
           "calls after a warm-up. tokens/s = rows x new tokens / median; x legacy = legacy's median at the same "
           "rows / this median. sample's prefill ms and decode ms/step: its two programs timed apart; legacy's: by "
           f"difference ({m.get('new_tokens')} vs {m.get('short_tokens')} new tokens). measured/floor = decode "
           "ms/step / floor ms/step (see the floor table and the script's docstring).", ""]
    cp = m.get("copy")
    if cp:
        out += [f"Copy bandwidth ({cp['how']}, {cp['bytes'] / 2**30:.2f} GiB): "
                f"{cp['bandwidth_Bps'] / 1e9:,.0f} GB/s.", ""]
    legacy = {(r["head"], r["rows"]): r for r in rows
              if r["engine"] == "legacy_generate" and r.get("median_s") and r["new_tokens"] == m.get("new_tokens")}
    out += ["| LM head | engine | prompts x G | rows | median s | tokens/s | x legacy | prefill ms | decode ms/step "
            "| floor ms/step | measured/floor |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["new_tokens"] != m.get("new_tokens"):
            continue  # the legacy 64-step runs only feed its per-step estimate
        if r.get("median_s") is None:
            out.append(f"| {r['head']} | {r['engine']} | {r['prompts']} x {r['num_samples']} | {r['rows']} | "
                       f"{r.get('error')} | | | | | | |")
            continue
        ref = legacy.get((r["head"], r["rows"]))
        speed = f"{ref['median_s'] / r['median_s']:.2f}" if ref and r["engine"] != "legacy_generate" else ""
        out.append(
            f"| {r['head']} | {r['engine']} | {r['prompts']} x {r['num_samples']} | {r['rows']} | "
            f"{r['median_s']:.3f} | {r['tokens_per_s']:,.0f} | {speed} | {fmt(r.get('prefill_ms'), '.1f')} | "
            f"{fmt(r.get('decode_ms_per_step'), '.3f')} | {fmt(r.get('floor_ms_per_step'), '.3f')} | "
            f"{fmt(r.get('floor_ratio'), '.2f')} |")
    if floors:
        out += ["", "Floor per decode step (GB = 1e9 bytes):", "",
                "| rows | experts hit | weights GB | lightning states GB | softmax KV GB (mean len) | total GB "
                "| floor ms/step |", "|---|---|---|---|---|---|---|"]
        for f in floors:
            out.append(f"| {f['rows']} | {f['expert_fraction']:.3f} | {f['weights'] / 1e9:.3f} | "
                       f"{f['lightning_states'] / 1e9:.3f} | {f['softmax_kv'] / 1e9:.3f} ({f['avg_kv_len']:.1f}) | "
                       f"{f['total'] / 1e9:.3f} | {fmt(f.get('floor_ms'), '.3f')} |")
    checks = m.get("greedy_checks")
    if checks:
        out += ["", "Greedy agreement (legacy_generate vs sample, temperature 0, same prompts):", ""]
        out += [f"- head {h}: {c}" for h, c in checks.items()]
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def write_outputs(out_dir, name, meta, rows, floors, notes):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "floors": floors, "notes": notes}, f, indent=1, default=float)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(markdown(meta, rows, floors, notes))


def merge(paths, out_dir, name):
    parts = []
    for path in paths:
        with open(path) as f:
            parts.append(json.load(f))
    meta = dict(parts[0]["meta"])
    meta["heads"] = [h for p in parts for h in p["meta"].get("heads", [])]
    meta["command"] = " ; ".join(p["meta"].get("command", "") for p in parts)
    meta["greedy_checks"] = {k: v for p in parts for k, v in (p["meta"].get("greedy_checks") or {}).items()}
    floors = {f["rows"]: f for p in parts for f in p["floors"]}
    rows = [r for p in parts for r in p["rows"]]
    notes = [n for p in parts for n in p["notes"]]
    write_outputs(out_dir, name, meta, rows, list(floors.values()), notes)
    print(markdown(meta, rows, list(floors.values()), notes))


# ------------------------------------------------------------------------------------------------ main


def run_head(bench, head: str, prompt_sets: dict, key, floors: dict, check: bool):
    """Every measurement under one LM-head dtype (a fresh model, same seed)."""
    a, m = bench.args, bench.meta
    P, T, T_short, temp, batches = m["prompt_len"], m["new_tokens"], m["short_tokens"], m["temperature"], m["batches"]
    config = model_config(head, a.quick)
    t0 = time.perf_counter()
    model = MiniMaxM1(config, rngs=nnx.Rngs(0))
    jax.block_until_ready(nnx.state(model))
    params = param_counts(model)
    m.setdefault("params", params)
    print(f"head {head}: model built in {time.perf_counter() - t0:.1f} s "
          f"({sum(v['elements'] for v in params.values()) / 1e6:,.1f} M params)", flush=True)

    def floor_for(rows):
        if rows not in floors:
            f = floor_bytes(config, params, rows, P, T)
            f["floor_ms"] = 1e3 * f["total"] / m["copy"]["bandwidth_Bps"]
            floors[rows] = f
            bench.floors = list(floors.values())
        return floors[rows]

    def legacy(prompts, new_tokens):
        return legacy_generate(model, jnp.asarray(prompts), key, max_new_tokens=new_tokens, temperature=temp)

    if check:
        try:
            m["greedy_checks"][head] = c = greedy_check(model, P, min(16, T))
            print(f"  greedy check: {c}", flush=True)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            bench.note(f"greedy check ({head}) failed: {type(e).__name__}: {str(e)[:200]}")

    workloads = [(B, 1) for B in batches]
    if not a.no_group:
        workloads += [(B, GROUP) for B in batches if B % GROUP == 0]
    legacy_rows = {}
    for B, g in workloads:
        prompts = prompt_sets[B][: B // g]
        fl = floor_for(B)
        if g == 1:  # legacy: B distinct prompts (its number also stands for the G-sample workload's rows)
            res = run_one(bench, "legacy", functools.partial(legacy, prompts, T),
                          head=head, engine="legacy_generate", prompts=B, g=1, new_tokens=T)
            if res:
                legacy_rows[B] = res[0]
        res = run_one(bench, "sample", functools.partial(sample_arrays, model, prompts, key, T, temp, g),
                      head=head, engine="sample", prompts=B // g, g=g, new_tokens=T)
        if not res:
            continue
        row, out = res
        row["steps"], row["lengths_min"] = int(out[-1]), int(jnp.min(out[2]))
        if row["steps"] != T or row["lengths_min"] != T:
            bench.note(f"sample {head} {B // g}x{g}: steps {row['steps']}, min length {row['lengths_min']} != {T}")
        del out
        if bench.out_of_time():
            bench.note(f"decode-step split of sample {head} {B // g}x{g} skipped (budget)")
            bench.write()
            continue
        try:
            pre, dec, steps = time_split(model, prompts, key, T, temp, g, a.repeats)
            row.update(prefill_times_s=pre, decode_times_s=dec, prefill_ms=1e3 * statistics.median(pre),
                       decode_ms_per_step=1e3 * statistics.median(dec) / steps, decode_steps=steps,
                       decode_method="_decode program timed alone (after _prefill), median / steps",
                       floor_ms_per_step=fl["floor_ms"])
            row["floor_ratio"] = row["decode_ms_per_step"] / fl["floor_ms"]
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            bench.note(f"decode-step split of sample {head} {B // g}x{g} failed: {type(e).__name__}: {e}"[:300])
        bench.write()
        print(f"    sample prefill {fmt(row.get('prefill_ms'), '.1f')} ms, decode "
              f"{fmt(row.get('decode_ms_per_step'), '.3f')} ms/step (floor {fl['floor_ms']:.3f})", flush=True)

    for impl in [v for v in (a.moe_variants or "").split(",") if v]:  # the sampler with another MoE path
        for layer in model.layers:
            layer.block_sparse_moe.impl = impl
        for B in batches:
            if bench.out_of_time():
                bench.note(f"sample moe={impl} {B}x1 skipped (budget)")
                break
            res = run_one(bench, f"sample moe={impl}", functools.partial(sample_arrays, model, prompt_sets[B], key, T,
                                                                         temp, 1),
                          head=head, engine=f"sample moe={impl}", prompts=B, g=1, new_tokens=T)
            if not res:
                continue
            row, fl = res[0], floor_for(B)
            pre, dec, steps = time_split(model, prompt_sets[B], key, T, temp, 1, a.repeats)
            row.update(prefill_ms=1e3 * statistics.median(pre), decode_ms_per_step=1e3 * statistics.median(dec) / steps,
                       floor_ms_per_step=fl["floor_ms"])
            row["floor_ratio"] = row["decode_ms_per_step"] / fl["floor_ms"]
            bench.write()
            print(f"    sample moe={impl} decode {row['decode_ms_per_step']:.3f} ms/step", flush=True)
        for layer in model.layers:
            layer.block_sparse_moe.impl = "grouped"

    for B in batches:  # legacy per step by difference, last (least important)
        if B not in legacy_rows:
            continue
        res = run_one(bench, "legacy short", functools.partial(legacy, prompt_sets[B], T_short),
                      head=head, engine="legacy_generate", prompts=B, g=1, new_tokens=T_short)
        if not res:
            continue
        lr, fl = legacy_rows[B], floor_for(B)
        step = (lr["median_s"] - res[0]["median_s"]) / (T - T_short)
        lr.update(decode_ms_per_step=1e3 * step, prefill_ms=1e3 * (lr["median_s"] - T * step),
                  decode_method=f"(median at {T} - median at {T_short} new tokens) / {T - T_short}; "
                                f"prefill = median - {T} x step",
                  floor_ms_per_step=fl["floor_ms"], floor_ratio=1e3 * step / fl["floor_ms"])
        bench.write()
        print(f"    legacy decode {1e3 * step:.3f} ms/step (floor {fl['floor_ms']:.3f})", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
    ap.add_argument("--name", default="rollout_bench_h200", help="output file stem (<out>/<name>.json, .md)")
    ap.add_argument("--quick", action="store_true", help="toy model and shapes (CPU, < 1 min): checks the script")
    ap.add_argument("--batches", default=None, help="rows per workload, comma-separated (default 64,256; quick 8)")
    ap.add_argument("--heads", default=None,
                    help="lm_head_dtype settings, in order (default bfloat16,float32; quick bfloat16)")
    ap.add_argument("--prompt-len", type=int, default=None, help="default 256 (quick 16)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 512 (quick 32)")
    ap.add_argument("--short-tokens", type=int, default=None, help="legacy's per-step difference run (default 64)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--copy-gib", type=float, default=None, help="copy-bandwidth array size (default 4; quick 1/16)")
    ap.add_argument("--moe-variants", default="", help="also time sample with these MoE paths (e.g. dense)")
    ap.add_argument("--no-group", action="store_true", help=f"skip the num_samples={GROUP} workloads")
    ap.add_argument("--check", action="store_true",
                    help="greedy legacy-vs-sample agreement per head (with --quick: the first head's)")
    ap.add_argument("--budget-s", type=float, default=0, help="start no new measurement after this many seconds")
    ap.add_argument("--merge", nargs="+", default=None, help="join JSON outputs of earlier runs into <out>/<name>")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.out, args.name)
        return
    q = args.quick
    batches = [int(b) for b in (args.batches or ("8" if q else "64,256")).split(",")]
    heads = [h.strip() for h in (args.heads or ("bfloat16" if q else "bfloat16,float32")).split(",") if h.strip()]
    if args.repeats < 3:
        raise SystemExit("--repeats must be >= 3")

    bench = Bench(args)
    dev = jax.devices()[0]
    c = model_config(heads[0], q)
    layout = "".join("L" if c.is_lightning(i) else "S" for i in range(c.num_hidden_layers))
    bench.meta = dict(
        device=dev.device_kind, backend=jax.default_backend(), device_count=jax.device_count(),
        jax=jax.__version__, jaxlib=jaxlib.__version__, flax=flax.__version__, python=platform.python_version(),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command="python " + " ".join(sys.argv), quick=q, heads=heads, batches=batches,
        prompt_len=args.prompt_len or (16 if q else 256), new_tokens=args.new_tokens or (32 if q else 512),
        short_tokens=args.short_tokens or (8 if q else 64), temperature=args.temperature, repeats=args.repeats,
        group=GROUP, preset_check="toy shapes (--quick)" if q else check_preset(c),
        model={k: v for k, v in c.to_dict().items() if k != "lm_head_dtype"},
        model_desc=(f"{c.num_hidden_layers} layers {layout}, hidden {c.hidden_size}, {c.num_attention_heads} heads x "
                    f"{c.head_dim}, {c.num_key_value_heads} kv heads, {c.num_local_experts} experts top-"
                    f"{c.num_experts_per_tok} x {c.intermediate_size}, vocab {c.vocab_size}, params / activations "
                    f"{c.param_dtype} / {c.dtype}"),
        greedy_checks={},
    )
    m = bench.meta
    print(f"{dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, flax {flax.__version__}; "
          f"{m['model_desc']}; prompt {m['prompt_len']}, new {m['new_tokens']}, batches {batches}, heads {heads}",
          flush=True)
    m["copy"] = cp = copy_bandwidth(int((args.copy_gib or (1 / 16 if q else 4)) * 2**30))
    print(f"  copy bandwidth {cp['bandwidth_Bps'] / 1e9:,.0f} GB/s", flush=True)
    bench.write()

    rng = np.random.default_rng(0)
    prompt_sets = {B: rng.integers(1, c.vocab_size, (B, m["prompt_len"]), dtype=np.int32) for B in batches}
    floors: dict[int, dict] = {}
    for i, head in enumerate(heads):
        run_head(bench, head, prompt_sets, jax.random.key(0), floors, check=args.check or (q and i == 0))

    bench.write()
    print()
    print(markdown(bench.meta, bench.rows, bench.floors, bench.notes))
    print(f"wrote {os.path.join(args.out, args.name)}.json / .md ({time.time() - bench.t0:.0f} s)")


if __name__ == "__main__":
    main()
