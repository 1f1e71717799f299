"""Held-out exact match for `m1jax train` on task data, and the greedy decoding it shares with the RL evaluator
(m1jax.rl.loop.Evaluator).

Every ``eval.every`` steps (and at the last step) `m1jax train` decodes, greedily and until EOS, a fixed set of
held-out problems per task (m1jax.sampling.sample, temperature 0): the first ``eval.problems`` distinct prompts
of each task's "eval" split (m1jax.data.tasks.distinct_examples with seed 0: the same set for every run and
seed, and the same problems m1jax.rl.tasks evaluates on). A completion is right when the model stopped with
EOS and the text before it is exactly the reference answer (nothing forgiven, not even whitespace; for
countdown, where other expressions can also be right, that is a lower bound on "solved"). The prompts are
truly held out only when training leaves them out: ``data.split="train"``.
"""

from __future__ import annotations

import jax
import numpy as np

from m1jax.data.tasks import distinct_examples, parse_tasks, prompt_tokens
from m1jax.sampling import sample

EVAL_SEED = 0  # the held-out problems are the same for every run (and every seed)


def decode_completions(tokens, lengths, stopped, tokenizer) -> list[str]:
    """Generated tokens -> text, up to each row's length, without its stop token."""
    out = []
    for row, n, s in zip(np.asarray(tokens), np.asarray(lengths), np.asarray(stopped), strict=True):
        out.append(tokenizer.decode(row[: int(n) - int(bool(s))]))
    return out


def greedy_completions(policy, prompts, key, max_new_tokens: int, tokenizer) -> tuple[list[str], np.ndarray]:
    """Greedy completions (temperature 0, stopping at the tokenizer's EOS) of token-id ``prompts`` with ``policy``
    (a model or (graphdef, params)) -> (each row's text before EOS, whether it stopped at EOS)."""
    out = sample(policy, prompts, key, max_new_tokens=max_new_tokens, temperature=0.0,
                 stop_tokens=(tokenizer.eos_id,))
    tokens, lengths, stopped = jax.device_get((out.tokens, out.lengths, out.stopped))
    return decode_completions(tokens, lengths, stopped, tokenizer), np.asarray(stopped, bool)


def exact_match(texts, stopped, answers) -> np.ndarray:
    """1.0 where a completion ended with EOS and its text is exactly the answer, else 0.0."""
    return np.array([float(bool(s) and t == a) for t, s, a in zip(texts, stopped, answers, strict=True)], np.float32)


class TaskEvaluator:
    """Held-out greedy exact match per task of ``tasks`` (m1jax.data.tasks names) at task size ``size`` on
    ``count`` distinct eval-split problems each (fewer where a small size has fewer distinct eval prompts).

    ``evaluator(policy)`` -> {"eval/exact_match/<task>": accuracy, ..., "eval/exact_match/mean": their mean}.
    All problems go through one ``sample`` call (rows never depend on each other); ``max_new_tokens`` is the
    longest answer + EOS, so a completion that could be right always fits.
    """

    def __init__(self, tasks, size: int, count: int, tokenizer):
        if tokenizer.eos_id is None:
            raise ValueError("the held-out exact match stops generation at EOS: the tokenizer has no EOS token "
                             "(set data.eos_token, or eval.every=0)")
        self.tasks = parse_tasks(tasks) if isinstance(tasks, str) else tuple(tasks)
        self.tokenizer = tokenizer
        self.problems = {t: distinct_examples(t, size, count, "eval", EVAL_SEED) for t in self.tasks}
        rows = [(t, p, a) for t in self.tasks for p, a in self.problems[t]]
        self.task_of = np.array([t for t, _, _ in rows])
        self.prompts = [prompt_tokens(p, tokenizer) for _, p, _ in rows]
        self.answers = [a for _, _, a in rows]
        self.max_new_tokens = max(len(tokenizer.encode(a)) for a in self.answers) + 1

    def positions_needed(self) -> int:
        """The longest prompt + ``max_new_tokens``: what the model's positions must cover."""
        return max(len(p) for p in self.prompts) + self.max_new_tokens

    def counts(self) -> dict[str, int]:
        return {t: len(self.problems[t]) for t in self.tasks}

    def __call__(self, policy, key=None) -> dict[str, float]:
        key = jax.random.key(EVAL_SEED) if key is None else key  # greedy: the key changes nothing
        texts, stopped = greedy_completions(policy, self.prompts, key, self.max_new_tokens, self.tokenizer)
        right = exact_match(texts, stopped, self.answers)
        out = {f"eval/exact_match/{t}": float(right[self.task_of == t].mean()) for t in self.tasks}
        out["eval/exact_match/mean"] = float(np.mean(list(out.values())))
        return out


def format_exact_match(metrics: dict) -> str:
    """'copy 0.950 | reverse 0.800 | mean 0.875' from an evaluator's metrics."""
    prefix = "eval/exact_match/"
    return " | ".join(f"{k.removeprefix(prefix)} {v:.3f}" for k, v in metrics.items() if k.startswith(prefix))


def task_evaluator(cfg, tokenizer) -> TaskEvaluator | None:
    """The held-out evaluator a training config asks for (None when eval.every is 0 or the data is not tasks)."""
    if not cfg.eval.every or cfg.data.source != "tasks":
        return None
    return TaskEvaluator(cfg.data.tasks, cfg.data.task_size, cfg.eval.problems, tokenizer)
