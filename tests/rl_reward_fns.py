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
