"""Policy-gradient losses of MiniMax-M1's RL stage (CISPO) and the baselines it is compared with (GRPO, DAPO).

Pure functions of per-token log-probabilities, for jit / grad. Shapes: ``logp`` (the learner's, differentiated),
``old_logp`` (the sampling policy's) and ``mask`` (true / > 0 on completion tokens that count, 0 on prompt /
padding) are [batch, seq]; ``advantages`` is [batch] (one per completion, broadcast over its tokens) or
[batch, seq]. Each loss returns (loss to MINIMISE, metrics dict of scalars). The importance ratio is
r_t = exp(logp - old_logp).

Clip ranges are OFFSETS from 1 everywhere here: a ratio is clipped to [1 - eps_low, 1 + eps_high]
(so eps_high=1.0 caps the CISPO weight at 2; frameworks that take an absolute cap need cap - 1).

Masked positions are inert: every per-token input is replaced by 0 there before any exp / log / min, so
whatever a masked position holds (-inf, NaN, 1e30) the loss, the metrics and the gradient are those of the
same batch with zeros there, and the gradient w.r.t. a masked ``logp`` is exactly 0.

Micro-batching: pass ``normalizer`` = the whole rollout batch's count (tokens for CISPO / DAPO, samples for
GRPO) to every micro-batch call; the micro-batch losses and gradients then sum to the full-batch ones.

Metrics (the same definitions for every loss, over unmasked tokens; scalars, no gradient):
  tokens                 number of unmasked tokens; samples: number of rows with at least one
  clip_fraction          fraction of tokens whose ratio lies outside [1 - eps_low, 1 + eps_high]
                         (GRPO: [1 - eps, 1 + eps]); clipped_tokens is the count
  active_clip_fraction   fraction of tokens where the clip changed the gradient; active_clipped_tokens is the
                         count. PPO-style (GRPO, DAPO, CISPO with trust_region_mask): A > 0 and r > 1 + eps_high
                         or A < 0 and r < 1 - eps_low, tokens whose gradient is zeroed. CISPO without the mask:
                         tokens whose IS weight was clipped and A != 0 (their gradient is rescaled, not dropped)
  ratio_mean / ratio_min / ratio_max   of r over tokens (all 1.0 when no token is unmasked)
  entropy                masked mean of the optional ``entropy`` [batch, seq] argument (see ``token_entropy``)
  kl                     GRPO with ``ref_logp``: masked mean of the KL estimator
Token means of micro-batches combine as sum(metric * tokens) / sum(tokens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def group_advantages(rewards, eps: float = 1e-6, *, scale: str = "std"):
    """rewards [groups, G] (G completions per prompt) -> advantages [groups, G] fp32 within each group:
    ``scale="std"``: A = (R - mean R) / (std R + eps) (GRPO); ``scale="none"``: A = R - mean R (Dr.GRPO).

    A group whose rewards are all equal gets exactly 0 (not the rounding residue of R - mean R, which for
    rewards such as 0.7 is non-zero, same-signed and, divided by a tiny std, of order 0.1)."""
    if scale not in ("std", "none"):
        raise ValueError(f"unknown scale {scale!r}; choose from ['std', 'none']")
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [groups, group_size], got shape {rewards.shape}")
    centred = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
    if scale == "std":
        centred = centred / (jnp.std(rewards, axis=-1, keepdims=True) + eps)
    constant = jnp.max(rewards, axis=-1, keepdims=True) == jnp.min(rewards, axis=-1, keepdims=True)
    return jnp.where(constant, 0.0, centred)


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


def masked_mean(x, mask):
    """Mean of x over the positions where mask > 0 (fp32; 0 when there are none). Masked entries of x are
    never read, so they may hold NaN / inf."""
    m = jnp.asarray(mask) > 0
    x = jnp.where(m, jnp.asarray(x, jnp.float32), 0.0)
    return jnp.sum(x) / jnp.maximum(jnp.sum(m, dtype=jnp.float32), 1.0)


def token_entropy(logits):
    """logits [..., vocab] -> entropy [...] fp32 of softmax(logits) in nats, computed from log_softmax (stable
    for large logits; -inf logits, i.e. excluded vocabulary entries, contribute 0)."""
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(p * jnp.where(p > 0, logp, 0.0), axis=-1)


def _check(logp, old_logp, advantages, mask, **optional):
    """Validate shapes, cast to fp32, broadcast advantages to [batch, seq], and zero every per-token input at
    masked positions (before any arithmetic, so neither the value nor the gradient can see what was there).
    ``optional`` are further [batch, seq] arrays (None passes through)."""
    logp, old_logp, mask = (jnp.asarray(a) for a in (logp, old_logp, mask))
    if logp.ndim != 2:
        raise ValueError(f"logp must be [batch, seq], got shape {logp.shape}")
    named = {"old_logp": old_logp, "mask": mask, **{k: jnp.asarray(v) for k, v in optional.items() if v is not None}}
    for name, a in named.items():
        if a.shape != logp.shape:
            raise ValueError(f"{name} shape {a.shape} differs from logp's {logp.shape}")
    advantages = jnp.asarray(advantages, jnp.float32)
    if advantages.shape == logp.shape[:1]:
        advantages = advantages[:, None]
    elif advantages.shape != logp.shape:
        raise ValueError(f"advantages must be [batch] = {logp.shape[:1]} or [batch, seq] = {logp.shape}, "
                         f"got {advantages.shape}")
    m = mask > 0

    def clean(x):
        return jnp.where(m, jnp.asarray(x, jnp.float32), 0.0)

    extra = {k: None if v is None else clean(v) for k, v in optional.items()}
    return clean(logp), clean(old_logp), clean(jnp.broadcast_to(advantages, logp.shape)), m, extra


def _normalizer(normalizer, default):
    """The count a loss divides by: ``normalizer`` if given (a count, e.g. the rollout batch's), else the
    call's own; at least 1 so an empty batch gives loss 0 rather than NaN."""
    n = default if normalizer is None else jnp.asarray(normalizer, jnp.float32)
    return jnp.maximum(n, 1.0)


def _ppo_clipped(ratio, adv, eps_low, eps_high):
    """Where PPO's min() takes the clipped branch (its gradient is zero): A > 0, r > 1 + eps_high or A < 0,
    r < 1 - eps_low."""
    return ((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low))


def _metrics(ratio, m, eps_low, eps_high, active, entropy):
    """The metrics shared by all losses (see the module docstring)."""
    tokens = jnp.sum(m, dtype=jnp.float32)
    n = jnp.maximum(tokens, 1.0)
    outside = (ratio < 1 - eps_low) | (ratio > 1 + eps_high)
    clipped = jnp.sum(outside & m, dtype=jnp.float32)
    active = jnp.sum(active & m, dtype=jnp.float32)
    any_token = tokens > 0
    metrics = {
        "tokens": tokens,
        "samples": jnp.sum(jnp.any(m, axis=-1), dtype=jnp.float32),
        "clipped_tokens": clipped,
        "clip_fraction": clipped / n,
        "active_clipped_tokens": active,
        "active_clip_fraction": active / n,
        "ratio_mean": jnp.where(any_token, jnp.sum(jnp.where(m, ratio, 0.0)) / n, 1.0),
        "ratio_min": jnp.where(any_token, jnp.min(jnp.where(m, ratio, jnp.inf)), 1.0),
        "ratio_max": jnp.where(any_token, jnp.max(jnp.where(m, ratio, -jnp.inf)), 1.0),
    }
    if entropy is not None:
        metrics["entropy"] = jnp.sum(entropy) / n  # already zero at masked positions
    return jax.lax.stop_gradient(metrics)


def cispo_loss(logp, old_logp, advantages, mask, *, eps_low: float = 1.0, eps_high: float = 1.0,
               trust_region_mask: bool = False, normalizer=None, entropy=None):
    """CISPO (MiniMax-M1 report, Eq. 4-5): clip the importance-sampling WEIGHT, not the update.

        J = 1 / sum_i |o_i| * sum_i sum_t sg(clip(r_t, 1 - eps_low, 1 + eps_high)) * A_i * log pi(o_t)

    Gradients flow only through log pi, so every token contributes (no token is dropped as in PPO / GRPO
    clipping); normalised over all tokens of the batch; no KL. M1 leaves the lower clip off (the default
    eps_low=1.0: ratios are >= 0) and tunes eps_high. ``trust_region_mask`` (Eq. 6-7) multiplies each token by
    M_t = 0 where A > 0 and r > 1 + eps_high or A < 0 and r < 1 - eps_low (else 1), recovering PPO's trust
    region; the normaliser stays ALL tokens sum_i |o_i|, not the kept ones.

    ``normalizer``: the number of completion tokens of the whole rollout batch (default: this call's
    sum(mask)); pass it to every micro-batch so their gradients sum to the full batch's.
    ``entropy``: optional per-token entropy [batch, seq], reported as the ``entropy`` metric.
    """
    logp, old_logp, adv, m, extra = _check(logp, old_logp, advantages, mask, entropy=entropy)
    ratio = jnp.exp(logp - old_logp)
    weight = jax.lax.stop_gradient(jnp.clip(ratio, 1 - eps_low, 1 + eps_high))
    n = _normalizer(normalizer, jnp.sum(m, dtype=jnp.float32))
    if trust_region_mask:
        active = _ppo_clipped(ratio, adv, eps_low, eps_high)
        keep = m & ~active
    else:
        active = ((ratio < 1 - eps_low) | (ratio > 1 + eps_high)) & (adv != 0)
        keep = m
    loss = -jnp.sum(jnp.where(keep, weight * adv * logp, 0.0)) / n
    return loss, _metrics(ratio, m, eps_low, eps_high, active, extra["entropy"])


def _ppo_terms(logp, old_logp, adv, eps_low, eps_high):
    ratio = jnp.exp(logp - old_logp)
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - eps_low, 1 + eps_high) * adv)
    return ratio, surrogate, _ppo_clipped(ratio, adv, eps_low, eps_high)


