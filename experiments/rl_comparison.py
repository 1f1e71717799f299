"""CISPO vs DAPO vs GRPO on small verifiable tasks: paired seeds, one shared warm start, CIs (the study).

One command per task runs the whole study (warm start once, learning-rate sweep on seeds the comparison
never uses, then every arm on the same paired seeds, then the report); rerunning it resumes:

    python experiments/rl_comparison.py --task addition --sweep      # warm start + sweep + comparison + report
    python experiments/rl_comparison.py --task countdown --sweep
    python experiments/rl_comparison.py --report-only                # tables / plots from whatever finished

Options: --seeds 0-9 (comparison seeds), --arms a,b|all, --steps N (default: the preset's), --parallel 2
(runs at once), --gpus N (runs on N GPUs, several per GPU, instead of one CPU thread each),
--out experiments/results/rl_comparison, --sweep (run the lr sweep first, if not done),
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

This file runs the study (experiments/rl_comparison_jobs.py starts the run processes);
experiments/rl_comparison_analysis.py turns the runs' metrics into numbers and experiments/rl_comparison_report.py
writes the report.

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
import shlex
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this process only reports; the runs get their own env
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from experiments.rl_comparison_jobs import (  # noqa: E402, F401 (re-exported: the report imports _say, _rel)
    _rel, _say, record_run_env, run_env, run_finished, run_jobs,
)
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


def write_gitignore(out: str):
    path = os.path.join(out, ".gitignore")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("# run directories, the warm start and the compilation cache stay local; the report is kept\n"
                    "runs/\nwarm_start/\n.jax_cache/\n*/commands.log\n")


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


def _f(v, d=3):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "never" if v > 0 else "-inf"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.{d}f}" if abs(v) < 1e4 else f"{v:.3g}"


def _read_sweep(out: str, task: str):
    path = os.path.join(out, task, "sweep.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def sweep(args, out, task, settings, notes, env, ws_dir, extra) -> dict:
    """lr sweep on SWEEP_SEEDS; writes <out>/<task>/sweep.json; returns it."""
    from experiments.rl_comparison_analysis import run_curves

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
    run_jobs(jobs, args.parallel, env, args.steps, gate=args.gate, gpus=args.gpus,
             first_wave=len(arms) if args.gpus else 0)
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
    from experiments.rl_comparison_report import report  # the runs import nothing of the report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS))
    p.add_argument("--seeds", default="0-9")
    p.add_argument("--arms", default="all")
    p.add_argument("--steps", type=int, default=None, help="RL steps per run (default: the preset's)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--gpus", type=int, default=0,
                   help="run on this many GPUs (JAX on CUDA, runs spread over them, --parallel in all); 0: CPU")
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
    env = run_env(out, args.gpus)
    record_run_env(out, task, env, args.gpus, args.parallel)
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
    failed = run_jobs(jobs, args.parallel, env, args.steps, gate=args.gate, gpus=args.gpus,
                      first_wave=len(args.arms) if args.gpus else 0)
    _say(f"{task}: runs done in {(time.time() - t0) / 60:.1f} min" + (f"; {len(failed)} failed" if failed else ""))
    agg = report(out, n_boot=args.n_boot)
    ws = agg["tasks"].get(task, {}).get("warm_start_accuracy")
    if ws is not None and _out_of_range(ws):
        _say(f"WARNING: the warm start's held-out accuracy {ws:.3f} is outside {WARM_RANGE}")


if __name__ == "__main__":
    main()
