"""The RL comparison's analysis (experiments/rl_comparison.py runs the study): per-run curves and numbers from
metrics.jsonl, per-arm aggregates with bootstrap / Kaplan-Meier CIs, the pairwise table, the stratified summary, the
mu = 1 check and summary.json."""

from __future__ import annotations

import itertools
import json
import os


import numpy as np  # noqa: E402

from m1jax.rl import stats  # noqa: E402

from experiments.rl_comparison import ARMS, DIAGNOSTICS, MU1_PAIR, THRESHOLD_OFFSETS, read_rows, threshold_key  # noqa: E402


def train_step_times(trained: list[dict]) -> np.ndarray:
    """Each trained step's training wall-clock: its step_time, except where step_time measures something else:
    the first step of a process (JIT compilation: how long depends on the compilation cache, i.e. on which
    runs ran before) and, in logs written before the loop timed its evals apart (no ``eval_s``), steps that ran a
    held-out eval (measurement, not training). Those get the median step_time of the run's other steps (when it
    has any; else they keep theirs)."""
    t = np.array([float(r.get("step_time") or 0.0) for r in trained], np.float64)
    special = np.array([("eval/accuracy" in r and "eval_s" not in r) for r in trained], bool)
    first = np.zeros(len(trained), bool)
    if trained:
        first[0] = True  # (a run resumed midway compiles again at its first step after resuming: not detected)
    odd = special | first
    if (~odd).any():
        return np.where(odd, np.median(t[~odd]), t)
    if len(t) > 1:
        return np.where(first, np.median(t[1:]), t)
    return t


def run_curves(rows: list[dict]) -> dict:
    """metrics.jsonl records -> the eval curve on three budget axes.

    Returns {"step", "tokens", "wall" [m]: budget at each eval (cumulative generated tokens / training wall-clock
    (``train_step_times``) up to and including that step; 0 at the step-0 eval), "acc" [m] greedy held-out
    accuracy, "mean_k" [m] or None, "generated_tokens", "wall_s" (sum of step_time as logged), "train_wall_s"
    (sum of ``train_step_times``), "steps" (last trained step)}."""
    trained = sorted((r for r in rows if "generated_tokens" in r), key=lambda r: r["step"])
    times = train_step_times(trained)
    cum_tok, cum_wall, tok, wall = {0: 0.0}, {0: 0.0}, 0.0, 0.0
    for r, dt in zip(trained, times, strict=True):
        tok += float(r["generated_tokens"])
        wall += float(dt)
        cum_tok[r["step"]], cum_wall[r["step"]] = tok, wall
    evals = sorted((r for r in rows if "eval/accuracy" in r), key=lambda r: r["step"])
    evals = [r for r in evals if r["step"] in cum_tok]
    mean_key = next((k for r in evals for k in r if k.startswith("eval/mean@")), None)
    return {
        "step": np.array([r["step"] for r in evals], np.float64),
        "tokens": np.array([cum_tok[r["step"]] for r in evals], np.float64),
        "wall": np.array([cum_wall[r["step"]] for r in evals], np.float64),
        "acc": np.array([r["eval/accuracy"] for r in evals], np.float64),
        "mean_k": (np.array([r.get(mean_key, np.nan) for r in evals], np.float64) if mean_key else None),
        "mean_k_name": mean_key.removeprefix("eval/") if mean_key else None,
        "generated_tokens": tok, "train_wall_s": wall,
        "wall_s": float(sum(float(r.get("step_time") or 0.0) for r in trained)),
        "steps": trained[-1]["step"] if trained else 0,
    }


def _strict(x, y):
    """Drop evals whose budget does not grow (e.g. wall-clock 0 twice); keeps the first of equal xs."""
    keep = np.concatenate([[True], np.diff(x) > 0])
    return x[keep], y[keep]


def run_numbers(curves: dict, thresholds: dict[str, float]) -> dict:
    """Per-run headline numbers on the gradient-step axis: final accuracy (last eval), AUC of greedy accuracy
    (stats.auc: the mean accuracy over the run), steps-to-X per threshold (None = never reached)."""
    x, y = curves["step"], curves["acc"]
    return {
        "final_accuracy": float(y[-1]),
        "auc": stats.auc(x, y),
        "steps_to": {k: (None if (t := stats.steps_to(x, y, X - 1e-9)) is None else int(t))
                     for k, X in thresholds.items()},
        "generated_tokens": int(curves["generated_tokens"]),
        "wall_s": round(float(curves["wall_s"]), 2),
        "train_wall_s": round(float(curves["train_wall_s"]), 2),
    }


