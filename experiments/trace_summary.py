"""Kernel-level time of a jitted call from a JAX profiler trace: which GPU kernels a step launches and what they cost.

    from experiments.trace_summary import traced_kernels, markdown_table
    rows = traced_kernels(lambda: step(...), calls=3, log_dir="/tmp/trace")   # list of dicts, biggest first
    print(markdown_table(rows, calls=3, title="decode step, batch 1"))

    python3 experiments/trace_summary.py <log_dir> [--calls N]   # summarise a trace already written

How: ``jax.profiler.trace(log_dir, create_perfetto_trace=True)`` around ``calls`` calls (each blocked on), then the
perfetto JSON it writes (plugins/profile/<run>/perfetto_trace.json.gz) is read back: complete events ("ph": "X") on
the threads of a device process whose thread name starts with "Stream" (the GPU streams' kernels and memcpys, as
CUPTI records them), grouped by name: total us per call, launches per call, mean us, and a category from the name
(gemm: cuBLAS / cuBLASLt / XLA's Triton gemm fusions; attention: cuDNN; pallas: Pallas Triton / Mosaic kernels, named
after their Python function; fusion: XLA's other fusions; memcpy / memset; other). Where the trace has no stream
threads (a CPU backend, or CUPTI missing) the rows are empty and the caller says so; ``all_threads=True`` keeps
every thread's events instead (CPU checks).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys

import jax

CATEGORIES = (  # first match wins, on the lower-cased kernel name
    ("gemm", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|sm90_|sm80_|dot")),
    ("attention", re.compile(r"cudnn|fmha|flash")),
    ("memcpy / memset", re.compile(r"memcpy|memset|copy")),
    ("fusion", re.compile(r"fusion|reduce|transpose|broadcast|concatenate|slice|scatter|gather|convert")),
)


def category(name: str) -> str:
    low = name.lower()
    for cat, pat in CATEGORIES:
        if pat.search(low):
            return cat
    return "pallas / other"


def _load(log_dir: str):
    """The newest perfetto trace under log_dir: (events, process names by pid, thread names by (pid, tid))."""
    paths = sorted(glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {log_dir}")
    with gzip.open(paths[-1], "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    procs, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            procs[e["pid"]] = str(e.get("args", {}).get("name", ""))
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e.get("tid"))] = str(e.get("args", {}).get("name", ""))
    return events, procs, threads


def trace_events(log_dir: str, all_threads: bool = False) -> list[dict]:
    """Complete events of the newest perfetto trace under log_dir, on device stream threads (or every thread)."""
    events, procs, threads = _load(log_dir)

    def keep(e):
        if all_threads:
            return True
        proc, thread = procs.get(e.get("pid"), ""), threads.get((e.get("pid"), e.get("tid")), "")
        return "device" in proc.lower() and thread.startswith("Stream")

    return [e for e in events if e.get("ph") == "X" and "dur" in e and keep(e)]


def census(log_dir: str, top: int = 20) -> str:
    """Which (process, thread) pairs the newest trace has, with their complete-event counts (to see its naming)."""
    try:
        events, procs, threads = _load(log_dir)
    except FileNotFoundError as e:
        return str(e)
    n = collections.Counter((procs.get(e.get("pid")), threads.get((e.get("pid"), e.get("tid"))))
                            for e in events if e.get("ph") == "X")
    return "; ".join(f"{p!r} / {t!r}: {c}" for (p, t), c in n.most_common(top))


def summarise(events: list[dict], calls: int) -> list[dict]:
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        total[e["name"]] += float(e["dur"])
        count[e["name"]] += 1
    return [dict(name=n, category=category(n), us_per_call=total[n] / calls, launches_per_call=count[n] / calls,
                 mean_us=total[n] / count[n]) for n, _ in total.most_common()]


def traced_kernels(fn, calls: int, log_dir: str, all_threads: bool = False) -> list[dict]:
    """Run fn() ``calls`` times under the profiler (each result blocked on); the kernels they launched (summarise)."""
    jax.block_until_ready(fn())  # compiled and warm before tracing
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        for _ in range(calls):
            jax.block_until_ready(fn())
    return summarise(trace_events(log_dir, all_threads), calls)


_FUSION_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?\b(fusion|custom-call)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")
_TABLE_ROW = re.compile(r"^(\d+) (.*)$")


def _hlo_tables(hlo_text: str) -> dict[str, dict[int, str]]:
    """The FileNames / FunctionNames / FileLocations / StackFrames tables at the top of an HLO module's text."""
    tables, name = {}, None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            name = line
            tables[name] = {}
        elif name and (m := _TABLE_ROW.match(line)):
            tables[name][int(m.group(1))] = m.group(2)
        elif line.startswith("%") or line.startswith("ENTRY"):
            break
    return tables


