"""The whole LM head (fp32 RMSNorm, matmul, log-softmax) under each ``lm_head_precision``, side by side in one
process: median time of the forward and of forward + backward, and the error against float64 (numpy) on 512 rows
(section ``head``, JSON key "cases").

Section ``chunked_ce``: the training loss (mean token cross-entropy over T rows, one packed row of T + 1 tokens)
and its gradients w.r.t. the final-normed hidden states and the head weight, computed
  unchunked  lm_head_logits -> [T + 1, vocab] fp32 logits -> m1jax.train.loss.cross_entropy_sums (step.py's path
             with ce_chunk = 0), and
  chunked    m1jax.train.loss.chunked_cross_entropy_sums at each --ce-chunks (positions per chunk: each chunk's
             [chunk, vocab] logits are reduced and dropped, and recomputed in the backward pass),
for a bf16 head and an fp32 head at bf16x3 and highest (--ce-heads). Per case: median ms of the forward (loss and
the argmax count, as step.py's stats) and of forward + backward, the compiled temp memory
(``memory_analysis().temp_size_in_bytes``) of both, and the max abs difference of the loss and of both gradients
against the unchunked fp32-highest case ("vs_ref") and against the same head unchunked ("vs_unchunked": the
chunking error alone). Then compile-only temp memory of forward + backward at longer rows (--ce-mem-rows, default
4 x --ce-rows): no arrays allocated, nothing run. JSON key "chunked_ce"; the markdown (out's stem + .md) gets a
table per section. The JSON and markdown are rewritten after each case; --budget-s: no case starts after that many
seconds (skipped ones are listed).

    python3 experiments/benchmarks/lm_head.py --out $OUT/lm_head.json [--rows 8192 --hidden 2048 --vocab 32768]
    python3 experiments/benchmarks/lm_head.py --out $OUT/lm_head_ce_h200.json --sections chunked_ce \
        [--ce-rows 8192 --ce-chunks 1024,2048,4096 --ce-mem-rows 32768 --budget-s 80]
    JAX_PLATFORMS=cpu python3 experiments/benchmarks/lm_head.py --small --out /tmp/lmh/lm_head.json  # CPU check
"""

from __future__ import annotations

import argparse
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
from m1jax.model.head import HEAD_PRECISIONS, lm_head_logits  # noqa: E402
from m1jax.train.loss import chunked_cross_entropy_sums, cross_entropy_sums  # noqa: E402  (no ml-collections)

CHOICES = [("bfloat16", None)] + [("float32", p) for p in ("tf32", "bf16x3", "bf16x6", "highest")]
CE_HEADS = {"bf16": ("bfloat16", "highest"), "bf16x3": ("float32", "bf16x3"), "highest": ("float32", "highest")}
SECTIONS = ("head", "chunked_ce")


def head(x, g, w, dtype, precision):
    h = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * g
    return jax.nn.log_softmax(lm_head_logits(h, w, dtype=dtype, precision=precision or "highest"), axis=-1)


def run_head(args, res, over_budget, save):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.rows, args.hidden)), jnp.float32)
    g = jnp.asarray(1 + 0.1 * rng.standard_normal(args.hidden), jnp.float32)
    w = jnp.asarray(rng.standard_normal((args.hidden, args.vocab)) / np.sqrt(args.hidden) * 4, jnp.float32)
    # float64 reference on the first rows (numpy on the host)
    xr, gr, wr = (np.asarray(a, np.float64) for a in (x[: args.check_rows], g, w))
    hr = xr / np.sqrt(np.mean(xr * xr, -1, keepdims=True) + 1e-6) * gr
    lr = hr @ wr
    lpr = lr - (np.log(np.sum(np.exp(lr - lr.max(-1, keepdims=True)), -1, keepdims=True)) + lr.max(-1, keepdims=True))
    res["cases"] = []
    for dtype, prec in CHOICES:
        name = "bf16 head" if dtype == "bfloat16" else prec
        if over_budget():
            res.setdefault("skipped", []).append(f"head {name}")
            continue
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
            case["fwd_ms"] = median_ms(fwd, x, g, w, iters=args.iters)
            case["fwd_bwd_ms"] = median_ms(grad, x, g, w, iters=args.iters)
        except Exception as e:  # noqa: BLE001
            case["error"] = repr(e)[:300]
        res["cases"].append(case)
        print(json.dumps(case), flush=True)
        save()
    base = next((c for c in res["cases"] if c["head"] == "bf16 head"), {})
    for c in res["cases"]:
        if "fwd_ms" in c and "fwd_ms" in base:
            c["fwd_x_bf16"] = c["fwd_ms"] / base["fwd_ms"]
            c["fwd_bwd_x_bf16"] = c["fwd_bwd_ms"] / base["fwd_bwd_ms"]
    save()
    print(json.dumps(res["cases"]))


