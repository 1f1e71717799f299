"""Sampler-vs-learner token-probability agreement under each LM-head choice (the MiniMax-M1 report's Fig. 3:
correlation of the inference engine's and the training forward's token probabilities, 0.987 with a bf16 head,
0.997 with an fp32 one).

    PYTHONPATH=. python3 experiments/benchmarks/head_mismatch.py --out $OUT/head_mismatch_h200.md --budget-s 200
    JAX_PLATFORMS=cpu PYTHONPATH=. python3 experiments/benchmarks/head_mismatch.py --small --out /tmp/hm/hm.md

Heads (--heads, comma list; default bf16,highest,bf16x3,tf32,bf16x6, most telling first for --budget-s):
  bf16 = lm_head_dtype "bfloat16"; each other name = lm_head_dtype "float32" with that lm_head_precision
  (m1jax/model/head.py). Each variant is the SAME parameters (initialised once) under a graphdef built
  by nnx.eval_shape for config.replace(lm_head_dtype=..., lm_head_precision=...); the parameter trees are
  checked equal. Sampler and learner both use that head, as in RL.
Per variant and logit scale: m1jax.sampling.sample(policy, P random-token prompts (ragged lengths), key,
  max_new_tokens=T, temperature=1, num_samples=G), the same key for every variant; then the RL loop's learner
  path (m1jax/rl/loop.py _learn_step): learner_batch -> make_logprob_fn(graphdef, 1.0, micro_batches)(params,
  device batch) -> mismatch_metrics(sampler_logp, learner_logp, mask): Pearson correlation of the sampled
  tokens' probabilities, mean and max |delta log p|. "H est" = mean -log p (learner) of the sampled tokens, a
  Monte-Carlo estimate of the learner's next-token entropy on them.
Logit scales: "init", the random model as initialised (near-uniform next-token distributions, ~ln(vocab) nats);
  "sharpened", the LM head weights multiplied by one factor, chosen by bisection on the fp32 "highest" head's
  logits at the prompts' positions (one forward) so that their mean entropy is --target-entropy nats, the
  same scaled (bf16) weights for every variant. This is a SYNTHETIC sharpening of a random model, not a
  trained model: the body's activations are a random network's.
Times: one call each, to the host; the "init" row's include compiling the programs (prefill, decode, the
  log-prob pass), the "sharpened" row's are one call of the same, already compiled, programs.
Model: experiments.benchmarks.rollout.model_config (the 1b preset shape, bf16 params and activations; --small:
  its toy shape). On a CPU every fp32 precision is computed as IEEE fp32 (head.py), so the fp32 rows coincide.
Output: --out X.md (markdown) and X.json (every number), rewritten after each variant; --budget-s S: no
  variant starts after S seconds (recorded as skipped).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
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

from experiments.benchmarks.rollout import check_preset, model_config  # noqa: E402
from m1jax.model import MiniMaxM1  # noqa: E402
from m1jax.model.head import HEAD_PRECISIONS, lm_head_logits  # noqa: E402
from m1jax.rl.learner import learner_batch, make_logprob_fn, mismatch_metrics  # noqa: E402
from m1jax.sampling import sample  # noqa: E402
from m1jax.train.step import model_graphdef  # noqa: E402

HEADS = {"bf16": ("bfloat16", "highest"), **{p: ("float32", p) for p in HEAD_PRECISIONS}}
ORDER = sorted(HEADS, key=lambda h: ("bf16", "highest", "bf16x3", "tf32", "bf16x6", h).index(h))
DEFAULTS = {False: dict(prompts=16, num_samples=4, max_new_tokens=256, prompt_len="64,256", micro_batches=4),
            True: dict(prompts=4, num_samples=2, max_new_tokens=16, prompt_len="4,24", micro_batches=2)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="markdown path; the JSON goes beside it (same stem)")
    ap.add_argument("--heads", default=",".join(ORDER))
    ap.add_argument("--small", action="store_true", help="toy model shape and sizes (the CPU check)")
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--num-samples", type=int)
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--prompt-len", help="MIN,MAX prompt lengths (uniform)")
    ap.add_argument("--micro-batches", type=int, help="learner log-prob micro-batches (divides prompts x samples)")
    ap.add_argument("--target-entropy", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=0.0, help="no variant starts after this (0: no limit)")
    args = ap.parse_args(argv)
    for k, v in DEFAULTS[args.small].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    for h in args.heads:
        if h not in HEADS:
            raise ValueError(f"unknown head {h!r} in --heads; choose from {list(HEADS)}")
    if not args.heads:
        raise ValueError("--heads is empty")
    try:
        lo, hi = (int(x) for x in args.prompt_len.split(","))
    except ValueError:
        raise ValueError(f"--prompt-len must be MIN,MAX integers, got {args.prompt_len!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"--prompt-len needs 1 <= MIN <= MAX, got {lo},{hi}")
    args.prompt_len = (lo, hi)
    for k in ("prompts", "num_samples", "max_new_tokens", "micro_batches"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if (args.prompts * args.num_samples) % args.micro_batches:
        raise ValueError(f"--micro-batches {args.micro_batches} must divide prompts x samples = "
                         f"{args.prompts * args.num_samples}")
    if args.target_entropy <= 0:
        raise ValueError(f"--target-entropy must be > 0, got {args.target_entropy}")
    return args


def _signature(tree):
    return [(jax.tree_util.keystr(p), a.shape, a.dtype) for p, a in jax.tree_util.tree_leaves_with_path(tree)]


def graphdef_for(config, params, name):
    """The graphdef of the model under head ``name`` (nnx.eval_shape: nothing allocated); checks that its
    parameter tree (paths, shapes, dtypes) is ``params``'s."""
    dtype, precision = HEADS[name]
    graphdef, want = model_graphdef(config.replace(lm_head_dtype=dtype, lm_head_precision=precision))
    if _signature(want) != _signature(params):
        raise ValueError(f"head {name}: the parameter tree differs from the initialised model's")
    return graphdef


