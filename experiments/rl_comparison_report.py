"""The RL comparison's report (experiments/rl_comparison.py runs the study): curves with CI bands, the README
with its tables and a conclusion computed from the numbers, and `report(out)` that writes every file."""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import warnings


import numpy as np  # noqa: E402

from m1jax.rl import stats  # noqa: E402

from experiments.rl_comparison import (  # noqa: E402
    ARMS, EVAL_SAMPLES, EVALS_PER_RUN, MIN_SEEDS_FOR_CI, NEUTRAL, OVERLONG, ROOT, TARGET_SEEDS, TASKS,
    THRESHOLD_OFFSETS, WARM_RANGE, _f, _read_sweep, _rel, _say, _value, lr_key,
)
from experiments.rl_comparison_analysis import (  # noqa: E402
    _strict, aggregate_task, load_runs, mu1_check, stratified, summary_json,
)




def _band(Y: np.ndarray, n_boot: int, seed: int = 0):
    """Mean over runs of Y [n, m] and its percentile-bootstrap 95% band (resampling runs)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, Y.shape[0], (n_boot, Y.shape[0]))
    reps = Y[idx].mean(axis=1)
    lo, hi = np.quantile(reps, [0.025, 0.975], axis=0)
    return Y.mean(0), lo, hi


def _grid_curves(runs: dict, axis: str, key: str = "acc", points: int = 40):
    """Runs' curves interpolated onto a shared x grid: the evals' steps (step axis, those every run has) or
    ``points`` budgets up to the smallest final budget of the runs."""
    cs = [r["curves"] for r in runs.values()]
    if axis == "step":
        grid = np.array(sorted(set.intersection(*[set(c["step"].tolist()) for c in cs])), np.float64)
    else:
        grid = np.linspace(0.0, min(c[axis][-1] for c in cs), points)
    Y = []
    for c in cs:
        x, y = _strict(c[axis], c[key])
        Y.append(np.interp(grid, x, y))
    return grid, np.array(Y)


def plot_task(task: str, arms: dict, agg: dict, out: str, n_boot: int = 1000) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {a: f"C{i}" for i, a in enumerate(ARMS)}
    styles = {a: ("--" if a.startswith("mu1") else "-") for a in ARMS}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    labels = {"step": "RL step (one rollout batch + mu optimizer updates)", "tokens": "generated tokens (cumulative)",
              "wall": "training wall-clock s (see README)"}
    for ax, axis in zip(axes, ("step", "tokens", "wall"), strict=True):
        for arm, runs in arms.items():
            grid, Y = _grid_curves(runs, axis)
            if grid.size == 0:
                continue
            m, lo, hi = _band(Y, n_boot)
            ax.plot(grid, m, styles[arm], color=colors[arm], lw=1.8, label=f"{arm} (n={len(runs)})")
            ax.fill_between(grid, lo, hi, color=colors[arm], alpha=0.15, lw=0)
        ax.axhline(agg["warm_start_accuracy"], color="0.4", lw=0.8, ls=":")
        for k, X in agg["thresholds"].items():
            ax.axhline(X, color="0.6", lw=0.6, ls="-.")
            ax.text(ax.get_xlim()[0], X, f" X={k}", va="bottom", fontsize=7, color="0.4")
        ax.set(xlabel=labels[axis], ylabel="held-out accuracy (greedy)")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{task}: held-out greedy accuracy, mean over seeds with a 95% bootstrap band "
                 f"(dotted: warm start {agg['warm_start_accuracy']:.3f})")
    fig.tight_layout()
    p1 = os.path.join(out, f"curves_{task}.png")
    fig.savefig(p1, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    panels = [("mean_k", "held-out mean@8 (T = 1)"), ("reward", "training reward"), ("entropy", "entropy (nats)"),
              ("clip_fraction", "clip fraction"), ("response_length", "response length"),
              ("mismatch/prob_corr", "sampler-vs-learner prob. corr.")]
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        for arm, runs in arms.items():
            if key == "mean_k":
                if any(r["curves"]["mean_k"] is None for r in runs.values()):
                    continue
                grid, Y = _grid_curves(runs, "step", "mean_k")
                m, lo, hi = _band(Y, n_boot)
                ax.plot(grid, m, styles[arm], color=colors[arm], label=arm)
                ax.fill_between(grid, lo, hi, color=colors[arm], alpha=0.15, lw=0)
                continue
            series = []
            for r in runs.values():
                d = {x["step"]: x[key] for x in r["rows"] if x.get(key) is not None and "generated_tokens" in x}
                series.append(d)
            steps = sorted(set.intersection(*[set(d) for d in series])) if series else []
            if not steps:
                continue
            Y = np.array([[d[t] for t in steps] for d in series], np.float64)
            w = max(1, len(steps) // 20)
            with np.errstate(all="ignore"), warnings.catch_warnings():  # all-NaN steps (no kept group): gaps
                warnings.simplefilter("ignore", RuntimeWarning)
                m = np.convolve(np.nanmean(Y, 0), np.ones(w) / w, "valid")
            ax.plot(steps[w - 1:], m, styles[arm], color=colors[arm], label=arm, lw=1.2)
        ax.set(title=title, xlabel="RL step")
        ax.ticklabel_format(axis="y", useOffset=False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{task}: diagnostics (means over seeds; per-step series smoothed)")
    fig.tight_layout()
    p2 = os.path.join(out, f"diagnostics_{task}.png")
    fig.savefig(p2, dpi=90)
    plt.close(fig)
    return [p1, p2]


# ----------------------------------------------------------------------------------------------------------
# README


def _ci(c, d=3):
    if c is None:
        return "-"
    return f"{_f(c.estimate, d)} [{_f(c.lo, d)}, {_f(c.hi, d)}]"


def _excludes_zero(c) -> int:
    return 1 if c.lo > 0 else -1 if c.hi < 0 else 0


def environment() -> dict:
    import flax
    import jax
    import jaxlib

    # A snapshot run elsewhere (a GPU machine's copy, maybe inside another repository) is named by its caller.
    commit, dirty = os.environ.get("M1JAX_GIT_COMMIT", ""), False
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip() or "?"
            dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                        capture_output=True, text=True).stdout.strip())
        except OSError:
            commit = "?"
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "cpu": f"{cpu}, {os.cpu_count()} cores",
            "git": commit + (" (uncommitted changes)" if dirty else "")}


def run_environments(out: str, tasks: list[str]) -> dict:
    """{label: environment} of the runs: each task's run_env.json (written where the runs ran) or, without one,
    this process's environment. One entry when every task ran in the same place."""
    envs = {}
    for task in tasks:
        path = os.path.join(out, task, "run_env.json")
        if os.path.exists(path):
            with open(path) as f:
                envs[task] = json.load(f)
        else:
            envs[task] = environment()
    key = lambda e: (e["devices"], e["jax"], e["git"], e.get("gpus"))  # noqa: E731
    if len({json.dumps(key(e)) for e in envs.values()}) <= 1:
        return {"": next(iter(envs.values()), environment())}
    return {f" ({task} runs)": e for task, e in envs.items()}