def ce_loss(hidden, w, batch, *, dtype, precision, chunk):
    """(mean token NLL, number correct): step.py's loss with ce_chunk = chunk (0: the full head)."""
    if chunk:
        nll, n, correct = chunked_cross_entropy_sums(hidden, w, batch, chunk=chunk, dtype=dtype, precision=precision)
    else:
        nll, n, correct = cross_entropy_sums(lm_head_logits(hidden, w, dtype=dtype, precision=precision), batch)
    return nll / jnp.maximum(n, 1.0), correct


def ce_fns(dtype, precision, chunk):
    """Jitted forward (loss, correct) and forward + backward ((loss, correct), (d hidden, d w))."""
    f = lambda h, w, b: ce_loss(h, w, b, dtype=dtype, precision=precision, chunk=chunk)  # noqa: E731
    return jax.jit(f), jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))


def temp_bytes(compiled):
    try:
        m = compiled.memory_analysis()
        return None if m is None else int(m.temp_size_in_bytes)
    except Exception:  # noqa: BLE001
        return None


def ce_inputs(rows, hidden, vocab, seed=1):
    rng = np.random.default_rng(seed)
    n = rows + 1  # one packed row: T + 1 tokens give T targets
    h = jnp.asarray(rng.standard_normal((1, n, hidden)), jnp.float32)  # final-normed: unit RMS
    w = jnp.asarray(rng.standard_normal((hidden, vocab)) / np.sqrt(hidden) * 4, jnp.float32)
    batch = {"tokens": jnp.asarray(rng.integers(0, vocab, (1, n)), jnp.int32),
             "segment_ids": jnp.ones((1, n), jnp.int32), "loss_mask": jnp.ones((1, n), jnp.float32)}
    return h, w, batch


def ce_shapes(rows, hidden, vocab):
    n = rows + 1
    s = jax.ShapeDtypeStruct
    return (s((1, n, hidden), jnp.float32), s((hidden, vocab), jnp.float32),
            {"tokens": s((1, n), jnp.int32), "segment_ids": s((1, n), jnp.int32), "loss_mask": s((1, n), jnp.float32)})


def diffs(out, ref):
    """max abs differences of loss and grads: out / ref = ((loss, correct), (dh, dw))."""
    (loss, c), (dh, dw) = out
    (lr, cr), (dhr, dwr) = ref
    d = {"loss": float(jnp.abs(loss - lr)), "dhidden": float(jnp.max(jnp.abs(dh - dhr))),
         "dw": float(jnp.max(jnp.abs(dw - dwr))), "correct": float(c - cr)}
    return d


