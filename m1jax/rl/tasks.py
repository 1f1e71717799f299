"""RL tasks: procedural prompts with exact verifiers (multi-digit addition, Countdown, string reversal).

Each task draws its prompts with the same generator as its warm-start data task in m1jax.data.tasks ("add",
"countdown", "reverse"), so an RL prompt looks exactly like the prompt part of a warm-start document
(``warm_start_data_tasks`` gives the ``--config.data.tasks`` value for ``m1jax train``).

Problem ``index`` of a split comes from its own generator seeded by (seed, split, index), so any problem can be
made again without the ones before it. The split of a prompt is a fixed function of its text (a CRC32 bucket:
``EVAL_PERCENT`` % of all prompts are "eval"), and each split draws until it gets one of its own prompts, so
held-out eval problems never appear among training problems, for any seeds. ``split_of`` lives in
m1jax.data.tasks: warm-start data made with ``--config.data.split=train`` leaves out the eval prompts too (with
the default "all" it does not, and with a tiny ``size`` it does repeat eval prompts).

A completion is the decoded text of the generated tokens before EOS. Trailing whitespace is ignored; anything
else must be exactly right: addition and reversal compare the text with the answer, Countdown parses the text
as an arithmetic expression (no eval()).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable
from fractions import Fraction

from m1jax.data.tasks import (  # noqa: F401  (re-exported)
    EVAL_PERCENT, PROBLEM_SPLITS as SPLITS, prompt_tokens, sample_task, split_example, split_of,
)

MAX_EXPRESSION = 100  # longer Countdown answers are wrong (bounds parser work and recursion depth)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One prompt: ``answer`` is a reference answer; ``meta`` (a tuple) is what the verifier checks against."""

    prompt: str
    answer: str
    task: str
    meta: tuple


@dataclasses.dataclass(frozen=True)
class Task:
    """A task: ``data_task`` draws (prompt, answer) from m1jax.data.tasks; ``parse(prompt)`` -> meta;
    ``check(meta, text)`` says whether a completion (trailing whitespace removed) is right."""

    name: str
    data_task: str
    parse: Callable[[str], tuple]
    check: Callable[[tuple, str], bool]
    size: int = 6

    def problem(self, index: int, seed: int = 0, split: str = "train", max_draws: int = 1000) -> Problem:
        """Problem ``index`` of ``split`` (deterministic in seed, split, index, size; seed, index >= 0)."""
        prompt, answer = split_example(self.data_task, self.size, index, seed, split, max_draws)
        return Problem(prompt, answer, self.name, self.parse(prompt))

    def problems(self, seed: int, start: int, count: int, split: str = "train") -> list[Problem]:
        """Problems start .. start + count - 1 of ``split``."""
        return [self.problem(i, seed, split) for i in range(int(start), int(start) + int(count))]

    def verify(self, problem: Problem, completion: str) -> float:
        """1.0 if ``completion`` (trailing whitespace ignored) solves ``problem``, else 0.0."""
        if problem.task != self.name:
            raise ValueError(f"task {self.name!r} cannot verify a {problem.task!r} problem")
        if not isinstance(completion, str):
            raise TypeError(f"completion must be str, got {type(completion).__name__}")
        return 1.0 if self.check(problem.meta, completion.rstrip()) else 0.0


def _addition_meta(prompt: str) -> tuple:
    a, b = prompt.removesuffix("=").split("+")
    return int(a), int(b)


def _addition_check(meta: tuple, text: str) -> bool:
    return text == str(meta[0] + meta[1])


def _reversal_meta(prompt: str) -> tuple:
    return (prompt.removeprefix("reverse ").removesuffix("="),)


def _reversal_check(meta: tuple, text: str) -> bool:
    return text == meta[0][::-1]


def _countdown_meta(prompt: str) -> tuple:
    """'countdown 3 7 25 target 46=' -> ((3, 7, 25), 46)."""
    words = prompt.removesuffix("=").split()
    return tuple(int(w) for w in words[1:-2]), int(words[-1])


_TOKEN = re.compile(r" *(?:([0-9]+)|([-+*/()]))")


class _Invalid(Exception):
    pass


def evaluate_expression(text: str) -> tuple[Fraction, list[str]]:
    """Exact value of an arithmetic expression (non-negative integers, + - * /, parentheses, spaces between
    tokens; the usual precedence, left to right) and the number literals it uses, in order. Raises ValueError
    for anything else and ZeroDivisionError for division by zero."""
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"unexpected character {text[pos]!r} at {pos}")
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
    tokens.append("")  # end marker
    used: list[str] = []
    i = 0

    def take() -> str:
        nonlocal i
        i += 1
        return tokens[i - 1]

    def expr() -> Fraction:
        value = term()
        while tokens[i] in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    def term() -> Fraction:
        value = factor()
        while tokens[i] in ("*", "/"):
            value = value * factor() if take() == "*" else value / factor()
        return value

    def factor() -> Fraction:
        tok = take()
        if tok == "(":
            value = expr()
            if take() != ")":
                raise _Invalid
            return value
        if tok.isdigit():
            used.append(tok)
            return Fraction(int(tok))
        raise _Invalid

    try:
        value = expr()
        if tokens[i] != "":
            raise _Invalid
    except (_Invalid, IndexError, RecursionError):
        raise ValueError(f"not an arithmetic expression: {text!r}") from None
    return value, used


def _countdown_check(meta: tuple, text: str) -> bool:
    """The expression's value is the target and it uses only given numbers, each at most once (as a multiset)."""
    numbers, target = meta
    if not text or len(text) > MAX_EXPRESSION:
        return False
    try:
        value, used = evaluate_expression(text)
    except (ValueError, ZeroDivisionError):
        return False
    return value == target and not Counter(used) - Counter(str(n) for n in numbers)


TASKS = {
    "addition": Task("addition", "add", _addition_meta, _addition_check),
    "countdown": Task("countdown", "countdown", _countdown_meta, _countdown_check),
    "reversal": Task("reversal", "reverse", _reversal_meta, _reversal_check),
}


def get_task(name: str, size: int | None = None) -> Task:
    """The task called ``name``, with ``size`` (as ``config.data.task_size``; default 6) bounding its lengths."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    if size is None:
        return TASKS[name]
    if int(size) < 1:
        raise ValueError(f"task size must be >= 1, got {size}")
    return dataclasses.replace(TASKS[name], size=int(size))


def warm_start_data_tasks(names: str) -> str:
    """RL task names ('countdown' or 'addition,reversal') -> the ``--config.data.tasks`` value of their
    warm-start data for ``m1jax train`` ('countdown', 'add,reverse')."""
    tasks = [get_task(n.strip()).data_task for n in names.split(",") if n.strip()]
    if not tasks:
        raise ValueError(f"no task named in {names!r}; choose from {sorted(TASKS)}")
    return ",".join(tasks)


def encode_prompt(problem: Problem, tokenizer) -> list[int]:
    """BOS (if the tokenizer has one) + the prompt's tokens: exactly what precedes the answer in a warm-start
    document (m1jax.data.tasks.TaskSource)."""
    return prompt_tokens(problem.prompt, tokenizer)
