"""Continuous batching vs one static batch: useful tokens/s of m1jax.sampling.sample on long-tailed lengths.

    PYTHONPATH=. python experiments/benchmarks/continuous_batching.py --out $OUT            # GPU (1b shape)
    JAX_PLATFORMS=cpu PYTHONPATH=. python experiments/benchmarks/continuous_batching.py --small --out /tmp/cb

Engines (one process, same prompts, same key, temperature 1):
  static      sample(..., batch_slots=None): every row at once; the while_loop runs until the longest row ends,
              so ended rows ride along as padding for the rest of the decode.
  slots=K     sample(..., batch_slots=K): K rows at a time, an ended row's slot refilled with the next row
              (m1jax/continuous.py; refill_min default K // 8, or --refill-min).
Long-tailed lengths from a random model: the LM head is set to ZERO, so every next-token distribution is uniform
over the vocabulary, and S of the V tokens are stop tokens: each step ends a row with probability p = S / V,
independently, whatever the prompt. Lengths are geometric (median ~ ln 2 / p, the longest of N rows ~ ln N / p,
i.e. ~log2(N) x the median: ~9x for 512 rows), capped at max_new_tokens. Everything else is the random model
(routing, attention and lightning states run as usual), so a step costs what it costs with real weights.

Timing: one warm-up call (compiles), then --repeats calls, each to jax.block_until_ready; the median is
reported. useful tokens/s = sum of the rows' lengths / median. Also per engine: decode iterations, slot
utilisation (useful tokens / (iterations x slots)), host exits of the slot loop (one sync + refill each), and
agreement with the static batch (rows with equal tokens; max |log-prob diff| over them). The continuous
engine's results equal the static batch's by construction (same keys, positions and cache layout per row);
with bf16 on GPU a batch-size-dependent rounding can still flip a near-tied sampled token (also true between
two static batches of different sizes), so agreement is measured, not assumed.

Model: --small: the rollout benchmark's --quick toy shape in fp32 (CPU); otherwise the `1b` preset shape of
experiments/benchmarks/rollout.py (16 layers 7:1, hidden 2048, bf16 parameters, --head lm_head dtype).
Output: <out>/<name>.json (device, versions, shapes, length statistics, per-engine medians) and a markdown
table on stdout; the JSON is rewritten after each engine so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
from flax import nnx  # noqa: E402

import m1jax.continuous as continuous  # noqa: E402
import m1jax.sampling as sampling  # noqa: E402
from experiments.benchmarks.rollout import model_config  # noqa: E402
from m1jax.model import MiniMaxM1  # noqa: E402
from m1jax.sampling import sample  # noqa: E402


def build_model(small: bool, head: str):
    """The benchmark model and its original (random) LM head; the model's head is set to zero."""
    config = model_config(head, small)
    if small:  # fp32 on CPU: the agreement check is then exact up to fp32 rounding
        config = config.replace(dtype="float32", param_dtype="float32", lm_head_dtype="float32")
    model = MiniMaxM1(config, rngs=nnx.Rngs(0))
    random_head = model.lm_head[...]
    model.lm_head[...] = jnp.zeros_like(random_head)  # uniform next-token distributions (see docstring)
    return model, random_head


class Breakdown:
    """While installed, the given module functions block on their results and add up their calls and seconds."""

    def __init__(self, *targets):
        self.targets = targets  # (module, function name)
        self.calls = {name: 0 for _, name in targets}
        self.seconds = {name: 0.0 for _, name in targets}
        self._orig = {}

    def __enter__(self):
        for mod, name in self.targets:
            orig = self._orig[name] = getattr(mod, name)

            def timed(*a, _orig=orig, _name=name, **k):
                t0 = time.perf_counter()
                out = jax.block_until_ready(_orig(*a, **k))
                self.seconds[_name] += time.perf_counter() - t0
                self.calls[_name] += 1
                return out

            setattr(mod, name, timed)
        return self

    def __exit__(self, *exc):
        for mod, name in self.targets:
            setattr(mod, name, self._orig[name])


