"""Reward functions run outside the training process, each call with a time limit.

A reward function is any picklable callable ``fn(problem, completion) -> number`` (a module-level function,
or a method of a module-level class such as ``m1jax.rl.tasks.get_task("countdown").verify``). ``RewardRunner``
runs it in one worker process (started with "forkserver", or "spawn" where that is missing; never "fork": the
trainer is a multithreaded JAX process). A batch goes to the worker in one message and the rewards come back
one at a time, each with its own deadline. A call that fails scores 0 and the run goes on:

  error         fn raised (or called sys.exit); the reason names the exception type and message
  not_a_number  fn returned something that is not a real number (int, float, bool, numpy scalar, Fraction)
                or is NaN / infinite
  timeout       fn took longer than ``timeout_s``: the worker is killed and restarted for the rest
  crash         the worker died (os._exit, a segfault, the OOM killer): it is restarted for the rest

Each failure is logged (one warning line), returned with its item's index, and counted in ``counters``.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import numbers
import pickle
import signal

import numpy as np

log = logging.getLogger(__name__)

FAILURES = ("error", "timeout", "not_a_number", "crash")


def as_reward(value) -> tuple[str, float | str]:
    """A reward function's return value -> ("ok", float) or ("not_a_number", reason)."""
    if isinstance(value, numbers.Real | np.bool_):
        try:
            reward = float(value)
        except (OverflowError, ValueError, TypeError) as e:
            return "not_a_number", f"not a number: {type(e).__name__}: {e}"
        if math.isfinite(reward):
            return "ok", reward
    return "not_a_number", f"not a number: {_short(repr(value))} ({type(value).__name__})"


def _call(fn, problem, completion) -> tuple[str, float | str]:
    try:
        return as_reward(fn(problem, completion))
    except (Exception, SystemExit) as e:
        return "error", f"{type(e).__name__}: {e}"


def _short(text: str, limit: int = 300) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "..."


def _worker(conn, fn_bytes: bytes) -> None:
    """The worker process: load fn, then for each (start, problems, completions) message score the items,
    sending (start + position, kind, reward or reason) after each; None or a closed pipe ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    try:
        fn = pickle.loads(fn_bytes)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("init_error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        start, problems, completions = msg
        for j, (problem, completion) in enumerate(zip(problems, completions, strict=True)):
            conn.send((start + j, *_call(fn, problem, completion)))


class RewardRunner:
    """Scores completions with ``fn(problem, completion)`` in a worker process, ``timeout_s`` per call.

    ``score`` returns (rewards [n] float32, failures [(index, reason)]); failed items score 0. ``counters``
    counts calls, failures by kind (FAILURES) and worker restarts. Use as a context manager or call ``close``.
    ``start_timeout_s`` bounds how long a new worker may take to import fn's module (not counted per item).
    """

    def __init__(self, fn, *, timeout_s: float = 5.0, start_timeout_s: float = 120.0):
        if not callable(fn):
            raise ValueError(f"reward function {fn!r} is not callable")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        try:
            self._fn_bytes = pickle.dumps(fn)
        except Exception as e:
            raise ValueError(f"reward function {fn!r} cannot be sent to a worker process; it must be picklable (a "
                             f"module-level function or a method of a module-level class): {e}") from e
        methods = multiprocessing.get_all_start_methods()
        self._ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        self.fn_name = getattr(fn, "__qualname__", repr(fn))
        self.timeout_s, self.start_timeout_s = float(timeout_s), float(start_timeout_s)
        self.counters = {"calls": 0, **dict.fromkeys(FAILURES, 0), "restarts": 0}
        self._proc = self._conn = None
        self._ready = False
        self._launch()

    def _launch(self) -> None:
        self._conn, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker, args=(child, self._fn_bytes), daemon=True,
                                       name="m1jax-reward")
        self._proc.start()
        child.close()
        self._ready = False

    def _ensure_ready(self) -> None:
        """Start a worker if there is none alive, and wait until it has loaded fn."""
        if self._proc is None or not self._proc.is_alive():
            self._kill()
            self._launch()
        if self._ready:
            return
        if not self._conn.poll(self.start_timeout_s):
            self._kill()
            raise RuntimeError(f"reward worker for {self.fn_name} did not start within {self.start_timeout_s:g}s")
        try:
            kind, reason = self._conn.recv()
        except (EOFError, OSError):
            kind, reason = "init_error", f"worker exited ({self._exit_reason()})"
        if kind != "ready":
            self._kill()
            raise RuntimeError(f"reward function {self.fn_name} could not be loaded in the worker process: {reason}")
        self._ready = True

    def _exit_reason(self) -> str:
        self._proc.join(timeout=5)
        code = self._proc.exitcode
        return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(timeout=5)
            self._conn.close()
        self._proc = self._conn = None
        self._ready = False

    def _restart(self) -> None:
        self._kill()
        self.counters["restarts"] += 1
        self._launch()

    def score(self, problems, completions) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """rewards [n] float32 (0 where the call failed) and [(index, reason)] of the failed calls."""
        problems, completions = list(problems), list(completions)
        if len(problems) != len(completions):
            raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
        n = len(problems)
        rewards, failures = np.zeros(n, np.float32), []
        self.counters["calls"] += n
        i = 0
        try:
            while i < n:
                self._ensure_ready()
                self._conn.send((i, problems[i:], completions[i:]))
                while i < n:
                    if not self._conn.poll(self.timeout_s):
                        self._fail(failures, i, "timeout", f"timeout after {self.timeout_s:g}s")
                        self._restart()
                        i += 1
                        break
                    try:
                        index, kind, value = self._conn.recv()
                    except (EOFError, OSError):
                        self._fail(failures, i, "crash", f"reward worker died ({self._exit_reason()})")
                        self._restart()
                        i += 1
                        break
                    if index != i:
                        raise RuntimeError(f"reward worker answered item {index}, expected {i}")
                    if kind == "ok":
                        rewards[i] = value
                    else:
                        self._fail(failures, i, kind, value)
                    i += 1
        except BaseException:
            self._kill()  # never leave a worker mid-batch: its late answers would go to the next call
            raise
        return rewards, failures

    def _fail(self, failures: list, index: int, kind: str, reason: str) -> None:
        reason = _short(reason)
        self.counters[kind] += 1
        failures.append((index, reason))
        log.warning("reward %s failed on item %d (%s): %s", self.fn_name, index, kind, reason)

    def close(self) -> None:
        """Stop the worker."""
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(timeout=1)
            except OSError:
                pass
        self._kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
