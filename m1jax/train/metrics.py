"""Per-step metrics: a JSONL log and TensorBoard events in the workdir, and a progress line."""

from __future__ import annotations

import json
import math
import os
import sys
import time

from m1jax.train.tensorboard import SummaryWriter


def read_jsonl(path: str) -> list[dict]:
    """The complete records of a JSONL log (a torn last line from a killed run is skipped)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class MetricWriter:
    """Appends one JSON object per step to ``workdir/metrics.jsonl`` and scalars to ``workdir/tb``."""

    def __init__(self, workdir: str, *, tensorboard: bool = True, resume_step: int | None = None):
        self.path = os.path.join(workdir, "metrics.jsonl")
        if resume_step is not None:
            self._truncate(resume_step)
        elif os.path.exists(self.path):
            os.remove(self.path)
        self._f = open(self.path, "a")  # noqa: SIM115 - open for the run
        purge = None if resume_step is None else resume_step + 1
        self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_from_step=purge) if tensorboard else None

    def _truncate(self, step: int):
        """Drop records after ``step`` (they are about to be recomputed by the resumed run)."""
        rows = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict):
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            self._tb.scalars(step, {k: v for k, v in row.items()
                                    if k != "step" and isinstance(v, (int, float)) and v is not None})

    def close(self):
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def _plain(v):
    v = float(v) if hasattr(v, "dtype") or isinstance(v, (int, float)) else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN / Inf
    return v


def _fmt_count(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _fmt_mfu(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


# (metric key, label, formatter) of train's progress line; RL passes its own.
TRAIN_FIELDS = (
    ("loss", "loss", "{:.4f}".format), ("accuracy", "acc", "{:.3f}".format), ("grad_norm", "gnorm", "{:.3g}".format),
    ("lr", "lr", "{:.2e}".format), ("tokens_per_s", "tok/s", _fmt_count), ("mfu", "MFU", _fmt_mfu),
    ("router/max_load", "load", "{:.2f}".format), ("eval/exact_match/mean", "eval EM", "{:.3f}".format),
)


class Progress:
    """Prints ``<prefix>step i/N | <label> <value> | ... | ETA`` every ``every`` steps (``fields``: tuples of
    (metric key, label, formatter); missing metrics are skipped)."""

    def __init__(self, total_steps: int, every: int, stream=None, fields=TRAIN_FIELDS, prefix: str = ""):
        self.total, self.every, self.stream = total_steps, every, stream or sys.stdout
        self.fields, self.prefix = fields, prefix
        self._start, self._start_step = time.perf_counter(), None

    def update(self, step: int, m: dict):
        if self._start_step is None:
            self._start, self._start_step = time.perf_counter(), step
        if step % self.every and step != self.total:
            return
        done = step - self._start_step
        eta = (time.perf_counter() - self._start) / done * (self.total - step) if done else float("nan")
        parts = [f"{self.prefix}step {step}/{self.total}"]
        parts += [f"{label} {fmt(m[key])}" for key, label, fmt in self.fields if key in m]
        parts.append(f"ETA {_fmt_time(eta) if done else '?'}")
        if m.get("peak_memory_gib") is not None:
            parts.append(f"peak mem {m['peak_memory_gib']:.1f} GiB")
        print(" | ".join(parts), file=self.stream, flush=True)