def sharpen_factor(graphdef, params, prompts, target, rows_cap=4096):
    """Factor f for the LM head so the mean entropy of softmax(f x logits) over the prompts' positions is
    ``target`` (bisection on log f; entropy falls as f grows); returns (f, entropy at 1, entropy at f)."""
    b = learner_batch(prompts, np.zeros((len(prompts), 1)), np.zeros(len(prompts)), np.zeros((len(prompts), 1)),
                      np.zeros(len(prompts)))
    n = b["tokens"].shape[1] - 1  # the prompt slots (the last slot is the dummy completion)
    fwd = jax.jit(lambda p, t, s, q: nnx.merge(graphdef, p).forward(t, segment_ids=s, positions=q, head=False).hidden)
    h = fwd(params, *(jnp.asarray(b[k][:, :n]) for k in ("tokens", "segment_ids", "positions")))
    idx = np.flatnonzero(b["segment_ids"][:, :n].reshape(-1))
    idx = np.random.default_rng(1).permutation(idx)[:rows_cap]
    logits = lm_head_logits(h.reshape(-1, h.shape[-1])[idx], params["lm_head"], dtype="float32", precision="highest")
    ent = jax.jit(lambda f: jnp.mean(-jnp.sum(jax.nn.softmax(f * logits) * jax.nn.log_softmax(f * logits), -1)))
    lo, hi = math.log(1e-3), math.log(1e4)
    if not float(ent(math.exp(hi))) < target < float(ent(math.exp(lo))):
        raise ValueError(f"--target-entropy {target} is outside what scaling the head reaches")
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(ent(math.exp(mid))) > target else (lo, mid)
    f = math.exp((lo + hi) / 2)
    return f, float(ent(1.0)), float(ent(f))


