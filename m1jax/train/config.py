"""The training experiment config: defaults (``default_config``) and a check of every value
(``validate``) that runs before any work, raising ValueError naming the offending key."""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from m1jax.config import ModelConfig


def model_fields(config: ModelConfig) -> dict:
    """ModelConfig -> dict for ``config.model`` (tuples stay tuples: ml_collections overrides those from the
    command line, e.g. ``--config.model.attn_type_list='(0, 1)'``, but not lists)."""
    return dataclasses.asdict(config)


def model_config(cfg) -> ModelConfig:
    """``cfg.model`` -> ModelConfig (validated by ModelConfig itself)."""
    return ModelConfig.from_dict(cfg.model.to_dict())


def default_config(model: ModelConfig) -> ml_collections.ConfigDict:
    """Every key a training run reads, with defaults; experiment presets change some of them."""
    cfg = ml_collections.ConfigDict()
    cfg.model = ml_collections.ConfigDict(model_fields(model))
    cfg.seed = 0
    cfg.steps = 1000
    cfg.init_from = ""  # a params checkpoint (m1jax.train.checkpoint.save_params) to start from
    cfg.dry_run = False  # print sizes, FLOPs and memory estimates, then exit without allocating
    cfg.kernels = ml_collections.ConfigDict(dict(moe="grouped", expert_matmul="auto", lightning="auto", softmax="auto",
                                                 fused=True))  # fused: see m1jax.train.step.set_kernels
    cfg.remat = False  # recompute each decoder layer in the backward pass (less activation memory)
    cfg.ce_chunk = 0  # > 0: the loss applies the LM head this many positions at a time (no [b, n, vocab] logits)
    cfg.data = ml_collections.ConfigDict(dict(
        source="tasks",  # "tasks" (procedural) or "text" (text files / JSONL)
        tasks="copy,reverse,sort,add", task_size=6,  # tasks: which, how big
        loss_on="answer",  # tasks: "answer" predicts answer + EOS only; "all" also the (unpredictable) prompt
        split="all",  # tasks: "all" prompts, or "train": leave out the RL eval split (m1jax.data.tasks.split_of)
        paths="", text_unit="file", jsonl_field="text", shuffle=True,  # text: files/globs, comma-separated
        tokenizer="bytes", bos_token="", eos_token="",  # "bytes" or a tokenizer.json (or its directory)
        batch_size=16, seq_len=128, split_documents=True, prefetch=2,
    ))
    cfg.optim = ml_collections.ConfigDict(dict(
        lr=3e-4, warmup_steps=100, min_lr_ratio=0.1,  # linear warmup from 0, cosine to lr * min_lr_ratio
        b1=0.9, b2=0.95, eps=1e-15,  # MiniMax-M1's AdamW settings
        weight_decay=0.1, no_decay="norm,embed_tokens",  # regexes on parameter paths exempt from decay
        clip_norm=1.0,  # global-norm clipping (0 = off)
        grad_accum_steps=1,  # micro-batches per step; data.batch_size is the global batch
    ))
    cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, expert=1, context=1, tensor=1))  # -1: the rest
    cfg.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=3, async_save=True))
    cfg.log = ml_collections.ConfigDict(dict(every=10, tensorboard=True, peak_tflops=0.0))  # 0: device table
    # Task data: held-out greedy exact match per task every `every` steps and at the end (0 = off), on `problems`
    # distinct eval-split prompts per task (m1jax.train.evaluate); timed apart from the train step.
    cfg.eval = ml_collections.ConfigDict(dict(every=100, problems=100))
    return cfg


def fail(key, value, msg):
    raise ValueError(f"config.{key}={value!r}: {msg}")


