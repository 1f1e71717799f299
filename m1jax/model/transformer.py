"""MiniMaxM1: embeddings, the hybrid decoder stack, final norm and the fp32 LM head."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from m1jax.config import ModelConfig
from m1jax.model.cache import Cache, init_cache
from m1jax.model.decoder import DecoderLayer
from m1jax.model.head import lm_head_logits
from m1jax.model.layers import RMSNorm, param
from m1jax.model.moe import RouterStats
from m1jax.sharding import constrain


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ModelOutput:
    logits: jax.Array | None  # [b, n, vocab] float32 (None with forward(head=False))
    cache: Cache | None
    router: RouterStats  # stacked over layers: fields [num_layers, E]
    hidden: jax.Array | None = None  # [b, n, hidden] fp32 after the final norm, with forward(head=False)

    @property
    def aux_loss(self):
        """Mean over layers of the per-layer Switch load-balancing loss (not yet times the coef)."""
        return jnp.mean(self.router.aux_loss())


class MiniMaxM1(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        pd = c.jnp_param_dtype
        self.embed_tokens = param(rngs, (c.vocab_size, c.hidden_size), ("vocab", "embed"), pd)
        self.layers = nnx.List([DecoderLayer(c, i, rngs=rngs) for i in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, param_dtype=pd)
        self.lm_head = param(rngs, (c.hidden_size, c.vocab_size), ("embed", "vocab"), pd)
        self.remat = False  # static: recompute each decoder layer in the backward pass (keeps only layer inputs)

    def __call__(self, tokens, *, segment_ids=None, positions=None):
        """tokens [b, n] int -> logits [b, n, vocab] float32."""
        return self.forward(tokens, segment_ids=segment_ids, positions=positions).logits

    def init_cache(self, batch: int, max_len: int, dtype=None, start=None) -> Cache:
        """An empty cache (``start`` [batch]: left-padding slots per row, see m1jax.model.cache.Cache)."""
        return init_cache(self.config, batch, max_len, dtype, start)

    def forward(self, tokens, *, segment_ids=None, positions=None, cache: Cache | None = None,
                cache_empty: bool = False, logits_slice: tuple[int, int] | None = None,
                head: bool = True) -> ModelOutput:
        """Full forward, or with ``cache`` the next chunk of tokens (prefill or one decode step).

        segment_ids [b, n] (packed sequences; 0 marks padding, excluded from router statistics)
        makes tokens of different segments independent; positions default to 0..n-1, or with a cache
        to each token's slot minus its row's left padding (cache.start). With a cache, tokens in row r's
        padding slots (< cache.start[r]) are ignored by every later token. ``cache_empty`` (static) promises
        that the cache holds nothing yet, so a prefill attends within its own tokens only. ``logits_slice``
        (static (start, stop)) runs the LM head on those positions only (logits [b, stop - start, vocab]).
        ``head=False`` (static) skips the LM head and returns the final-normed fp32 ``hidden`` instead (for a
        loss that applies the head in chunks: m1jax.train.loss.chunked_cross_entropy_sums).
        """
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
        if cache is not None and segment_ids is not None:
            raise ValueError("segment_ids (packed sequences) cannot be combined with a decoding cache")
        b, n = tokens.shape
        c = self.config
        if cache is not None and n > cache.max_len:  # the write would be clamped: wrong logits, silently
            raise ValueError(f"{n} tokens do not fit a cache of {cache.max_len} slots")
        index = None if cache is None else cache.index
        token_mask = None if segment_ids is None else segment_ids != 0
        pad_mask = None
        if cache is not None:
            slots = jnp.reshape(index, (-1, 1)) + jnp.arange(n)  # [1, n], or [b, n] with a per-row index
            if positions is None:
                positions = jnp.maximum(slots - cache.start[:, None], 0)
            if n > 1:  # a decode step's slot is never padding
                pad_mask = token_mask = slots >= cache.start[:, None]
        elif positions is None:
            positions = jnp.broadcast_to(jnp.arange(n), (b, n))

        # The table is gathered over its FSDP dim first: XLA then looks up rows with the vocab split over
        # devices (masked gather + all-reduce) instead of replicating the activations.
        table = constrain(self.embed_tokens[...], ("vocab", None))
        x = jnp.take(table, tokens, axis=0).astype(c.jnp_dtype)
        x = constrain(x, ("batch", "seq", "hidden"))
        entries, stats = [], []
        def call(layer, *args):  # cache_empty is static: closed over, never an argument remat could trace
            return _call_layer(layer, *args, cache_empty=cache_empty)

        call = nnx.remat(call) if self.remat and cache is None else call
        for i, layer in enumerate(self.layers):
            entry = None if cache is None else cache.layers[i]
            x, entry, st = call(layer, x, positions, segment_ids, entry, index, token_mask,
                                None if cache is None else cache.start, pad_mask)
            x = constrain(x, ("batch", "seq", "hidden"))
            entries.append(entry)
            stats.append(st)
        # M1's LM head runs in fp32 (final norm and matmul) to keep train/inference probabilities aligned.
        if logits_slice is not None:
            x = x[:, logits_slice[0]:logits_slice[1]]
        h = self.norm(x.astype(jnp.float32))
        new_cache = None if cache is None else Cache(index=cache.index + n, start=cache.start, layers=tuple(entries))
        router = jax.tree.map(lambda *xs: jnp.stack(xs), *stats)
        if not head:
            return ModelOutput(logits=None, cache=new_cache, router=router, hidden=h)
        logits = lm_head_logits(h, self.lm_head[...], dtype=c.lm_head_dtype, precision=c.lm_head_precision)
        logits = constrain(logits, ("batch", "seq", "vocab"))
        return ModelOutput(logits=logits, cache=new_cache, router=router)


def _call_layer(layer, x, positions, segment_ids, cache_entry, cache_index, token_mask, kv_start, pad_mask, *,
                cache_empty):
    return layer(x, positions=positions, segment_ids=segment_ids, cache_entry=cache_entry, cache_index=cache_index,
                 token_mask=token_mask, kv_start=kv_start, cache_empty=cache_empty, pad_mask=pad_mask)