def run_diagnostics(rows: list[dict]) -> dict:
    """Means over the trained steps of the per-step diagnostics (ratio_min / ratio_max: extremes)."""
    out = {}
    for k in DIAGNOSTICS:
        v = np.array([r[k] for r in rows if "generated_tokens" in r and r.get(k) is not None], np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            out[k] = float(v.min() if k == "ratio_min" else v.max() if k == "ratio_max" else v.mean())
    return out


def load_runs(out: str) -> dict:
    """{task: {arm: {seed: run}}} of the comparison runs that finished (summary.json, not interrupted), plus
    run["unfinished"] lists per task. A run: {"rows", "curves", "lr", "seconds", "config"}."""
    found = {}
    base = os.path.join(out, "runs")
    for task in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        for arm in ARMS:
            adir = os.path.join(base, task, arm)
            if not os.path.isdir(adir):
                continue
            for name in sorted(os.listdir(adir)):
                if not name.startswith("seed"):
                    continue
                wd = os.path.join(adir, name)
                summary = os.path.join(wd, "summary.json")
                entry = found.setdefault(task, {"arms": {}, "unfinished": []})
                if not os.path.exists(summary):
                    entry["unfinished"].append(f"{arm}/{name}")
                    continue
                with open(summary) as f:
                    s = json.load(f)
                if s.get("interrupted"):
                    entry["unfinished"].append(f"{arm}/{name}")
                    continue
                rows = read_rows(os.path.join(wd, "metrics.jsonl"))
                cfg = {}
                if os.path.exists(os.path.join(wd, "config.json")):
                    with open(os.path.join(wd, "config.json")) as f:
                        cfg = json.load(f)
                info = {}
                if os.path.exists(os.path.join(wd, "run_info.json")):
                    with open(os.path.join(wd, "run_info.json")) as f:
                        info = json.load(f)
                entry["arms"].setdefault(arm, {})[int(name[4:])] = {
                    "rows": rows, "curves": run_curves(rows), "config": cfg,
                    "lr": (cfg.get("optim") or {}).get("lr"),
                    "seconds": sum(a["seconds"] for a in info.get("attempts", [])),
                    "command": info.get("command"),
                }
    for entry in found.values():  # runs of another length (an older --steps) are not comparable: set aside
        lengths = [r["curves"]["steps"] for runs in entry["arms"].values() for r in runs.values()]
        if not lengths:
            continue
        common = max(set(lengths), key=lambda n: (lengths.count(n), n))
        for arm, runs in list(entry["arms"].items()):
            for seed in [k for k, r in runs.items() if r["curves"]["steps"] != common]:
                n = runs.pop(seed)["curves"]["steps"]
                entry["unfinished"].append(f"{arm}/seed{seed} ({n} steps, not {common})")
            if not runs:
                del entry["arms"][arm]
    return found


# ----------------------------------------------------------------------------------------------------------
# Aggregation


def warm_start_accuracy(arms: dict) -> tuple[float, list[float]]:
    """The step-0 greedy accuracy (the same checkpoint and eval set for every run: all equal) and the
    distinct values seen."""
    vals = sorted({float(r["curves"]["acc"][0]) for runs in arms.values() for r in runs.values()
                   if r["curves"]["step"].size and r["curves"]["step"][0] == 0})
    if not vals:
        raise ValueError("no run has a step-0 eval")
    return float(np.median(vals)), vals


def _axis_budget(arms: dict, axis: str) -> float:
    """The common budget on an axis: the smallest final budget over every run of the task."""
    return float(min(r["curves"][axis][-1] for runs in arms.values() for r in runs.values()))


def _on_budget(curves: dict, axis: str, budget: float) -> tuple[float, float]:
    """(AUC up to ``budget``, accuracy at ``budget``) on ``axis``, accuracy piecewise linear between evals."""
    x, y = _strict(curves[axis], curves["acc"])
    if x.size < 2 or budget <= x[0]:
        return float(y[0]), float(y[0])
    budget = min(budget, x[-1])
    return stats.auc(x, y, upto=budget), float(np.interp(budget, x, y))


def aggregate_task(arms: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """Per-run numbers, per-arm CIs and pairwise comparisons of one task.

    arms: {arm: {seed: run}} with run["curves"] (run_curves) and run["rows"].
    """
    ws, ws_values = warm_start_accuracy(arms)
    thresholds = {threshold_key(ws + d): ws + d for d in THRESHOLD_OFFSETS}
    horizon = {"step": float(max(r["curves"]["step"][-1] for runs in arms.values() for r in runs.values()))}
    for axis in ("tokens", "wall"):
        horizon[axis] = _axis_budget(arms, axis)
    per_run, per_arm = {}, {}
    for arm, runs in arms.items():
        per_run[arm] = {}
        for s, r in sorted(runs.items()):
            c = r["curves"]
            n = run_numbers(c, thresholds)
            n["seed"] = s
            n["by_axis"] = {"step": {"auc": n["auc"], "accuracy": n["final_accuracy"],
                                     "steps_to": {k: v for k, v in n["steps_to"].items()}}}
            for axis in ("tokens", "wall"):
                x, y = _strict(c[axis], c["acc"])
                a, acc = _on_budget(c, axis, horizon[axis])
                n["by_axis"][axis] = {"auc": a, "accuracy": acc,
                                      "steps_to": {k: stats.steps_to(x, y, X - 1e-9) for k, X in thresholds.items()}}
            n["final_mean_k"] = (float(c["mean_k"][-1]) if c["mean_k"] is not None else None)
            n["diagnostics"] = run_diagnostics(r["rows"])
            n["lr"] = r.get("lr")
            n["seconds"] = r.get("seconds")
            per_run[arm][s] = n
        runs_n = list(per_run[arm].values())
        A = {"n": len(runs_n), "seeds": sorted(per_run[arm]), "lr": sorted({x["lr"] for x in runs_n if x["lr"]})}
        A["final_accuracy"] = stats.bootstrap_ci([x["final_accuracy"] for x in runs_n], n_boot=n_boot, seed=seed)
        A["gain_over_warm_start"] = stats.bootstrap_ci([x["final_accuracy"] - ws for x in runs_n], n_boot=n_boot,
                                                       seed=seed)
        finals_k = [x["final_mean_k"] for x in runs_n if x["final_mean_k"] is not None]
        A["final_mean_k"] = stats.bootstrap_ci(finals_k, n_boot=n_boot, seed=seed) if finals_k else None
        A["generated_tokens"] = float(np.mean([x["generated_tokens"] for x in runs_n]))
        A["wall_s"] = float(np.mean([x["wall_s"] for x in runs_n]))
        A["train_wall_s"] = float(np.mean([x["train_wall_s"] for x in runs_n]))
        A["axes"] = {}
        for axis in ("step", "tokens", "wall"):
            ax = {"auc": stats.bootstrap_ci([x["by_axis"][axis]["auc"] for x in runs_n], n_boot=n_boot, seed=seed),
                  "accuracy": stats.bootstrap_ci([x["by_axis"][axis]["accuracy"] for x in runs_n], n_boot=n_boot,
                                                 seed=seed),
                  "steps_to": {}}
            for k in thresholds:
                t = [x["by_axis"][axis]["steps_to"][k] for x in runs_n]
                last = [float(arms[arm][x["seed"]]["curves"][axis][-1]) for x in runs_n]
                times = np.array([v if v is not None else end for v, end in zip(t, last, strict=True)], np.float64)
                events = np.array([v is not None for v in t])
                ax["steps_to"][k] = {
                    "reached": int(events.sum()), "n": len(t),
                    "km_median": stats.km_median_ci(times, events, n_boot=n_boot, seed=seed),
                    "restricted_mean": stats.restricted_mean_ci(times, events, horizon[axis], n_boot=n_boot,
                                                                seed=seed),
                }
            A["axes"][axis] = ax
        A["diagnostics"] = {k: float(np.mean([x["diagnostics"][k] for x in runs_n if k in x["diagnostics"]]))
                            for k in DIAGNOSTICS if any(k in x["diagnostics"] for x in runs_n)}
        per_arm[arm] = A
    pairs = {}
    for a, b in itertools.combinations(list(arms), 2):
        common = sorted(set(per_run[a]) & set(per_run[b]))
        if not common:
            continue
        P = {"n": len(common)}
        for metric, get in (("final_accuracy", lambda x: x["final_accuracy"]), ("auc", lambda x: x["auc"]),
                            ("auc_tokens", lambda x: x["by_axis"]["tokens"]["auc"]),
                            ("auc_wall", lambda x: x["by_axis"]["wall"]["auc"])):
            va = np.array([get(per_run[a][s]) for s in common])
            vb = np.array([get(per_run[b][s]) for s in common])
            P[metric] = {"diff": stats.paired_bootstrap_diff(va, vb, n_boot=n_boot, seed=seed),
                         "p_improve": stats.probability_of_improvement_ci(va, vb, paired=True, n_boot=n_boot,
                                                                           seed=seed)}
        k1 = next(iter(thresholds))

        def capped(x, H=horizon["step"], k1=k1):
            return H if x["steps_to"][k1] is None else min(x["steps_to"][k1], H)

        ta = np.array([capped(per_run[a][s]) for s in common], np.float64)
        tb = np.array([capped(per_run[b][s]) for s in common], np.float64)
        P["steps_to_x1_capped"] = {"diff": stats.paired_bootstrap_diff(ta, tb, n_boot=n_boot, seed=seed)}
        pairs[f"{a} vs {b}"] = P
    return {"warm_start_accuracy": ws, "warm_start_values": ws_values, "thresholds": thresholds,
            "horizon": horizon, "per_run": per_run, "per_arm": per_arm, "pairs": pairs}


def stratified(tasks: dict, n_boot: int = 2000, seed: int = 0) -> dict | None:
    """Across tasks (when more than one has results): per arm, the task-stratified bootstrap CI of the mean over
    tasks of final accuracy and AUC; per pair, of the paired difference and the paired probability of
    improvement. Only arms / pairs present in every task."""
    if len(tasks) < 2:
        return None
    names = list(tasks)
    arms = [a for a in ARMS if all(a in tasks[t]["per_run"] for t in names)]
    out = {"tasks": names, "per_arm": {}, "pairs": {}}
    for arm in arms:
        out["per_arm"][arm] = {m: stats.stratified_bootstrap_ci(
            {t: [x[m] for x in tasks[t]["per_run"][arm].values()] for t in names}, n_boot=n_boot, seed=seed)
            for m in ("final_accuracy", "auc")}
    for a, b in itertools.combinations(arms, 2):
        common = {t: sorted(set(tasks[t]["per_run"][a]) & set(tasks[t]["per_run"][b])) for t in names}
        if not all(common.values()):
            continue
        P = {}
        for m in ("final_accuracy", "auc"):
            va = {t: np.array([tasks[t]["per_run"][a][s][m] for s in common[t]]) for t in names}
            vb = {t: np.array([tasks[t]["per_run"][b][s][m] for s in common[t]]) for t in names}
            P[m] = {"diff": stats.stratified_bootstrap_ci({t: (va[t], vb[t]) for t in names}, n_boot=n_boot,
                                                          seed=seed),
                    "p_improve": stats.probability_of_improvement_ci(va, vb, paired=True, n_boot=n_boot, seed=seed)}
        out["pairs"][f"{a} vs {b}"] = P
    return out


def mu1_check(arms: dict) -> dict | None:
    """The mu = 1 pair on each common seed: max |difference| of the greedy-accuracy curves, of mean@k and of the
    per-step reward, and the first step whose reward differs (a flipped sample: from there the trajectories are
    different samples of the same process)."""
    a, b = MU1_PAIR
    if a not in arms or b not in arms:
        return None
    seeds = sorted(set(arms[a]) & set(arms[b]))
    if not seeds:
        return None
    out = {"seeds": {}}
    for s in seeds:
        ca, cb = arms[a][s]["curves"], arms[b][s]["curves"]
        steps = sorted(set(ca["step"].tolist()) & set(cb["step"].tolist()))
        ia = [ca["step"].tolist().index(x) for x in steps]
        ib = [cb["step"].tolist().index(x) for x in steps]
        d_acc = float(np.max(np.abs(ca["acc"][ia] - cb["acc"][ib]))) if steps else float("nan")
        d_k = (float(np.nanmax(np.abs(ca["mean_k"][ia] - cb["mean_k"][ib])))
               if steps and ca["mean_k"] is not None and cb["mean_k"] is not None else None)
        ra = {r["step"]: r["reward"] for r in arms[a][s]["rows"] if "reward" in r}
        rb = {r["step"]: r["reward"] for r in arms[b][s]["rows"] if "reward" in r}
        common = sorted(set(ra) & set(rb))
        diffs = [abs(ra[t] - rb[t]) for t in common]
        first = next((t for t in common if ra[t] != rb[t]), None)
        out["seeds"][s] = {"max_abs_acc": d_acc, "max_abs_mean_k": d_k,
                           "max_abs_reward": max(diffs) if diffs else None, "first_reward_diff_step": first}
    vals = list(out["seeds"].values())
    out["max_abs_acc"] = max(v["max_abs_acc"] for v in vals)
    out["max_abs_reward"] = max((v["max_abs_reward"] or 0.0) for v in vals)
    out["identical_seeds"] = sum(v["first_reward_diff_step"] is None and v["max_abs_acc"] == 0 for v in vals)
    out["n"] = len(vals)
    return out


def summary_json(tasks: dict) -> dict:
    return {task: {arm: [{"seed": s, "final_accuracy": x["final_accuracy"], "auc": x["auc"],
                          "steps_to": x["steps_to"], "generated_tokens": x["generated_tokens"], "wall_s": x["wall_s"]}
                         for s, x in sorted(runs.items())]
                   for arm, runs in agg["per_run"].items()}
            for task, agg in tasks.items()}


# ----------------------------------------------------------------------------------------------------------
# Plots
