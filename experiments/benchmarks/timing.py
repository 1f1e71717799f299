"""Wall-clock timing shared by the benchmark scripts and experiments/check_gpu_kernels.py: ``median_ms`` (one call per
sample); ``time_jax`` / ``time_torch`` (samples of back-to-back calls sized to a time budget,
benchmarks/lightning_attention.py); and interleaved rounds (``run_rounds``, benchmarks/lightning_vs_fla.py and
lightning_bwd_stages.py).

Interleaved rounds: timed one row after another, identical configurations drifted by up to ~25% within one device
call on an H200 (experiments/results/lightning_bwd_stages_h200.md). ``run_rounds`` times every entry once per round,
in a fresh seeded order, each as ``inner`` back-to-back calls between two host syncs, and ratios are taken per round,
so drift over the call moves numerator and denominator together. ``bootstrap_ci`` treats rounds as independent
(approximate)."""

from __future__ import annotations

import math
import time

import jax
import numpy as np


def median_ms(fn, *args, iters: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of ``fn(*args)`` (blocked until ready) over ``iters`` calls after ``warmup`` calls,
    the first of which compiles; host dispatch is included."""
    for _ in range(max(1, warmup)):
        jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def _sample_plan(first_s, budget_s, min_samples=3, max_samples=15, min_sample_s=2e-3):
    inner = max(1, math.ceil(min_sample_s / max(first_s, 1e-7)))
    inner = min(inner, 200)
    samples = int(min(max_samples, max(min_samples, budget_s / max(first_s * inner, 1e-7))))
    return inner, samples


def time_jax(fn, *args, budget_s=1.0):
    """Median ms per call; each sample times `inner` back-to-back calls (dispatch pipelined)."""
    jax.block_until_ready(fn(*args))  # compile + first run
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    inner, samples = _sample_plan(first, budget_s)
    out = None
    for _ in range(inner):  # warm-up at the sampled rate
        out = fn(*args)
    jax.block_until_ready(out)
    ts = []
    for _ in range(samples):
        t0 = time.perf_counter()
        out = None
        for _ in range(inner):
            out = fn(*args)
        jax.block_until_ready(out)
        ts.append((time.perf_counter() - t0) / inner)
    return float(np.median(ts)) * 1e3


def time_torch(torch, fn, budget_s=1.0):
    """Median ms per call by CUDA events around `inner` back-to-back calls."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    inner, samples = _sample_plan(first, budget_s)
    for _ in range(inner):
        fn()
    ts = []
    for _ in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        ts.append(start.elapsed_time(end) / inner)
    return float(np.median(ts))


def timed(fn, sync, inner: int) -> float:
    """ms per call of ``inner`` back-to-back calls of ``fn()`` between two host syncs (``sync(last output)``)."""
    t0 = time.perf_counter()
    out = None
    for _ in range(inner):
        out = fn()
    sync(out)
    return (time.perf_counter() - t0) / inner * 1e3


def run_rounds(entries: dict, rounds: int, inner: int, seed: int = 0) -> dict:
    """``entries`` key -> (fn, sync): each warmed up (twice), then timed once per round in a fresh order. Returns key
    -> [rounds] ms per call."""
    for fn, sync in entries.values():  # compile, autotune, warm up
        sync(fn())
        sync(fn())
    keys, order = list(entries), np.random.default_rng(seed)
    times = {k: [] for k in keys}
    for _ in range(rounds):
        for i in order.permutation(len(keys)):  # no fixed neighbour or position
            fn, sync = entries[keys[i]]
            times[keys[i]].append(timed(fn, sync, inner))
    return {k: np.asarray(v) for k, v in times.items()}


def bootstrap_ci(x, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the median of ``x`` (resampling rounds)."""
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(x, (n, len(x)), replace=True), axis=1)
    return float(np.quantile(meds, 0.025)), float(np.quantile(meds, 0.975))


def median_ci(x, digits: int) -> str:
    """'median [lo, hi]' of ``x`` with ``digits`` decimals."""
    lo, hi = bootstrap_ci(x)
    return f"{np.median(x):.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def finish(lines: list[str], out: str | None) -> None:
    """Print the report and write it to ``out`` when given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)
