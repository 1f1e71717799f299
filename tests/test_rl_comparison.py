"""experiments/rl_comparison.py's aggregation on synthetic metrics.jsonl records (no training)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from experiments import rl_comparison as rc
from experiments import rl_comparison_analysis as ra
from experiments import rl_comparison_report as rr


def _rows(accs, every=2, tokens=100, step_time=0.5, compile_s=10.0, eval_s=0.3):
    """metrics.jsonl records of a run: eval at step 0 and every ``every`` steps (accs[i] at step i * every)."""
    steps = (len(accs) - 1) * every
    rows = [{"step": 0, "eval/accuracy": accs[0], "eval/mean@8": accs[0] / 2}]
    for s in range(1, steps + 1):
        r = {"step": s, "reward": 0.1, "generated_tokens": tokens, "response_length": 3.0, "entropy": 1.0,
             "clip_fraction": 0.01, "active_clip_fraction": 0.0, "ratio_min": 0.9, "ratio_max": 1.1,
             "mismatch/prob_corr": 1.0, "step_time": step_time + (compile_s if s == 1 else 0.0)}
        if s % every == 0:
            r.update({"eval/accuracy": accs[s // every], "eval/mean@8": accs[s // every] / 2})
            r["step_time"] += eval_s
        rows.append(r)
    return rows


def _run(accs, **kw):
    rows = _rows(accs, **kw)
    return {"rows": rows, "curves": ra.run_curves(rows), "lr": 5e-5, "seconds": 1.0, "config": {}, "command": None}


def test_run_curves_and_numbers():
    c = ra.run_curves(_rows([0.1, 0.1, 0.2, 0.3], every=2, tokens=100, step_time=0.5))
    np.testing.assert_array_equal(c["step"], [0, 2, 4, 6])
    np.testing.assert_array_equal(c["tokens"], [0, 200, 400, 600])
    # training clock: compilation (step 1) and evals (steps 2, 4, 6) count as the median of the other steps
    np.testing.assert_allclose(c["wall"], [0, 1.0, 2.0, 3.0])
    assert c["wall_s"] == pytest.approx(6 * 0.5 + 10.0 + 3 * 0.3)
    n = ra.run_numbers(c, {"0.12": 0.12, "0.15": 0.15, "0.5": 0.5})
    assert n["final_accuracy"] == 0.3
    assert n["auc"] == pytest.approx(np.trapezoid([0.1, 0.1, 0.2, 0.3], [0, 2, 4, 6]) / 6)
    assert n["steps_to"] == {"0.12": 4, "0.15": 4, "0.5": None}
    assert n["generated_tokens"] == 600


def test_threshold_hit_exactly_counts():
    c = ra.run_curves(_rows([0.075, 0.095], every=1))
    assert ra.run_numbers(c, {"0.095": 0.075 + 0.02})["steps_to"]["0.095"] == 1


def test_aggregate_pairs_mu1_and_summary(tmp_path):
    good = [[0.1, 0.2, 0.3, 0.4], [0.1, 0.15, 0.3, 0.35], [0.1, 0.2, 0.25, 0.45]]
    flat = [[0.1, 0.1, 0.12, 0.1], [0.1, 0.11, 0.1, 0.1], [0.1, 0.1, 0.1, 0.13]]
    arms = {"cispo_e4": {s: _run(a) for s, a in enumerate(good)},
            "grpo_b0": {s: _run(a) for s, a in enumerate(flat)},
            "mu1_cispo": {s: _run(a) for s, a in enumerate(flat)},
            "mu1_grpo_tok": {s: _run(a) for s, a in enumerate(flat[:2] + [[0.1, 0.1, 0.1, 0.14]])}}
    agg = ra.aggregate_task(arms, n_boot=200)
    assert agg["warm_start_accuracy"] == pytest.approx(0.1)
    assert list(agg["thresholds"]) == ["0.12", "0.15"]
    pa = agg["per_arm"]["cispo_e4"]
    assert pa["final_accuracy"].estimate == pytest.approx(0.4)
    assert pa["axes"]["step"]["steps_to"]["0.15"]["reached"] == 3
    g = agg["per_arm"]["grpo_b0"]["axes"]["step"]["steps_to"]["0.15"]
    assert g["reached"] == 0 and g["km_median"].estimate == float("inf")
    assert g["restricted_mean"].estimate == pytest.approx(6.0)  # every run censored at the horizon
    pair = agg["pairs"]["cispo_e4 vs grpo_b0"]
    assert pair["n"] == 3 and pair["final_accuracy"]["p_improve"].estimate == 1.0
    assert pair["final_accuracy"]["diff"].lo > 0
    mu1 = ra.mu1_check(arms)
    assert mu1["n"] == 3 and mu1["identical_seeds"] == 2
    assert mu1["max_abs_acc"] == pytest.approx(0.01)
    summary = ra.summary_json({"addition": agg})
    rec = summary["addition"]["cispo_e4"][0]
    assert set(rec) == {"seed", "final_accuracy", "auc", "steps_to", "generated_tokens", "wall_s"}
    assert rec["steps_to"] == {"0.12": 2, "0.15": 2}
    assert summary["addition"]["grpo_b0"][0]["steps_to"]["0.15"] is None
    json.dumps(summary)
    strat = ra.stratified({"addition": agg, "countdown": agg}, n_boot=100)
    assert strat["pairs"]["cispo_e4 vs grpo_b0"]["final_accuracy"]["diff"].estimate == pytest.approx(
        pair["final_accuracy"]["diff"].estimate)


def test_report_writes_files_and_flags_partial(tmp_path):
    out = str(tmp_path)
    for arm, accs in (("cispo_e4", [0.1, 0.2, 0.3]), ("dapo", [0.1, 0.1, 0.2])):
        for seed in (0, 1):
            wd = os.path.join(out, "runs", "addition", arm, f"seed{seed}")
            os.makedirs(wd)
            with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in _rows(accs))
            with open(os.path.join(wd, "summary.json"), "w") as f:
                json.dump({"steps": 4, "interrupted": None}, f)
    os.makedirs(os.path.join(out, "addition"))
    for path, words in (("notes.md", "across tasks, by hand"), (os.path.join("addition", "notes.md"), "addition note")):
        with open(os.path.join(out, path), "w") as f:
            f.write(words)
    rr.report(out, n_boot=50, plots=False)
    with open(os.path.join(out, "summary.json")) as f:
        assert set(json.load(f)["addition"]) == {"cispo_e4", "dapo"}
    with open(os.path.join(out, "README.md")) as f:
        text = f.read()
    assert "PARTIAL: 2 of 10 seeds" in text
    conclusion = text.split("## Conclusion", 1)[1]  # hand-written notes: the overall one first, then the task's
    assert 0 < conclusion.index("across tasks, by hand") < conclusion.index("addition note")


def test_parse_and_arm_settings():
    assert rc.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert rc.parse_arms("dapo,cispo_e1") == ["cispo_e1", "dapo"]
    with pytest.raises(ValueError):
        rc.parse_arms("ppo")
    d = rc.arm_settings("dapo", 12)
    assert d["algo.overlong_max"] == 12 and d["algo.overlong_cache"] == 3 and d["algo.dynamic_sampling"]
    assert rc.arm_settings("grpo_b0", 12)["algo.overlong_max"] == 0
    m1, m2 = rc.arm_settings("mu1_cispo", 5), rc.arm_settings("mu1_grpo_tok", 5)
    assert m1["algo.updates_per_rollout"] == m2["algo.updates_per_rollout"] == 1
    assert {k: v for k, v in m1.items() if not k.startswith("loss.")} == \
        {k: v for k, v in m2.items() if not k.startswith("loss.")}
