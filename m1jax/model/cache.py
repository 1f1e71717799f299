"""The hybrid decoding cache: a KV cache per softmax layer, an fp32 state per lightning layer."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from m1jax.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Cache:
    """index: cache slots already written; start [batch]: each row's first valid slot.

    ``index`` is a scalar shared by the batch, or [batch] when rows advance independently (continuous
    batching: a decode slot refilled with a new sequence restarts at its own index).
    Rows of different lengths are LEFT-padded so that they all end at ``index``: row r holds padding in
    slots [0, start[r]) and its tokens from start[r] on, at positions 0, 1, ... (slot - start[r]).
    Padding never reaches a valid token: softmax layers mask those keys and lightning layers add
    nothing to their state there (k = v = 0, and a zero state stays zero under decay).

    layers[i] is (k, v) [batch, max_len, kv_heads, head_dim] for a softmax layer and the lightning
    state [batch, heads, head_dim, head_dim] fp32 for a lightning layer.
    """

    index: jax.Array
    start: jax.Array
    layers: tuple

    @property
    def max_len(self) -> int:
        for entry in self.layers:
            if isinstance(entry, tuple):
                return entry[0].shape[1]
        return 2**31 - 1  # all-lightning models have no length limit

    def replace(self, **kw) -> Cache:
        return dataclasses.replace(self, **kw)

    def repeat(self, n: int) -> Cache:
        """Every row repeated ``n`` times, consecutively (row r -> rows r*n .. r*n+n-1)."""
        rep = lambda a: jnp.repeat(a, n, axis=0)  # noqa: E731
        index = self.index if jnp.ndim(self.index) == 0 else rep(self.index)
        return Cache(index=index, start=rep(self.start), layers=jax.tree.map(rep, self.layers))


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None, start=None) -> Cache:
    """An empty cache for ``batch`` sequences of up to ``max_len`` slots (KV in ``dtype``).

    ``start`` [batch] (default 0): the number of left-padding slots of each row (see Cache).
    """
    dtype = jnp.dtype(dtype or config.dtype)
    c = config
    layers = []
    for i in range(c.num_hidden_layers):
        if c.is_lightning(i):
            layers.append(jnp.zeros((batch, c.num_attention_heads, c.head_dim, c.head_dim), jnp.float32))
        else:
            shape = (batch, max_len, c.num_key_value_heads, c.head_dim)
            layers.append((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)))
    start = jnp.zeros((batch,), jnp.int32) if start is None else jnp.asarray(start, jnp.int32).reshape(batch)
    return Cache(index=jnp.zeros((), jnp.int32), start=start, layers=tuple(layers))
