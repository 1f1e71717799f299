"""Running the RL comparison's runs (experiments/rl_comparison.py): their environment (one CPU thread each, or CUDA
with several runs per GPU), the process pool that runs them (skipping finished ones, passing SIGINT / SIGTERM on,
pinning GPUs) and what each attempt took (run_info.json)."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _say(msg: str):
    print(f"rl_comparison: {msg}", flush=True)


def run_env(out: str, gpus: int = 0) -> dict:
    """The runs' environment: one CPU thread each on a CPU; with ``gpus`` > 0, JAX on CUDA without preallocation
    (several runs share a GPU; run_jobs pins each to one GPU through CUDA_VISIBLE_DEVICES)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    if gpus:
        env["JAX_PLATFORMS"] = "cuda"
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        env["CUDA_VISIBLE_DEVICES"] = "0"  # the warm start and the probe; run_jobs picks one per run
    else:
        env.setdefault("JAX_PLATFORMS", "cpu")
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(os.path.abspath(out), ".jax_cache")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def record_run_env(out: str, task: str, env: dict, gpus: int, parallel: int):
    """Write <out>/<task>/run_env.json: the device and versions the runs see (probed in a process with their env),
    so a report written elsewhere (say on a laptop from a GPU machine's runs) names the right hardware."""
    code = ("import json, sys; sys.path.insert(0, '.'); from experiments.rl_comparison_report import environment; "
            "print(json.dumps(environment()))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"rl_comparison: probing the runs' device failed: {res.stderr.strip().splitlines()[-1:]}")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    info.update(gpus=gpus, parallel=parallel, host=platform.node())
    with open(os.path.join(out, task, "run_env.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def _rel(path: str) -> str:
    try:
        return os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(ROOT + os.sep) else path
    except ValueError:
        return path


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


def run_jobs(jobs: list[dict], parallel: int, env: dict, steps: int, gate=None, gpus: int = 0,
             first_wave: int = 0) -> list[dict]:
    """Run the jobs ({"workdir", "cmd", "lr"}) up to ``parallel`` at once, skipping finished ones; with ``gpus``
    > 0 each run is pinned to the GPU running the fewest runs. ``first_wave`` > 0 runs that many jobs alone first,
    so they fill the shared compilation cache (two dozen processes compiling the same programs at once on a GPU
    machine took 5.5 min a run, against 45 s with the cache filled). A job whose
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
    t_start, done, n_todo = time.time(), 0, len(todo)
    try:
        while (todo and stop["signum"] is None) or running:
            limit = parallel if done >= min(first_wave, n_todo) else first_wave
            while todo and len(running) < limit and stop["signum"] is None:
                job = todo.pop(0)
                os.makedirs(job["workdir"], exist_ok=True)
                log = open(os.path.join(job["workdir"], "log.txt"), "a")  # noqa: SIM115 - closed when the run ends
                log.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(job['cmd'])}\n")
                log.flush()
                job_env = env
                if gpus:
                    load = [sum(j.get("gpu") == g for _, j in running.values()) for g in range(gpus)]
                    job = {**job, "gpu": load.index(min(load))}
                    job_env = {**env, "CUDA_VISIBLE_DEVICES": str(job["gpu"])}
                p = subprocess.Popen(job["cmd"], cwd=ROOT, env=job_env, stdout=log, stderr=subprocess.STDOUT,
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
                             "seconds": round(seconds, 2), "rc": rc, "host": platform.node(),
                             **({"gpu": job["gpu"]} if "gpu" in job else {})})
    with open(path, "w") as f:
        json.dump(info, f, indent=1)