def check(cfg, key, ok, msg):
    """Raise ValueError('config.<key>=<value>: <msg>') unless ok(value) (a TypeError in ok counts as not ok)."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    try:
        good = ok(node)
    except TypeError:
        good = False
    if not good:
        fail(key, node, msg)


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def validate(cfg) -> ModelConfig:
    """Check every training value; returns the ModelConfig. Raises ValueError naming the first bad key."""
    from m1jax.data.pipeline import SOURCES
    from m1jax.data.tasks import DATA_SPLITS, LOSS_ON, parse_tasks
    finite = math.isfinite
    check(cfg, "seed", is_int, "must be an int")
    check(cfg, "steps", lambda v: is_int(v) and v > 0, "must be a positive int")
    check(cfg, "optim.warmup_steps", lambda v: is_int(v) and 0 <= v <= cfg.steps,
          f"must be an int in [0, steps={cfg.steps}] (the schedule would never reach the peak lr)")
    check(cfg, "remat", lambda v: isinstance(v, bool), "must be True or False")
    check(cfg, "ce_chunk", lambda v: is_int(v) and v >= 0, "must be an int >= 0 (0 = the full LM head)")
    for key in ("data.batch_size", "data.seq_len", "optim.grad_accum_steps", "checkpoint.every",
                "checkpoint.keep", "log.every", "data.task_size"):
        check(cfg, key, lambda v: is_int(v) and v > 0, "must be a positive int")
    check(cfg, "data.prefetch", lambda v: is_int(v) and v >= 0, "must be an int >= 0")
    check_optim(cfg)
    check(cfg, "log.peak_tflops", lambda v: finite(v) and v >= 0, "must be a finite number >= 0")
    if cfg.data.batch_size % cfg.optim.grad_accum_steps:
        fail("optim.grad_accum_steps", cfg.optim.grad_accum_steps,
              f"must divide data.batch_size={cfg.data.batch_size}")
    check_kernels(cfg)
    check(cfg, "data.source", lambda v: v in SOURCES, f"must be one of {SOURCES}")
    check(cfg, "data.loss_on", lambda v: v in LOSS_ON, f"must be one of {LOSS_ON}")
    check(cfg, "eval.every", lambda v: is_int(v) and v >= 0, "must be an int >= 0 (0 = off)")
    check(cfg, "eval.problems", lambda v: is_int(v) and v > 0, "must be a positive int")
    check(cfg, "data.split", lambda v: v in DATA_SPLITS,
           f"must be one of {DATA_SPLITS} ('train' leaves out the held-out eval prompts of m1jax.rl.tasks)")
    if cfg.data.source == "tasks":
        try:
            parse_tasks(cfg.data.tasks)
        except ValueError as e:
            fail("data.tasks", cfg.data.tasks, str(e))
    if cfg.data.source == "text":
        from m1jax.data.sources import TEXT_UNITS, expand_paths

        check(cfg, "data.text_unit", lambda v: v in TEXT_UNITS, f"must be one of {TEXT_UNITS}")
        try:
            expand_paths(cfg.data.paths)
        except (FileNotFoundError, ValueError) as e:
            fail("data.paths", cfg.data.paths, str(e))
    check_mesh(cfg)
    model = model_config(cfg)
    tokenizer = load_data_tokenizer(cfg.data)
    if tokenizer.vocab_size > model.vocab_size:
        fail("model.vocab_size", model.vocab_size, f"smaller than the tokenizer's vocabulary "
              f"({tokenizer.vocab_size}, data.tokenizer={cfg.data.tokenizer!r})")
    check_eval(cfg, tokenizer, model)
    return model


def check_eval(cfg, tokenizer, model: ModelConfig):
    """config.eval: the held-out problems can be drawn, stopped at EOS and fit the model's positions."""
    from m1jax.train.evaluate import task_evaluator

    try:
        evaluator = task_evaluator(cfg, tokenizer)
    except (ValueError, RuntimeError) as e:
        fail("eval.every", cfg.eval.every, str(e))
    if evaluator is not None and evaluator.positions_needed() > model.max_position_embeddings:
        fail("eval.every", cfg.eval.every, f"held-out prompt + answer + EOS need {evaluator.positions_needed()} "
             f"positions, more than model.max_position_embeddings={model.max_position_embeddings}")


def check_optim(cfg):
    """config.optim: learning rate, schedule, AdamW and clipping values."""
    finite = math.isfinite
    check(cfg, "optim.lr", lambda v: finite(v) and v > 0, "must be a positive finite number")
    check(cfg, "optim.warmup_steps", lambda v: is_int(v) and v >= 0, "must be an int >= 0")
    check(cfg, "optim.min_lr_ratio", lambda v: 0 <= v <= 1, "must be in [0, 1]")
    for key in ("optim.b1", "optim.b2"):
        check(cfg, key, lambda v: 0 <= v < 1, "must be in [0, 1)")
    for key in ("optim.eps", "optim.weight_decay", "optim.clip_norm"):
        check(cfg, key, lambda v: finite(v) and v >= 0, "must be a finite number >= 0")


def check_kernels(cfg):
    """config.kernels: each path one of its implementations."""
    from m1jax.model.attention import SOFTMAX_IMPLS
    from m1jax.model.moe import MOE_IMPLS
    from pallas_kernels.grouped_matmul import IMPLS as GMM_IMPLS
    from pallas_kernels.lightning_attention.ops import IMPLS

    check(cfg, "kernels.moe", lambda v: v in MOE_IMPLS, f"must be one of {MOE_IMPLS}")
    check(cfg, "kernels.lightning", lambda v: v in IMPLS, f"must be one of {IMPLS}")
    check(cfg, "kernels.expert_matmul", lambda v: v in GMM_IMPLS, f"must be one of {GMM_IMPLS}")
    check(cfg, "kernels.softmax", lambda v: v in SOFTMAX_IMPLS, f"must be one of {SOFTMAX_IMPLS}")
    check(cfg, "kernels.fused", lambda v: isinstance(v, bool), "must be True or False")


def check_mesh(cfg):
    """config.mesh resolves over the devices present."""
    import jax

    from m1jax.sharding import MeshConfig

    try:
        MeshConfig(**cfg.mesh).resolve(jax.device_count())
    except (TypeError, ValueError) as e:
        fail("mesh", cfg.mesh.to_dict(), str(e))


def load_data_tokenizer(data_cfg):
    """The tokenizer named by ``config.data``, with errors naming the key."""
    from m1jax.data.tokenizer import load_tokenizer

    try:
        return load_tokenizer(data_cfg.tokenizer, bos_token=data_cfg.bos_token, eos_token=data_cfg.eos_token)
    except (OSError, ValueError) as e:
        fail("data.tokenizer", data_cfg.tokenizer, str(e))
