"""The RL learner: rollout -> learner batch, teacher-forced log-probs, and the jitted policy-gradient update.

A learner batch holds R rows of LEFT-padded prompt (to P_len = m1jax.sampling.prompt_bucket) followed by
T = max_new_tokens completion slots:
  tokens [R, P_len + T] int32, segment_ids [R, P_len + T] (0 on the left padding, so no layer lets it reach
  a real token), positions [R, P_len + T] (0 at each prompt's first token), targets [R, T] (the completion),
  mask [R, T] (1 on generated tokens, the stop token included), advantages [R], sampler_logp [R, T],
  old_logp [R, T] and (GRPO with a KL term) ref_logp [R, T].
The logits of slots P_len - 1 .. P_len + T - 2 score the completion, through the same token_logprobs
(softmax(logits / temperature)) as the sampler.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from m1jax.model.logprobs import token_logprobs
from m1jax.rl.losses import get_loss, token_entropy
from m1jax.sampling import prompt_bucket

_SUMS = ("tokens", "samples", "clipped_tokens", "active_clipped_tokens")


def learner_batch(prompts, tokens, lengths, sampler_logp, advantages, pad_id: int = 0) -> dict:
    """Host arrays of one rollout (prompts: token-id lists, one per row) -> the learner batch (numpy)."""
    tokens, sampler_logp = np.asarray(tokens, np.int32), np.asarray(sampler_logp, np.float32)
    rows, T = tokens.shape
    lengths = np.asarray(lengths, np.int32)
    p_len = prompt_bucket(max(len(p) for p in prompts))
    seq = np.full((rows, p_len + T), pad_id, np.int32)
    start = np.zeros(rows, np.int32)
    for r, p in enumerate(prompts):
        start[r] = p_len - len(p)
        seq[r, start[r]:p_len] = p
    seq[:, p_len:] = tokens
    slots = np.arange(p_len + T)[None]
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    return {
        "tokens": seq, "segment_ids": (slots >= start[:, None]).astype(np.int32),
        "positions": np.maximum(slots - start[:, None], 0).astype(np.int32),
        "targets": tokens, "mask": mask, "advantages": np.asarray(advantages, np.float32),
        "sampler_logp": np.where(mask > 0, sampler_logp, 0.0).astype(np.float32),
    }


def _policy_logits(graphdef, params, batch):
    """Completion logits [b, T, vocab] fp32 of a learner (micro-)batch."""
    T = batch["targets"].shape[1]
    n = batch["tokens"].shape[1]
    out = nnx.merge(graphdef, params).forward(batch["tokens"], segment_ids=batch["segment_ids"],
                                              positions=batch["positions"], logits_slice=(n - T - 1, n - 1))
    return out.logits, out


def make_logprob_fn(graphdef, temperature: float, micro_batches: int = 1):
    """jit(params, batch) -> log-probs [R, T] of the batch's completions (no gradient), micro-batched."""

    def one(params, mb):
        logits, _ = _policy_logits(graphdef, params, mb)
        return token_logprobs(logits, mb["targets"], temperature)

    def fn(params, batch):
        keys = ("tokens", "segment_ids", "positions", "targets")
        mbs = {k: _split(batch[k], micro_batches) for k in keys}
        return jax.lax.map(lambda mb: one(params, mb), mbs).reshape(batch["targets"].shape)

    return jax.jit(fn)


def _split(x, n: int):
    """[R, ...] -> [n, R / n, ...] (contiguous micro-batches)."""
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])


def _combine(metrics: dict) -> dict:
    """Metrics stacked over micro-batches [A] -> one dict: counts summed, min / max, the rest token-weighted."""
    w = metrics["tokens"]
    out = {}
    for k, v in metrics.items():
        if k in _SUMS:
            out[k] = jnp.sum(v)
        elif k == "ratio_min":
            out[k] = jnp.min(v)
        elif k == "ratio_max":
            out[k] = jnp.max(v)
        else:
            out[k] = jnp.sum(v * w) / jnp.maximum(jnp.sum(w), 1.0)
    return out


def make_update_step(graphdef, tx: optax.GradientTransformation, schedule, *, loss: str, loss_kwargs: dict,
                     temperature: float, aux_loss_coef: float = 0.0, grad_accum_steps: int = 1,
                     state_shardings=None, batch_shardings=None):
    """jit(state, minibatch) -> (state, metrics): one optimizer step on a minibatch, the state donated.

    The loss is normalised by the whole minibatch (its completion tokens, or its samples for GRPO), so its
    ``grad_accum_steps`` micro-batches give exactly the minibatch's gradient. A step whose loss or gradient
    is not finite leaves the state unchanged (metrics["finite"] = 0).
    """
    loss_fn = functools.partial(get_loss(loss), **loss_kwargs)
    A = int(grad_accum_steps)
    token_level = loss != "grpo"

    def micro(params, mb, normalizer):
        logits, out = _policy_logits(graphdef, params, mb)
        logp = token_logprobs(logits, mb["targets"], temperature)
        entropy = token_entropy(logits / temperature)  # of the sampling distribution
        extra = {"ref_logp": mb["ref_logp"]} if "ref_logp" in mb else {}
        value, metrics = loss_fn(logp, mb["old_logp"], mb["advantages"], mb["mask"], normalizer=normalizer,
                                 entropy=jax.lax.stop_gradient(entropy), **extra)
        metrics = {**metrics, "loss": value}
        return value + aux_loss_coef * out.aux_loss / A, metrics

    grad_fn = jax.value_and_grad(micro, has_aux=True)

    def step(state, batch):
        params = state["params"]
        mask = batch["mask"]
        normalizer = jnp.sum(mask) if token_level else jnp.sum(jnp.any(mask > 0, axis=-1))
        normalizer = jnp.maximum(normalizer, 1.0)
        if A == 1:
            (total, metrics), grads = grad_fn(params, batch, normalizer)
        else:
            def body(g_sum, mb):
                (value, m), g = grad_fn(params, mb, normalizer)
                return jax.tree.map(jnp.add, g_sum, g), (value, m)

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            grads, (values, stacked) = jax.lax.scan(body, zeros, jax.tree.map(lambda x: _split(x, A), batch))
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
            total = jnp.sum(values)
            metrics = _combine(stacked)
            metrics["loss"] = jnp.sum(stacked["loss"])
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "step": state["step"] + 1}
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        metrics = {**metrics, "grad_norm": grad_norm, "lr": schedule(state["step"]),
                   "finite": finite.astype(jnp.float32)}
        return new, metrics

    if state_shardings is None:
        return jax.jit(step, donate_argnums=0)
    return jax.jit(step, donate_argnums=0, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, None))


def mismatch_metrics(sampler_logp, learner_logp, mask) -> dict:
    """Sampler-vs-learner agreement on the sampled tokens (the M1 report's Fig. 3 measure): Pearson
    correlation of token probabilities and mean |delta log p| (numpy, over unmasked tokens)."""
    m = np.asarray(mask) > 0
    a, b = np.asarray(sampler_logp, np.float64)[m], np.asarray(learner_logp, np.float64)[m]
    if a.size < 2:
        return {"mismatch/prob_corr": float("nan"), "mismatch/mean_abs_logp": float("nan")}
    pa, pb = np.exp(a), np.exp(b)
    corr = float(np.corrcoef(pa, pb)[0, 1]) if pa.std() > 0 and pb.std() > 0 else 1.0
    return {"mismatch/prob_corr": corr, "mismatch/mean_abs_logp": float(np.mean(np.abs(a - b))),
            "mismatch/max_abs_logp": float(np.max(np.abs(a - b)))}
