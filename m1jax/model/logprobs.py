"""Per-token log-probabilities from logits: the one definition the sampler, the RL learner and the tests share."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def scaled_log_softmax(logits, temperature: float = 1.0):
    """log softmax(logits / temperature) in fp32 over the last axis; temperature 0 means 1 (greedy decoding
    reports the log-probs of the untempered distribution)."""
    logits = logits.astype(jnp.float32)
    if temperature not in (0, 0.0, 1, 1.0):
        logits = logits / temperature
    return jax.nn.log_softmax(logits, axis=-1)


def token_logprobs(logits, tokens, temperature: float = 1.0):
    """logits [..., vocab], tokens [...] int -> log p(token) [...] fp32 under softmax(logits / temperature)."""
    logp = scaled_log_softmax(logits, temperature)
    return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
