"""Policy-gradient losses of MiniMax-M1's RL stage (CISPO) and the baselines it is compared with (GRPO, DAPO).

Pure functions of per-token log-probabilities, for jit / grad. Shapes: ``logp`` (the learner's, differentiated),
``old_logp`` (the sampling policy's) and ``mask`` (1 on completion tokens that count, 0 on prompt / padding)
are [batch, seq]; ``advantages`` is [batch] (one per completion, broadcast over its tokens) or [batch, seq].
Each returns (loss to MINIMISE, metrics dict of scalars). The importance ratio is r_t = exp(logp - old_logp).

Clip ranges are OFFSETS from 1 everywhere here: a ratio is clipped to [1 - eps_low, 1 + eps_high]
(so eps_high=1.0 caps the CISPO weight at 2; frameworks that take an absolute cap need cap - 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def group_advantages(rewards, eps: float = 1e-6):
    """rewards [groups, G] (G completions per prompt) -> A = (R - mean R) / (std R + eps) within each group."""
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [groups, group_size], got shape {rewards.shape}")
    mean = jnp.mean(rewards, axis=-1, keepdims=True)
    return (rewards - mean) / (jnp.std(rewards, axis=-1, keepdims=True) + eps)


def dynamic_sampling_mask(correct):
    """DAPO's dynamic sampling: correct [groups, G] bool -> keep [groups] bool, True where
    0 < #correct < G (groups that all pass or all fail have zero advantage and give no gradient)."""
    n = jnp.sum(jnp.asarray(correct, jnp.int32), axis=-1)
    return (n > 0) & (n < jnp.shape(correct)[-1])


def overlong_penalty(lengths, max_len: int, cache_len: int):
    """DAPO's soft overlong punishment: 0 up to max_len - cache_len, then linear down to -1 at max_len
    (and -1 beyond)."""
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    over = jnp.asarray(lengths, jnp.float32) - (max_len - cache_len)
    return -jnp.clip(over / cache_len, 0.0, 1.0)


def _check(logp, old_logp, advantages, mask):
    logp, old_logp, mask = (jnp.asarray(a) for a in (logp, old_logp, mask))
    if logp.ndim != 2:
        raise ValueError(f"logp must be [batch, seq], got shape {logp.shape}")
    for name, a in (("old_logp", old_logp), ("mask", mask)):
        if a.shape != logp.shape:
            raise ValueError(f"{name} shape {a.shape} differs from logp's {logp.shape}")
    advantages = jnp.asarray(advantages, jnp.float32)
    if advantages.shape == logp.shape[:1]:
        advantages = advantages[:, None]
    elif advantages.shape != logp.shape:
        raise ValueError(f"advantages must be [batch] = {logp.shape[:1]} or [batch, seq] = {logp.shape}, "
                         f"got {advantages.shape}")
    return logp.astype(jnp.float32), old_logp.astype(jnp.float32), advantages, mask.astype(jnp.float32)


def _ratio_metrics(ratio, mask, clipped):
    n = jnp.maximum(jnp.sum(mask), 1.0)
    big = jnp.finfo(jnp.float32).max
    return {
        "clip_fraction": jnp.sum(clipped * mask) / n,
        "ratio_mean": jnp.sum(ratio * mask) / n,
        "ratio_min": jnp.min(jnp.where(mask > 0, ratio, big)),
        "ratio_max": jnp.max(jnp.where(mask > 0, ratio, -big)),
        "tokens": jnp.sum(mask),
    }


def cispo_loss(logp, old_logp, advantages, mask, *, eps_low: float = 1.0, eps_high: float = 1.0,
               trust_region_mask: bool = False):
    """CISPO (MiniMax-M1 report, Eq. 4-5): clip the importance-sampling WEIGHT, not the update.

        J = 1 / sum_i |o_i| * sum_i sum_t sg(clip(r_t, 1 - eps_low, 1 + eps_high)) * A_i * log pi(o_t)

    Gradients flow only through log pi, so every token contributes (no token is dropped as in PPO / GRPO
    clipping); normalised over all tokens of the batch; no KL. M1 leaves the lower clip off (the default
    eps_low=1.0: ratios are >= 0) and tunes eps_high. ``trust_region_mask`` (Eq. 6-7) zeroes tokens with
    A > 0 and r > 1 + eps_high or A < 0 and r < 1 - eps_low, recovering PPO's trust region.
    """
    logp, old_logp, adv, mask = _check(logp, old_logp, advantages, mask)
    ratio = jnp.exp(logp - old_logp)
    clipped = (ratio > 1 + eps_high) | (ratio < 1 - eps_low)
    weight = jax.lax.stop_gradient(jnp.clip(ratio, 1 - eps_low, 1 + eps_high))
    if trust_region_mask:
        outside = ((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low))
        mask = mask * (1.0 - jax.lax.stop_gradient(outside.astype(jnp.float32)))
    n = jnp.maximum(jnp.sum(mask), 1.0)
    loss = -jnp.sum(weight * adv * logp * mask) / n
    return loss, _ratio_metrics(jax.lax.stop_gradient(ratio), mask, clipped)


def _ppo_terms(logp, old_logp, adv, eps_low, eps_high):
    ratio = jnp.exp(logp - old_logp)
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - eps_low, 1 + eps_high) * adv)
    clipped = ((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low))
    return ratio, surrogate, clipped


def grpo_loss(logp, old_logp, advantages, mask, *, eps: float = 0.2, beta: float = 0.04, ref_logp=None):
    """GRPO (arXiv 2402.03300 §4.1): PPO's clipped surrogate with a KL penalty to a reference policy,

        J = 1/G sum_i 1/|o_i| sum_t [min(r A, clip(r, 1 - eps, 1 + eps) A) - beta KL_t],
        KL_t = pi_ref / pi - log(pi_ref / pi) - 1     (the unbiased estimator; needs ``ref_logp``)

    averaged per completion, then over completions. ``beta`` is ignored without ``ref_logp``.
    """
    logp, old_logp, adv, mask = _check(logp, old_logp, advantages, mask)
    ratio, surrogate, clipped = _ppo_terms(logp, old_logp, adv, eps, eps)
    per_token = surrogate
    metrics = {}
    if ref_logp is not None:
        log_ref_ratio = jnp.asarray(ref_logp, jnp.float32) - logp
        kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0
        per_token = per_token - beta * kl
        metrics["kl"] = jnp.sum(kl * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    lengths = jnp.sum(mask, axis=-1)
    per_sample = jnp.sum(per_token * mask, axis=-1) / jnp.maximum(lengths, 1.0)
    n_samples = jnp.maximum(jnp.sum(lengths > 0), 1)
    loss = -jnp.sum(per_sample) / n_samples
    return loss, {**_ratio_metrics(jax.lax.stop_gradient(ratio), mask, clipped), **metrics}


def dapo_loss(logp, old_logp, advantages, mask, *, eps_low: float = 0.2, eps_high: float = 0.28):
    """DAPO (arXiv 2503.14476): GRPO's clipped surrogate without KL, with clip-higher (eps_high > eps_low)
    and token-level normalisation (divide by all tokens of the batch). Dynamic sampling and overlong
    shaping act on the data and rewards: ``dynamic_sampling_mask``, ``overlong_penalty``."""
    logp, old_logp, adv, mask = _check(logp, old_logp, advantages, mask)
    ratio, surrogate, clipped = _ppo_terms(logp, old_logp, adv, eps_low, eps_high)
    loss = -jnp.sum(surrogate * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, _ratio_metrics(jax.lax.stop_gradient(ratio), mask, clipped)
