"""Wall-clock timing shared by the benchmark scripts and experiments/check_gpu_kernels.py."""

from __future__ import annotations

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
