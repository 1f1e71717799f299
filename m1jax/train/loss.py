"""Next-token cross-entropy on packed batches: fp32 logits, targets never cross a document boundary."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
