"""The record of a GPU check run, shared by experiments/check_gpu_kernels.py, gpu_checks_softmax_moe.py and
check_gpu_model.py: each check ``record``s an output against its reference (relative Frobenius and max abs error, a
limit), ``guarded`` turns an exception into a failed row, and ``finish`` writes the markdown table and exits 1 if
anything failed."""

from __future__ import annotations

import sys
import traceback

import jax.numpy as jnp
import numpy as np

F32 = jnp.float32
ROWS: list[tuple] = []  # (check, shape, metric, value, limit, ok)
FAILED: list[str] = []


def rel_err(x, ref):
    x = np.asarray(jnp.asarray(x, F32), np.float64)
    ref = np.asarray(jnp.asarray(ref, F32), np.float64)
    if not np.all(np.isfinite(x)):
        return float("inf"), float("inf")
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30)), float(np.max(np.abs(x - ref)))


def record(check, shape, name, x, ref, limit):
    r, m = rel_err(x, ref)
    ok = r <= limit
    ROWS.append((check, shape, name, r, m, limit, ok))
    flag = "ok  " if ok else "FAIL"
    print(f"  {flag} {check:<28} {shape:<28} {name:<6} rel {r:.2e}  max {m:.2e}  (limit {limit:.0e})")
    if not ok:
        FAILED.append(f"{check} {shape} {name}")


def guarded(check, fn):
    try:
        fn()
    except Exception:  # noqa: BLE001
        print(f"  FAIL {check}: exception")
        traceback.print_exc()
        FAILED.append(f"{check}: exception")
        ROWS.append((check, "-", "exception", float("inf"), float("inf"), 0, False))


def finish(header: str, out: str | None):
    """The recorded checks as a markdown table (to ``out`` if given); exit 1 if any failed."""
    lines = [header, "", "| check | shape | out | rel err | max abs | limit | ok |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {c} | {s} | {n} | {r:.2e} | {m:.2e} | {lim:.0e} | {'yes' if ok else 'NO'} |"
              for c, s, n, r, m, lim, ok in ROWS]
    if out:
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")
    if FAILED:
        print(f"\nFAILED ({len(FAILED)}): " + "; ".join(FAILED))
        sys.exit(1)
    print("\nALL CHECKS PASSED")