def run_engine(model, prompts, key, kw, slots, refill_min, repeats):
    """(warm-up s, [timed s], breakdown dict, outputs as numpy) for one engine.

    After the warm-up (compiles), one call with its programs blocked on one by one gives the breakdown:
    seconds in prefill (+ admit) and in decode loops, and the slot loop's exits; the timed calls run as is.
    """
    def call():
        out = sample(model, prompts, key, batch_slots=slots, refill_min=refill_min, **kw)
        jax.block_until_ready([out.tokens, out.logprobs, out.lengths, out.stopped, out.truncated, out.steps])
        return out

    t0 = time.perf_counter()
    out = call()
    warm = time.perf_counter() - t0
    targets = ((sampling, "_prefill"), (sampling, "_decode")) if slots is None else (
        (continuous, "_refill"), (continuous, "_decode_slots"))
    with Breakdown(*targets) as b:
        t0 = time.perf_counter()
        call()
        total = time.perf_counter() - t0
    (pre, pre_name), (dec, dec_name) = ((b.seconds[n], n) for _, n in targets)
    breakdown = {"blocked_call_s": total, "prefill_s": pre, "decode_s": dec, "exits": b.calls[dec_name],
                 "prefill_calls": b.calls[pre_name],
                 "what": f"{pre_name} (prefill, + scatter into slots) and {dec_name} blocked on one by one"}
    times = []
    for _ in range(repeats):
        del out
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    arrays = {f: np.asarray(out[f]) for f in ("tokens", "logprobs", "lengths", "stopped", "truncated")}
    arrays["steps"] = int(out.steps)
    return warm, times, breakdown, arrays


def check_random_head(model, random_head, prompts, key, stops, slots, extra_prompts) -> dict:
    """Static vs slots with the random LM head (real logits; the zero head makes agreement trivial), and the two
    controls that say what a difference means:
      control  the same rows (same keys: a row's key depends on its prompt index and sample only) decoded in a
               static batch twice as wide (``extra_prompts`` appended): how far batch-size-dependent rounding
               alone moves a row;
      fp32     static vs slots again with the model cast to fp32 (params, activations and head): with rounding
               ~2^16 x smaller, what is left is what continuous batching itself changes."""
    n_rows = len(prompts) * 4
    kw = dict(max_new_tokens=64, temperature=1.0, num_samples=4, stop_tokens=stops)

    def run(m, prompt_list, k):
        o = sample(m, prompt_list, key, batch_slots=k, **kw)
        return {f: np.asarray(o[f])[:n_rows] for f in ("tokens", "logprobs", "lengths")}

    zero = model.lm_head[...]
    model.lm_head[...] = random_head
    try:
        ref = run(model, prompts, None)
        res = {"rows": n_rows, "slots": slots, "max_new_tokens": 64, "lengths_median": float(np.median(ref["lengths"])),
               **agreement(run(model, prompts, slots), ref)}
        res["control_wider_static"] = agreement(run(model, prompts + extra_prompts, None), ref)
        twin = fp32_twin(model)
        with jax.default_matmul_precision("highest"):  # a GPU's fp32 DEFAULT is TF32 (~1e-3 per matmul)
            ref32 = run(twin, prompts, None)
            res["fp32"] = agreement(run(twin, prompts, slots), ref32)
            res["fp32_control_wider_static"] = agreement(run(twin, prompts + extra_prompts, None), ref32)
        del twin
    finally:
        model.lm_head[...] = zero
    return res


def fp32_twin(model):
    """The same parameters cast to fp32 in a model whose activations and LM head are fp32 too."""
    config = model.config.replace(dtype="float32", param_dtype="float32", lm_head_dtype="float32")
    twin = nnx.eval_shape(lambda: MiniMaxM1(config, rngs=nnx.Rngs(0)))
    nnx.update(twin, jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                                  nnx.state(model)))
    return twin


def agreement(got, ref) -> dict:
    """Rows with equal tokens and lengths; over those rows' generated tokens, the largest |log-prob difference|
    and the fraction of tokens whose difference exceeds 1e-3 (one near-tied routing flip moves one token a lot)."""
    same = np.all(got["tokens"] == ref["tokens"], axis=1) & (got["lengths"] == ref["lengths"])
    valid = np.arange(ref["tokens"].shape[1])[None] < ref["lengths"][:, None]
    rows = same & valid.any(1)
    diff = np.abs(got["logprobs"] - ref["logprobs"])[rows][valid[rows]]
    return {"rows_identical": float(same.mean()),
            "logprob_maxdiff_identical_rows": float(diff.max()) if diff.size else None,
            "tokens_over_1e-3": float(np.mean(diff > 1e-3)) if diff.size else None}


