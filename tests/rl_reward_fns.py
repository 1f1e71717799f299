"""Module-level reward functions for tests/test_rl_tasks.py (a reward worker imports them by module path)."""

import os
import time

from m1jax.rl.tasks import get_task


def scripted(problem, completion):
    """Misbehaves on cue: 'raise', 'hang', 'nan', 'str', 'exit', 'true'; otherwise the task's own verifier."""
    if completion == "raise":
        raise ZeroDivisionError("boom")
    if completion == "hang":
        time.sleep(60)
    if completion == "nan":
        return float("nan")
    if completion == "str":
        return "1.0"
    if completion == "exit":
        os._exit(3)
    if completion == "true":
        return True
    return get_task(problem.task).verify(problem, completion)


def _stream_prompt(index):
    return get_task("addition", size=2).problem(index, seed=0).prompt


def flaky_addition(problem, completion):
    """The addition verifier, except: raises on the prompt stream's first problem and hangs (60 s) on its second
    (seed 0), so a run's first rollout meets both failures, deterministically."""
    if problem.prompt == _stream_prompt(0):
        raise RuntimeError("flaky verifier")
    if problem.prompt == _stream_prompt(1):
        time.sleep(60)
    return get_task("addition").verify(problem, completion)


def starts_with_one(problem, completion):
    """An easy reward any policy can learn fast (the loop's sanity check): the completion starts with '1'."""
    return float(completion.startswith("1"))
