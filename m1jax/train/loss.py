"""Next-token cross-entropy on packed batches: fp32 logits, targets never cross a document boundary."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from m1jax.model.head import lm_head_logits


def next_token_targets(batch):
    """Packed batch -> (targets [b, n-1] int32, weights [b, n-1] fp32).

    Position t predicts token t + 1 where both are in the same (non-padding) segment and token t + 1
    is marked in ``loss_mask``.
    """
    seg = batch["segment_ids"]
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
    return batch["tokens"][:, 1:], same.astype(jnp.float32) * batch["loss_mask"][:, 1:]


def cross_entropy_sums(logits, batch):
    """logits [b, n, vocab] (cast to fp32) -> (sum of token NLLs, number of targets, number correct)."""
    targets, weights = next_token_targets(batch)
    logits = logits[:, :-1].astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = lse - target_logit
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(nll * weights), jnp.sum(weights), jnp.sum(correct * weights)


def chunked_cross_entropy_sums(hidden, lm_head, batch, *, chunk: int, dtype: str = "float32",
                               precision: str = "highest"):
    """cross_entropy_sums from the final-normed hidden states [b, n, d] (``forward(head=False)``) and the LM head
    [d, vocab], applying the head ``chunk`` positions at a time: each chunk's fp32 logits [b, chunk, vocab] are
    reduced to (logsumexp, target logit, argmax) and dropped, and rematerialised in the backward pass, so neither
    pass holds [b, n, vocab] logits (peak: one chunk's). Same sums as the full head up to summation order."""
    targets, weights = next_token_targets(batch)
    h = hidden[:, :-1]
    b, m, d = h.shape
    chunks = -(-m // chunk)
    pad = chunks * chunk - m
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(b, chunks, chunk, d).swapaxes(0, 1)
    targets, weights = (jnp.pad(a, ((0, 0), (0, pad))).reshape(b, chunks, chunk).swapaxes(0, 1)
                        for a in (targets, weights))

    @jax.checkpoint
    def one(w, h_c, t_c, wt_c):
        logits = lm_head_logits(h_c, w, dtype=dtype, precision=precision)  # [b, chunk, vocab] fp32
        lse = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, axis=-1) == t_c).astype(jnp.float32)
        return jnp.sum((lse - target_logit) * wt_c), jnp.sum(correct * wt_c)

    def body(carry, xs):
        nll, correct = one(lm_head, *xs)
        return (carry[0] + nll, carry[1] + correct), None

    zero = jnp.zeros((), jnp.float32)
    (nll, correct), _ = jax.lax.scan(body, (zero, zero), (h, targets, weights))
    return nll, jnp.sum(weights), correct