def run_chunked_ce(args, res, over_budget, save):
    rows, hidden, vocab = args.ce_rows, args.hidden, args.vocab
    chunks = [c for c in args.ce_chunks if c < rows]
    heads = args.ce_heads
    sec = {"rows": rows, "hidden": hidden, "vocab": vocab, "chunks": chunks, "heads": heads,
           "ref": "unchunked fp32 highest", "cases": [], "mem_only": []}
    res["chunked_ce"] = sec
    h, w, batch = ce_inputs(rows, hidden, vocab)
    compiled = {}

    def get(dtype, prec, chunk):
        key = (dtype, prec, chunk)
        if key not in compiled:
            fwd, fb = ce_fns(dtype, prec, chunk)
            compiled[key] = (fwd.lower(h, w, batch).compile(), fb.lower(h, w, batch).compile())
        return compiled[key]

    ref = get("float32", "highest", 0)[1](h, w, batch)
    sec["ref_loss"] = float(ref[0][0])
    sec["ref_max_abs_dhidden"] = float(jnp.max(jnp.abs(ref[1][0])))
    sec["ref_max_abs_dw"] = float(jnp.max(jnp.abs(ref[1][1])))
    for name in heads:
        dtype, prec = CE_HEADS[name]
        same = None
        for chunk in [0] + chunks:
            if over_budget():
                sec["skipped"] = sec.get("skipped", []) + [f"{name} chunk {chunk}"]
                continue
            case = {"head": name, "chunk": chunk}
            try:
                fwd, fb = get(dtype, prec, chunk)
                case["fwd_temp_bytes"], case["fwd_bwd_temp_bytes"] = temp_bytes(fwd), temp_bytes(fb)
                out = ref if (dtype, prec, chunk) == ("float32", "highest", 0) else fb(h, w, batch)
                case["loss"] = float(out[0][0])
                case["vs_ref"] = diffs(out, ref)
                if chunk == 0:
                    same = out
                elif same is not None:
                    case["vs_unchunked"] = diffs(out, same)
                if out is not ref and out is not same:
                    del out
                case["fwd_ms"] = median_ms(fwd, h, w, batch, iters=args.iters)
                case["fwd_bwd_ms"] = median_ms(fb, h, w, batch, iters=args.iters)
            except Exception as e:  # noqa: BLE001
                case["error"] = repr(e)[:300]
            compiled.pop((dtype, prec, chunk), None)
            sec["cases"].append(case)
            print(json.dumps(case), flush=True)
            save()
        del same
    ref = h = w = batch = None  # free the device arrays before the compile-only cases
    for mrows in args.ce_mem_rows:
        shapes = ce_shapes(mrows, hidden, vocab)
        for name in heads:
            dtype, prec = CE_HEADS[name]
            for chunk in [0] + [c for c in args.ce_chunks if c < mrows]:
                if over_budget():
                    sec["skipped"] = sec.get("skipped", []) + [f"mem {mrows} {name} chunk {chunk}"]
                    continue
                case = {"rows": mrows, "head": name, "chunk": chunk}
                try:
                    case["fwd_bwd_temp_bytes"] = temp_bytes(ce_fns(dtype, prec, chunk)[1].lower(*shapes).compile())
                except Exception as e:  # noqa: BLE001
                    case["error"] = repr(e)[:300]
                sec["mem_only"].append(case)
                print(json.dumps(case), flush=True)
                save()


def _mib(b):
    return "-" if b is None else f"{b / 2**20:.0f}"


def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


def markdown(res):
    out = [f"# LM head ({res['device']})", "",
           f"jax {res['jax']}, python {res['python']}; `{res['command']}`; {res['elapsed_s']:.0f} s.", ""]
    if res.get("cases"):
        out += [f"## Whole head: {res['rows']} rows, hidden {res['hidden']}, vocab {res['vocab']} "
                f"(error vs float64 on {res['check_rows']} rows)", "",
                "| head | fwd ms | x bf16 | fwd+bwd ms | x bf16 | max rel logit error | max abs log-prob error |",
                "|---|---|---|---|---|---|---|"]
        for c in res["cases"]:
            out.append(f"| {c['head']} | {_f(c.get('fwd_ms'), '.2f')} | {_f(c.get('fwd_x_bf16'), '.2f')} | "
                       f"{_f(c.get('fwd_bwd_ms'), '.2f')} | {_f(c.get('fwd_bwd_x_bf16'), '.2f')} | "
                       f"{_f(c.get('max_rel_logit_err'), '.1e')} | {_f(c.get('max_abs_logprob_err'), '.1e')} |"
                       + (f" {c['error']}" if "error" in c else ""))
        out.append("")
    s = res.get("chunked_ce")
    if s:
        out += [f"## Training cross-entropy: {s['rows']} rows, hidden {s['hidden']}, vocab {s['vocab']}", "",
                "Mean token NLL; fwd+bwd: gradients w.r.t. hidden and the head weight. chunk 0: full fp32 logits "
                "then cross_entropy_sums; else chunked_cross_entropy_sums. Temp: compiled temp_size_in_bytes. "
                f"Max abs differences vs {s['ref']} (ref loss {s.get('ref_loss', float('nan')):.4f}, "
                f"max |dhidden| {s.get('ref_max_abs_dhidden', float('nan')):.2e}, "
                f"max |dw| {s.get('ref_max_abs_dw', float('nan')):.2e}) and vs the same head unchunked.", "",
                "| head | chunk | fwd ms | fwd+bwd ms | fwd temp MiB | fwd+bwd temp MiB | loss / dhidden / dw vs ref | "
                "loss / dhidden / dw vs unchunked |", "|---|---|---|---|---|---|---|---|"]

        def d3(d):
            return "-" if not d else f"{d['loss']:.1e} / {d['dhidden']:.1e} / {d['dw']:.1e}"

        for c in s["cases"]:
            out.append(f"| {c['head']} | {c['chunk'] or 'none'} | {_f(c.get('fwd_ms'), '.2f')} | "
                       f"{_f(c.get('fwd_bwd_ms'), '.2f')} | {_mib(c.get('fwd_temp_bytes'))} | "
                       f"{_mib(c.get('fwd_bwd_temp_bytes'))} | {d3(c.get('vs_ref'))} | {d3(c.get('vs_unchunked'))} |"
                       + (f" {c['error']}" if "error" in c else ""))
        if s["mem_only"]:
            out += ["", "Compile only (nothing run): fwd+bwd temp MiB", "",
                    "| rows | head | chunk | fwd+bwd temp MiB |", "|---|---|---|---|"]
            for c in s["mem_only"]:
                out.append(f"| {c['rows']} | {c['head']} | {c['chunk'] or 'none'} | "
                           f"{_mib(c.get('fwd_bwd_temp_bytes'))} |" + (f" {c['error']}" if "error" in c else ""))
        if s.get("skipped"):
            out += ["", "Skipped (budget): " + ", ".join(s["skipped"])]
        out.append("")
    if res.get("skipped"):
        out += ["Skipped (budget): " + ", ".join(res["skipped"]), ""]
    return "\n".join(out)


