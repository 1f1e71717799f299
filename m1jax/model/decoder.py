"""The postnorm decoder layer (docs/model.md §5): the residual branch is the NORMED input."""

from __future__ import annotations

from flax import nnx

from m1jax.config import ModelConfig
from m1jax.model.attention import SoftmaxAttention
from m1jax.model.layers import RMSNorm
from m1jax.model.lightning import LightningAttention
from m1jax.model.moe import MoE


class DecoderLayer(nnx.Module):
    """h = norm(x); x1 = a*h + b*attn(h); h2 = norm(x1); out = a'*h2 + b'*moe(h2)."""

    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        c = config
        pd = c.jnp_param_dtype
        self.is_lightning = c.is_lightning(layer)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, param_dtype=pd)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, param_dtype=pd)
        if self.is_lightning:
            self.self_attn = LightningAttention(c, layer, rngs=rngs)
            self.attn_alpha, self.attn_beta = c.layernorm_linear_attention_alpha, c.layernorm_linear_attention_beta
        else:
            self.self_attn = SoftmaxAttention(c, layer, rngs=rngs)
            self.attn_alpha, self.attn_beta = c.layernorm_full_attention_alpha, c.layernorm_full_attention_beta
        self.block_sparse_moe = MoE(c, rngs=rngs)
        self.mlp_alpha, self.mlp_beta = c.layernorm_mlp_alpha, c.layernorm_mlp_beta

    def __call__(self, x, *, positions, segment_ids=None, cache_entry=None, cache_index=None, token_mask=None,
                 kv_start=None, cache_empty: bool = False, pad_mask=None):
        """x [b, n, hidden] -> (x [b, n, hidden], new cache entry, RouterStats).

        token_mask [b, n] excludes padding from router statistics; with a cache, pad_mask [b, n] marks the
        valid (not left-padding) tokens and kv_start [b] each row's first valid cache slot.
        """
        h = self.input_layernorm(x)
        if self.is_lightning:
            a, entry = self.self_attn(h, segment_ids=segment_ids, state=cache_entry, pad_mask=pad_mask)
        else:
            a, entry = self.self_attn(
                h, positions=positions, segment_ids=segment_ids, kv_cache=cache_entry, cache_index=cache_index,
                kv_start=kv_start, cache_empty=cache_empty,
            )
        x = self.attn_alpha * h + self.attn_beta * a
        h = self.post_attention_layernorm(x)
        m, stats = self.block_sparse_moe(h, token_mask=token_mask)
        return self.mlp_alpha * h + self.mlp_beta * m, entry, stats
