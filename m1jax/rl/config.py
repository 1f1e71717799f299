"""The RL experiment config: defaults (``default_config``) and a check of every value (``validate``), run
before any work, raising ValueError naming the offending key. Shares train's model / optim / mesh /
kernels / checkpoint / log sections and their checks."""

from __future__ import annotations

import math

import ml_collections

from m1jax.config import ModelConfig
from m1jax.train.config import check, check_kernels, check_mesh, check_optim, fail, is_int, model_config
from m1jax.train.config import default_config as train_default_config

ADVANTAGE_SCALES = ("std", "none")
OLD_LOGP = ("learner", "sampler")


def default_config(model: ModelConfig) -> ml_collections.ConfigDict:
    """Every key an RL run reads. ``warm_start`` is a supervised `m1jax train` config run first (in
    workdir/warm_start) when ``init_from`` is empty and ``warm_start.steps`` > 0."""
    base = train_default_config(model)
    cfg = ml_collections.ConfigDict()
    cfg.model = base.model
    # The fp32 head's products as three bf16 products (m1jax/model/head.py): on one H200 (1b head, 8192 x 2048 x
    # 32768, experiments/results/lm_head_h200.json) 1.4e-5 max relative logit error vs float64 at 2.3x a bf16
    # head's forward time and 1.74x forward + backward, its backward in bf16 like the body's (lm_head_h200_split_bwd.md;
    # IEEE fp32: 2.1e-6 at 8.1x / 11.5x). Identical to IEEE fp32 on a CPU. "highest" restores it.
    if cfg.model.lm_head_precision == "highest":
        cfg.model.lm_head_precision = "bf16x3"
    cfg.seed = 0
    cfg.steps = 100  # rollout batches, each followed by `updates_per_rollout` optimizer steps
    cfg.init_from = ""  # params checkpoint / train workdir to start from (else the warm start)
    cfg.task = "addition"  # m1jax.rl.tasks: addition | countdown | reversal
    cfg.task_size = 3
    cfg.rollout = ml_collections.ConfigDict(dict(
        prompts=16, group_size=8, max_new_tokens=8, temperature=1.0, top_k=0, top_p=1.0,
        truncate_after=0, truncate_prob=0.99,  # M1's early truncation (0 = off)
        batch_slots=0,  # > 0: continuous batching, this many rows decoded at once (same samples; 0 = all at once)
    ))
    cfg.loss = ml_collections.ConfigDict(dict(
        name="cispo",  # cispo | grpo | dapo
        eps_low=1.0, eps_high=1.0,  # OFFSETS from 1: CISPO weight clipped to [1 - eps_low, 1 + eps_high]
        trust_region_mask=False,  # CISPO Eq. 6-7
        grpo_eps=0.2, beta=0.0,  # GRPO clip and KL coefficient (KL to the initial policy when beta > 0)
    ))
    cfg.algo = ml_collections.ConfigDict(dict(
        updates_per_rollout=4,  # mu: minibatch updates per rollout batch (M1 used 16)
        grad_accum_steps=1,  # micro-batches per update (gradients equal the whole minibatch's)
        dynamic_sampling=False,  # DAPO: drop zero-variance groups, sample more prompts to refill
        max_sampling_rounds=4,  # rollouts per step at most when refilling
        advantage_scale="std",  # "std": (R - mean) / std per group; "none": R - mean (Dr. GRPO)
        overlong_max=0, overlong_cache=0,  # DAPO soft overlong penalty: on when overlong_max > 0
        length_penalty=0.0,  # reward -= length_penalty * length / max_new_tokens
        old_logp="learner",  # "learner" recomputes old log-probs before the updates; "sampler" uses the sampler's
        router_aux_loss_coef=0.0,  # MoE load-balancing loss in RL (0: only the reward moves the policy)
    ))
    cfg.reward = ml_collections.ConfigDict(dict(
        fn="",  # "module:function" (any picklable callable(problem, completion) -> number); "" = the task's verifier
        timeout_s=5.0,  # per call; a call that raises, hangs or returns a non-number scores 0 and is counted
    ))
    cfg.eval = ml_collections.ConfigDict(dict(every=10, problems=200, samples=8))  # held-out greedy acc, mean@k
    cfg.warm_start = base  # the supervised warm start (`m1jax train` config)
    cfg.warm_start.steps = 0
    cfg.optim = base.optim.copy_and_resolve_references()
    cfg.optim.update(lr=1e-4, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0)
    cfg.mesh = base.mesh.copy_and_resolve_references()
    cfg.kernels = base.kernels.copy_and_resolve_references()
    cfg.checkpoint = ml_collections.ConfigDict(dict(every=20, keep=2, async_save=True))
    cfg.log = ml_collections.ConfigDict(dict(every=1, tensorboard=True, plot=True))
    return cfg


