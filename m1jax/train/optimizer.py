"""AdamW with MiniMax-M1's settings, warmup + cosine schedule, global-norm clipping, decay masks."""

from __future__ import annotations

import re

import jax
import optax


def lr_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> lr over ``warmup_steps``, then cosine down to lr * min_lr_ratio at ``total_steps``."""
    warmup = int(optim_cfg.warmup_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=float(optim_cfg.lr), warmup_steps=warmup,
        decay_steps=max(int(total_steps), warmup + 1), end_value=float(optim_cfg.lr) * float(optim_cfg.min_lr_ratio),
    )


def param_path(path) -> str:
    """A key path of a params pytree as 'layers/3/self_attn/norm/weight'."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def decay_mask(params, no_decay: str):
    """Pytree of bools like ``params``: True where weight decay applies.

    ``no_decay`` is a comma-separated list of regexes searched in each parameter's path; the defaults
    ("norm,embed_tokens") exempt every RMSNorm weight and the input embedding.
    """
    patterns = [re.compile(p.strip()) for p in no_decay.split(",") if p.strip()]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(p.search(param_path(path)) for p in patterns), params
    )


def make_optimizer(optim_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(clip_by_global_norm -> AdamW(schedule, b1, b2, eps, weight_decay on the masked params), schedule)."""
    schedule = lr_schedule(optim_cfg, total_steps)
    parts = []
    if optim_cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.clip_norm)))
    parts.append(optax.adamw(
        schedule, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2), eps=float(optim_cfg.eps),
        weight_decay=float(optim_cfg.weight_decay), mask=lambda p: decay_mask(p, optim_cfg.no_decay),
    ))
    return optax.chain(*parts), schedule
