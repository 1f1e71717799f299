"""Expert parallelism for the MoE block: ``shard_map`` over the ambient mesh, tokens sent to their experts.

Exact (dropless: no capacity factor, no token ever dropped); the dense MoE path is the test oracle.
Per device, with ``n`` devices in the ``expert`` group that split the tokens (the dispatch group):
  1. sort the local token-expert pairs by (destination device, local expert) and gather their rows;
  2. exchange counts (an all-gather of an [n, E_local] table), then send each device the rows of its
     experts with a ragged all-to-all; the receiver's buffer comes out grouped by local expert
     (sources in order inside a group), ready for the grouped ``ragged_dot`` FFN (``expert_ffn``);
  3. send the expert outputs back the same way (the transposed exchange; rows in the activation dtype)
     and combine them with the routing weights (fp32) into the tokens' outputs.
The FFN hidden dim ``mlp`` is split over ``tensor`` (each shard computes partial sums; one psum over
``tensor`` on the combined [tokens, d] outputs); the weights' ``embed`` dim is all-gathered over
``fsdp`` first (FSDP). When the rules do not split the tokens over ``expert`` (a batch too small to
divide), every device of the expert group already holds the same tokens: it runs its own experts'
pairs in place and a psum over ``expert`` combines them (no exchange).

The exchange. Shapes must be static, so a device's receive buffer has the exact worst case, n x its
own pair count (every device sending all its pairs to it); the rows actually moved are only the real
ones. Two implementations of the same ragged exchange (``EXCHANGES``):
  * ``ragged``: ``jax.lax.ragged_all_to_all`` (differentiable: its transpose is the reverse exchange).
    Moves top_k x the local tokens per device, against (n - 1) x for an all-gather of the group's
    tokens. XLA:CPU cannot compile it (jaxlib 0.10.2: "HLO opcode ragged-all-to-all is not supported
    by XLA:CPU ThunkEmitter"), so it is the default on GPU and TPU only.
  * ``dense``: ``jax.lax.all_to_all`` of one fixed-size slot per destination (the worst case: all the
    rows any destination can take), rows scattered to the positions the ragged op would write. Same
    values and gradients; n x the bytes of the ragged op on the wire. The default on CPU.
Memory is the price of exactness with static shapes either way: the receive buffer and the FFN's
activations have n x top_k x tokens rows (about n x what a balanced routing fills).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from m1jax.sharding.rules import active_mesh, logical_to_spec, mesh_axes

TOKEN_AXES = ("batch", "seq", None)
W13_AXES, W2_AXES = ("expert", "embed", "mlp"), ("expert", "mlp", "embed")
EXCHANGES = ("ragged", "dense")


def default_exchange() -> str:
    """``ragged`` where XLA implements ragged all-to-all (GPU, TPU), else ``dense``."""
    return "ragged" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "dense"


def grouped(expert_rows, xt, weights, keys, num_keys: int):
    """Sort the token-expert pairs by ``keys`` and combine what ``expert_rows`` makes of their rows.

    xt [t, d]; weights, keys [t, k] (a key >= num_keys marks a pair to skip, sorted to the end);
    expert_rows(rows [t*k, d] sorted by key, sizes [num_keys] int32) -> [t*k, d] in the same order
    (rows past sum(sizes) must come back zero). Returns [t, d] fp32: sum over k of weight * row output.
    Moving rows into and out of the sorted order is a gather both ways and in both passes (_sort_rows,
    _unsort_rows): autodiff made the backward of the first, and the combine itself, scatter-adds (4.3 + 1.4
    ms of the 1b train step on an H200).
    """
    t, k = keys.shape
    flat = keys.reshape(-1)
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)  # sorted position -> pair (token * k + slot)
    inv = jnp.argsort(order).astype(jnp.int32)  # pair -> sorted position
    sizes = jnp.bincount(flat, length=num_keys).astype(jnp.int32)
    ys = expert_rows(_sort_rows(xt, order, inv, k), sizes)
    y = _unsort_rows(ys, inv, order).astype(jnp.float32).reshape(t, k, -1)
    return jnp.sum(y * weights.astype(jnp.float32)[..., None], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _sort_rows(xt, order, inv, k):
    """xt [t, d] -> [t*k, d]: row i is token order[i] // k's (each token k times, in the sorted order)."""
    return xt[order // k]


def _sort_rows_fwd(xt, order, inv, k):
    return _sort_rows(xt, order, inv, k), inv


def _sort_rows_bwd(k, inv, g):
    t_k, d = g.shape
    return g[inv].reshape(t_k // k, k, d).sum(axis=1, dtype=jnp.float32).astype(g.dtype), None, None


_sort_rows.defvjp(_sort_rows_fwd, _sort_rows_bwd)


@jax.custom_vjp
def _unsort_rows(ys, inv, order):
    """ys [t*k, d] in the sorted order -> pair order (row token * k + slot); a permutation, its transpose the
    inverse permutation (a gather, where autodiff would scatter)."""
    return ys[inv]


def _unsort_rows_fwd(ys, inv, order):
    return ys[inv], order


def _unsort_rows_bwd(order, g):
    return g[order], None, None


_unsort_rows.defvjp(_unsort_rows_fwd, _unsort_rows_bwd)


def expert_parallel(expert_ffn, x, weights, experts, w1, w3, w2, *, exchange: str | None = None):
    """Routed expert FFN over the ambient mesh, or the local grouped FFN when there is no mesh.

    expert_ffn(rows [m, d], sizes [E_l] int32 (rows grouped by expert, in order), w1, w3, w2) -> [m, d]
      fp32: the SwiGLU experts on grouped rows (rows past sum(sizes) are ignored).
    x [b, n, d]; weights [b, n, k] fp32; experts [b, n, k] int32; w1, w3 [E, d, F]; w2 [E, F, d].
    exchange: one of ``EXCHANGES`` (default ``default_exchange()``).
    Returns y [b, n, d] fp32 (sum over the k routed experts of weight * expert output).
    """
    exchange = exchange or default_exchange()
    if exchange not in EXCHANGES:
        raise ValueError(f"expert_parallel exchange must be one of {EXCHANGES}, got {exchange!r}")
    b, n, d = x.shape
    k = weights.shape[-1]
    mesh = active_mesh()
    if mesh is None or mesh.size == 1:
        y = grouped(lambda rows, sizes: expert_ffn(rows, sizes, w1, w3, w2), x.reshape(b * n, d),
                    weights.reshape(-1, k), experts.reshape(-1, k), w1.shape[0])
        return y.reshape(b, n, d)

    x_spec = logical_to_spec(TOKEN_AXES, x.shape, mesh)
    r_spec = P(*x_spec[:2], None)
    w13_spec, w2_spec = logical_to_spec(W13_AXES, w1.shape, mesh), logical_to_spec(W2_AXES, w2.shape, mesh)
    ex = mesh_axes(w13_spec[0])  # () when the experts are not split
    token_axes = {a for e in x_spec for a in mesh_axes(e)}
    dispatch = tuple(a for a in ex if a in token_axes)  # tokens and experts both split: exchange over these
    rest = tuple(a for a in ex if a not in token_axes)  # experts split, tokens replicated: psum over these
    fsdp_13, fsdp_2 = mesh_axes(w13_spec[1]), mesh_axes(w2_spec[2])
    tp = mesh_axes(w13_spec[2])
    sizes_of = dict(mesh.shape)

    def body(x, weights, experts, w1, w3, w2):
        bl, nl, _ = x.shape
        if fsdp_13:
            w1 = jax.lax.all_gather(w1, fsdp_13, axis=1, tiled=True)
            w3 = jax.lax.all_gather(w3, fsdp_13, axis=1, tiled=True)
        if fsdp_2:
            w2 = jax.lax.all_gather(w2, fsdp_2, axis=2, tiled=True)
        xt, wt, et = x.reshape(bl * nl, d), weights.reshape(-1, k), experts.reshape(-1, k)
        if tp + rest:  # the token rows differ per ``tensor`` / ``rest`` shard from here on: typing them so
            # at the tokens puts the backward's psum on the [t, d] token gradients, not on the pair rows
            xt = _to_varying(xt, tp + rest)
        e_local = w1.shape[0]
        coord = _block_coords(et // e_local, ex, sizes_of)  # the shard (per expert axis) holding each expert
        mine = jnp.ones(et.shape, bool)
        for a in rest:
            mine &= coord[a] == jax.lax.axis_index(a)
        ffn = lambda rows, sizes: expert_ffn(rows, sizes, w1, w3, w2)  # noqa: E731
        if dispatch:
            n_dev = _group_size(dispatch, sizes_of)
            dest = _flat_index([coord[a] for a in dispatch], dispatch, sizes_of)
            keys = jnp.where(mine, dest * e_local + et % e_local, n_dev * e_local)
            y = grouped(lambda rows, sizes: _exchange_and_run(ffn, rows, sizes, n_dev, dispatch, exchange),
                        xt, wt, keys, n_dev * e_local)
        else:
            y = grouped(ffn, xt, wt, jnp.where(mine, et % e_local, e_local), e_local)
        if tp + rest:
            y = jax.lax.psum(y, tp + rest)
        return y.reshape(bl, nl, d)

    return jax.shard_map(
        body, mesh=mesh, in_specs=(x_spec, r_spec, r_spec, w13_spec, w13_spec, w2_spec), out_specs=x_spec,
    )(x, weights, experts, w1, w3, w2)


def _exchange_and_run(ffn, rows, sizes, n_dev: int, axes, exchange: str):
    """rows [m, d] sorted by (destination, local expert), sizes [n_dev * E_l] -> [m, d] fp32 expert outputs.

    ``counts[s, j, e]``: rows device s sends to device j for j's local expert e (the same table on
    every device). Device j receives them at ``offset[s, j, e]``: grouped by expert, sources in order.
    """
    m = rows.shape[0]
    e_local = sizes.shape[0] // n_dev
    me = jax.lax.axis_index(axes)
    counts = jax.lax.all_gather(sizes.reshape(n_dev, e_local), axes, tiled=False)  # [s, j, e]
    per_expert = jnp.sum(counts, 0)  # [j, e]: rows device j's expert e receives
    offset = (jnp.cumsum(per_expert, 1) - per_expert)[None] + jnp.cumsum(counts, 0) - counts  # [s, j, e]
    send_offset = (jnp.cumsum(sizes) - sizes).astype(jnp.int32)  # where (j, e) starts in my rows
    sent = counts.reshape(n_dev, -1)
    source_offset = (jnp.cumsum(sent, 1) - sent).reshape(counts.shape)[:, me]  # [s, e]: (me, e) in s's rows
    mine_in, mine_off = counts[:, me].reshape(-1), offset[:, me].reshape(-1)  # [(s, e)]: what I receive, where
    move = _ragged_all_to_all if exchange == "ragged" else _dense_all_to_all
    received = move(rows, n_dev * m, send_offset, sizes, offset[me].reshape(-1), mine_in, axes)
    out = ffn(received, per_expert[me]).astype(rows.dtype)
    return move(out, m, mine_off, mine_in, source_offset.reshape(-1), sizes, axes)


def _ragged_all_to_all(operand, out_len, in_offsets, send_sizes, out_offsets, recv_sizes, axes):
    output = jnp.zeros((out_len, *operand.shape[1:]), operand.dtype)
    vma = tuple(getattr(jax.typeof(operand), "vma", ()))
    if vma:
        output = _to_varying(output, vma)
    i32 = jnp.int32
    return jax.lax.ragged_all_to_all(operand, output, in_offsets.astype(i32), send_sizes.astype(i32),
                                     out_offsets.astype(i32), recv_sizes.astype(i32), axis_name=axes)


def _dense_all_to_all(operand, out_len, in_offsets, send_sizes, out_offsets, recv_sizes, axes):
    """``jax.lax.ragged_all_to_all`` into a zero buffer of ``out_len`` rows, built from a dense all_to_all.

    The slices (``len(in_offsets)`` = n x slices per device, destination = slice // per device) must
    not overlap in the operand. Each destination gets a fixed slot of min(operand rows, out_len) rows
    (the most it can be sent), packed in slice order, with the output position of every row.
    """
    del recv_sizes  # implied by the senders' out_offsets and send_sizes
    m = operand.shape[0]
    n_slices = in_offsets.shape[0]
    n_dev = _group_size(axes, None)
    per_dev = n_slices // n_dev
    cap = min(m, out_len)
    row = jnp.arange(m)
    inside = (row[None] >= in_offsets[:, None]) & (row[None] < (in_offsets + send_sizes)[:, None])  # [slice, row]
    piece = jnp.argmax(inside, 0)  # each row's slice (valid where any(inside))
    dest = jnp.where(jnp.any(inside, 0), piece // per_dev, n_dev)  # n_dev: not sent (dropped below)
    per = send_sizes.reshape(n_dev, per_dev)
    base = (jnp.cumsum(per, 1) - per).reshape(-1)  # where each slice starts in its destination's slot
    within = row - in_offsets[piece]
    slot = base[piece] + within
    target = out_offsets[piece] + within
    vals = jnp.zeros((n_dev, cap, *operand.shape[1:]), operand.dtype).at[dest, slot].set(operand, mode="drop")
    where = jnp.full((n_dev, cap), out_len, jnp.int32).at[dest, slot].set(target.astype(jnp.int32), mode="drop")
    vals = jax.lax.all_to_all(vals, axes, 0, 0, tiled=True).reshape(n_dev * cap, *operand.shape[1:])
    where = jax.lax.all_to_all(where, axes, 0, 0, tiled=True).reshape(-1)
    return jnp.zeros((out_len, *operand.shape[1:]), operand.dtype).at[where].set(vals, mode="drop")


def _group_size(axes, sizes_of) -> int:
    n = 1
    for a in axes:
        n *= jax.lax.axis_size(a) if sizes_of is None else sizes_of[a]
    return n


def _block_coords(block, axes, sizes_of) -> dict:
    """Index of the expert shard along the (major-first) ``axes`` -> {axis: index along it}."""
    coords = {}
    for a in reversed(axes):
        coords[a] = block % sizes_of[a]
        block = block // sizes_of[a]
    return coords


def _flat_index(coords, axes, sizes_of):
    """Inverse of ``_block_coords`` over ``axes`` (major first), as ``jax.lax.axis_index(axes)`` counts."""
    flat = 0
    for c, a in zip(coords, axes, strict=True):
        flat = flat * sizes_of[a] + c
    return flat


def _to_varying(x, axes):
    """x, invariant over the manual mesh ``axes``, typed as varying over them (a no-op on values)."""
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, axes, to="varying")
    return jax.lax.pvary(x, axes)
