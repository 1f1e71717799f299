"""Procedural tasks (copy, reverse, sort, add, multiply, countdown): endless exact-answer data for smoke training and
as an RL warm start. ``sample_task`` gives (prompt, answer) strings; ``TaskSource`` tokenizes them.

Document i is drawn from its own generator seeded by (seed, i), so any document can be made again
without generating the ones before it.

Held-out prompts: ``split_of(prompt)`` puts ``EVAL_PERCENT`` % of all prompts (a CRC32 bucket of the text) in
the "eval" split; ``split_example`` draws problem i of a split (m1jax.rl.tasks and `m1jax train`'s held-out
exact match, m1jax.train.evaluate, evaluate on the same eval problems). ``TaskSource(split="train")`` never
yields an eval prompt: a document whose prompt is "eval" is replaced by the next draw of the same task from the
same generator (so documents stay a pure function of (seed, index), and documents whose first draw is "train"
are the same as with ``split="all"``).
"""

from __future__ import annotations

import zlib

import numpy as np

from m1jax.data.sources import Document, with_specials

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _word(rng, size):
    return "".join(rng.choice(_LETTERS, int(rng.integers(1, size + 1))))


def _number(rng, digits):
    return int(rng.integers(0, 10 ** int(rng.integers(1, digits + 1))))


def _copy(rng, size):
    w = _word(rng, size)
    return f"copy {w}=", w


def _reverse(rng, size):
    w = _word(rng, size)
    return f"reverse {w}=", w[::-1]


def _sort(rng, size):
    xs = rng.integers(0, 10, int(rng.integers(1, size + 1)))
    return "sort " + " ".join(map(str, xs)) + "=", " ".join(map(str, np.sort(xs)))


def _add(rng, size):
    a, b = _number(rng, size), _number(rng, size)
    return f"{a}+{b}=", str(a + b)


def _mul(rng, size):
    a, b = _number(rng, max(1, size // 2)), _number(rng, max(1, size // 2))
    return f"{a}*{b}=", str(a * b)


def _countdown_expression(rng, used):
    """A flat expression over ``used`` in order, with random + - * and / (only where the term so far divides
    exactly), and its value under the usual precedence."""
    text, total, sign, term = str(used[0]), 0, 1, used[0]
    for x in used[1:]:
        ops = "+-*/" if term % x == 0 else "+-*"
        op = ops[int(rng.integers(len(ops)))]
        if op in "+-":
            total, sign, term = total + sign * term, (1 if op == "+" else -1), x
        elif op == "*":
            term *= x
        else:
            term //= x
        text += op + str(x)
    return text, total + sign * term


def _countdown(rng, size):
    """Countdown: 2..min(4, size) numbers in 1..min(99, 4 * size); the answer combines a random subset of them in
    a random order (each at most once) into a flat expression whose value is the target, a non-negative integer
    (ten draws of operators, then all '+')."""
    count = int(rng.integers(2, min(4, max(2, size)) + 1))
    numbers = [int(x) for x in rng.integers(1, min(99, 4 * size) + 1, count)]
    used = [numbers[i] for i in rng.permutation(count)[: int(rng.integers(2, count + 1))]]
    for _ in range(10):
        text, value = _countdown_expression(rng, used)
        if value >= 0:
            break
    else:
        text, value = "+".join(map(str, used)), sum(used)
    return "countdown " + " ".join(map(str, numbers)) + f" target {value}=", text


EVAL_PERCENT = 10  # share of all prompts (by CRC32 of the text) held out for evaluation
DATA_SPLITS = ("all", "train")  # TaskSource(split=...): every prompt, or only those outside the eval split
PROBLEM_SPLITS = ("train", "eval")  # split_example(split=...)
MAX_DRAWS = 1000  # draws per document before TaskSource(split="train") gives up on a task/size
LOSS_ON = ("answer", "all")  # TaskSource(loss_on=...): predict answer + EOS only, or every token after BOS


def split_of(prompt: str) -> str:
    """The split a prompt belongs to: "eval" for EVAL_PERCENT % of prompts (by CRC32 of the text), else "train"."""
    return "eval" if zlib.crc32(prompt.encode("utf-8")) % 100 < EVAL_PERCENT else "train"


def split_example(name: str, size: int, index: int, seed: int = 0, split: str = "eval",
                  max_draws: int = MAX_DRAWS) -> tuple[str, str]:
    """Problem ``index`` of ``split`` ("train" or "eval") of task ``name`` as (prompt, answer): drawn from its own
    generator seeded by (seed, split, index) until a prompt of that split comes (a pure function of the arguments;
    seed, index >= 0). Raises RuntimeError when ``max_draws`` draws give none (too small a ``size``)."""
    if split not in PROBLEM_SPLITS:
        raise ValueError(f"split={split!r}: choose from {PROBLEM_SPLITS}")
    rng = np.random.default_rng((int(seed), PROBLEM_SPLITS.index(split), int(index)))
    for _ in range(max_draws):
        prompt, answer = sample_task(name, rng, size)
        if split_of(prompt) == split:
            return prompt, answer
    raise RuntimeError(f"task {name!r} (size {size}) drew no {split!r} prompt in {max_draws} draws; use a larger size")


def distinct_examples(name: str, size: int, count: int, split: str = "eval", seed: int = 0) -> list[tuple[str, str]]:
    """The first ``count`` distinct prompts (with their answers) among ``split_example(name, size, i, seed, split)``
    for i = 0, 1, ... (small tasks repeat prompts often; an accuracy over repeats would over-weight a few). Fewer
    if the split has fewer distinct prompts (it looks at 50 * count problems at most)."""
    seen, out = set(), []
    for index in range(50 * int(count)):
        if len(out) >= count:
            break
        prompt, answer = split_example(name, size, index, seed, split)
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, answer))
    return out


