"""RL tasks and rewards: verifiers accept reference answers and reject wrong ones (Countdown's arithmetic checked
without eval), deterministic disjoint splits, warm-start documents, and a reward worker that survives failures."""

import pickle
from fractions import Fraction

import numpy as np
import pytest

from m1jax.data import ByteTokenizer, TaskSource
from m1jax.data.tasks import parse_tasks
from m1jax.rl.rewards import RewardRunner
from m1jax.rl.tasks import TASKS, Problem, encode_prompt, evaluate_expression, get_task, warm_start_data_tasks
from tests.rl_reward_fns import scripted

NAMES = sorted(TASKS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [1, 3, 6])
def test_reference_answers_verify_and_wrong_ones_do_not(name, size):
    task = get_task(name, size)
    splits = ("train", "eval")
    if (name, size) == ("reversal", 1):  # the 26 one-letter prompts hold no eval prompt
        with pytest.raises(RuntimeError, match="drew no 'eval' prompt in 1000 draws; use a larger size"):
            task.problem(0, split="eval")
        splits = ("train",)
    for split in splits:
        for p in task.problems(seed=5, start=0, count=100, split=split):
            assert p.task == name
            assert task.verify(p, p.answer) == 1.0, p
            assert task.verify(p, p.answer + " \n") == 1.0, "trailing whitespace is tolerated"
            for wrong in (p.answer + "0", "", p.answer + "=", "x" * (len(p.answer) != 1), "\n" + p.answer):
                assert task.verify(p, wrong) == 0.0, (p, wrong)
            if name != "countdown":  # Countdown allows spaces between tokens
                assert task.verify(p, " " + p.answer) == 0.0


def test_addition_and_reversal_examples():
    add, rev = get_task("addition"), get_task("reversal")
    p = Problem("12+30=", "42", "addition", (12, 30))
    assert add.verify(p, "42") == 1.0 and add.verify(p, "042") == 0.0 and add.verify(p, "41") == 0.0
    q = Problem("reverse abc=", "cba", "reversal", ("abc",))
    assert rev.verify(q, "cba") == 1.0 and rev.verify(q, "abc") == 0.0
    with pytest.raises(ValueError, match="cannot verify"):
        add.verify(q, "cba")


def test_countdown_verifier():
    cd = get_task("countdown")
    p = Problem("countdown 3 7 25 6 target 46=", "25+3*7", "countdown", ((3, 7, 25, 6), 46))
    good = ["25+3*7", "7*3+25", " 25 + 3 * 7 ", "(25+(3*7))", "((3))*7+25"]
    for text in good:
        assert cd.verify(p, text) == 1.0, text
    assert cd.verify(p, "6*7+3") == 0.0  # 45: wrong value
    bad = ["25+25-7+3", "25*6/3-7+3", "3*7+25+0", "21+25", "46", "25+3*7=46", "25+3*7)", "(25+3*7", "25+3**7",
           "25+-3*7", "25+3*7/(6-6)", "7/0", "__import__('os').system('true')", "25+3*07", "x", "", "25+3*7\n1",
           "٢٥+3*7", "(" * 80 + "25+3*7" + ")" * 80]  # reuse, not given, wrong value, bad syntax, eval bait
    for text in bad:
        assert cd.verify(p, text) == 0.0, text
    q = Problem("countdown 5 5 2 target 25=", "5*5", "countdown", ((5, 5, 2), 25))
    assert cd.verify(q, "5*5") == 1.0 and cd.verify(q, "5*5*2/2") == 0.0  # 5 twice is fine, 2 twice is not
    assert cd.verify(q, "(5)*(5)") == 1.0 and cd.verify(q, "2/(5-5)") == 0.0  # division by zero
    r = Problem("countdown 4 8 12 target 6=", "12*4/8", "countdown", ((4, 8, 12), 6))
    assert cd.verify(r, "12*4/8") == 1.0 and cd.verify(r, "4/8*12") == 1.0 and cd.verify(r, "12/8*4") == 1.0
    with pytest.raises(ZeroDivisionError):
        evaluate_expression("1/(2-2)")
    assert evaluate_expression("(1+2)*3/4-5") == (Fraction(-11, 4), ["1", "2", "3", "4", "5"])


def test_splits_are_disjoint_and_deterministic():
    for name in NAMES:
        task = get_task(name, 2)
        train = task.problems(0, 0, 300) + task.problems(1, 0, 300)
        held = task.problems(0, 0, 100, split="eval") + task.problems(9, 0, 100, split="eval")
        assert not {p.prompt for p in train} & {p.prompt for p in held}
        assert task.problems(0, 50, 20, "eval") == held[50:70]  # any index made again, same problem
        assert task.problem(3, 7) == get_task(name, 2).problem(3, 7) != task.problem(4, 7)
        assert task.problems(1, 0, 5) != task.problems(0, 0, 5)
    with pytest.raises(ValueError, match="split"):
        get_task("addition").problem(0, split="test")


