"""RL presets. Usage:

    m1jax rl --config=experiments/rl.py:tiny --workdir=/tmp/rl [--config.loss.name=grpo ...]

  tiny   CPU, minutes: the `add_warmstart` supervised warm start (experiments/pretrain.py) on multi-digit
         addition, then CISPO with a verifier reward; held-out greedy accuracy every few steps.
  tiny_countdown   the same on Countdown (`countdown_warmstart`: 3 numbers up to 12, held-out greedy ~21%).
  1b     GPU: the ~1B-active shape of experiments/pretrain.py:1b with an fp32 LM head; pass a warm-started
         checkpoint with --config.init_from=/path (a train workdir or params checkpoint).
"""

from experiments import pretrain  # an installed package beside m1jax (setup.cfg), importable from any directory
from m1jax.rl.config import default_config
from m1jax.train.config import model_config


def get_config(arg: str = "tiny"):
    if arg in ("tiny", "tiny_countdown"):
        ws = pretrain.get_config("add_warmstart" if arg == "tiny" else "countdown_warmstart")
        cfg = default_config(model_config(ws).replace(lm_head_dtype="float32"))
        cfg.warm_start = ws
        cfg.task = "addition" if arg == "tiny" else "countdown"
        cfg.task_size = ws.data.task_size
        cfg.steps = 200
        max_new = ws.data.task_size + 3 if arg == "tiny" else 16  # a sum and EOS; an expression and EOS
        cfg.rollout.update(prompts=32, group_size=8, max_new_tokens=max_new, temperature=1.0)
        cfg.loss.update(name="cispo", eps_low=1.0, eps_high=4.0)  # M1: lower clip off; weight capped at 5
        cfg.algo.update(updates_per_rollout=4, dynamic_sampling=True)  # as M1 (DAPO's dynamic sampling)
        cfg.optim.update(lr=5e-5, warmup_steps=0, clip_norm=1.0)  # 3e-4 / 1e-3 collapsed, 3e-5 did not move
        cfg.eval.update(every=25, problems=400, samples=4)
        cfg.checkpoint.update(every=25, keep=2)
        cfg.log.every = 25
    elif arg == "1b":
        ws = pretrain.get_config("1b")
        cfg = default_config(model_config(ws).replace(lm_head_dtype="float32"))
        cfg.task, cfg.task_size = "countdown", 6
        cfg.steps = 500
        cfg.rollout.update(prompts=32, group_size=8, max_new_tokens=512, temperature=1.0)
        cfg.loss.update(name="cispo", eps_low=1.0, eps_high=4.0)
        cfg.algo.update(updates_per_rollout=16, grad_accum_steps=2, dynamic_sampling=True)
        cfg.optim.update(lr=1e-6, warmup_steps=0, clip_norm=1.0)
        cfg.eval.update(every=20, problems=500, samples=4)
        cfg.checkpoint.update(every=20, keep=2)
    else:
        raise ValueError(f"unknown preset {arg!r} for experiments/rl.py; choose from ['1b', 'tiny', 'tiny_countdown']")
    return cfg
