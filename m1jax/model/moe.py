"""The MoE block (`block_sparse_moe`): softmax router over all experts, top-k, renormalise, SwiGLU experts.

Three numerically equivalent paths:
  * ``dense``   every expert on every token, combined with the (mostly zero) routing weights; the oracle.
  * ``grouped`` token-expert pairs sorted by expert, run as grouped matmuls (pallas_kernels.grouped_matmul:
                Hopper kernels on H100 / H200, jax.lax.ragged_dot elsewhere); the fast path.
  * ``ep``      expert parallel over the ambient mesh (``moe_ep.py``): tokens meet the devices holding
                their experts, ``grouped`` runs there; ``grouped`` itself when there is no mesh.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from m1jax.config import ModelConfig
from m1jax.model.layers import param
from m1jax.model.moe_ep import expert_parallel, grouped
from pallas_kernels.grouped_matmul import grouped_matmul

MOE_IMPLS = ("grouped", "dense", "ep")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RouterStats:
    """Per-layer routing statistics for the Switch aux loss and load-balance metrics.

    tokens_per_expert [E]: fraction of (valid) tokens sent to each expert, summed over the k slots.
    prob_per_expert [E]: mean router probability of each expert over valid tokens.
    """

    tokens_per_expert: jax.Array
    prob_per_expert: jax.Array

    def aux_loss(self):
        """Switch-style load-balancing loss E * sum_e f_e P_e (== k when perfectly balanced)."""
        return self.tokens_per_expert.shape[-1] * jnp.sum(self.tokens_per_expert * self.prob_per_expert, -1)


def route(logits, k: int):
    """logits [t, E] -> (weights [t, k] renormalised fp32, experts [t, k] int32, probs [t, E] fp32).

    Ties in router probability go to the lower expert index (jax.lax.top_k's order), identically
    for both paths.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    top_p, top_e = jax.lax.top_k(probs, k)
    return top_p / jnp.sum(top_p, axis=-1, keepdims=True), top_e.astype(jnp.int32), probs


class MoE(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        E, D, F = c.num_local_experts, c.hidden_size, c.intermediate_size
        pd = c.jnp_param_dtype
        self.gate = param(rngs, (D, E), ("embed", "expert_logits"), pd)
        self.w1 = param(rngs, (E, D, F), ("expert", "embed", "mlp"), pd)  # gate projection
        self.w3 = param(rngs, (E, D, F), ("expert", "embed", "mlp"), pd)  # up projection
        self.w2 = param(rngs, (E, F, D), ("expert", "mlp", "embed"), pd)  # down projection
        self.top_k = c.num_experts_per_tok
        self.dtype = c.jnp_dtype
        self.impl = "grouped"
        self.matmul_impl = "auto"  # pallas_kernels.grouped_matmul impl of the grouped / ep expert FFN
        # static: the grouped / ep FFN runs its two up projections as one matmul against w1 and w3 interleaved
        # along F (_expert_ffn); False runs two (the A/B baseline of experiments/profile_train.py --parts moe)
        self.fuse_up = True

    def __call__(self, x, *, token_mask=None, impl: str | None = None):
        """x [b, n, hidden] -> (y [b, n, hidden], RouterStats). token_mask [b, n] excludes padding from stats."""
        impl = impl or self.impl
        if impl not in MOE_IMPLS:
            raise ValueError(f"MoE impl must be one of {MOE_IMPLS}, got {impl!r}")
        b, n, d = x.shape
        xt = x.reshape(b * n, d).astype(self.dtype)
        # Router logits in fp32: routing decisions should not flip with the activation dtype.
        logits = jnp.einsum("td,de->te", xt.astype(jnp.float32), self.gate[...].astype(jnp.float32),
                            precision=jax.lax.Precision.HIGHEST)
        weights, experts, probs = route(logits, self.top_k)
        if impl == "ep":
            k = self.top_k
            y = expert_parallel(self._expert_ffn, xt.reshape(b, n, d), weights.reshape(b, n, k),
                                experts.reshape(b, n, k), *self._expert_params())
        else:
            y = (self._dense if impl == "dense" else self._grouped)(xt, weights, experts)
        return y.reshape(b, n, d).astype(self.dtype), self._stats(probs, experts, token_mask)

    def _expert_params(self):
        return (p[...].astype(self.dtype) for p in (self.w1, self.w3, self.w2))

    def _dense(self, xt, weights, experts):
        w1, w3, w2 = self._expert_params()
        f32 = jnp.float32
        h = jax.nn.silu(jnp.einsum("td,edi->tei", xt, w1, preferred_element_type=f32))
        h = (h * jnp.einsum("td,edi->tei", xt, w3, preferred_element_type=f32)).astype(self.dtype)
        y = jnp.einsum("tei,eid->ted", h, w2, preferred_element_type=f32)
        combine = jnp.zeros((xt.shape[0], w1.shape[0]), f32)
        combine = combine.at[jnp.arange(xt.shape[0])[:, None], experts].add(weights)
        return jnp.einsum("ted,te->td", y, combine)

    def _grouped(self, xt, weights, experts):
        w1, w3, w2 = self._expert_params()
        return grouped(lambda rows, sizes: self._expert_ffn(rows, sizes, w1, w3, w2), xt, weights, experts,
                       w1.shape[0])

    def _expert_ffn(self, rows, sizes, w1, w3, w2):
        """SwiGLU experts on rows [m, d] grouped by expert (sizes [E] int32); w1, w3 [E, d, F]; w2 [E, F, d].

        With ``fuse_up`` the two up projections are one grouped matmul against [E, d, 2F] = w1 and w3 interleaved
        column by column ([E, d, F, 2], so a shard of F on the tensor axis stays that device's own columns): one
        launch with twice the columns instead of two, for the forward and both backward products (on an H200 at
        the 1b shape, experiments/results/grouped_matmul_tiles_h200.md: 2.48 vs 2.84 ms for the up part).
        """
        f32 = jnp.float32
        gmm = functools.partial(grouped_matmul, group_sizes=sizes, impl=self.matmul_impl)
        if self.fuse_up:
            e, d, f = w1.shape
            up = gmm(rows, jnp.stack([w1, w3], axis=-1).reshape(e, d, 2 * f)).astype(f32).reshape(-1, f, 2)
            h = jax.nn.silu(up[..., 0]) * up[..., 1]
        else:
            h = jax.nn.silu(gmm(rows, w1).astype(f32)) * gmm(rows, w3).astype(f32)
        return gmm(h.astype(self.dtype), w2).astype(f32)

    @staticmethod
    def _stats(probs, experts, token_mask):
        E = probs.shape[-1]
        m = jnp.ones(probs.shape[0], jnp.float32) if token_mask is None else token_mask.reshape(-1).astype(jnp.float32)
        count = jnp.maximum(jnp.sum(m), 1.0)
        hits = jnp.sum(jax.nn.one_hot(experts, E, dtype=jnp.float32), axis=1)  # [t, E], summed over k
        return RouterStats(
            tokens_per_expert=jnp.sum(hits * m[:, None], 0) / count,
            prob_per_expert=jnp.sum(probs * m[:, None], 0) / count,
        )
