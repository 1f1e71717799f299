"""Expert parallelism for the MoE block: ``shard_map`` over the ambient mesh.

Scheme (exact, no capacity limit, no token dropping; the ``expert`` mesh axis groups devices):
  1. all-gather the tokens (and their routing) of the expert group over ``expert``;
  2. each device runs ITS experts (E / ep of them) on the token-expert pairs routed to them
     (grouped ``ragged_dot``; pairs of other experts are sorted to the end with weight 0 and skipped);
     the FFN hidden dim ``mlp`` is split over ``tensor`` (partial sums), the weights' ``embed`` dim
     is all-gathered over ``fsdp`` first (FSDP);
  3. psum over ``tensor`` and reduce-scatter over ``expert``: each device gets back its own tokens'
     summed expert outputs.
This all-gather / reduce-scatter form moves ep x the tokens of an all-to-all dispatch; it is the
exact (dropless) first version. A ragged all-to-all dispatch is the next step for large ep.
When the rules do not split tokens over ``expert`` (batch too small) every device already holds the
group's tokens: step 1 is skipped and step 3 is a psum. The dense path stays the test oracle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from m1jax.sharding.rules import active_mesh, logical_to_spec, mesh_axes

TOKEN_AXES = ("batch", "seq", None)
W13_AXES, W2_AXES = ("expert", "embed", "mlp"), ("expert", "mlp", "embed")


def expert_parallel(ffn, x, weights, experts, w1, w3, w2):
    """Routed expert FFN over the ambient mesh, or ``ffn`` on one device when there is no mesh.

    ffn(xt [t, d], weights [t, k], experts [t, k] in [0, E_local] (E_local = skip), w1, w3, w2)
      -> [t, d] fp32: the local grouped FFN.
    x [b, n, d]; weights [b, n, k] fp32; experts [b, n, k] int32; w1, w3 [E, d, F]; w2 [E, F, d].
    Returns y [b, n, d] fp32 (sum over the k routed experts of weight * expert output).
    """
    b, n, d = x.shape
    k = weights.shape[-1]
    mesh = active_mesh()
    if mesh is None or mesh.size == 1:
        return ffn(x.reshape(b * n, d), weights.reshape(-1, k), experts.reshape(-1, k), w1, w3, w2).reshape(b, n, d)

    x_spec = logical_to_spec(TOKEN_AXES, x.shape, mesh)
    r_spec = P(*x_spec[:2], None)
    w13_spec, w2_spec = logical_to_spec(W13_AXES, w1.shape, mesh), logical_to_spec(W2_AXES, w2.shape, mesh)
    ex = mesh_axes(w13_spec[0])  # () when the experts are not split
    token_axes = {a for e in x_spec for a in mesh_axes(e)}
    gather = tuple(a for a in ex if a in token_axes)
    fsdp_13, fsdp_2 = mesh_axes(w13_spec[1]), mesh_axes(w2_spec[2])
    tp = mesh_axes(w13_spec[2])

    def body(x, weights, experts, w1, w3, w2):
        bl, nl, _ = x.shape
        if fsdp_13:
            w1 = jax.lax.all_gather(w1, fsdp_13, axis=1, tiled=True)
            w3 = jax.lax.all_gather(w3, fsdp_13, axis=1, tiled=True)
        if fsdp_2:
            w2 = jax.lax.all_gather(w2, fsdp_2, axis=2, tiled=True)
        xt, wt, et = x.reshape(bl * nl, d), weights.reshape(-1, k), experts.reshape(-1, k)
        if gather:
            xt, wt, et = (jax.lax.all_gather(a, gather, axis=0, tiled=True) for a in (xt, wt, et))
        if tp:  # mark the tokens as split-dependent here, so the backward's psum over ``tensor`` runs on
            xt = _to_varying(xt, tp)  # the [t, d] token gradients rather than on the k-times larger pair rows
        e_local = w1.shape[0]
        first = jax.lax.axis_index(ex) * e_local if ex else 0
        mine = (et >= first) & (et < first + e_local)
        y = ffn(xt, jnp.where(mine, wt, 0.0), jnp.where(mine, et - first, e_local), w1, w3, w2)
        if tp:
            y = jax.lax.psum(y, tp)
        if gather:
            y = jax.lax.psum_scatter(y, gather, scatter_dimension=0, tiled=True)
        rest = tuple(a for a in ex if a not in gather)
        if rest:
            y = jax.lax.psum(y, rest)
        return y.reshape(bl, nl, d)

    return jax.shard_map(
        body, mesh=mesh, in_specs=(x_spec, r_spec, r_spec, w13_spec, w13_spec, w2_spec), out_specs=x_spec,
    )(x, weights, experts, w1, w3, w2)


def _to_varying(x, axes):
    """x, invariant over the manual mesh ``axes``, typed as varying over them (a no-op on values)."""
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, axes, to="varying")
    return jax.lax.pvary(x, axes)