def measure(graphdef, params, logprobs, prompts, key, args):
    """One sample + learner log-prob pass -> a row of metrics."""
    R = args.prompts * args.num_samples
    t = time.perf_counter()
    out = sample((graphdef, params), prompts, key, max_new_tokens=args.max_new_tokens, temperature=1.0,
                 num_samples=args.num_samples)
    tokens, slogp, lengths = (np.asarray(x) for x in (out.tokens, out.logprobs, out.lengths))
    t_sample = time.perf_counter() - t
    batch = learner_batch([p for p in prompts for _ in range(args.num_samples)], tokens, lengths, slogp,
                          np.zeros(R, np.float32))
    t = time.perf_counter()
    llogp = np.asarray(logprobs(params, jax.device_put(batch)))
    t_lp = time.perf_counter() - t
    m = mismatch_metrics(batch["sampler_logp"], llogp, batch["mask"])
    mask = batch["mask"] > 0
    return {"tokens": int(mask.sum()), "prob_corr": m["mismatch/prob_corr"],
            "mean_abs_logp": m["mismatch/mean_abs_logp"], "max_abs_logp": m.get("mismatch/max_abs_logp"),
            "entropy_est_learner": float(-llogp[mask].mean()), "entropy_est_sampler": float(-slogp[mask].mean()),
            "mean_prob": float(np.exp(llogp[mask]).mean()), "sample_s": t_sample, "logprob_s": t_lp}


def write(res, out):
    stem = os.path.splitext(out)[0]
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
    s, sh = res["setup"], res.get("sharpen", {})
    lines = [
        "# Sampler vs learner token-probability agreement per LM head", "",
        f"- device {res['device']} ({res['backend']}); jax {res['jax']}, jaxlib {res['jaxlib']}, flax {res['flax']}; "
        f"{res['date']}", f"- command: `{res['command']}`", f"- model: {res['model']}",
        f"- shapes: {s['prompts']} random-token prompts (lengths {s['prompt_len'][0]}..{s['prompt_len'][1]}) x "
        f"{s['num_samples']} samples = {s['rows']} rows, {s['max_new_tokens']} new tokens, temperature 1, no stop "
        f"tokens; learner log-probs in {s['micro_batches']} micro-batches; sampling key seed {s['seed']}",
        f"- logit scales: init = the random model as initialised (prompt-position entropy "
        f"{sh.get('entropy_init', 'n/a')} nats); sharpened = LM head weights x {sh.get('factor', 'n/a')} (entropy "
        f"{sh.get('entropy', 'n/a')} nats, "
        f"target {s['target_entropy']}, chosen on the fp32 highest head). **A synthetic sharpening of a random "
        "model, not a trained model.**",
        "- prob corr / |dlogp|: m1jax.rl.learner.mismatch_metrics over the generated tokens; H est = mean -log p "
        "(learner) of the sampled tokens; times: one call each, the init row's including compilation.",
    ]
    if "error" in sh:
        lines.append(f"- the sharpening probe failed, so only the init scale was run: {sh['error']}")
    if res["backend"] == "cpu":
        lines.append("- CPU: every fp32 precision runs as IEEE fp32 (m1jax/model/head.py), so the fp32 rows coincide.")
    lines += ["", "| head | lm_head_dtype | precision | scale | tokens | prob corr | mean abs dlogp | max abs dlogp "
              "| H est (nats) | sample s | logprob s |", "|" + "---|" * 11]
    for r in res["rows"]:
        if "error" in r:
            err = r["error"].replace("|", "/")
            lines.append(f"| {r['head']} | {r['lm_head_dtype']} | {r['precision']} | | | error: {err} |")
            continue
        comp = " (incl. compile)" if r["includes_compile"] else ""
        lines.append(f"| {r['head']} | {r['lm_head_dtype']} | {r['precision']} | {r['scale']} | {r['tokens']} | "
                     f"{r['prob_corr']:.6f} | {r['mean_abs_logp']:.2e} | {r['max_abs_logp']:.2e} | "
                     f"{r['entropy_est_learner']:.3f} | {r['sample_s']:.2f}{comp} | {r['logprob_s']:.2f}{comp} |")
    if res["skipped"]:
        lines += ["", f"Skipped (--budget-s {s['budget_s']}): {', '.join(res['skipped'])}"]
    text = "\n".join(lines) + "\n"
    with open(stem + ".md", "w") as f:
        f.write(text)
    return text


