"""The run machinery shared by `m1jax train` and `m1jax rl`: stop signals, the workdir's config record (a
resumed run must not change what is being trained), divergence, peak memory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading

import jax


class NonFiniteError(FloatingPointError):
    """The loss or the gradient norm became NaN / Inf."""


@contextlib.contextmanager
def stop_signals(command: str = "train"):
    """Record SIGTERM / SIGINT instead of dying, so the loop can checkpoint and stop cleanly.

    Yields a dict whose "signum" is set when a signal arrived. A second signal acts immediately.
    """
    got = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
        if got["signum"] is not None:  # asked twice: stop now
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
        got["signum"] = signum
        print(f"m1jax {command}: got {signal.Signals(signum).name}: saving a checkpoint after this step, then "
              "stopping", flush=True)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield got
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# Keys inside fixed sections that a resumed run may change (they do not change what is trained).
FREE_KEYS = {"data": ("prefetch",)}


def _fixed_part(cfg_dict: dict, fixed) -> dict:
    out = {}
    for key in fixed:
        value = cfg_dict.get(key)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in FREE_KEYS.get(key, ())}
        out[key] = value
    return out


def check_and_write_config(cfg, workdir: str, resuming: bool, fixed=("model", "data", "seed"), exempt=()):
    """Refuse to resume a run whose ``fixed`` config sections (dicts compared key by key, or values) differ
    from the workdir's config.json, except the ``exempt`` "section.key"s (settings that change how, not what, e.g.
    how many rows decode at once); then record the current config there."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(cfg.to_json_best_effort())
    if resuming and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        old, new = _fixed_part(saved, fixed), _fixed_part(current, fixed)
        diffs = []
        for sec in fixed:
            a, b = old[sec], new[sec]
            if isinstance(a, dict) and isinstance(b, dict):
                diffs += [f"{sec}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                          if a.get(k) != b.get(k) and f"{sec}.{k}" not in exempt]
            elif a != b:
                diffs.append(f"{sec}: {a!r} -> {b!r}")
        if diffs:
            raise ValueError(f"{workdir} holds a run with a different config ({'; '.join(diffs)}); "
                             "use a new --workdir to start another run")
    with open(path + ".tmp", "w") as f:
        f.write(cfg.to_json_best_effort(indent=1))
    os.replace(path + ".tmp", path)


def make_workdir(workdir: str) -> None:
    """Create the run directory (and its parents); a path that exists and is not a directory is a user error."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir} is a file, not a directory; pass a directory for the run's outputs")
    os.makedirs(workdir, exist_ok=True)


def peak_memory_gib() -> float | None:
    """Peak memory allocated on the first device so far (None where the backend does not say, e.g. CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30
