"""The RL loop: rollout -> rewards -> advantages -> mu minibatch updates -> the sampler sees the new params.

``rl(cfg, workdir)`` is what ``m1jax rl`` runs; notebooks call it the same way. It shares `m1jax train`'s
machinery (optimizer, orbax checkpoint manager, metric / TensorBoard writers, progress line, mesh
placement, config checks) and its warm start IS a `m1jax train` run (workdir/warm_start).

Per step s (seed S): prompts S-stream problems [cursor, cursor + P) of the task's train split; the sampler
reads the learner's live parameters (same devices, no copy) with key fold_in(fold_in(key(S), s), round);
completions are scored by the task's verifier in a worker process (m1jax.rl.rewards); shaped rewards
(overlong / length penalties) -> group advantages; with dynamic sampling, zero-variance groups are
dropped and more prompts are sampled (up to ``max_sampling_rounds`` rollouts) to refill the P groups;
missing groups are padding rows that carry no tokens. The learner recomputes the log-probs (always: the
sampler-vs-learner mismatch is logged every step) and uses them or the sampler's as the old policy, then
takes ``updates_per_rollout`` optimizer steps on a seeded random partition of the rows.
Everything random is a function of (seed, step), so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import numpy as np

from m1jax.data.tasks import distinct_examples
from m1jax.data.tokenizer import ByteTokenizer
from m1jax.rl import tasks as tasks_lib
from m1jax.rl.config import reward_function, validate
from m1jax.rl.learner import learner_batch, make_logprob_fn, make_update_step, mismatch_metrics
from m1jax.rl.losses import group_advantages, overlong_penalty
from m1jax.rl.rewards import FAILURES, RewardRunner
from m1jax.sampling import sample
from m1jax.sharding import use_mesh
from m1jax.train import checkpoint as ckpt_lib
from m1jax.train.evaluate import decode_completions, greedy_completions
from m1jax.train.run import NonFiniteError, check_and_write_config, make_workdir, peak_memory_gib, stop_signals
from m1jax.train.metrics import MetricWriter, Progress, read_jsonl
from m1jax.train.optimizer import make_optimizer
from m1jax.train.placement import batch_sharding, train_mesh, train_state_shardings, with_shardings
from m1jax.train.step import abstract_model, abstract_train_state, init_params, init_train_state, model_graphdef

PROGRESS_FIELDS = (
    ("reward", "reward", "{:.3f}".format), ("eval/accuracy", "eval acc", "{:.3f}".format),
    ("response_length", "len", "{:.1f}".format), ("clip_fraction", "clip", "{:.3f}".format),
    ("entropy", "ent", "{:.3f}".format), ("mismatch/prob_corr", "corr", "{:.4f}".format),
    ("tokens_per_s", "gen tok/s", "{:.0f}".format),
)
# What defines an RL run: a resumed run must not change these (the rest, e.g. eval / log / steps, may change).
FIXED = ("model", "seed", "task", "task_size", "init_from", "rollout", "loss", "algo", "reward")
_MEAN_KEYS = ("loss", "clip_fraction", "active_clip_fraction", "ratio_mean", "entropy", "grad_norm", "lr")


def _say(msg: str):
    print(f"m1jax rl: {msg}", flush=True)


def warm_start(cfg, workdir: str) -> str:
    """Run (or resume) the supervised warm start in workdir/warm_start; returns its path."""
    from m1jax.train import train

    ws = cfg.warm_start.copy_and_resolve_references()
    with ws.unlocked():
        ws.model = cfg.model.copy_and_resolve_references()
        ws.seed = cfg.seed
    path = os.path.join(workdir, "warm_start")
    _say(f"warm start: {ws.steps} supervised steps on {ws.data.tasks!r} in {path}")
    train(ws, path)
    return path


def distinct_problems(task, count: int, split: str = "eval", seed: int = 0) -> list:
    """The first ``count`` distinct prompts of a task's ``split`` stream (m1jax.data.tasks.distinct_examples: the
    same held-out problems as `m1jax train`'s exact match on the task's data task)."""
    return [tasks_lib.Problem(p, a, task.name, task.parse(p))
            for p, a in distinct_examples(task.data_task, task.size, count, split, seed)]


class Evaluator:
    """Held-out accuracy: greedy exact match and mean reward of k samples (mean@k) on fixed eval problems."""

    def __init__(self, task, count: int, samples: int, tokenizer, runner, rollout_cfg):
        self.problems = distinct_problems(task, count)  # one set for every seed / arm
        self.prompts = [tasks_lib.encode_prompt(p, tokenizer) for p in self.problems]
        self.samples, self.tokenizer, self.runner, self.rollout = samples, tokenizer, runner, rollout_cfg

    def __call__(self, policy, key) -> dict:
        stop = (self.tokenizer.eos_id,)
        texts, _ = greedy_completions(policy, self.prompts, key, self.rollout.max_new_tokens, self.tokenizer)
        rewards, _ = self.runner.score(self.problems, texts)
        out = {"eval/accuracy": float(np.mean(rewards))}
        if self.samples > 1:
            k = self.samples
            s = sample(policy, self.prompts, key, max_new_tokens=self.rollout.max_new_tokens,
                       temperature=self.rollout.temperature, num_samples=k, stop_tokens=stop)
            texts = decode_completions(*jax.device_get((s.tokens, s.lengths, s.stopped)), self.tokenizer)
            rewards, _ = self.runner.score([p for p in self.problems for _ in range(k)], texts)
            out[f"eval/mean@{k}"] = float(np.mean(rewards))
        return out


def _log_failures(step, failures):
    """One line per distinct failure reason (the first row that met it, and how many rows did)."""
    seen: dict[str, list[int]] = {}
    for i, reason in failures:
        seen.setdefault(reason, []).append(i)
    for reason, rows in seen.items():
        _say(f"step {step}: verifier failed on {len(rows)} row(s), first row {rows[0]}: {reason}")


def _shaped(rewards, lengths, cfg):
    """Verifier rewards + DAPO's overlong penalty + M1-style length penalty (as configured)."""
    r = np.asarray(rewards, np.float32).copy()
    a = cfg.algo
    if a.overlong_max:
        r += np.asarray(overlong_penalty(lengths, a.overlong_max, a.overlong_cache))
    if a.length_penalty:
        r -= a.length_penalty * np.asarray(lengths, np.float32) / cfg.rollout.max_new_tokens
    return r