def length_stats(lengths, cap) -> dict:
    q = np.percentile(lengths, [50, 90, 99])
    return {"median": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": int(lengths.max()),
            "mean": float(lengths.mean()), "max_over_median": float(lengths.max() / max(q[0], 1)),
            "at_cap": int((lengths == cap).sum()), "total": int(lengths.sum())}


def markdown(meta, rows) -> str:
    m = meta
    out = [f"# Continuous batching vs static batch ({m['device']})", "",
           f"{m['date']}; jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']}; `{m['command']}`", "",
           f"Model: {m['model_desc']}. {m['prompts']} prompts x {m['num_samples']} samples = {m['rows']} rows, "
           f"prompt {m['prompt_len']} tokens, max_new_tokens {m['max_new_tokens']}, {m['stop_tokens']} stop tokens "
           f"of {m['vocab']} (p = {m['p_stop']:.4f} per step), temperature 1, zero LM head. Lengths: "
           f"{json.dumps(m.get('lengths'))}. Median of {m['repeats']} calls after a warm-up.", "",
           "| engine | median s | useful tok/s | x static | decode iterations | ms / iteration | slot utilisation | "
           "exits | prefill s | rows identical to static | max logprob diff |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    static = next((r for r in rows if r["engine"] == "static"), None)
    for r in rows:
        speed = f"{static['median_s'] / r['median_s']:.2f}" if static else "-"
        ag = r.get("agreement") or {}
        md = ag.get("logprob_maxdiff_identical_rows")
        out.append(f"| {r['engine']} | {r['median_s']:.3f} | {r['tokens_per_s']:,.0f} | {speed} | {r['steps']} | "
                   f"{r['decode_ms_per_iteration']:.2f} | {r['utilisation']:.2f} | {r['exits']} | "
                   f"{r['breakdown']['prefill_s']:.3f} | {ag.get('rows_identical', 1.0):.3f} | "
                   f"{'-' if md is None else f'{md:.1e}'} |")
    out += ["", "ms / iteration and prefill s: from one extra call whose programs were blocked on one by one (decode "
            "loop seconds / iterations; prefill + admit seconds). Agreement above is trivial (the zero head gives "
            "logits 0 whatever the state); the random-head check is the real one:",
            f"{json.dumps(m.get('random_head_check'))}"]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="toy fp32 model and shapes (CPU, ~1 min)")
    ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
    ap.add_argument("--name", default=None, help="output stem (default continuous_batching_<small|gpu>)")
    ap.add_argument("--prompts", type=int, default=None, help="default 64 (small 16)")
    ap.add_argument("--num-samples", type=int, default=None, help="default 8 (small 4)")
    ap.add_argument("--prompt-len", type=int, default=None, help="default 256 (small 16)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 2048 (small 128)")
    ap.add_argument("--mean-len", type=float, default=None,
                    help="target mean length before the cap: stop tokens = round(vocab / mean) (default 288; small 12)")
    ap.add_argument("--slots", default=None, help="batch_slots values, comma-separated (default 64,128,256; "
                    "small 8,16)")
    ap.add_argument("--refill-min", type=int, default=None, help="refill_min for every slots engine (default K // 8)")
    ap.add_argument("--head", default="bfloat16", help="lm_head_dtype of the GPU model (small: float32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=0, help="start no new engine after this many seconds")
    ap.add_argument("--check-only", action="store_true", help="only the random-head agreement check (no timing)")
    a = ap.parse_args()
    s = a.small
    P, G = a.prompts or (16 if s else 64), a.num_samples or (4 if s else 8)
    n, T = a.prompt_len or (16 if s else 256), a.max_new_tokens or (128 if s else 2048)
    slot_list = [int(x) for x in (a.slots or ("8,16" if s else "64,128,256")).split(",")]
    name = a.name or f"continuous_batching_{'small' if s else 'gpu'}"
    t_start = time.time()

    model, random_head = build_model(s, a.head)
    c = model.config
    V = c.vocab_size
    n_stop = max(1, round(V / (a.mean_len or (12 if s else 288))))
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, V, (P, n), dtype=np.int32).tolist()
    stops = tuple(int(t) for t in rng.choice(V, n_stop, replace=False))
    kw = dict(max_new_tokens=T, temperature=1.0, num_samples=G, stop_tokens=stops)
    layout = "".join("L" if c.is_lightning(i) else "S" for i in range(c.num_hidden_layers))
    dev = jax.devices()[0]
    meta = dict(
        device=dev.device_kind, backend=jax.default_backend(), device_count=jax.device_count(), jax=jax.__version__,
        jaxlib=jaxlib.__version__, flax=flax.__version__, numpy=np.__version__, python=platform.python_version(),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), command="python " + " ".join(sys.argv),
        small=s, prompts=P, num_samples=G, rows=P * G, prompt_len=n, max_new_tokens=T, vocab=V, stop_tokens=n_stop,
        p_stop=n_stop / V, repeats=a.repeats, slots=slot_list, refill_min=a.refill_min,
        model_desc=(f"{c.num_hidden_layers} layers {layout}, hidden {c.hidden_size}, {c.num_attention_heads} heads x "
                    f"{c.head_dim}, {c.num_key_value_heads} kv heads, {c.num_local_experts} experts top-"
                    f"{c.num_experts_per_tok}, vocab {V}, params / activations / head {c.param_dtype} / {c.dtype} / "
                    f"{c.lm_head_dtype}"),
        model={k: v for k, v in c.to_dict().items()},
    )
    print(f"{dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}; {meta['model_desc']}; "
          f"{P} x {G} rows, prompt {n}, T {T}, {n_stop} stop tokens", flush=True)
    rows, ref = [], None
    os.makedirs(a.out, exist_ok=True)

    def write():
        with open(os.path.join(a.out, f"{name}.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)

    key = jax.random.key(0)
    for slots in [] if a.check_only else [None] + slot_list:
        engine = "static" if slots is None else f"slots={slots}"
        if a.budget_s and time.time() - t_start > a.budget_s:
            print(f"  {engine}: skipped (--budget-s)", flush=True)
            meta.setdefault("skipped", []).append(engine)
            continue
        warm, times, breakdown, out = run_engine(model, prompts, key, kw, slots, a.refill_min, a.repeats)
        med = statistics.median(times)
        useful = int(out["lengths"].sum())
        width = P * G if slots is None else slots
        row = dict(engine=engine, batch_slots=slots, warmup_s=warm, times_s=times, median_s=med, useful_tokens=useful,
                   tokens_per_s=useful / med, steps=out["steps"], utilisation=useful / (out["steps"] * width),
                   exits=breakdown["exits"], breakdown=breakdown,
                   decode_ms_per_iteration=1e3 * breakdown["decode_s"] / out["steps"])
        if ref is None:
            ref = out
            meta["lengths"] = length_stats(out["lengths"], T)
        else:
            row["agreement"] = agreement(out, ref)
        rows.append(row)
        write()
        same = f", identical rows {row['agreement']['rows_identical']:.3f}" if "agreement" in row else ""
        print(f"  {engine:<10} {med:8.3f} s  {row['tokens_per_s']:>12,.0f} useful tok/s  {out['steps']} iterations "
              f"({row['decode_ms_per_iteration']:.2f} ms each), utilisation {row['utilisation']:.2f}, exits "
              f"{row['exits']}, prefill {breakdown['prefill_s']:.3f} s, warm-up {warm:.1f} s{same}", flush=True)
    if slot_list and not (a.budget_s and time.time() - t_start > a.budget_s):
        k = min(slot_list)
        extra = rng.integers(0, V, (8, n), dtype=np.int32).tolist()  # the control's extra rows
        meta["random_head_check"] = c = check_random_head(model, random_head, prompts[:8], key, stops, k, extra)
        write()
        print(f"  random-head check (static vs slots={k}, {c['rows']} rows): {c}", flush=True)
    print()
    print(markdown(meta, rows))
    print(f"wrote {os.path.join(a.out, name)}.json ({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