def reward_function(spec: str):
    """``"module:function"`` -> that callable (None for ""). Raises ValueError / ImportError naming the problem."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError("expected 'module:function'")
    import importlib

    fn = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"{spec} is not callable")
    return fn


def validate(cfg) -> ModelConfig:
    """Check every RL value (and the warm start's, when it runs); returns the ModelConfig."""
    from m1jax.rl.losses import LOSSES
    from m1jax.rl.tasks import TASKS

    finite = math.isfinite
    pos_int = (lambda v: is_int(v) and v > 0, "must be a positive int")
    check(cfg, "seed", is_int, "must be an int")
    for key in ("steps", "task_size", "rollout.prompts", "rollout.group_size", "rollout.max_new_tokens",
                "algo.updates_per_rollout", "algo.grad_accum_steps", "algo.max_sampling_rounds", "eval.every",
                "eval.problems", "eval.samples", "checkpoint.every", "checkpoint.keep", "log.every"):
        check(cfg, key, *pos_int)
    check(cfg, "task", lambda v: v in TASKS, f"unknown task; choose from {sorted(TASKS)}")
    check(cfg, "loss.name", lambda v: v in LOSSES, f"unknown loss; choose from {sorted(LOSSES)}")
    check(cfg, "rollout.temperature", lambda v: finite(v) and v > 0, "must be > 0 (RL samples; 0 is greedy)")
    check(cfg, "rollout.top_k", lambda v: is_int(v) and v >= 0, "must be an int >= 0 (0 = off)")
    check(cfg, "rollout.top_p", lambda v: 0 < v <= 1, "must be in (0, 1]")
    check(cfg, "rollout.truncate_after", lambda v: is_int(v) and v >= 0, "must be an int >= 0 (0 = off)")
    check(cfg, "rollout.truncate_prob", lambda v: 0 < v < 1, "must be in (0, 1)")
    check(cfg, "rollout.batch_slots", lambda v: is_int(v) and v >= 0, "must be an int >= 0 (0 = every row at once)")
    for key in ("loss.eps_low", "loss.eps_high", "loss.grpo_eps", "loss.beta", "algo.length_penalty",
                "algo.router_aux_loss_coef", "reward.timeout_s"):
        check(cfg, key, lambda v: finite(v) and v >= 0, "must be a finite number >= 0")
    check(cfg, "reward.timeout_s", lambda v: v > 0, "must be > 0")
    try:
        reward_function(cfg.reward.fn)
    except (ImportError, AttributeError, ValueError) as e:
        fail("reward.fn", cfg.reward.fn, str(e))
    check(cfg, "algo.advantage_scale", lambda v: v in ADVANTAGE_SCALES, f"must be one of {ADVANTAGE_SCALES}")
    check(cfg, "algo.old_logp", lambda v: v in OLD_LOGP, f"must be one of {OLD_LOGP}")
    for key in ("algo.dynamic_sampling", "loss.trust_region_mask", "log.plot", "log.tensorboard"):
        check(cfg, key, lambda v: isinstance(v, bool), "must be True or False")
    check(cfg, "algo.overlong_max", lambda v: is_int(v) and v >= 0, "must be an int >= 0 (0 = off)")
    if cfg.algo.overlong_max and not 0 < cfg.algo.overlong_cache <= cfg.algo.overlong_max:
        fail("algo.overlong_cache", cfg.algo.overlong_cache, "must be in (0, algo.overlong_max]")
    rows = cfg.rollout.prompts * cfg.rollout.group_size
    per_update = cfg.algo.updates_per_rollout * cfg.algo.grad_accum_steps
    if rows % per_update:
        fail("algo.updates_per_rollout", cfg.algo.updates_per_rollout,
              f"updates_per_rollout x grad_accum_steps = {per_update} must divide the rollout's "
              f"prompts x group_size = {rows} rows")
    check_optim(cfg)
    check_kernels(cfg)
    check_mesh(cfg)
    model = model_config(cfg)
    if model.vocab_size < 258:
        fail("model.vocab_size", model.vocab_size, "the RL tasks use the byte tokenizer: needs >= 258")
    need = 64 + cfg.rollout.max_new_tokens
    if need > model.max_position_embeddings:
        fail("rollout.max_new_tokens", cfg.rollout.max_new_tokens,
              f"prompts (up to 64 tokens) + completions exceed max_position_embeddings={model.max_position_embeddings}")
    if not cfg.init_from and cfg.warm_start.steps > 0:
        from m1jax.train.config import validate as validate_train

        try:
            validate_train(cfg.warm_start)
        except ValueError as e:
            raise ValueError(f"warm_start.{str(e).removeprefix('config.')}") from None
    return model