def rl(cfg, workdir: str, *, reward_fn=None) -> dict:
    """Run RL per ``cfg`` in ``workdir``, resuming from its latest checkpoint; returns a summary dict.

    The reward of a completion is ``reward_fn(problem, completion_text)`` (any picklable callable; default
    ``cfg.reward.fn``, else the task's verifier), run in a worker process with ``cfg.reward.timeout_s`` per call.

    Writes workdir/config.json, metrics.jsonl (one record per step; eval records at step 0 and every
    eval.every steps), tb/, checkpoints/<step>/ and curves.png. Raises ValueError for a bad config (before
    any work) and NonFiniteError when an update diverges (the last good checkpoint is kept).
    """
    model_config = validate(cfg)
    if not workdir:
        raise ValueError("RL needs a --workdir")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    model = abstract_model(model_config, cfg.kernels.to_dict())
    graphdef, abstract_params = model_graphdef(model)
    if cfg.init_from:  # a checkpoint of another shape: one line now, before the workdir exists
        ckpt_lib.check_params_fit(cfg.init_from, abstract_params)
    make_workdir(workdir)
    if model_config.lm_head_dtype != "float32":
        _say(f"WARNING: LM head in {model_config.lm_head_dtype} by explicit choice (model.lm_head_dtype); M1 runs "
             "it in float32 to keep sampler and learner probabilities aligned")

    ro, algo = cfg.rollout, cfg.algo
    P, G, mu = ro.prompts, ro.group_size, algo.updates_per_rollout
    rows = P * G
    tokenizer = ByteTokenizer()
    task = tasks_lib.get_task(cfg.task, cfg.task_size)
    tx, schedule = make_optimizer(cfg.optim, cfg.steps * mu)
    mesh = train_mesh(cfg.mesh)
    abstract_state = abstract_train_state(abstract_params, tx)
    shardings = train_state_shardings(model, abstract_state, mesh)
    checkpointer = ckpt_lib.TrainCheckpointer(os.path.join(workdir, "checkpoints"), keep=cfg.checkpoint.keep,
                                              async_save=cfg.checkpoint.async_save)
    latest = checkpointer.latest_step()
    init_from = cfg.init_from
    if latest is None and not init_from and cfg.warm_start.steps > 0:
        init_from = warm_start(cfg, workdir)
    elif not init_from and cfg.warm_start.steps > 0:
        init_from = os.path.join(workdir, "warm_start")
    check_and_write_config(cfg, workdir, resuming=latest is not None, fixed=FIXED, exempt=("rollout.batch_slots",))

    def initial_params():
        if init_from:
            return ckpt_lib.restore_params_dict(init_from, with_shardings(abstract_params, shardings["params"]))
        return init_params(model_config, cfg.seed, shardings["params"])

    if latest is not None:
        state, meta = checkpointer.restore(latest, with_shardings(abstract_state, shardings))
        state["step"] = jax.device_put(np.int32(meta["opt_steps"]), shardings["step"])
        cursor = int(meta["prompt_cursor"])
        _say(f"resuming from step {latest} ({checkpointer.directory})")
    else:
        state, cursor = init_train_state(initial_params(), tx, shardings), 0
        _say(f"params from {init_from}" if init_from else "WARNING: params freshly initialised (no init_from, no "
             "warm start): a sparse reward may never appear")
    ref_params = initial_params() if cfg.loss.name == "grpo" and cfg.loss.beta > 0 else None
    start = latest or 0

    loss_kwargs = {"cispo": dict(eps_low=cfg.loss.eps_low, eps_high=cfg.loss.eps_high,
                                 trust_region_mask=cfg.loss.trust_region_mask),
                   "dapo": dict(eps_low=cfg.loss.eps_low, eps_high=cfg.loss.eps_high),
                   "grpo": dict(eps=cfg.loss.grpo_eps, beta=cfg.loss.beta)}[cfg.loss.name]
    mb_rows = rows // mu
    update = make_update_step(graphdef, tx, schedule, loss=cfg.loss.name, loss_kwargs=loss_kwargs,
                              temperature=ro.temperature, aux_loss_coef=float(algo.router_aux_loss_coef),
                              grad_accum_steps=algo.grad_accum_steps, state_shardings=shardings)
    logprobs = make_logprob_fn(graphdef, ro.temperature, micro_batches=mu * algo.grad_accum_steps)
    sample_kw = dict(max_new_tokens=ro.max_new_tokens, temperature=ro.temperature, top_k=ro.top_k, top_p=ro.top_p,
                     stop_tokens=(tokenizer.eos_id,), num_samples=G, truncate_after=ro.truncate_after,
                     truncate_prob=ro.truncate_prob, batch_slots=ro.batch_slots or None)
    writer = MetricWriter(workdir, tensorboard=cfg.log.tensorboard, resume_step=latest)
    progress = Progress(cfg.steps, cfg.log.every, fields=PROGRESS_FIELDS)
    runner = RewardRunner(reward_fn or reward_function(cfg.reward.fn) or task.verify, timeout_s=cfg.reward.timeout_s)
    # Held-out accuracy is the task's own exact-match verifier, whatever reward the run trains on.
    eval_runner = RewardRunner(task.verify, timeout_s=cfg.reward.timeout_s)
    evaluator = Evaluator(task, cfg.eval.problems, cfg.eval.samples, tokenizer, eval_runner, ro)
    eval_key = jax.random.fold_in(jax.random.key(cfg.seed), 2**30)
    base_key = jax.random.key(cfg.seed)
    _say(f"task {cfg.task} (size {cfg.task_size}), loss {cfg.loss.name}, {P} prompts x {G} samples, "
         f"{mu} updates per rollout, steps {start + 1}..{cfg.steps}, backend {jax.default_backend()}, "
         f"mesh {dict(mesh.shape)}")
    saved_step, interrupted = latest, None
    try:
        with stop_signals("rl") as stop, use_mesh(mesh):
            policy = (graphdef, state["params"])
            if start == 0:
                m = evaluator(policy, eval_key)
                writer.write(0, m)
                _say(f"warm-start held-out accuracy {m['eval/accuracy']:.3f} (greedy, {cfg.eval.problems} problems)")
            for step in range(start + 1, cfg.steps + 1):
                t_step = time.perf_counter()
                step_key = jax.random.fold_in(base_key, step)
                counts_before = dict(runner.counters)
                kept, all_rewards, all_lengths, gen_tokens, gen_seconds, rounds, stopped_n, trunc_n = (
                    [], [], [], 0, 0.0, 0, 0, 0)
                policy = (graphdef, state["params"])
                while True:
                    problems = task.problems(cfg.seed, cursor, P, "train")
                    cursor += P
                    prompts = [tasks_lib.encode_prompt(p, tokenizer) for p in problems]
                    t0 = time.perf_counter()
                    out = sample(policy, prompts, jax.random.fold_in(step_key, rounds), **sample_kw)
                    toks, logp, lens, stopped, truncated = jax.device_get(
                        (out.tokens, out.logprobs, out.lengths, out.stopped, out.truncated))
                    gen_seconds += time.perf_counter() - t0
                    gen_tokens += int(lens.sum())
                    stopped_n += int(stopped.sum())
                    trunc_n += int(truncated.sum())
                    texts = decode_completions(toks, lens, stopped, tokenizer)
                    rewards, failures = runner.score([p for p in problems for _ in range(G)], texts)
                    _log_failures(step, failures)
                    shaped = _shaped(rewards, lens, cfg)
                    all_rewards.append(rewards)
                    all_lengths.append(lens)
                    for i in range(P):
                        sl = slice(i * G, (i + 1) * G)
                        if not algo.dynamic_sampling or shaped[sl].max() > shaped[sl].min():
                            kept.append((prompts[i], toks[sl], logp[sl], lens[sl], shaped[sl]))
                    rounds += 1
                    if not algo.dynamic_sampling or len(kept) >= P or rounds >= algo.max_sampling_rounds:
                        break
                kept = kept[:P]
                batch, n_groups = _assemble(kept, P, G, ro.max_new_tokens, algo.advantage_scale)
                state, metrics = _learn_step(state, batch, n_groups, update, logprobs, ref_params, cfg, step, mb_rows,
                                             mesh)
                rewards = np.concatenate(all_rewards)
                lengths = np.concatenate(all_lengths)
                metrics.update({
                    "reward": float(rewards.mean()), "response_length": float(lengths.mean()),
                    "kept_groups": n_groups, "sampling_rounds": rounds,
                    "stopped_fraction": stopped_n / len(rewards), "truncated_fraction": trunc_n / len(rewards),
                    "generated_tokens": gen_tokens, "tokens_per_s": gen_tokens / max(gen_seconds, 1e-9),
                    "rollout_s": gen_seconds,
                    "verifier_failures": sum(runner.counters[k] - counts_before.get(k, 0) for k in FAILURES),
                    **{f"verifier/{k}": runner.counters[k] for k in FAILURES},
                })
                metrics["step_time"] = time.perf_counter() - t_step  # rollout + rewards + updates (not the eval)
                if step % cfg.eval.every == 0 or step == cfg.steps:
                    t_eval = time.perf_counter()
                    metrics.update(evaluator((graphdef, state["params"]), eval_key))
                    metrics["eval_s"] = time.perf_counter() - t_eval
                metrics["peak_memory_gib"] = peak_memory_gib()
                writer.write(step, metrics)
                progress.update(step, metrics)
                if step % cfg.checkpoint.every == 0 or step == cfg.steps or stop["signum"] is not None:
                    checkpointer.save(step, state, {"prompt_cursor": cursor, "opt_steps": int(state["step"])},
                                      model_config)
                    saved_step = step
                if stop["signum"] is not None:
                    interrupted = signal.Signals(stop["signum"]).name
                    _say(f"stopped by {interrupted} after step {step}; checkpoint saved")
                    break
    except NonFiniteError as e:
        checkpointer.wait()
        raise NonFiniteError(f"{e} The last good checkpoint is step {saved_step} in {checkpointer.directory}; "
                             "lower config.optim.lr, then rerun to resume from it.") from None
    finally:
        runner.close()
        eval_runner.close()
        checkpointer.close()
        writer.close()
    return _summary(cfg, workdir, interrupted)