def _frame_source(tables, frame_id: int) -> str:
    """'file.py:line (function)' of a stack frame's own location (JAX records the innermost user frame)."""
    try:
        frame = tables["StackFrames"][frame_id]
        loc = tables["FileLocations"][int(re.search(r"file_location_id=(\d+)", frame).group(1))]
        field = dict(re.findall(r"(\w+)=(\d+)", loc))
        file = tables["FileNames"][int(field["file_name_id"])].strip('"')
        func = tables["FunctionNames"][int(field["function_name_id"])].strip('"')
        return f"{os.path.basename(file)}:{field['line']} ({func})"
    except (KeyError, AttributeError, ValueError):
        return ""


def hlo_sources(hlo_text: str) -> dict[str, str]:
    """Kernel name -> where it comes from, read off a compiled module's HLO text (``jit(f).lower(..).compile()
    .as_text()``): each fusion / custom-call instruction's JAX op (the last two parts of its op_name) and the source
    line of its stack frame, keyed by the instruction name with dots as underscores, which is how XLA names the GPU
    kernels in a trace."""
    tables, out = _hlo_tables(hlo_text), {}
    for line in hlo_text.splitlines():
        m = _FUSION_LINE.match(line)
        if not m:
            continue
        op, frame = _OP_NAME.search(line), _FRAME_ID.search(line)
        note = "/".join(op.group(1).split("/")[-2:]) if op else ""
        if frame:
            note += f" @ {_frame_source(tables, int(frame.group(1)))}"
        out[m.group(1).replace(".", "_")] = note.strip(" @")
    return out


def markdown_table(rows: list[dict], calls: int, title: str, top: int = 25, log_dir: str | None = None,
                   sources: dict[str, str] | None = None) -> str:
    if not rows:
        seen = f" Threads in the trace: {census(log_dir)}." if log_dir else ""
        return f"### {title}\n\nNo device stream events in the trace (CPU backend, or CUPTI unavailable).{seen}\n"
    busy = sum(r["us_per_call"] for r in rows)
    launches = sum(r["launches_per_call"] for r in rows)
    by_cat = collections.Counter()
    for r in rows:
        by_cat[r["category"]] += r["us_per_call"]
    out = [f"### {title}", "",
           f"Per call (mean of {calls} traced calls): {busy / 1e3:.3f} ms of kernel time in {launches:.0f} launches "
           f"({busy / max(launches, 1):.1f} us each on average). By category: "
           + ", ".join(f"{c} {us / 1e3:.3f} ms ({100 * us / busy:.0f}%)" for c, us in by_cat.most_common()) + ".", "",
           "| kernel | category | us / call | launches / call | mean us |" + (" source |" if sources else ""),
           "|---|---|---|---|---|" + ("---|" if sources else "")]
    for r in rows[:top]:
        name = r["name"] if len(r["name"]) <= 70 else r["name"][:67] + "..."
        src = f" {sources.get(r['name'], '')} |" if sources else ""
        out.append(f"| `{name}` | {r['category']} | {r['us_per_call']:.1f} | {r['launches_per_call']:.1f} | "
                   f"{r['mean_us']:.1f} |{src}")
    if len(rows) > top:
        rest = rows[top:]
        out.append(f"| ({len(rest)} more kernels) | | {sum(r['us_per_call'] for r in rest):.1f} | "
                   f"{sum(r['launches_per_call'] for r in rest):.1f} | |" + (" |" if sources else ""))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log_dir")
    ap.add_argument("--calls", type=int, default=1)
    ap.add_argument("--all-threads", action="store_true")
    a = ap.parse_args()
    rows = summarise(trace_events(a.log_dir, a.all_threads), a.calls)
    sys.stdout.write(markdown_table(rows, a.calls, a.log_dir, log_dir=a.log_dir))