def test_train_split_warm_start_data_never_shows_eval_problems():
    import m1jax.data.tasks as data_tasks
    import m1jax.rl.tasks as rl_tasks

    assert rl_tasks.split_of is data_tasks.split_of and rl_tasks.EVAL_PERCENT == data_tasks.EVAL_PERCENT
    task = get_task("addition", 2)
    held = {p.prompt for p in task.problems(0, 0, 200, split="eval")}
    seen = {split: {TaskSource("add", ByteTokenizer(), seed=0, size=2, split=split).example(i)[1] for i in range(2000)}
            for split in ("all", "train")}
    assert seen["all"] & held  # with tiny sizes unfiltered warm-start data does repeat eval prompts
    assert not seen["train"] & held


def test_unknown_task_names_the_choices():
    for bad in ("subtraction", ""):
        with pytest.raises(ValueError, match=rf"unknown task '{bad}'; choose from \['addition', 'countdown', "):
            get_task(bad)
    with pytest.raises(ValueError, match="unknown task 'add'"):
        warm_start_data_tasks("countdown,add")
    with pytest.raises(ValueError, match="size"):
        get_task("countdown", 0)


def test_warm_start_documents_match_rl_prompts():
    tok = ByteTokenizer()
    assert warm_start_data_tasks("addition, countdown,reversal") == "add,countdown,reverse"
    assert parse_tasks(warm_start_data_tasks("countdown")) == ("countdown",)
    cd = get_task("countdown", 4)
    src = TaskSource("countdown", tok, seed=2, size=4, loss_on="answer")
    for i in range(200):
        _, prompt, answer = src.example(i)
        meta = cd.parse(prompt)
        assert prompt == "countdown " + " ".join(map(str, meta[0])) + f" target {meta[1]}="
        assert 2 <= len(meta[0]) <= 4 and meta[1] >= 0 and all(1 <= n <= 16 for n in meta[0])
        assert cd.verify(Problem(prompt, answer, "countdown", meta), answer) == 1.0
        doc = src[i]
        assert tok.decode(doc.tokens[doc.loss_mask]) == answer
    for name in NAMES:  # an RL prompt is exactly what precedes the answer in a warm-start document
        task = get_task(name, 4)
        src = TaskSource(task.data_task, tok, seed=1, size=4)
        for i in range(20):
            _, prompt, answer = src.example(i)
            ids, doc = encode_prompt(Problem(prompt, answer, name, task.parse(prompt)), tok), src[i].tokens.tolist()
            assert ids[0] == tok.bos_id and doc[:len(ids)] == ids and tok.decode(doc[len(ids):]) == answer
            assert task.verify(Problem(prompt, answer, name, task.parse(prompt)), answer) == 1.0


@pytest.fixture(scope="module")
def runner():
    with RewardRunner(scripted, timeout_s=0.5) as r:
        yield r


def test_reward_runner_scores_and_survives_failures(runner, caplog):
    task = get_task("countdown")
    ps = task.problems(0, 0, 9)
    texts = [ps[0].answer, "raise", "nan", "str", "hang", ps[5].answer, "exit", "true", "1+"]
    before = dict(runner.counters)
    rewards, failures = runner.score(ps, texts)
    assert rewards.dtype == np.float32 and rewards.tolist() == [1, 0, 0, 0, 0, 1, 0, 1, 0]
    reasons = dict(failures)
    assert sorted(reasons) == [1, 2, 3, 4, 6]
    assert "ZeroDivisionError: boom" in reasons[1]
    assert "nan" in reasons[2] and "'1.0' (str)" in reasons[3]
    assert reasons[4] == "timeout after 0.5s" and "exit code 3" in reasons[6]
    delta = {k: runner.counters[k] - before[k] for k in before}
    assert delta == {"calls": 9, "error": 1, "timeout": 1, "not_a_number": 2, "crash": 1, "restarts": 2}
    assert sum("failed on item" in r.getMessage() for r in caplog.records) == 5
    rewards, failures = runner.score(ps[:2], [ps[0].answer, ps[1].answer])  # the restarted worker goes on
    assert rewards.tolist() == [1, 1] and failures == []
    rewards, failures = runner.score([], [])
    assert rewards.shape == (0,) and failures == []


def test_task_verifiers_are_reward_functions_and_unpicklable_fns_are_refused():
    task = get_task("countdown", 3)
    verify, p = pickle.loads(pickle.dumps(task.verify)), task.problem(0)  # what a worker receives
    assert verify(p, p.answer) == 1.0 and verify(p, "1+") == 0.0
    with pytest.raises(ValueError, match="picklable"):
        RewardRunner(lambda p, c: 1.0)
    with pytest.raises(ValueError, match="not callable"):
        RewardRunner(3)
