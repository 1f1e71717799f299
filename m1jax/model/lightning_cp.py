"""Lightning attention on the ambient mesh: ``shard_map`` over batch / heads, and context parallelism.

The Pallas kernels cannot be split by XLA's automatic partitioner, so with a mesh the kernel always
runs inside ``shard_map`` on each device's [batch, seq, heads] block.

Context parallelism (the sequence split over the ``context`` axis into C equal pieces of length L):
each shard runs the kernel from a zero state, giving its local output and its local final state
S_j (the state of its last segment, from its own tokens only). With a = e^{-s L} (the decay across
one shard) the state entering shard c follows the reference's block recurrence, one block per shard:
    In_0 = initial state (or 0),   In_{j+1} = S_j + a * [prev_j == last_j] * In_j,
where prev_j is the segment the incoming state belongs to (first token's segment for j = 0, else the
last segment of shard j-1) and last_j the segment of shard j's last token: with packed sequences a
carried state survives a shard only if that shard is one segment. The [C, b, H, D, D] states are
all-gathered (small next to activations) and every shard runs the same C-step scan; shard c adds
    (Q_t * e^{-s (t+1)}) In_c   to the outputs of its tokens in segment prev_c,
and In_C is the global final state. Exact (same algebra as the chunked reference).
Limits: the sequence length must be a multiple of C (else the rules leave the sequence unsplit and
every device runs the whole sequence); the scan is O(C) tiny matmuls per shard; decoding (one
token) never splits the sequence.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import pallas_kernels
from m1jax.sharding.rules import active_mesh, logical_to_spec, mesh_axes

QKV_AXES = ("batch", "seq", "heads", None)
_HI = jax.lax.Precision.HIGHEST


def lightning_attention(q, k, v, decay, *, initial_state=None, segment_ids=None, block_size: int, impl: str):
    """q, k, v [b, n, H, D]; decay [H] -> (o [b, n, H, D] in q.dtype, final fp32 state [b, H, D, D])."""
    return _on_mesh(lambda qkv: qkv[0], (q, k, v), decay, initial_state, segment_ids, block_size, impl, qkv=False)


def lightning_attention_qkv(qkv, decay, *, initial_state=None, segment_ids=None, block_size: int, impl: str):
    """``lightning_attention`` of the per-head interleaved qkv [b, n, H, 3 D] (q | k | v).

    Differentiated, the kernels take qkv whole (``pallas_kernels.lightning_attention_qkv``: no slices, and d qkv
    written in place, without a concatenation; under context parallelism only q is sliced, for the correction).
    A call that is not differentiated runs ``lightning_attention`` on the slices, the same values: forward only,
    the interleaved path measured slower on an H200 (1b layer forward 1.40 vs 1.20 ms, the cause not traced;
    experiments/results/lightning_layer_fused_split_h200.md), while forward + backward it is faster.
    """
    return _fused_when_differentiated(int(block_size), impl, qkv, decay, initial_state, segment_ids)


def _interleaved(qkv, decay, initial_state, segment_ids, block_size, impl):
    d = qkv.shape[-1] // 3
    return _on_mesh(lambda x: x[..., :d], qkv, decay, initial_state, segment_ids, block_size, impl, qkv=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused_when_differentiated(block_size, impl, qkv, decay, initial_state, segment_ids):
    d = qkv.shape[-1] // 3
    return lightning_attention(qkv[..., :d], qkv[..., d: 2 * d], qkv[..., 2 * d:], decay,
                               initial_state=initial_state, segment_ids=segment_ids, block_size=block_size, impl=impl)


def _fused_fwd(block_size, impl, qkv, decay, initial_state, segment_ids):
    out, pullback = jax.vjp(lambda x, s: _interleaved(x, decay, s, segment_ids, block_size, impl), qkv, initial_state)
    return out, (pullback, decay)


def _fused_bwd(block_size, impl, res, cts):
    pullback, decay = res
    dqkv, ds0 = pullback(cts)
    return dqkv, jnp.zeros_like(decay), ds0, None  # decay: a fixed buffer (zero gradient, as the kernels define)


_fused_when_differentiated.defvjp(_fused_fwd, _fused_bwd)


def _on_mesh(q_of, x, decay, initial_state, segment_ids, block_size, impl, *, qkv: bool):
    """The kernel on ``x`` (q, k, v, or one interleaved qkv when ``qkv``; ``q_of(x)`` is its q)."""
    kernel_kw = dict(return_state=True, block_size=block_size, impl=impl)

    def kernel(x, decay, **kw):
        if qkv:
            return pallas_kernels.lightning_attention_qkv(x, decay, **kw, **kernel_kw)
        return pallas_kernels.lightning_attention(*x, decay, **kw, **kernel_kw)

    mesh = active_mesh()
    if mesh is None or mesh.size == 1:
        return kernel(x, decay, initial_state=initial_state, segment_ids=segment_ids)
    lead = x if qkv else x[0]
    spec = logical_to_spec(QKV_AXES, lead.shape, mesh)
    batch, ctx, heads = spec[0], mesh_axes(spec[1]), spec[2]
    state_spec, seg_spec = P(batch, heads, None, None), P(batch, spec[1])
    C = 1
    for a in ctx:
        C *= mesh.shape[a]

    def body(x, decay, state0, seg):
        if not ctx:
            return kernel(x, decay, initial_state=state0, segment_ids=seg)
        o, s_local = kernel(x, decay, segment_ids=seg)
        return _context_correction(q_of(x), o, s_local, decay, state0, seg, ctx, C)

    args = (x, decay, initial_state, segment_ids)
    specs = (spec if qkv else (spec,) * 3, P(heads), state_spec, seg_spec)
    present = [i for i, a in enumerate(args) if a is not None]

    def call(*xs):  # shard_map over the arrays that exist (state / segment ids are optional)
        full = [None] * len(args)
        for i, a in zip(present, xs, strict=True):
            full[i] = a
        return body(*full)

    # check_vma=False: the kernels build their own (unvarying) zero states inside scans and Pallas calls.
    # The transpose then psums cotangents of inputs over the axes their spec leaves out and divides
    # those of outputs likewise, which is exact here because the final state is replicated over
    # ``context`` by construction (every shard runs the same scan on the gathered states).
    return jax.shard_map(call, mesh=mesh, in_specs=tuple(specs[i] for i in present),
                         out_specs=(spec, state_spec), check_vma=False)(*(args[i] for i in present))


def lightning_decode(q, k, v, decay, state, *, impl: str = "auto"):
    """One decode step on the ambient mesh: q, k, v [b, H, D], state [b, H, D, D] fp32 -> (o, state).

    Runs the decode kernel inside ``shard_map`` over batch and heads (a Pallas call cannot be split by
    XLA's partitioner); without a mesh it is ``pallas_kernels.lightning_attention_decode``.
    """
    mesh = active_mesh()
    if mesh is None or mesh.size == 1:
        return pallas_kernels.lightning_attention_decode(q, k, v, decay, state, impl=impl)
    spec = logical_to_spec(("batch", "heads", None), q.shape, mesh)
    state_spec = P(*spec, None)

    def body(q, k, v, decay, state):
        return pallas_kernels.lightning_attention_decode(q, k, v, decay, state, impl=impl)

    return jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec, P(spec[1]), state_spec),
                         out_specs=(spec, state_spec), check_vma=False)(q, k, v, decay, state)


def _context_correction(q, o, s_local, decay, state0, seg, ctx, C):
    """Add the contribution of the preceding shards' state to this shard's outputs (see module doc)."""
    b, L, H, D = q.shape
    s = decay.astype(jnp.float32)
    a = jnp.exp(-s * L)[None, :, None, None]  # decay across one whole shard
    states = jax.lax.all_gather(s_local, ctx)  # [C, b, H, D, D]
    if seg is None:
        survive = [1.0] * C
    else:
        first = jax.lax.all_gather(seg[:, 0], ctx)  # [C, b]
        last = jax.lax.all_gather(seg[:, -1], ctx)
        prev = [first[0]] + [last[j - 1] for j in range(1, C)]  # segment of the state entering shard j
        survive = [(prev[j] == last[j]).astype(jnp.float32)[:, None, None, None] for j in range(C)]
    incoming = [jnp.zeros_like(s_local) if state0 is None else state0.astype(jnp.float32)]
    for j in range(C):
        incoming.append(states[j] + a * survive[j] * incoming[j])
    c = jax.lax.axis_index(ctx)
    s_in = jnp.stack(incoming[:C])[c]
    t = jnp.arange(L, dtype=jnp.float32)
    q_decay = jnp.exp(-s[None, :] * (t + 1)[:, None])  # [L, H], exponents <= 0
    if seg is None:
        sees = jnp.ones((b, L), jnp.float32)
    else:
        prev_c = jnp.stack(prev)[c]  # [b]
        sees = (seg == prev_c[:, None]).astype(jnp.float32)
    corr = jnp.einsum("bthd,th,bt,bhde->bthe", q.astype(jnp.float32), q_decay, sees, s_in, precision=_HI)
    return (o.astype(jnp.float32) + corr).astype(o.dtype), incoming[C]
