"""The training loop: build everything from a config, resume from the latest checkpoint, train, log.

``train(cfg, workdir)`` is what ``m1jax train`` runs; notebooks call it the same way.
"""

from __future__ import annotations

import json
import os
import signal
import time

import jax

from m1jax.data.pipeline import build_pipeline
from m1jax.train import checkpoint as ckpt_lib
from m1jax.train.config import load_data_tokenizer, validate
from m1jax.train.evaluate import format_exact_match, task_evaluator
from m1jax.train.flops import device_peak_flops, flops_per_token, mfu, param_counts
from m1jax.train.metrics import MetricWriter, Progress
from m1jax.train.optimizer import make_optimizer
from m1jax.sharding import use_mesh
from m1jax.train.run import NonFiniteError, check_and_write_config, make_workdir, peak_memory_gib, stop_signals
from m1jax.train.placement import (
    batch_sharding, gather_data_state, global_batch, process_rows, train_mesh, train_state_shardings, with_shardings,
)
from m1jax.train.step import (
    abstract_model, abstract_train_state, init_params, init_train_state, make_train_step, model_graphdef,
)

def _say(msg: str):
    print(f"m1jax train: {msg}", flush=True)


def describe(cfg, model_config) -> dict:
    """Sizes, FLOPs and a memory estimate, computed without allocating the model."""
    counts = param_counts(model_config)
    p_bytes = jax.numpy.dtype(model_config.param_dtype).itemsize
    # params + grads in param dtype, Adam's two moments in param dtype (optax keeps them like the params)
    train_bytes = counts["total"] * p_bytes * 4
    fpt = flops_per_token(model_config, cfg.data.seq_len)
    return {
        "params_total": counts["total"], "params_active": counts["active"],
        "params_active_non_embedding": counts["active"] - 2 * model_config.vocab_size * model_config.hidden_size,
        "train_flops_per_token": fpt["total"], "attention_flops_fraction": fpt["attention"] / fpt["total"],
        "tokens_per_step": cfg.data.batch_size * cfg.data.seq_len,
        "state_memory_gib": train_bytes / 2**30,
    }


