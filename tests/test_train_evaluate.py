"""`m1jax train`'s held-out exact match (m1jax.train.evaluate): the matching rule, the per-task grouping, the
eval problems, and one real greedy sample() call whose outputs are known."""

import jax
import numpy as np
import pytest
from flax import nnx

from m1jax import MiniMaxM1, ModelConfig
from m1jax.data.tasks import distinct_examples, split_of
from m1jax.data.tokenizer import ByteTokenizer
from m1jax.train import evaluate
from m1jax.train.evaluate import TaskEvaluator, decode_completions, exact_match


def test_exact_match_needs_eos_and_the_exact_text(rng):
    answers = ["".join(rng.choice(list("abc0123 "), int(rng.integers(1, 6)))) for _ in range(4)]
    texts = [answers[0], answers[1], answers[2] + "x", answers[3] + " "]
    assert exact_match(texts, [True, False, True, True], answers).tolist() == [1, 0, 0, 0]  # no EOS: not done
    tok = ByteTokenizer()
    word = answers[0]
    ids = np.array([list(tok.encode(word)) + [tok.eos_id, 7], list(tok.encode(word)) + [65, 66]])
    texts = decode_completions(ids, [len(word) + 1, len(word) + 2], [True, False], tok)
    assert texts == [word, word + "AB"]  # the stop token is not text; an unstopped row keeps all its tokens


def test_eval_problems_are_distinct_held_out_and_fixed(rng):
    name = str(rng.choice(["copy", "reverse", "sort", "add"]))
    size = int(rng.integers(3, 7))
    problems = distinct_examples(name, size, 30)
    assert len({p for p, _ in problems}) == len(problems) == 30
    assert all(split_of(p) == "eval" for p, _ in problems)
    assert problems == distinct_examples(name, size, 30)
    from m1jax.rl.tasks import get_task
    from m1jax.rl.loop import distinct_problems

    if name in ("add", "reverse"):  # the RL evaluator's held-out problems are the same ones
        rl_task = get_task({"add": "addition", "reverse": "reversal"}[name], size)
        assert [(p.prompt, p.answer) for p in distinct_problems(rl_task, 30)] == problems


def test_per_task_accuracy_and_mean_with_an_oracle_decoder(rng, monkeypatch):
    tasks = tuple(rng.permutation(["copy", "reverse", "sort", "add"])[:3])
    ev = TaskEvaluator(",".join(tasks), 4, int(rng.integers(5, 20)), ByteTokenizer())
    right = {t: rng.random(len(ev.problems[t])) < 0.5 for t in tasks}  # which rows the "model" gets right

    def oracle(policy, prompts, key, max_new_tokens, tokenizer):
        assert prompts == ev.prompts and max_new_tokens == max(len(a) for a in ev.answers) + 1
        texts = [a if ok else a + "!" for t in tasks for (_, a), ok in zip(ev.problems[t], right[t], strict=True)]
        return texts, np.ones(len(texts), bool)

    monkeypatch.setattr(evaluate, "greedy_completions", oracle)
    m = ev(policy=None)
    for t in tasks:
        assert m[f"eval/exact_match/{t}"] == pytest.approx(right[t].mean())
    assert m["eval/exact_match/mean"] == pytest.approx(np.mean([right[t].mean() for t in tasks]))
    assert len(m) == len(tasks) + 1


class EosIsZero(ByteTokenizer):
    eos_id = 0  # byte 0 ends a completion: what a model with an all-zero LM head emits first


def test_a_real_greedy_sample_call_scores_known_outputs(rng):
    # An all-zero LM head gives equal logits, so greedy picks token 0 at every step: with EOS = 0 every completion
    # is "" and stopped, right exactly where the answer is "". (Unstopped rows: the string-level tests above.)
    config = ModelConfig.tiny(vocab_size=258, num_hidden_layers=2, attn_type_list=(0, 1), block_size=16)
    model = MiniMaxM1(config, rngs=nnx.Rngs(int(rng.integers(1000))))
    model.lm_head[...] = jax.numpy.zeros_like(model.lm_head[...])
    ev = TaskEvaluator(("copy", "add"), 3, 6, EosIsZero())
    texts, stopped = evaluate.greedy_completions(model, ev.prompts, jax.random.key(0), ev.max_new_tokens, ev.tokenizer)
    assert texts == [""] * len(ev.prompts) and stopped.all()
    assert ev(model) == {"eval/exact_match/copy": 0.0, "eval/exact_match/add": 0.0, "eval/exact_match/mean": 0.0}
    ev.answers = ["" if t == "copy" else a for t, a in zip(ev.task_of, ev.answers, strict=True)]
    assert ev(model) == {"eval/exact_match/copy": 1.0, "eval/exact_match/add": 0.0, "eval/exact_match/mean": 0.5}


def test_tasks_without_a_tokenizer_eos_are_refused():
    class NoEos(ByteTokenizer):
        eos_id = None

    with pytest.raises(ValueError, match="no EOS token"):
        TaskEvaluator("copy", 3, 4, NoEos())