def grpo_loss(logp, old_logp, advantages, mask, *, eps: float = 0.2, beta: float = 0.04, ref_logp=None,
              normalizer=None, entropy=None):
    """GRPO (arXiv 2402.03300 §4.1): PPO's clipped surrogate with a KL penalty to a reference policy,

        J = 1/G sum_i 1/|o_i| sum_t [min(r A, clip(r, 1 - eps, 1 + eps) A) - beta KL_t],
        KL_t = pi_ref / pi - log(pi_ref / pi) - 1     (the unbiased estimator; needs ``ref_logp`` [batch, seq])

    averaged per completion (each by its own length), then over completions. ``beta`` is ignored without
    ``ref_logp``. ``normalizer``: G, the number of completions of the whole rollout batch (default: the rows
    of this call with at least one unmasked token); pass it to every micro-batch so their gradients sum to
    the full batch's. ``entropy``: optional per-token entropy [batch, seq], reported as a metric.
    """
    logp, old_logp, adv, m, extra = _check(logp, old_logp, advantages, mask, ref_logp=ref_logp, entropy=entropy)
    ratio, per_token, active = _ppo_terms(logp, old_logp, adv, eps, eps)
    kl = None
    if extra["ref_logp"] is not None:
        log_ref_ratio = extra["ref_logp"] - logp  # 0 at masked positions, so kl is 0 there
        kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0
        per_token = per_token - beta * kl
    lengths = jnp.sum(m, axis=-1, dtype=jnp.float32)
    per_sample = jnp.sum(jnp.where(m, per_token, 0.0), axis=-1) / jnp.maximum(lengths, 1.0)
    loss = -jnp.sum(per_sample) / _normalizer(normalizer, jnp.sum(lengths > 0, dtype=jnp.float32))
    metrics = _metrics(ratio, m, eps, eps, active, extra["entropy"])
    if kl is not None:
        metrics["kl"] = jax.lax.stop_gradient(jnp.sum(kl) / jnp.maximum(metrics["tokens"], 1.0))
    return loss, metrics