def _read_commands(out: str, task: str) -> list[str]:
    path = os.path.join(out, task, "commands.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [ln.rstrip("\n") for ln in f if ln.strip()]


def _dir_seconds(path: str) -> tuple[int, float]:
    """(runs, seconds) over the run_info.json files under ``path`` (process times recorded by this script)."""
    n, total = 0, 0.0
    for root, _, files in os.walk(path):
        if "run_info.json" in files:
            with open(os.path.join(root, "run_info.json")) as f:
                info = json.load(f)
            n += 1
            total += sum(a["seconds"] for a in info.get("attempts", [])) + float(info.get("seconds", 0.0))
    return n, total


def readme(out: str, found: dict, tasks: dict, strat: dict | None, mu1: dict, plots: dict, env: dict) -> str:
    L = ["# RL loss comparison: CISPO vs DAPO vs GRPO (paired seeds)", ""]
    partial = {}
    for task, agg in tasks.items():
        ns = {arm: a["n"] for arm, a in agg["per_arm"].items()}
        k = min(ns.values())
        missing = [a for a in ARMS if a not in ns]
        if k < TARGET_SEEDS or missing:
            partial[task] = (k, missing, ns)
    for task, (k, missing, ns) in partial.items():
        L.append(f"**PARTIAL: {k} of {TARGET_SEEDS} seeds** ({task}: finished seeds per arm "
                 + ", ".join(f"{a} {n}" for a, n in ns.items())
                 + (f"; arms with no finished run: {', '.join(missing)}" if missing else "") + ").")
        L.append("")
    for task in [t for t in TASKS if t not in tasks]:
        L += [f"**NOT RUN: {task}** (no finished run under `{_rel(out)}/runs/{task}/`; its command: "
              f"`python experiments/rl_comparison.py --task {task} --sweep`).", ""]
    L += ["Generated by `python experiments/rl_comparison.py --report-only` from the runs under "
          f"`{_rel(out)}/runs/` (not committed); every number below is recomputed from their metrics.jsonl.", ""]
    L += ["## Setup", ""]
    for where, e in env.items():
        L += [f"- Device{where}: {', '.join(e['devices'])} (backend {e['backend']}); CPU: {e['cpu']}.",
              f"- Versions{where}: jax {e['jax']}, jaxlib {e['jaxlib']}, flax {e['flax']}, numpy {e['numpy']}, "
              f"python {e['python']}; m1jax at git {e['git']}."]
        if e.get("gpus"):
            L.append(f"- Runs{where}: one process each, JAX on CUDA, {e.get('parallel')} at once spread over "
                     f"{e['gpus']} GPU(s) (several runs share a GPU, memory not preallocated), so wall-clock numbers "
                     "include contention with the other runs on the same GPU and CPU cores.")
        else:
            L.append(f"- Runs{where}: one process each with XLA_FLAGS=`--xla_cpu_multi_thread_eigen=false "
                     "intra_op_parallelism_threads=1` (one thread), up to --parallel at once on a machine shared "
                     "with other work, so wall-clock numbers are noisy.")
    L += ["- The wall-clock axis is training time: the logged step_time of "
          "each step, except the first step of a run (it includes JIT compilation, whose length depends on the "
          "shared compilation cache, i.e. on run order), which counts as the median step_time of the run's other "
          "steps; held-out evals are timed apart (eval_s) and are not training time. summary.json's wall_s is the "
          "plain sum of step_time.",
          "- Protocol: one warm-start checkpoint per task shared by every run; a seed fixes the RL prompt order and "
          "every sampling key, and every arm runs the same seeds (pairs); everything but the loss settings below "
          "is fixed: prompts per rollout, group size G, max new tokens, temperature 1, AdamW (b1 0.9, b2 0.95, "
          "eps 1e-15, no weight decay), mu = 4 minibatch updates per rollout (1 for the mu1 pair), old log-probs "
          "recomputed by the learner, fp32 LM head. Arms with dynamic sampling draw extra prompts to refill "
          "groups, so after the first refill their prompt stream moves ahead of the others' (same stream, "
          "consumed faster).",
          f"- Measured at step 0 and every steps/{EVALS_PER_RUN} steps: held-out greedy exact match (the accuracy "
          f"below) and mean@{EVAL_SAMPLES} at T = 1, on the same held-out problems for every run; per step: "
          "reward, response length, entropy, clip fractions, IS-ratio extremes, sampler-vs-learner mismatch.",
          "- An RL step = one rollout batch followed by mu optimizer updates; 'steps' below count RL steps.",
          ""]
    L += ["Arms (eps_low / eps_high are offsets from 1; every arm also sets "
          + ", ".join(f"`{k}={_value(v)}`" for k, v in NEUTRAL.items()) + " unless listed):", "",
          "| arm | what | its settings |", "|---|---|---|"]
    for arm, a in ARMS.items():
        sets = ", ".join(f"`{k}={'max_new_tokens (cache max(1, max_new_tokens // 4))' if v == OVERLONG else _value(v)}`"
                         for k, v in a["set"].items())
        if a.get("lr_from"):
            sets += f"; lr = {a['lr_from']}'s"
        L.append(f"| {arm} | {a['about']} | {sets} |")
    L += ["", "The mu = 1 pair: GRPO without KL and with token-level aggregation is the dapo loss with eps_low = "
          "eps_high = 0.2. With one update per rollout and old log-probs recomputed by the learner, the ratio is 1 "
          "(up to float round-off between the two compiled programs), no token is clipped, and the gradient "
          "sum_t A r grad log pi equals CISPO's sum_t sg(r) A grad log pi: the two arms must produce the same "
          "curves.", ""]
    for task, agg in tasks.items():
        L += _task_section(out, task, found[task], agg, mu1.get(task), plots.get(task, []))
    if strat:
        L += _strat_section(strat)
    L += ["## Conclusion", ""]
    notes = os.path.join(out, "notes.md")
    if os.path.exists(notes):  # the hand-written answer across tasks, first; the generated per-task detail follows
        with open(notes) as f:
            L += ["### In plain words (written by hand from the tables below and above)", "", f.read().strip(), ""]
    for task, agg in tasks.items():
        L += [_conclusion(task, agg, mu1.get(task), partial.get(task)), ""]
        notes = os.path.join(out, task, "notes.md")
        if os.path.exists(notes):  # hand-written reading of the numbers above (each claim cites them)
            with open(notes) as f:
                L += [f"### {task}: notes (written by hand from the tables above)", "", f.read().strip(), ""]
    if strat:
        L += [_strat_conclusion(strat), ""]
    return "\n".join(L) + "\n"


def _task_section(out, task, found, agg, mu1, plots) -> list[str]:
    pa, ws = agg["per_arm"], agg["warm_start_accuracy"]
    L = [f"## {task}", ""]
    cmds = _read_commands(out, task)
    if cmds:
        L += ["Commands run (from the repository root):", "", "```"] + cmds + ["```", ""]
    any_run = next(iter(next(iter(found["arms"].values())).values()))
    cfg = any_run["config"]
    if any_run.get("command"):
        cmd = any_run["command"]
        cmd = ["python" if i == 0 else c for i, c in enumerate(cmd)]
        L += ["One run's command (the arm's settings, seed, lr and workdir change per run):", "", "```",
              shlex.join(cmd), "```", ""]
    if cfg:
        ro = cfg.get("rollout", {})
        L += [f"Fixed: task {cfg.get('task')} (size {cfg.get('task_size')}), {ro.get('prompts')} prompts x "
              f"{ro.get('group_size')} samples per rollout, max {ro.get('max_new_tokens')} new tokens, temperature "
              f"{ro.get('temperature')}, {cfg.get('steps')} RL steps, eval every {cfg.get('eval', {}).get('every')} "
              f"steps on {cfg.get('eval', {}).get('problems')} held-out problems, warm start "
              f"`{_rel(cfg.get('init_from', ''))}`.",
              ""]
    ws_info = os.path.join(out, "warm_start", task, "run_info.json")
    if os.path.exists(ws_info):
        with open(ws_info) as f:
            info = json.load(f)
        L += [f"Warm start made once by `{shlex.join(['python'] + info['command'][1:])}` "
              f"({info['seconds'] / 60:.1f} min).", ""]
    wsv = agg["warm_start_values"]
    ok = WARM_RANGE[0] <= ws <= WARM_RANGE[1]
    L += [f"Warm start: held-out greedy accuracy **{ws:.3f}** (step-0 eval; "
          + ("the same in every run" if len(wsv) == 1 else f"WARNING: runs disagree: {wsv}") + "): "
          + ("inside" if ok else "**OUTSIDE**") + f" the {WARM_RANGE[0]:.0%}-{WARM_RANGE[1]:.0%} range the protocol "
          "asks for.", ""]
    ks = list(agg["thresholds"])
    L += [f"Thresholds: X1 = {ks[0]} (warm start + {THRESHOLD_OFFSETS[0]}), X2 = {ks[1]} (warm start + "
          f"{THRESHOLD_OFFSETS[1]}), absolute held-out greedy accuracy.", ""]
    sweep = _read_sweep(out, task)
    lrs = {arm: a["lr"] for arm, a in pa.items()}
    if sweep:
        L += [f"Learning rate: swept {[lr_key(x) for x in sweep['lrs']]} on seeds {sweep['seeds']} "
              f"({sweep['steps']} steps each; never used by the comparison); pick = best mean AUC of held-out greedy "
              "accuracy (ties: the preset's lr, then the smaller).", "",
              "| arm | " + " | ".join(f"AUC at lr {lr_key(x)}" for x in sweep["lrs"]) + " | pick | used |",
              "|---|" + "---|" * (len(sweep["lrs"]) + 2)]
        for arm in ARMS:
            if arm not in sweep["arms"]:
                continue
            s = sweep["arms"][arm]
            cells = []
            for x in sweep["lrs"]:
                e = s["by_lr"].get(lr_key(x), {})
                bad = f", {e['failed']} failed" if e.get("failed") else ""
                cells.append("-" if e.get("mean_auc") is None else f"{e['mean_auc']:.4f} ({e['n']} runs{bad})")
            pick = s.get("pick")
            L.append(f"| {arm} | " + " | ".join(cells) + f" | {lr_key(pick) if pick else '-'} | "
                     f"{', '.join(lr_key(x) for x in lrs.get(arm, [])) or '-'} |")
        L.append("")
    else:
        L += ["Learning rate: **no sweep.json: every arm used the preset's lr** "
              + ", ".join(f"{arm} {'/'.join(lr_key(x) for x in v)}" for arm, v in lrs.items()) + ".", ""]
    mixed = [arm for arm, v in lrs.items() if len(v) > 1]
    if mixed:
        L += [f"WARNING: runs of {mixed} used different learning rates.", ""]
    total_s = sum(r["seconds"] or 0 for runs in found["arms"].values() for r in runs.values())
    sweep_n, sweep_s = _dir_seconds(os.path.join(out, "runs", task, "sweep"))
    _, ws_s = _dir_seconds(os.path.join(out, "warm_start", task))
    L += [f"Time (process wall-clock, startup, compilation and evals included; up to --parallel processes at once): "
          f"comparison {sum(len(v) for v in found['arms'].values())} finished runs, {total_s / 3600:.2f} h; "
          f"lr sweep {sweep_n} runs, {sweep_s / 3600:.2f} h; warm start {ws_s / 60:.1f} min"
          + (f". Unfinished / failed: {', '.join(found['unfinished'])}" if found["unfinished"] else "") + ".", ""]

    L += ["### Final accuracy and area under the accuracy curve", "",
          "Mean over seeds [95% percentile-bootstrap CI over seeds]. AUC = mean held-out greedy accuracy over the "
          "run (trapezoid / range). Token and wall axes use a common budget, the smallest final budget over this "
          f"task's runs: {agg['horizon']['tokens']:.0f} generated tokens and {agg['horizon']['wall']:.0f} s; "
          "'acc @ budget' is the accuracy there (linear between evals).", "",
          "| arm | n | lr | final acc | gain over warm start | final mean@8 | AUC (steps) | acc @ token budget | "
          "AUC (tokens) | acc @ wall budget | AUC (wall) | gen. tokens / run | train wall s / run | "
          "sum step_time / run |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, a in pa.items():
        ax = a["axes"]
        L.append(f"| {arm} | {a['n']} | {'/'.join(lr_key(x) for x in a['lr'])} | {_ci(a['final_accuracy'])} | "
                 f"{_ci(a['gain_over_warm_start'])} | {_ci(a['final_mean_k'])} | {_ci(ax['step']['auc'])} | "
                 f"{_ci(ax['tokens']['accuracy'])} | {_ci(ax['tokens']['auc'])} | {_ci(ax['wall']['accuracy'])} | "
                 f"{_ci(ax['wall']['auc'])} | {a['generated_tokens']:.0f} | {a['train_wall_s']:.0f} | "
                 f"{a['wall_s']:.0f} |")
    L.append("")
    for axis, unit, d in (("step", "RL steps", 0), ("tokens", "generated tokens", 0), ("wall", "seconds", 1)):
        H = agg["horizon"][axis]
        L += [f"### Steps-to-X against {unit}", "",
              "Runs that never reach X are censored at their last eval. KM median = Kaplan-Meier median ('never': "
              "over half the runs, by KM weight, do not reach X); RMST = restricted mean up to the horizon "
              f"{H:.0f} (a run that never reaches X counts as the horizon; smaller is faster). [95% bootstrap CI]", "",
              "| arm | " + " | ".join(f"reached X={k} | KM median | RMST" for k in ks) + " |",
              "|---|" + "---|---|---|" * len(ks)]
        for arm, a in pa.items():
            cells = []
            for k in ks:
                s = a["axes"][axis]["steps_to"][k]
                cells += [f"{s['reached']}/{s['n']}", _ci(s["km_median"], d), _ci(s["restricted_mean"], d)]
            L.append(f"| {arm} | " + " | ".join(cells) + " |")
        L.append("")
    L += ["### Pairs of arms (paired by seed)", "",
          "P(a > b) = share of seeds where a beats b (ties 1/2) [95% CI, seeds resampled jointly]; diff = mean of "
          "a - b over seeds [95% paired-bootstrap CI]; steps-to-X1 diff uses min(steps-to-X1, horizon) "
          "(negative: a gets there sooner). * marks a diff CI that excludes 0.", "",
          "| a vs b | n | P(a > b) final acc | diff final acc | P(a > b) AUC | diff AUC | diff AUC (tokens) | "
          "diff AUC (wall) | diff steps-to-X1 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, P in agg["pairs"].items():
        def star(c, d=3):
            return _ci(c, d) + (" *" if _excludes_zero(c) else "")

        L.append(f"| {name} | {P['n']} | {_ci(P['final_accuracy']['p_improve'], 2)} | "
                 f"{star(P['final_accuracy']['diff'])} | {_ci(P['auc']['p_improve'], 2)} | {star(P['auc']['diff'])} | "
                 f"{star(P['auc_tokens']['diff'])} | {star(P['auc_wall']['diff'])} | "
                 f"{star(P['steps_to_x1_capped']['diff'], 1)} |")
    L.append("")
    L += ["### Diagnostics (means over steps, then seeds)", "",
          "ratio min / max: per run the extreme over all its updates, then the mean over seeds; clip fraction: "
          "tokens whose IS ratio is outside the arm's clip range; active: tokens where the clip "
          "changed the gradient.", "",
          "| arm | reward | length | entropy | clip frac. | active clip frac. | ratio min | ratio max | "
          "prob. corr. | mean abs dlogp | kept groups | rollouts / step | KL |", "|---|" + "---|" * 12]
    for arm, a in pa.items():
        g = a["diagnostics"].get
        L.append(f"| {arm} | {_f(g('reward'))} | {_f(g('response_length'), 2)} | {_f(g('entropy'))} | "
                 f"{_f(g('clip_fraction'), 4)} | {_f(g('active_clip_fraction'), 4)} | {_f(g('ratio_min'))} | "
                 f"{_f(g('ratio_max'))} | {_f(g('mismatch/prob_corr'), 5)} | {_f(g('mismatch/mean_abs_logp'), 6)} | "
                 f"{_f(g('kept_groups'), 1)} | {_f(g('sampling_rounds'), 2)} | {_f(g('kl'), 5)} |")
    L.append("")
    if mu1:
        L += ["### The mu = 1 pair (sanity check)", "",
              f"{mu1['n']} common seeds; max |difference| of held-out greedy accuracy over evals "
              f"{mu1['max_abs_acc']:.4f}, of per-step reward {mu1['max_abs_reward']:.4f}; identical on "
              f"{mu1['identical_seeds']} of {mu1['n']} seeds.", "",
              "| seed | max abs diff acc | max abs diff mean@8 | max abs diff reward | first step with reward diff |",
              "|---|---|---|---|---|"]
        for s, v in mu1["seeds"].items():
            L.append(f"| {s} | {_f(v['max_abs_acc'], 4)} | {_f(v['max_abs_mean_k'], 4)} | "
                     f"{_f(v['max_abs_reward'], 4)} | {v['first_reward_diff_step'] or 'none'} |")
        L += ["", _mu1_sentence(mu1), ""]
    for p in plots:
        L += [f"![{os.path.basename(p)}]({os.path.basename(p)})", ""]
    return L


def _mu1_sentence(mu1) -> str:
    if mu1["identical_seeds"] == mu1["n"]:
        return ("The two mu = 1 arms coincide exactly on every seed (same rewards at every step, same held-out "
                "curves): at mu = 1 CISPO and token-level GRPO are the same update, as they should be.")
    firsts = [v["first_reward_diff_step"] for v in mu1["seeds"].values() if v["first_reward_diff_step"]]
    return (f"The two mu = 1 arms coincide exactly on {mu1['identical_seeds']} of {mu1['n']} seeds; on the others "
            f"the per-step rewards first differ at step {min(firsts) if firsts else '?'} (earliest) and the held-out "
            f"curves differ by up to {mu1['max_abs_acc']:.3f}. The two losses compute the same gradient only up to "
            "float round-off (the ratio is 1 within ~1e-7, multiplied in different places); once a round-off "
            "difference flips one sampled token the two runs see different samples and drift apart as two samples "
            "of the same process would. Whether that drift is within seed-to-seed noise: compare the difference with "
            "the CI widths of the tables above.")


def _strat_section(strat) -> list[str]:
    L = [f"## Across tasks (stratified over {', '.join(strat['tasks'])})", "",
         "Mean over tasks of the per-task mean (each task weighs the same); the bootstrap resamples seeds within "
         "each task.", "", "| arm | final acc | AUC (steps) |", "|---|---|---|"]
    for arm, a in strat["per_arm"].items():
        L.append(f"| {arm} | {_ci(a['final_accuracy'])} | {_ci(a['auc'])} |")
    L += ["", "| a vs b | P(a > b) final acc | diff final acc | P(a > b) AUC | diff AUC |", "|---|---|---|---|---|"]
    for name, P in strat["pairs"].items():
        L.append(f"| {name} | {_ci(P['final_accuracy']['p_improve'], 2)} | {_ci(P['final_accuracy']['diff'])}"
                 f"{' *' if _excludes_zero(P['final_accuracy']['diff']) else ''} | {_ci(P['auc']['p_improve'], 2)} | "
                 f"{_ci(P['auc']['diff'])}{' *' if _excludes_zero(P['auc']['diff']) else ''} |")
    return L + [""]


def _detected(pairs: dict, metric: str) -> list[str]:
    out = []
    for name, P in pairs.items():
        c = P[metric]["diff"]
        sign = _excludes_zero(c)
        if sign:
            a, b = name.split(" vs ")
            hi, lo = (a, b) if sign > 0 else (b, a)
            out.append(f"{hi} > {lo} by {abs(c.estimate):.3f} [{min(abs(c.lo), abs(c.hi)):.3f}, "
                       f"{max(abs(c.lo), abs(c.hi)):.3f}]")
    return out


def _conclusion(task, agg, mu1, partial) -> str:
    pa, ws = agg["per_arm"], agg["warm_start_accuracy"]
    n_pairs = len(agg["pairs"])
    S = []
    if partial:
        k, missing = partial[0], partial[1]
        S.append(f"PARTIAL ({k} of {TARGET_SEEDS} seeds" + (f"; {len(missing)} arms not run" if missing else "")
                 + "): read what follows as preliminary.")
    ns = sorted({a["n"] for a in pa.values()})
    S.append(f"On {task} (warm start {ws:.3f}, {'/'.join(map(str, ns))} seeds per arm):")
    best = max(pa, key=lambda a: pa[a]["final_accuracy"].estimate)
    S.append(f"the highest mean final held-out accuracy is {best}'s, {_ci(pa[best]['final_accuracy'])}.")
    if ns[0] < MIN_SEEDS_FOR_CI:
        S.append(f"With {ns[0]} seed(s) in some arm a bootstrap over seeds has too few distinct resamples for its "
                 "intervals to mean anything, so no difference is claimed here (the tables show them anyway).")
        return " ".join(S)
    up = [a for a, v in pa.items() if v["gain_over_warm_start"].lo > 0]
    down = [a for a, v in pa.items() if v["gain_over_warm_start"].hi < 0]
    S.append("Arms that end above the warm start (CI of the gain above 0): " + ", ".join(up) + "." if up else
             "No arm ends detectably above the warm start (every CI of the gain includes 0 or is below).")
    if down:
        S.append("Arms that end below it: " + ", ".join(down) + ".")
    for metric, label in (("final_accuracy", "Final accuracy"), ("auc", "AUC against steps"),
                          ("auc_tokens", "AUC against generated tokens")):
        det = _detected(agg["pairs"], metric)
        if det:
            S.append(f"{label}: the paired 95% CI of the difference excludes 0 for {len(det)} of "
                     f"{n_pairs} pairs: " + "; ".join(det) + ".")
        else:
            S.append(f"{label}: no difference was detected between any two arms (every paired 95% CI "
                     "of the difference includes 0); this bounds the differences, it does not show equality.")
    if n_pairs > 1:
        S.append(f"With {n_pairs} pairs per metric at 95%, about {0.05 * n_pairs:.1f} CIs would exclude 0 by chance "
                 "even if all arms were the same; a lone detection needs a replication.")
    key = "cispo_e4_ds vs dapo"
    if key in agg["pairs"]:
        k1 = next(iter(agg["thresholds"]))
        c = agg["pairs"][key]["steps_to_x1_capped"]["diff"]
        r = {a: pa[a]["axes"]["step"]["steps_to"][k1]["restricted_mean"].estimate for a in ("cispo_e4_ds", "dapo")}
        verdict = ("CISPO gets there sooner" if c.hi < 0 else "CISPO gets there later" if c.lo > 0 else
                   "no difference was detected")
        S.append(f"M1's claim (CISPO reaches DAPO's level in half the steps), as steps-to-X1: restricted mean "
                 f"{r['cispo_e4_ds']:.0f} (CISPO + dynamic sampling) vs {r['dapo']:.0f} (DAPO) steps; paired "
                 f"difference {_ci(c, 1)}: {verdict}.")
    if mu1:
        S.append("The mu = 1 sanity pair " + ("coincides exactly." if mu1["identical_seeds"] == mu1["n"] else
                                              f"coincides on {mu1['identical_seeds']} of {mu1['n']} seeds (see its "
                                              "section)."))
    return " ".join(S)


def _strat_conclusion(strat) -> str:
    det = [f"{m}: " + "; ".join(d) for m in ("final_accuracy", "auc") if (d := _detected(strat["pairs"], m))]
    if not det:
        return (f"Across tasks ({', '.join(strat['tasks'])}, stratified): no difference was detected between any "
                "two arms in final accuracy or AUC.")
    return f"Across tasks ({', '.join(strat['tasks'])}, stratified), detected differences: " + " | ".join(det) + "."


def _jsonable(x):
    if isinstance(x, stats.CI):
        return {"estimate": _jf(x.estimate), "lo": _jf(x.lo), "hi": _jf(x.hi)}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, (float, np.floating)):
        return _jf(float(x))
    if isinstance(x, np.integer):
        return int(x)
    return x


def _jf(v: float):
    return None if math.isnan(v) else ("inf" if math.isinf(v) else v)


def report(out: str, n_boot: int = 2000, plots: bool = True) -> dict:
    """Read every finished comparison run under <out>/runs and write summary.json, details.json, README.md and
    the PNGs to <out>. Returns the aggregated dict."""
    found = {t: v for t, v in load_runs(out).items() if v["arms"]}
    if not found:
        raise SystemExit(f"rl_comparison: no finished run under {out}/runs")
    tasks = {t: aggregate_task(found[t]["arms"], n_boot=n_boot) for t in found}
    strat = stratified(tasks, n_boot=n_boot)
    mu1 = {t: m for t in found if (m := mu1_check(found[t]["arms"]))}
    pngs = {t: plot_task(t, found[t]["arms"], tasks[t], out, n_boot=min(n_boot, 1000)) for t in found} if plots else {}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary_json(tasks), f, indent=1)
    details = {t: {k: v for k, v in agg.items() if k != "per_run"} for t, agg in tasks.items()}
    with open(os.path.join(out, "details.json"), "w") as f:
        json.dump(_jsonable({"tasks": details, "stratified": strat, "mu1": mu1}), f, indent=1)
    text = readme(out, found, tasks, strat, mu1, pngs, run_environments(out, list(tasks)))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)
    _say(f"wrote {_rel(out)}/summary.json, details.json, README.md" + (", " + ", ".join(
        os.path.basename(p) for ps in pngs.values() for p in ps) if pngs else ""))
    return {"tasks": tasks, "stratified": strat, "mu1": mu1}


# ----------------------------------------------------------------------------------------------------------
# The study