def main(argv=None):
    t0 = time.perf_counter()
    args = parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    config = model_config("float32", args.small)
    preset = "toy shape (--small)" if args.small else check_preset(config)
    params = nnx.to_pure_dict(nnx.state(MiniMaxM1(config, rngs=nnx.Rngs(args.seed)), nnx.Param))  # eager: low peak
    n_params = sum(x.size for x in jax.tree.leaves(params))
    rng = np.random.default_rng(args.seed)
    lens = rng.integers(args.prompt_len[0], args.prompt_len[1] + 1, args.prompts)
    prompts = [rng.integers(1, config.vocab_size, n).tolist() for n in lens]
    key = jax.random.key(args.seed)
    c = config
    res = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
           "jaxlib": jaxlib.__version__, "flax": flax.__version__,
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
           "model": f"{c.num_hidden_layers} layers ({''.join('S' if t else 'L' for t in c.attn_type_list)}), hidden "
                    f"{c.hidden_size}, {c.num_attention_heads} heads x {c.head_dim}, {c.num_key_value_heads} kv, "
                    f"{c.num_local_experts} experts top-{c.num_experts_per_tok} of {c.intermediate_size}, vocab "
                    f"{c.vocab_size}, {n_params / 1e6:.2f}M params in {c.param_dtype}, activations {c.dtype}; "
                    f"random init seed {args.seed}; {preset}",
           "setup": {"prompts": args.prompts, "num_samples": args.num_samples, "rows": args.prompts * args.num_samples,
                     "max_new_tokens": args.max_new_tokens, "prompt_len": list(args.prompt_len),
                     "prompt_lengths": lens.tolist(), "micro_batches": args.micro_batches, "seed": args.seed,
                     "target_entropy": args.target_entropy, "budget_s": args.budget_s, "heads": args.heads},
           "note": "sharpened = a synthetic sharpening of a random model (LM head x factor), not a trained model",
           "rows": [], "skipped": []}
    scales = [("init", params, 1.0)]
    try:  # a failed probe leaves the "init" scale only
        factor, e1, ef = sharpen_factor(graphdef_for(config, params, "highest"), params, prompts, args.target_entropy)
        res["sharpen"] = {"factor": round(factor, 4), "entropy_init": round(e1, 4), "entropy": round(ef, 4),
                          "probe_s": round(time.perf_counter() - t0, 2)}  # includes the init and compiling
        w = params["lm_head"]
        scales.append(("sharpened", {**params, "lm_head": (w.astype(jnp.float32) * factor).astype(w.dtype)}, factor))
        print(f"sharpen factor {factor:.3f}: prompt-position entropy {e1:.3f} -> {ef:.3f} nats", flush=True)
    except Exception as e:  # noqa: BLE001
        res["sharpen"] = {"error": repr(e)[:300]}
        print(f"sharpening probe failed: {e!r}", flush=True)
    for name in args.heads:
        if args.budget_s > 0 and time.perf_counter() - t0 > args.budget_s:
            res["skipped"].append(name)
            write(res, args.out)
            continue
        dtype, precision = HEADS[name]
        base = {"head": name, "lm_head_dtype": dtype, "precision": precision if dtype == "float32" else "-"}
        try:
            graphdef = graphdef_for(config, params, name)
            logprobs = make_logprob_fn(graphdef, 1.0, micro_batches=args.micro_batches)
            for i, (scale, p, f) in enumerate(scales):
                row = {**base, "scale": scale, "factor": f, "includes_compile": i == 0,
                       **measure(graphdef, p, logprobs, prompts, key, args)}
                res["rows"].append(row)
                print(json.dumps(row), flush=True)
                write(res, args.out)
        except Exception as e:  # noqa: BLE001 -- record it, go on with the next head
            res["rows"].append({**base, "error": repr(e)[:300]})
            print(f"{name}: {e!r}", flush=True)
        write(res, args.out)
    res["total_s"] = round(time.perf_counter() - t0, 2)
    print(write(res, args.out))


if __name__ == "__main__":
    main()
