"""CISPO vs DAPO vs GRPO on small verifiable tasks: paired seeds, one shared warm start, CIs (the study).

One command per task runs the whole study (warm start once, learning-rate sweep on seeds the comparison
never uses, then every arm on the same paired seeds, then the report); rerunning it resumes:

    python experiments/rl_comparison.py --task addition --sweep      # warm start + sweep + comparison + report
    python experiments/rl_comparison.py --task countdown --sweep
    python experiments/rl_comparison.py --report-only                # tables / plots from whatever finished

Options: --seeds 0-9 (comparison seeds), --arms a,b|all, --steps N (default: the preset's), --parallel 2
(runs at once), --out experiments/results/rl_comparison, --sweep (run the lr sweep first, if not done),
--sweep-only (stop after it), --warm-start-preset (default add_warmstart / countdown_warmstart),
--extra='--config.rollout.prompts=8 ...' (further `m1jax rl` overrides for every run, applied last),
--warm-start-extra='--config.steps=400' (overrides for the warm start's `m1jax train`), --ignore-warm-range (by
default the study stops after its first run when the warm start's held-out accuracy is outside 5-30%).

Layout under --out:
    warm_start/<task>/                      the one `m1jax train` warm start every run starts from
    runs/<task>/<arm>/seed<k>/              one `m1jax rl` run (config.json, metrics.jsonl, summary.json, ...)
    runs/<task>/sweep/<arm>/lr<lr>/seed<k>/ lr-sweep runs (seeds 100, 101)
    <task>/sweep.json                       the sweep's AUCs and the pick per arm
    <task>/commands.log                     every command line that ran this script for the task
    summary.json, details.json, README.md, curves_<task>.png, diagnostics_<task>.png   the report

A run is a subprocess `python -m m1jax.cli.main rl --config=experiments/rl.py:tiny ...` (`:tiny_countdown` for
Countdown; its own JAX, one CPU thread; --config.init_from=<out>/warm_start/<task> for every run); a run whose
summary.json says it finished is skipped, one that was killed resumes (from its last checkpoint, or from the start:
RL runs are deterministic functions of (seed, step)).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this process only reports; the runs get their own env
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from m1jax.rl import stats  # noqa: E402

RL_CONFIG = "experiments/rl.py"
TASKS = {  # task -> the RL preset every arm starts from, and the warm-start preset of experiments/pretrain.py
    "addition": {"preset": "tiny", "warm_start": "add_warmstart"},
    "countdown": {"preset": "tiny_countdown", "warm_start": "countdown_warmstart"},
}
TARGET_SEEDS = 10
MIN_SEEDS_FOR_CI = 5  # below this the conclusion claims no difference (a bootstrap over 2-4 runs is degenerate)
SWEEP_LRS = (2e-5, 5e-5, 1e-4)
SWEEP_SEEDS = (100, 101)  # never used by the comparison
THRESHOLD_OFFSETS = (0.02, 0.05)  # X = warm-start held-out accuracy + offset (absolute)
WARM_RANGE = (0.05, 0.30)
EVAL_SAMPLES = 8  # mean@8
EVALS_PER_RUN = 8  # eval.every = steps // 8

# Everything an arm does not set is the same for every arm (prompt stream, G, prompts per rollout, max length,
# temperature 1, AdamW (0.9, 0.95, 1e-15), old log-probs recomputed by the learner, fp32 LM head).
NEUTRAL = {
    "loss.trust_region_mask": False, "loss.grpo_eps": 0.2, "loss.beta": 0.0,
    "algo.updates_per_rollout": 4, "algo.dynamic_sampling": False, "algo.overlong_max": 0,
    "algo.overlong_cache": 0, "algo.length_penalty": 0.0, "algo.old_logp": "learner",
}
OVERLONG = "<overlong>"  # DAPO's overlong shaping: overlong_max = max_new_tokens, cache = max(1, max_new_tokens // 4)
# The arms (names are stable: run directories and the report use them). eps_low / eps_high are OFFSETS from 1.
ARMS = {
    "cispo_e1": {"about": "CISPO, IS weight clipped to [0, 2] (eps_low 1: lower clip off; eps_high 1), token-level",
                 "set": {"loss.name": "cispo", "loss.eps_low": 1.0, "loss.eps_high": 1.0}},
    "cispo_e4": {"about": "CISPO, IS weight clipped to [0, 5] (eps_high 4), token-level",
                 "set": {"loss.name": "cispo", "loss.eps_low": 1.0, "loss.eps_high": 4.0}},
    "cispo_e4_ds": {"about": "CISPO eps_high 4 + DAPO dynamic sampling (as M1)",
                    "set": {"loss.name": "cispo", "loss.eps_low": 1.0, "loss.eps_high": 4.0,
                            "algo.dynamic_sampling": True}},
    "dapo": {"about": "DAPO: clip 0.2 / 0.28, dynamic sampling, overlong shaping, token-level",
             "set": {"loss.name": "dapo", "loss.eps_low": 0.2, "loss.eps_high": 0.28,
                     "algo.dynamic_sampling": True, "algo.overlong_max": OVERLONG}},
    "grpo_b0": {"about": "GRPO: clip 0.2, per-sample mean then mean over samples, no KL",
                "set": {"loss.name": "grpo", "loss.grpo_eps": 0.2, "loss.beta": 0.0}},
    "grpo_b004": {"about": "GRPO: clip 0.2, per-sample mean, KL to the warm start with beta 0.04",
                  "set": {"loss.name": "grpo", "loss.grpo_eps": 0.2, "loss.beta": 0.04}},
    "mu1_cispo": {"about": "sanity pair: CISPO eps_high 4 with mu = 1 (one update per rollout)",
                  "set": {"loss.name": "cispo", "loss.eps_low": 1.0, "loss.eps_high": 4.0,
                          "algo.updates_per_rollout": 1}},
    "mu1_grpo_tok": {"about": "sanity pair: GRPO without KL, token-level (dapo loss, clip 0.2 / 0.2), mu = 1",
                     "set": {"loss.name": "dapo", "loss.eps_low": 0.2, "loss.eps_high": 0.2,
                             "algo.updates_per_rollout": 1},
                     "lr_from": "mu1_cispo"},  # the pair must share every setting, the lr included
}
MU1_PAIR = ("mu1_cispo", "mu1_grpo_tok")
DIAGNOSTICS = ("reward", "response_length", "entropy", "clip_fraction", "active_clip_fraction", "ratio_min",
               "ratio_max", "mismatch/prob_corr", "mismatch/mean_abs_logp", "kept_groups", "sampling_rounds",
               "kl", "rollout_s")


def _say(msg: str):
    print(f"rl_comparison: {msg}", flush=True)


def parse_seeds(spec: str) -> list[int]:
    """'0-9' / '0,3,5-7' -> sorted distinct ints."""
    out = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        out.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if not out:
        raise ValueError(f"no seeds in {spec!r}")
    return sorted(out)


def parse_arms(spec: str) -> list[str]:
    if spec == "all":
        return list(ARMS)
    arms = [a.strip() for a in spec.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ValueError(f"unknown arm(s) {bad}; choose from {list(ARMS)} or 'all'")
    return [a for a in ARMS if a in arms]  # table order


def lr_key(lr: float) -> str:
    return f"{lr:g}"


def threshold_key(x: float) -> str:
    return format(round(x, 6), "g")


def _value(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def arm_settings(arm: str, max_new_tokens: int) -> dict:
    """The arm's full set of loss / algo keys (NEUTRAL + its own), with DAPO's overlong shaping resolved."""
    out = {**NEUTRAL, **ARMS[arm]["set"]}
    if out["algo.overlong_max"] == OVERLONG:
        out["algo.overlong_max"] = int(max_new_tokens)
        out["algo.overlong_cache"] = max(1, int(max_new_tokens) // 4)
    return out


def overrides(settings: dict) -> list[str]:
    return [f"--config.{k}={_value(v)}" for k, v in settings.items()]


# ----------------------------------------------------------------------------------------------------------
# Running


def run_env(out: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(os.path.abspath(out), ".jax_cache")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def write_gitignore(out: str):
    path = os.path.join(out, ".gitignore")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("# run directories, the warm start and the compilation cache stay local; the report is kept\n"
                    "runs/\nwarm_start/\n.jax_cache/\n*/commands.log\n")


def _rel(path: str) -> str:
    try:
        return os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(ROOT + os.sep) else path
    except ValueError:
        return path


def ensure_warm_start(out: str, task: str, preset: str, env: dict, extra: list[str]) -> str:
    """Train the task's warm start once (resumable), into <out>/warm_start/<task>; returns its path. A finished
    one (run_info.json) made with another preset / overrides is refused: delete it to make another."""
    from experiments import pretrain

    try:
        ws_cfg = pretrain.get_config(preset)
    except ValueError as e:
        raise SystemExit(f"rl_comparison: warm-start preset {preset!r} is not in experiments/pretrain.py ({e}); "
                         "pass --warm-start-preset") from None
    path = os.path.join(out, "warm_start", task)
    info_path = os.path.join(path, "run_info.json")
    if os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("preset") != preset or info.get("extra", []) != extra:
            raise SystemExit(f"rl_comparison: {path} holds a warm start made with preset {info.get('preset')!r} and "
                             f"overrides {info.get('extra', [])}, not {preset!r} {extra}; delete it to make another")
        return path
    cmd = [sys.executable, "-m", "m1jax.cli.main", "train", f"--config=experiments/pretrain.py:{preset}",
           f"--workdir={path}"] + extra
    _say(f"warm start ({ws_cfg.steps} steps unless overridden): {shlex.join(cmd)}")
    os.makedirs(path, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(path, "log.txt"), "a") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"rl_comparison: the warm start failed (exit {rc}); see {path}/log.txt")
    with open(info_path, "w") as f:
        json.dump({"command": cmd, "seconds": time.time() - t0, "preset": preset, "extra": extra}, f, indent=1)
    return path


def warm_start_check(workdirs: list[str]) -> tuple[float, str] | None:
    """The step-0 held-out accuracy of the first of ``workdirs`` that logged one (every run starts from the same
    checkpoint and evaluates the same problems greedily: all agree), with that workdir; None if none did."""
    for wd in workdirs:
        rows = read_rows(os.path.join(wd, "metrics.jsonl"))
        if rows and rows[0].get("step") == 0 and "eval/accuracy" in rows[0]:
            return float(rows[0]["eval/accuracy"]), wd
    return None


def _out_of_range(acc: float) -> bool:
    return not WARM_RANGE[0] <= acc <= WARM_RANGE[1]


def task_settings(task: str, ws_dir: str) -> tuple[dict, dict]:
    """The task's fixed RL settings (same for every arm) -> (settings, notes). The RL model is the warm start's
    (read from its config.json; the LM head stays fp32); task_size is the warm-start data's; max_new_tokens
    is the task preset's when the warm start's task_size is the preset's, else the longest reference answer of 2000
    training problems + 2."""
    from experiments import rl as rl_presets
    from m1jax.rl import tasks as tasks_lib

    base = rl_presets.get_config(TASKS[task]["preset"])
    with open(os.path.join(ws_dir, "config.json")) as f:
        ws = json.load(f)
    settings = {"task": task, "task_size": int(ws["data"]["task_size"])}
    preset_model = base.model.to_dict()
    model_diff = {}
    for k, v in ws["model"].items():
        if k == "lm_head_dtype":
            continue
        want = tuple(v) if isinstance(v, list) else v
        have = preset_model.get(k)
        if (tuple(have) if isinstance(have, (list, tuple)) else have) != want:
            model_diff[f"model.{k}"] = want
    settings.update(model_diff)
    if task == base.task and settings["task_size"] == base.task_size:
        mnt = int(base.rollout.max_new_tokens)
        how = f"the {TASKS[task]['preset']} preset's"
    else:
        t = tasks_lib.get_task(task, settings["task_size"])
        mnt = max(len(p.answer) for p in t.problems(0, 0, 2000, "train")) + 2
        how = "longest reference answer of 2000 training problems + 2"
    settings.update({"rollout.max_new_tokens": mnt, "rollout.temperature": 1.0,
                     "optim.b1": 0.9, "optim.b2": 0.95, "optim.eps": 1e-15})
    notes = {"max_new_tokens": f"{mnt} ({how})", "model_overrides": model_diff,
             "preset_lr": float(base.optim.lr), "preset_steps": int(base.steps),
             "prompts": int(base.rollout.prompts), "group_size": int(base.rollout.group_size)}
    return settings, notes


def rl_command(task: str, settings: dict, lr: float, seed: int, steps: int, workdir: str, extra: list[str]) -> list:
    every = max(1, steps // EVALS_PER_RUN)
    plumbing = {"seed": seed, "steps": steps, "optim.lr": lr, "eval.samples": EVAL_SAMPLES, "eval.every": every,
                "log.plot": False, "log.tensorboard": False, "log.every": every,
                "checkpoint.every": steps, "checkpoint.keep": 1}  # checkpoints at the end / when stopped
    return ([sys.executable, "-m", "m1jax.cli.main", "rl", f"--config={RL_CONFIG}:{TASKS[task]['preset']}",
             f"--workdir={workdir}"] + overrides(settings) + overrides(plumbing) + list(extra))


def run_finished(workdir: str, steps: int) -> bool:
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        s = json.load(f)
    return not s.get("interrupted") and int(s.get("steps") or 0) >= steps


def _saved_lr(workdir: str):
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            return float(json.load(f)["optim"]["lr"])
    except (OSError, KeyError, ValueError):
        return None


def run_jobs(jobs: list[dict], parallel: int, env: dict, steps: int, gate=None) -> list[dict]:
    """Run the jobs ({"workdir", "cmd", "lr"}) up to ``parallel`` at once, skipping finished ones. A job whose
    workdir holds a run with another lr is refused (delete that directory to rerun it). SIGINT / SIGTERM are
    passed on to the runs (they checkpoint and stop), then this stops. ``gate(job)`` is asked after the first
    run that ends well: a message back stops the runs (they checkpoint) and this exits with it."""
    todo, failed = [], []
    for job in jobs:
        saved = _saved_lr(job["workdir"])
        if saved is not None and not math.isclose(saved, job["lr"], rel_tol=1e-9):
            raise SystemExit(f"rl_comparison: {job['workdir']} holds a run with lr {saved:g}, this study wants "
                             f"{job['lr']:g} (a new sweep pick?); delete that directory to rerun it")
        if run_finished(job["workdir"], steps):
            continue
        todo.append(job)
    _say(f"{len(jobs) - len(todo)} of {len(jobs)} runs already finished; {len(todo)} to run, {parallel} at once")
    running: dict = {}
    stop = {"signum": None}

    def handler(signum, frame):
        stop["signum"] = signum
        for p, _ in running.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    t_start, done = time.time(), 0
    try:
        while (todo and stop["signum"] is None) or running:
            while todo and len(running) < parallel and stop["signum"] is None:
                job = todo.pop(0)
                os.makedirs(job["workdir"], exist_ok=True)
                log = open(os.path.join(job["workdir"], "log.txt"), "a")  # noqa: SIM115 - closed when the run ends
                log.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(job['cmd'])}\n")
                log.flush()
                p = subprocess.Popen(job["cmd"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # signals reach it only through this process
                running[p.pid] = (p, {**job, "log": log, "t0": time.time()})
            time.sleep(0.5)
            for pid in [pid for pid, (p, _) in running.items() if p.poll() is not None]:
                p, job = running.pop(pid)
                job["log"].close()
                seconds = time.time() - job["t0"]
                _record_attempt(job, p.returncode, seconds)
                done += 1
                name = _rel(job["workdir"])
                if p.returncode == 0:
                    _say(f"done {name} ({seconds:.0f} s; {done} finished, {len(todo)} queued, "
                         f"{(time.time() - t_start) / 60:.1f} min so far)")
                    if gate is not None:
                        message, gate = gate(job), None
                        if message:
                            handler(signal.SIGTERM, None)
                            for q, _ in running.values():
                                q.wait()
                            raise SystemExit(message)
                else:
                    failed.append(job)
                    _say(f"FAILED {name} (exit {p.returncode}); see its log.txt")
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if stop["signum"] is not None:
        raise SystemExit(f"rl_comparison: stopped by {signal.Signals(stop['signum']).name}; rerun to resume")
    return failed


def _record_attempt(job: dict, rc: int, seconds: float):
    path = os.path.join(job["workdir"], "run_info.json")
    info = {"attempts": []}
    if os.path.exists(path):
        with open(path) as f:
            info = json.load(f)
    info.update(command=job["cmd"], lr=job["lr"])
    info["attempts"].append({"started": datetime.datetime.fromtimestamp(job["t0"]).isoformat(timespec="seconds"),
                             "seconds": round(seconds, 2), "rc": rc, "host": platform.node()})
    with open(path, "w") as f:
        json.dump(info, f, indent=1)


# ----------------------------------------------------------------------------------------------------------
# Reading runs and per-run numbers (pure functions of metrics.jsonl records)


def read_rows(path: str) -> list[dict]:
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a torn last line of a killed run
    return rows


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


def _f(v, d=3):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "never" if v > 0 else "-inf"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.{d}f}" if abs(v) < 1e4 else f"{v:.3g}"


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

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "?", False
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


def _read_sweep(out: str, task: str):
    path = os.path.join(out, task, "sweep.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


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
    L += ["Generated by `python experiments/rl_comparison.py --report-only` from the runs under "
          f"`{_rel(out)}/runs/` (not committed); every number below is recomputed from their metrics.jsonl.", ""]
    L += ["## Setup", "",
          f"- Device: {', '.join(env['devices'])} (backend {env['backend']}); CPU: {env['cpu']}.",
          f"- Versions: jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, numpy {env['numpy']}, "
          f"python {env['python']}; m1jax at git {env['git']}.",
          "- Each run is one process with XLA_FLAGS=`--xla_cpu_multi_thread_eigen=false "
          "intra_op_parallelism_threads=1` (one thread), up to --parallel at once on a machine shared with other "
          "work, so wall-clock numbers are noisy. The wall-clock axis is training time: the logged step_time of "
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
    for task, agg in tasks.items():
        L += [_conclusion(task, agg, mu1.get(task), partial.get(task)), ""]
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
        S.append(f"PARTIAL ({partial[0]} of {TARGET_SEEDS} seeds): read what follows as preliminary.")
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
    text = readme(out, found, tasks, strat, mu1, pngs, environment())
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)
    _say(f"wrote {_rel(out)}/summary.json, details.json, README.md" + (", " + ", ".join(
        os.path.basename(p) for ps in pngs.values() for p in ps) if pngs else ""))
    return {"tasks": tasks, "stratified": strat, "mu1": mu1}


# ----------------------------------------------------------------------------------------------------------
# The study


def sweep(args, out, task, settings, notes, env, ws_dir, extra) -> dict:
    """lr sweep on SWEEP_SEEDS; writes <out>/<task>/sweep.json; returns it."""
    arms = [a for a in args.arms if not ARMS[a].get("lr_from")]
    for a in args.arms:  # an arm borrowing another's lr needs that arm swept
        src = ARMS[a].get("lr_from")
        if src and src not in arms:
            arms.append(src)
    lrs = [float(x) for x in args.sweep_lrs.split(",")]
    jobs = []
    for seed, lr, arm in itertools.product(SWEEP_SEEDS, lrs, arms):
        wd = os.path.join(out, "runs", task, "sweep", arm, f"lr{lr_key(lr)}", f"seed{seed}")
        jobs.append({"workdir": wd, "lr": lr, "cmd": rl_command(
            task, {**settings, **arm_settings(arm, settings["rollout.max_new_tokens"])}, lr, seed, args.steps, wd,
            extra)})
    run_jobs(jobs, args.parallel, env, args.steps, gate=args.gate)
    result = {"task": task, "lrs": lrs, "seeds": list(SWEEP_SEEDS), "steps": args.steps,
              "criterion": "mean over seeds of the AUC of held-out greedy accuracy vs RL steps (stats.auc)",
              "preset_lr": notes["preset_lr"], "arms": {}}
    path = os.path.join(out, task, "sweep.json")
    if os.path.exists(path):  # keep arms swept by an earlier call with other --arms
        with open(path) as f:
            result["arms"] = json.load(f).get("arms", {})
    for arm in arms:
        by_lr = {}
        for lr in lrs:
            aucs, failed = [], 0
            for seed in SWEEP_SEEDS:
                wd = os.path.join(out, "runs", task, "sweep", arm, f"lr{lr_key(lr)}", f"seed{seed}")
                if not run_finished(wd, args.steps):
                    failed += 1
                    continue
                c = run_curves(read_rows(os.path.join(wd, "metrics.jsonl")))
                aucs.append(stats.auc(c["step"], c["acc"]))
            by_lr[lr_key(lr)] = {"aucs": aucs, "mean_auc": float(np.mean(aucs)) if aucs else None, "n": len(aucs),
                                 "failed": failed}
        ok = [lr for lr in lrs if by_lr[lr_key(lr)]["mean_auc"] is not None and by_lr[lr_key(lr)]["failed"] == 0]
        pick = (max(ok, key=lambda lr: (round(by_lr[lr_key(lr)]["mean_auc"], 12),
                                        math.isclose(lr, notes["preset_lr"]), -lr)) if ok else None)
        result["arms"][arm] = {"by_lr": by_lr, "pick": pick}
        _say(f"sweep {task} {arm}: " + ", ".join(f"lr {k}: mean AUC {_f(v['mean_auc'], 4)}" for k, v in by_lr.items())
             + f" -> pick {pick}")
    os.makedirs(os.path.join(out, task), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def picked_lr(out: str, task: str, arm: str, preset_lr: float) -> tuple[float, str]:
    src = ARMS[arm].get("lr_from") or arm
    s = _read_sweep(out, task)
    if s and (s["arms"].get(src) or {}).get("pick"):
        return float(s["arms"][src]["pick"]), f"sweep pick ({src})"
    return preset_lr, "preset (no sweep pick)"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS))
    p.add_argument("--seeds", default="0-9")
    p.add_argument("--arms", default="all")
    p.add_argument("--steps", type=int, default=None, help="RL steps per run (default: the preset's)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--out", default=os.path.join("experiments", "results", "rl_comparison"))
    p.add_argument("--sweep", action="store_true", help="run the lr sweep first (skips what is done)")
    p.add_argument("--sweep-only", action="store_true", help="run the lr sweep, then stop")
    p.add_argument("--sweep-lrs", default=",".join(lr_key(x) for x in SWEEP_LRS))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--warm-start-preset", default=None,
                   help="experiments/pretrain.py preset (default: add_warmstart / countdown_warmstart)")
    p.add_argument("--extra", default="", help="further `m1jax rl` overrides for every run (applied last)")
    p.add_argument("--warm-start-extra", default="", help="overrides for the warm start's `m1jax train`")
    p.add_argument("--ignore-warm-range", action="store_true",
                   help=f"go on when the warm start's held-out accuracy is outside {WARM_RANGE}")
    p.add_argument("--n-boot", type=int, default=2000)
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    if args.report_only:
        report(out, n_boot=args.n_boot)
        return
    if not args.task:
        p.error("--task is required (unless --report-only)")
    args.arms = parse_arms(args.arms)
    seeds = parse_seeds(args.seeds)
    if set(seeds) & set(SWEEP_SEEDS):
        p.error(f"seeds {sorted(set(seeds) & set(SWEEP_SEEDS))} are the lr sweep's; the comparison must not use them")
    extra = shlex.split(args.extra)
    task = args.task
    os.makedirs(os.path.join(out, task), exist_ok=True)
    write_gitignore(out)
    with open(os.path.join(out, task, "commands.log"), "a") as f:
        f.write(f"python {_rel(os.path.abspath(__file__))} {shlex.join(sys.argv[1:] if argv is None else argv)}"
                f"  # {datetime.datetime.now().isoformat(timespec='seconds')}\n")
    env = run_env(out)
    t0 = time.time()
    ws_dir = ensure_warm_start(out, task, args.warm_start_preset or TASKS[task]["warm_start"], env,
                               shlex.split(args.warm_start_extra))
    settings, notes = task_settings(task, ws_dir)
    settings["init_from"] = ws_dir
    args.steps = args.steps or notes["preset_steps"]
    _say(f"{task}: warm start {_rel(ws_dir)}; max_new_tokens {notes['max_new_tokens']}; model overrides "
         f"{notes['model_overrides'] or 'none'}; {args.steps} steps; arms {args.arms}; seeds {seeds}")
    def gate(job):  # the study is hours long: stop at once when the warm start is out of the protocol's range
        got = warm_start_check([job["workdir"]])
        if got and _out_of_range(got[0]) and not args.ignore_warm_range:
            return (f"rl_comparison: the warm start's held-out greedy accuracy is {got[0]:.3f} ({_rel(got[1])}), "
                    f"outside {WARM_RANGE}: make another warm start (delete {_rel(ws_dir)}; --warm-start-preset / "
                    "--warm-start-extra) or pass --ignore-warm-range")
        return None

    prior = [os.path.join(r, d) for r, ds, _ in os.walk(os.path.join(out, "runs", task)) for d in ds
             if d.startswith("seed")]
    got = warm_start_check(prior)
    if got:
        _say(f"warm start held-out greedy accuracy {got[0]:.3f} (step 0 of {_rel(got[1])})")
        message = gate({"workdir": got[1]})
        if message:
            raise SystemExit(message)
        gate = None
    args.gate = gate
    if args.sweep or args.sweep_only:
        sweep(args, out, task, settings, notes, env, ws_dir, extra)
        args.gate = None
        if args.sweep_only:
            _say(f"sweep done in {(time.time() - t0) / 60:.1f} min")
            return
    jobs = []
    for seed in seeds:  # seed-major: a study stopped midway has whole pairs
        for arm in args.arms:
            lr, how = picked_lr(out, task, arm, notes["preset_lr"])
            if seed == seeds[0]:
                _say(f"{arm}: lr {lr:g} ({how})")
            wd = os.path.join(out, "runs", task, arm, f"seed{seed}")
            jobs.append({"workdir": wd, "lr": lr, "cmd": rl_command(
                task, {**settings, **arm_settings(arm, settings["rollout.max_new_tokens"])}, lr, seed, args.steps,
                wd, extra)})
    failed = run_jobs(jobs, args.parallel, env, args.steps, gate=args.gate)
    _say(f"{task}: runs done in {(time.time() - t0) / 60:.1f} min" + (f"; {len(failed)} failed" if failed else ""))
    agg = report(out, n_boot=args.n_boot)
    ws = agg["tasks"].get(task, {}).get("warm_start_accuracy")
    if ws is not None and _out_of_range(ws):
        _say(f"WARNING: the warm start's held-out accuracy {ws:.3f} is outside {WARM_RANGE}")


if __name__ == "__main__":
    main()
