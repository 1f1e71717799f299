"""Autoregressive sampling: one jitted prefill, then a jitted scan of decode steps (fixed shapes)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from m1jax.model import MiniMaxM1


def _pick(logits, key, temperature):
    """logits [b, vocab] fp32 -> next tokens [b]; greedy when temperature == 0."""
    if temperature == 0.0:
        return jnp.argmax(logits, -1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


@functools.partial(nnx.jit, static_argnames=("max_new_tokens", "temperature"))
def generate(model: MiniMaxM1, prompt, key, *, max_new_tokens: int, temperature: float = 0.0):
    """prompt [b, n] int -> (tokens [b, max_new_tokens], their log-probs [b, max_new_tokens] fp32).

    The KV cache holds prompt + generated tokens; lightning layers carry their fp32 state.
    """
    b, n = prompt.shape
    cache = model.init_cache(b, n + max_new_tokens)
    out = model.forward(prompt, cache=cache)
    graphdef, params = nnx.split(model)

    def step(carry, key):
        logits, cache = carry
        tok = _pick(logits, key, temperature)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tok[:, None], -1)[:, 0]
        out = nnx.merge(graphdef, params).forward(tok[:, None], cache=cache)
        return (out.logits[:, -1], out.cache), (tok, logp)

    keys = jax.random.split(key, max_new_tokens)
    _, (tokens, logps) = jax.lax.scan(step, (out.logits[:, -1], out.cache), keys)
    return tokens.T, logps.T
