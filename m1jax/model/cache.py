"""The hybrid decoding cache: a KV cache per softmax layer, an fp32 state per lightning layer."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from m1jax.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Cache:
    """index: tokens already processed (shared by the batch).

    layers[i] is (k, v) [batch, max_len, kv_heads, head_dim] for a softmax layer and the lightning
    state [batch, heads, head_dim, head_dim] fp32 for a lightning layer.
    """

    index: jax.Array
    layers: tuple

    @property
    def max_len(self) -> int:
        for entry in self.layers:
            if isinstance(entry, tuple):
                return entry[0].shape[1]
        return 2**31 - 1  # all-lightning models have no length limit

    def replace(self, **kw) -> Cache:
        return dataclasses.replace(self, **kw)


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> Cache:
    """An empty cache for ``batch`` sequences of up to ``max_len`` tokens (KV in ``dtype``)."""
    dtype = jnp.dtype(dtype or config.dtype)
    c = config
    layers = []
    for i in range(c.num_hidden_layers):
        if c.is_lightning(i):
            layers.append(jnp.zeros((batch, c.num_attention_heads, c.head_dim, c.head_dim), jnp.float32))
        else:
            shape = (batch, max_len, c.num_key_value_heads, c.head_dim)
            layers.append((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)))
    return Cache(index=jnp.zeros((), jnp.int32), layers=tuple(layers))
