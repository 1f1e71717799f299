"""`m1jax rl` end to end on the CPU (subprocesses sharing a JAX compilation cache): a warm start then CISPO
runs and logs every metric; a run killed with SIGKILL resumes and reproduces the uninterrupted rewards
and losses exactly; bad configs fail before any work. Plus the learner batch layout."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from m1jax.train.metrics import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
# The tiny preset, shrunk: a 2-layer (lightning + softmax) model, a 10-step warm start, 8 RL steps; the verifier
# raises on the first prompt of the stream and hangs on the second (tests/rl_reward_fns.py).
ARGS = ["rl", "--config=experiments/rl.py:tiny", f"--config.steps={STEPS}", "--config.warm_start.steps=10",
        "--config.warm_start.optim.warmup_steps=2",
        "--config.model.num_hidden_layers=2", "--config.model.attn_type_list=(0, 1)", "--config.model.hidden_size=32",
        "--config.model.intermediate_size=32", "--config.rollout.prompts=4", "--config.rollout.group_size=4",
        "--config.eval.every=4", "--config.eval.problems=16", "--config.eval.samples=2",
        "--config.checkpoint.every=2", "--config.log.every=4", "--config.log.plot=False",
        "--config.reward.fn=tests.rl_reward_fns:flaky_addition", "--config.reward.timeout_s=0.5",
        "--config.algo.dynamic_sampling=False"]  # a 10-step warm start rarely answers right: keep every group


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path, JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def cli(env, workdir, *extra):
    return subprocess.Popen([sys.executable, "-m", "m1jax.cli.main", *ARGS, f"--workdir={workdir}", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(env, workdir, *extra):
    proc = cli(env, workdir, *extra)
    out, _ = proc.communicate(timeout=400)
    return proc.returncode, out


def trained(workdir):
    rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "reward" in r]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)), "one record per step, in order"
    return rows


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    code, out = run(env, workdir)
    assert code == 0, out
    return workdir, out


def test_rl_runs_logs_and_summarises(reference):
    workdir, out = reference
    rows = trained(workdir)
    assert len(rows) == STEPS
    want = {"reward", "response_length", "clip_fraction", "active_clip_fraction", "ratio_min", "ratio_mean",
            "ratio_max", "entropy", "mismatch/prob_corr", "mismatch/mean_abs_logp", "verifier_failures",
            "tokens_per_s", "loss", "grad_norm", "kept_groups"}
    assert want <= set(rows[0]), want - set(rows[0])
    # A raising and a hanging verifier: reward 0 for those rows, counted, logged, and the run goes on.
    assert rows[0]["verifier_failures"] == 8 and rows[0]["verifier/error"] == 4 and rows[0]["verifier/timeout"] == 4
    assert sum(r["verifier_failures"] for r in rows[1:]) == 0
    assert "RuntimeError: flaky verifier" in out and "timeout after 0.5s" in out
    # The sampler reads the learner's params: fp32 on a CPU, log-probs agree to rounding.
    assert all(r["mismatch/mean_abs_logp"] < 1e-5 for r in rows)
    evals = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 4, 8] and "eval/mean@2" in evals[0]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["final_accuracy"] == evals[-1]["eval/accuracy"]
    assert summary["warm_start_accuracy"] == evals[0]["eval/accuracy"]
    assert os.path.isdir(os.path.join(workdir, "warm_start", "checkpoints"))


def test_sigkill_then_rerun_reproduces_the_uninterrupted_run(env, reference, tmp_path):
    proc = cli(env, tmp_path)
    path, start = os.path.join(tmp_path, "metrics.jsonl"), time.time()
    while not [r for r in read_jsonl(path) if r.get("step", 0) >= 5 and "reward" in r]:
        assert proc.poll() is None and time.time() - start < 300, proc.stdout.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert len(trained(tmp_path)) < STEPS, "killed before the end"
    code, out = run(env, tmp_path)
    assert code == 0 and "resuming from step" in out, out
    ref, got = trained(reference[0]), trained(tmp_path)
    for key in ("reward", "loss", "grad_norm", "response_length", "clip_fraction"):
        np.testing.assert_array_equal([r[key] for r in got], [r[key] for r in ref], err_msg=key)  # bit-identical


@pytest.mark.parametrize("extra, message", [
    (["--config.loss.name=ppo"], "config.loss.name='ppo': unknown loss"),
    (["--config.task=multiply"], "config.task='multiply': unknown task"),
    (["--config.rollout.temperature=0.0"], "rollout.temperature"),
    (["--config.rollout.top_p=1.5"], "rollout.top_p"),
    (["--config.algo.updates_per_rollout=3"], "must divide"),
    (["--config.reward.fn=tests.rl_reward_fns:nope"], "config.reward.fn='tests.rl_reward_fns:nope'"),
])
def test_bad_config_fails_before_any_work(env, extra, message, tmp_path):
    code, out = run(env, tmp_path / "w", *extra)
    assert code != 0 and message in out, out
    assert not (tmp_path / "w").exists()


def test_learner_batch_layout():
    from m1jax.rl.learner import learner_batch

    prompts = [[5, 6, 7], [9]]
    tokens = np.array([[1, 2, 3], [4, 0, 0]])
    b = learner_batch(prompts, tokens, lengths=[3, 1], sampler_logp=np.full((2, 3), -1.0), advantages=[1.0, -1.0])
    assert b["tokens"].shape == (2, 16 + 3)
    np.testing.assert_array_equal(b["tokens"][0, 13:], [5, 6, 7, 1, 2, 3])
    np.testing.assert_array_equal(b["segment_ids"][1, 14:], [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(b["positions"][1, 15:], [0, 1, 2, 3])
    np.testing.assert_array_equal(b["mask"], [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(b["sampler_logp"], [[-1, -1, -1], [-1, 0, 0]])


def test_continuous_batching_rollouts_give_the_same_samples(env, reference, tmp_path):
    """rollout.batch_slots=5 (16 rows through 5 slots) samples step 1 from the same warm start exactly as the
    static batch did: same rewards and response lengths (the rollout precedes the first update)."""
    warm = os.path.join(reference[0], "warm_start")
    code, out = run(env, tmp_path, "--config.steps=2", "--config.eval.every=2", "--config.rollout.batch_slots=5",
                    f"--config.init_from={warm}")
    assert code == 0, out
    with open(os.path.join(tmp_path, "config.json")) as f:
        assert json.load(f)["rollout"]["batch_slots"] == 5
    got, ref = trained(tmp_path)[0], trained(reference[0])[0]
    for key in ("reward", "response_length", "verifier_failures"):
        assert got[key] == ref[key], key