def dapo_loss(logp, old_logp, advantages, mask, *, eps_low: float = 0.2, eps_high: float = 0.28,
              normalizer=None, entropy=None):
    """DAPO (arXiv 2503.14476): GRPO's clipped surrogate without KL, with clip-higher (eps_high > eps_low)
    and token-level normalisation (divide by all tokens of the batch). Dynamic sampling and overlong
    shaping act on the data and rewards: ``dynamic_sampling_mask``, ``overlong_penalty``.

    ``normalizer``: the number of completion tokens of the whole rollout batch (default: this call's
    sum(mask)); pass it to every micro-batch so their gradients sum to the full batch's.
    ``entropy``: optional per-token entropy [batch, seq], reported as a metric."""
    logp, old_logp, adv, m, extra = _check(logp, old_logp, advantages, mask, entropy=entropy)
    ratio, surrogate, active = _ppo_terms(logp, old_logp, adv, eps_low, eps_high)
    n = _normalizer(normalizer, jnp.sum(m, dtype=jnp.float32))
    loss = -jnp.sum(jnp.where(m, surrogate, 0.0)) / n
    return loss, _metrics(ratio, m, eps_low, eps_high, active, extra["entropy"])


LOSSES = {"cispo": cispo_loss, "grpo": grpo_loss, "dapo": dapo_loss}


def get_loss(name: str):
    """The loss function registered under ``name`` in ``LOSSES``."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}") from None