def _assemble(kept, P, G, T, scale):
    """Kept groups -> a learner batch of exactly P * G rows (missing groups: padding rows, no tokens)."""
    prompts, toks, logp, lens, adv = [], [], [], [], []
    for prompt, t, lp, n, r in kept:
        prompts += [prompt] * G
        toks.append(t)
        logp.append(lp)
        lens.append(n)
        adv.append(np.asarray(group_advantages(r[None], scale=scale))[0])
    for _ in range(P - len(kept)):
        prompts += [kept[0][0] if kept else [0]] * G
        toks.append(np.zeros((G, T), np.int32))
        logp.append(np.zeros((G, T), np.float32))
        lens.append(np.zeros(G, np.int32))
        adv.append(np.zeros(G, np.float32))
    batch = learner_batch(prompts, np.concatenate(toks), np.concatenate(lens), np.concatenate(logp),
                          np.concatenate(adv))
    return batch, len(kept)


def _learn_step(state, batch, n_groups, update, logprobs, ref_params, cfg, step, mb_rows, mesh):
    """Old / reference log-probs, mismatch metrics, then mu minibatch updates. Returns (state, metrics)."""
    rows = batch["tokens"].shape[0]
    dev = jax.device_put(batch)
    learner_logp = np.asarray(logprobs(state["params"], dev))
    metrics = mismatch_metrics(batch["sampler_logp"], learner_logp, batch["mask"])
    batch["old_logp"] = learner_logp if cfg.algo.old_logp == "learner" else batch["sampler_logp"]
    if ref_params is not None:
        batch["ref_logp"] = np.asarray(logprobs(ref_params, dev))
    del batch["sampler_logp"]
    if n_groups == 0:  # every group had zero variance: no gradient this step
        return state, {**metrics, "updates": 0}
    order = np.random.default_rng((cfg.seed, step, 7)).permutation(rows).reshape(-1, mb_rows)
    sharding = batch_sharding(mesh, mb_rows, batch["tokens"].shape[1])
    per_update = []
    for idx in order:
        mb = {k: v[idx] for k, v in batch.items()}
        mb = jax.device_put(mb, {k: sharding if v.ndim == 2 else None for k, v in mb.items()})
        state, m = update(state, mb)
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        if not m.pop("finite"):
            raise NonFiniteError(f"step {step}: loss={m['loss']} grad_norm={m['grad_norm']} is not finite; stopped.")
        per_update.append(m)
    for k in _MEAN_KEYS:
        if k in per_update[0]:
            metrics[k] = float(np.mean([m[k] for m in per_update]))
    metrics["ratio_min"] = min(m["ratio_min"] for m in per_update)
    metrics["ratio_max"] = max(m["ratio_max"] for m in per_update)
    metrics["updates"] = len(per_update)
    if "kl" in per_update[0]:
        metrics["kl"] = float(np.mean([m["kl"] for m in per_update]))
    return state, metrics


def _summary(cfg, workdir, interrupted) -> dict:
    """The run's headline numbers from metrics.jsonl (so a finished run's rerun reports the same), + the plot."""
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    evals = [r for r in rows if "eval/accuracy" in r]
    trained = [r for r in rows if "reward" in r]
    summary = {
        "workdir": workdir, "task": cfg.task, "loss": cfg.loss.name, "seed": cfg.seed,
        "steps": trained[-1]["step"] if trained else 0, "interrupted": interrupted,
        "warm_start_accuracy": evals[0]["eval/accuracy"] if evals else None,
        "final_accuracy": evals[-1]["eval/accuracy"] if evals else None,
        "final_step_evaluated": evals[-1]["step"] if evals else None,
        "reward_first": trained[0]["reward"] if trained else None,
        "reward_last": trained[-1]["reward"] if trained else None,
        "plot": None,
    }
    if cfg.log.plot and rows:
        from m1jax.rl.plot import plot_curves

        summary["plot"] = plot_curves(rows, os.path.join(workdir, "curves.png"),
                                      title=f"{cfg.loss.name} on {cfg.task} (seed {cfg.seed})")
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