def train(cfg, workdir: str) -> dict:
    """Train per ``cfg`` in ``workdir``, resuming from its latest checkpoint; returns a summary dict.

    Writes workdir/config.json, metrics.jsonl, tb/ (TensorBoard) and checkpoints/<step>/. On task data, every
    eval.every steps and at the end, the step's record also holds the held-out greedy exact match
    (eval/exact_match/<task> and /mean, m1jax.train.evaluate; eval_s: its time, not counted in step_time).
    Raises ValueError for a bad config (before any work) and NonFiniteError when training diverges
    (the last good checkpoint is kept).
    """
    model_config = validate(cfg)
    info = describe(cfg, model_config)
    if cfg.dry_run:
        _say(json.dumps(info))
        return {"dry_run": True, **info}
    if not workdir:
        raise ValueError("training needs a --workdir")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    model = abstract_model(model_config, cfg.kernels.to_dict(), remat=cfg.remat)
    graphdef, abstract_params = model_graphdef(model)
    if cfg.init_from:  # a checkpoint of another shape: one line now, not an orbax error after the workdir exists
        ckpt_lib.check_params_fit(cfg.init_from, abstract_params)
    make_workdir(workdir)

    tx, schedule = make_optimizer(cfg.optim, cfg.steps)
    mesh = train_mesh(cfg.mesh)
    abstract_state = abstract_train_state(abstract_params, tx)
    shardings = train_state_shardings(model, abstract_state, mesh)
    batch_shard = batch_sharding(mesh, cfg.data.batch_size, cfg.data.seq_len)
    checkpointer = ckpt_lib.TrainCheckpointer(os.path.join(workdir, "checkpoints"), keep=cfg.checkpoint.keep,
                                              async_save=cfg.checkpoint.async_save)
    latest = checkpointer.latest_step()
    check_and_write_config(cfg, workdir, resuming=latest is not None)
    # Fresh or resumed, the state is committed to the same shardings, so the step compiles once to the
    # same executable either way (what makes a resumed run bit-identical).
    if latest is not None:
        state, data_state = checkpointer.restore(latest, with_shardings(abstract_state, shardings))
        _say(f"resuming from step {latest} ({checkpointer.directory})")
    else:
        if cfg.init_from:
            params = ckpt_lib.restore_params_dict(cfg.init_from, with_shardings(abstract_params, shardings["params"]))
            _say(f"params from {cfg.init_from}")
        else:
            params = init_params(model_config, cfg.seed, shardings["params"])
        state, data_state = init_train_state(params, tx, shardings), None
    start = latest or 0
    _say(f"{info['params_total'] / 1e6:.2f}M params ({info['params_active'] / 1e6:.2f}M active), "
         f"{info['tokens_per_step']} tokens/step, steps {start + 1}..{cfg.steps}, backend {jax.default_backend()}, "
         f"mesh {dict(mesh.shape)}")

    rows = process_rows(batch_shard, (cfg.data.batch_size, cfg.data.seq_len))  # all of them on one host
    data = build_pipeline(cfg.data, cfg.seed, data_state, rows=rows)
    evaluator = task_evaluator(cfg, load_data_tokenizer(cfg.data))
    if evaluator is not None:
        _say(f"held-out greedy exact match every {cfg.eval.every} steps on eval-split problems {evaluator.counts()}"
             + ("" if cfg.data.split == "train" else " (data.split='all' may also train on them; 'train' does not)"))
    step_fn = make_train_step(graphdef, tx, schedule, model_config, grad_accum_steps=cfg.optim.grad_accum_steps,
                              state_shardings=shardings, batch_sharding=batch_shard, ce_chunk=cfg.ce_chunk)
    writer = MetricWriter(workdir, tensorboard=cfg.log.tensorboard, resume_step=latest)
    progress = Progress(cfg.steps, cfg.log.every)
    peak = cfg.log.peak_tflops * 1e12 or device_peak_flops(dtype=model_config.dtype)
    summary = {"workdir": workdir, "start_step": start, "step": start, "interrupted": None}
    saved_step = latest
    try:
        with stop_signals("train") as stop, use_mesh(mesh):
            last = time.perf_counter()
            for step in range(start + 1, cfg.steps + 1):
                batch = global_batch(next(data), batch_shard, cfg.data.batch_size, rows)
                state, m = step_fn(state, batch)
                m = {k: float(v) for k, v in jax.device_get(m).items()}
                now = time.perf_counter()
                dt, last = now - last, now
                if not m.pop("finite"):
                    checkpointer.wait()
                    raise NonFiniteError(
                        f"step {step}: loss={m['total_loss']} grad_norm={m['grad_norm']} is not finite; stopped. "
                        f"The last good checkpoint is step {saved_step} in {checkpointer.directory} (nothing "
                        "newer was saved); lower config.optim.lr or check the data, then rerun to resume from it.")
                m["step_time"] = dt
                m["tokens_per_s"] = info["tokens_per_step"] / dt
                m["mfu"] = mfu(m["tokens_per_s"] * info["train_flops_per_token"], peak, mesh.size)
                m["peak_memory_gib"] = peak_memory_gib()
                if evaluator is not None and (step % cfg.eval.every == 0 or step == cfg.steps):
                    t_eval = time.perf_counter()
                    summary["eval"] = evaluator((graphdef, state["params"]))
                    m.update(summary["eval"], eval_s=time.perf_counter() - t_eval)
                    _say(f"step {step} held-out exact match: {format_exact_match(m)} ({m['eval_s']:.1f} s)")
                    last = time.perf_counter()  # the next step's time leaves the eval out
                writer.write(step, m)
                progress.update(step, m)
                summary.update(step=step, loss=m["loss"])
                if step % cfg.checkpoint.every == 0 or step == cfg.steps or stop["signum"] is not None:
                    checkpointer.save(step, state, gather_data_state(data.state, cfg.data.batch_size),
                                      model_config)
                    saved_step = step
                if stop["signum"] is not None:
                    summary["interrupted"] = signal.Signals(stop["signum"]).name
                    _say(f"stopped by {summary['interrupted']} after step {step}; checkpoint saved")
                    break
    finally:
        checkpointer.close()
        writer.close()
        data.close()
    return summary