def _ints(s):
    return [int(v) for v in s.split(",") if v.strip()]


def main():
    t0 = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="lm_head.json")
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--check-rows", type=int, default=512)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {SECTIONS}")
    ap.add_argument("--ce-rows", type=int, default=0, help="rows T of the chunked_ce section (default --rows)")
    ap.add_argument("--ce-chunks", default="1024,2048,4096", help="chunk sizes (positions); those >= T are dropped")
    ap.add_argument("--ce-heads", default="bf16,bf16x3,highest", help=f"of {tuple(CE_HEADS)}")
    ap.add_argument("--ce-mem-rows", default="auto",
                    help="rows for compile-only fwd+bwd temp memory (auto: 4 x --ce-rows; 'none': skip)")
    ap.add_argument("--budget-s", type=float, default=80, help="start no new case after this many seconds (0: none)")
    ap.add_argument("--small", action="store_true", help="CPU check: 1024 rows, hidden 256, vocab 4096, chunks "
                    "128,256,512, 3 iters")
    args = ap.parse_args()
    if args.small:
        args.rows, args.hidden, args.vocab, args.check_rows, args.iters = 1024, 256, 4096, 128, 3
        if args.ce_chunks == ap.get_default("ce_chunks"):
            args.ce_chunks = "128,256,512"
    args.ce_rows = args.ce_rows or args.rows
    args.ce_chunks = _ints(args.ce_chunks)
    args.ce_heads = [v for v in args.ce_heads.split(",") if v]
    args.ce_mem_rows = ([4 * args.ce_rows] if args.ce_mem_rows == "auto" else
                        [] if args.ce_mem_rows == "none" else _ints(args.ce_mem_rows))
    sections = [v for v in args.sections.split(",") if v]
    assert set(sections) <= set(SECTIONS), sections
    assert set(args.ce_heads) <= set(CE_HEADS), args.ce_heads
    assert set(p for _, p in CHOICES if p) <= set(HEAD_PRECISIONS)
    dev = jax.devices()[0]
    res = {"device": dev.device_kind, "jax": jax.__version__, "python": platform.python_version(),
           "rows": args.rows, "hidden": args.hidden, "vocab": args.vocab, "check_rows": args.check_rows,
           "sections": sections, "command": " ".join(["python3"] + sys.argv), "budget_s": args.budget_s}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    md_path = os.path.splitext(args.out)[0] + ".md"

    def over_budget():
        return bool(args.budget_s) and time.perf_counter() - t0 > args.budget_s

    def save():
        res["elapsed_s"] = time.perf_counter() - t0
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
        with open(md_path, "w") as f:
            f.write(markdown(res))

    if "head" in sections:
        run_head(args, res, over_budget, save)
    if "chunked_ce" in sections:
        run_chunked_ce(args, res, over_budget, save)
    save()
    print(markdown(res))


if __name__ == "__main__":
    main()