TASKS = {"copy": _copy, "reverse": _reverse, "sort": _sort, "add": _add, "mul": _mul, "countdown": _countdown}


def sample_task(name: str, rng: np.random.Generator, size: int) -> tuple[str, str]:
    """One instance of task ``name`` -> (prompt, answer); ``size`` bounds lengths / digit counts."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name](rng, int(size))


def parse_tasks(spec: str) -> tuple[str, ...]:
    """'copy,sort' -> ('copy', 'sort'), checking every name."""
    names = tuple(t.strip() for t in spec.split(",") if t.strip())
    if not names:
        raise ValueError("no task named")
    for t in names:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; choose from {sorted(TASKS)}")
    return names


def prompt_tokens(prompt: str, tokenizer) -> list[int]:
    """BOS (if the tokenizer has one) + the prompt's tokens: exactly what precedes the answer in a ``TaskSource``
    document (what a model is prompted with to answer)."""
    bos = [] if tokenizer.bos_id is None else [int(tokenizer.bos_id)]
    return bos + [int(t) for t in tokenizer.encode(prompt)]


class TaskSource:
    """Endless task documents: BOS prompt answer EOS. ``loss_on="answer"`` (the default) predicts only answer + EOS
    (the prompt's random letters / digits cannot be predicted: training on them only adds noise to the loss);
    "all" predicts every token after BOS. ``split="train"`` leaves out every prompt of the held-out eval split
    (``split_of``); "all" keeps them."""

    def __init__(self, tasks: str | tuple[str, ...], tokenizer, *, seed: int = 0, size: int = 6,
                 loss_on: str = "answer", split: str = "all"):
        self.tasks = parse_tasks(tasks) if isinstance(tasks, str) else tuple(tasks)
        if loss_on not in LOSS_ON:
            raise ValueError(f"loss_on={loss_on!r}: choose from {LOSS_ON}")
        if split not in DATA_SPLITS:
            raise ValueError(f"split={split!r}: choose from {DATA_SPLITS}")
        self.tokenizer, self.seed, self.size, self.loss_on = tokenizer, int(seed), int(size), loss_on
        self.split = split

    def example(self, index: int) -> tuple[str, str, str]:
        """Document ``index`` as (task name, prompt, answer). With ``split="train"``, eval-split prompts are
        redrawn (same task, same generator) until a train-split one comes."""
        rng = np.random.default_rng((self.seed, int(index)))
        name = self.tasks[int(rng.integers(len(self.tasks)))]
        for _ in range(MAX_DRAWS):
            prompt, answer = sample_task(name, rng, self.size)
            if self.split == "all" or split_of(prompt) == "train":
                return name, prompt, answer
        raise RuntimeError(f"task {name!r} (size {self.size}) drew no train-split prompt in {MAX_DRAWS} draws; "
                           "use a larger size or split='all'")

    def __getitem__(self, index: int) -> Document:
        _, prompt, answer = self.example(index)
        p, a = self.tokenizer.encode(prompt), self.tokenizer.encode(answer)
        ids = np.concatenate([p, a])
        if self.loss_on == "all":
            return with_specials(self.tokenizer, ids)
        return with_specials(self.tokenizer, ids, np.concatenate([np.zeros(len(p), bool), np.ones(len(a), bool)]))
