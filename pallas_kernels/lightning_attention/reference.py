"""Pure-jnp lightning attention: the oracles every kernel is tested against.

Lightning attention (MiniMax-01 §2.2) is causal linear attention with a per-head exponential decay.
For head h with rate s_h > 0 and state S (D x D, fp32), one step is

    S_t = e^{-s} S_{t-1} + k_t^T v_t,        o_t = q_t S_t,

i.e. o_t = sum_{j <= t} e^{-s (t - j)} (q_t . k_j) v_j  (+ e^{-s (t + 1)} q_t S_0 for an initial state).

Layout everywhere: q, k, v [batch, seq, heads, dim]; decay [heads]; state [batch, heads, dim, dim].

Packed sequences: ``segment_ids`` [batch, seq] (int, contiguous runs) make tokens of different
segments invisible to each other; the state resets at each boundary. An initial state belongs to
the segment of position 0 and the returned final state to the segment of the last position.

Three forms, all computing in fp32 at HIGHEST matmul precision and returning o in q's dtype:
  * ``quadratic``  O(T^2) masked form; the oracle for tests.
  * ``chunked``    block-wise form (intra-block masked matmul + inter-block state), any length.
  * ``recurrent``  token-by-token scan of the recurrence; ``step`` is one decode step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def _f32(*xs):
    return tuple(x.astype(jnp.float32) for x in xs)


def _same_segment(segment_ids, batch, seq):
    """[b, t, u] bool: token t and token u are in the same segment."""
    if segment_ids is None:
        return jnp.ones((batch, seq, seq), bool)
    return segment_ids[:, :, None] == segment_ids[:, None, :]


def _zero_state(q, v):
    b, _, h, dk = q.shape
    return jnp.zeros((b, h, dk, v.shape[-1]), jnp.float32)


@jax.jit
def quadratic(q, k, v, decay, *, initial_state=None, segment_ids=None):
    """O(T^2) oracle. Returns (o [b, t, h, dv] in q.dtype, final state [b, h, dk, dv] fp32)."""
    out_dtype = q.dtype
    q, k, v = _f32(q, k, v)
    s = decay.astype(jnp.float32)
    b, t, h, _ = q.shape
    pos = jnp.arange(t, dtype=jnp.float32)
    dist = pos[:, None] - pos[None, :]  # t - u
    causal = dist >= 0
    same = _same_segment(segment_ids, b, t) & causal  # [b, t, u]
    # exponent -s * (t - u) is <= 0 on the causal part; mask the rest before exp.
    expo = -s[:, None, None] * jnp.where(causal, dist, 0.0)  # [h, t, u]
    m = jnp.where(same[:, None], jnp.exp(expo)[None], 0.0)  # [b, h, t, u]
    scores = jnp.einsum("bthd,buhd->bhtu", q, k, precision=_HI) * m
    o = jnp.einsum("bhtu,buhe->bthe", scores, v, precision=_HI)

    # Contribution of each token to the final state (only the last segment's tokens count).
    last_seg = _last_segment_mask(segment_ids, b, t)  # [b, u]
    k_w = jnp.exp(-s[None, :] * (t - 1 - pos)[:, None])  # [u, h]
    k_w = k_w[None] * last_seg[:, :, None]  # [b, u, h]
    state = jnp.einsum("buhd,buh,buhe->bhde", k, k_w, v, precision=_HI)

    if initial_state is not None:
        s0 = initial_state.astype(jnp.float32)
        first_seg = _first_segment_mask(segment_ids, b, t)  # [b, t]
        q_w = jnp.exp(-s[None, :] * (pos + 1)[:, None])[None] * first_seg[:, :, None]  # [b, t, h]
        o = o + jnp.einsum("bthd,bth,bhde->bthe", q, q_w, s0, precision=_HI)
        carry = jnp.exp(-s * t)[None, :, None, None] * first_seg[:, -1][:, None, None, None]
        state = state + carry * s0
    return o.astype(out_dtype), state


def _first_segment_mask(segment_ids, b, t):
    if segment_ids is None:
        return jnp.ones((b, t), jnp.float32)
    return (segment_ids == segment_ids[:, :1]).astype(jnp.float32)


def _last_segment_mask(segment_ids, b, t):
    if segment_ids is None:
        return jnp.ones((b, t), jnp.float32)
    return (segment_ids == segment_ids[:, -1:]).astype(jnp.float32)


@jax.jit
def step(q, k, v, decay, state):
    """One decode step. q, k [b, h, dk], v [b, h, dv], state [b, h, dk, dv] fp32 -> (o, state)."""
    out_dtype = q.dtype
    q, k, v = _f32(q, k, v)
    lam = jnp.exp(-decay.astype(jnp.float32))[None, :, None, None]
    state = lam * state.astype(jnp.float32) + k[..., :, None] * v[..., None, :]
    o = jnp.einsum("bhd,bhde->bhe", q, state, precision=_HI)
    return o.astype(out_dtype), state


@jax.jit
def recurrent(q, k, v, decay, *, initial_state=None, segment_ids=None):
    """Token-by-token scan of the recurrence; the most literal oracle. Same outputs as quadratic."""
    out_dtype = q.dtype
    b, t, h, _ = q.shape
    state = _zero_state(q, v) if initial_state is None else initial_state.astype(jnp.float32)
    seg = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids
    prev = jnp.concatenate([seg[:, :1], seg[:, :-1]], axis=1)
    keep = (seg == prev).astype(jnp.float32)  # 0 where a new segment starts

    def body(state, xs):
        qt, kt, vt, kt_keep = xs
        state = state * kt_keep[:, None, None, None]
        o, state = step(qt, kt, vt, decay, state)
        return state, o

    xs = (
        jnp.moveaxis(q, 1, 0),
        jnp.moveaxis(k, 1, 0),
        jnp.moveaxis(v, 1, 0),
        jnp.moveaxis(keep, 1, 0),
    )
    state, o = jax.lax.scan(body, state, xs)
    return jnp.moveaxis(o, 0, 1).astype(out_dtype), state


@functools.partial(jax.jit, static_argnames=("block_size",))
def chunked(q, k, v, decay, *, initial_state=None, segment_ids=None, block_size=256):
    """Block-wise lightning attention (LA2 forward) for any sequence length.

    Per block of real length m (the last block may be partial), local positions t, u in [0, m):
      intra = ((Q K^T) * M) V,  M[t, u] = e^{-s (t - u)} for t >= u (same segment) else 0
      inter = (Q * e^{-s (t + 1)}) S
      S    <- e^{-s m} S + (K * e^{-s (m - 1 - u)})^T V
    Every exponent is non-positive. Returns (o in q.dtype, final fp32 state).
    """
    out_dtype = q.dtype
    q, k, v = _f32(q, k, v)
    s = decay.astype(jnp.float32)
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    c = int(min(block_size, t))
    nblk = -(-t // c)
    pad = nblk * c - t
    seg = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    # Padding gets its own segment id so it never mixes with real tokens.
    pad_seg = jnp.min(seg) - 1
    if pad:
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        seg = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=pad_seg)

    def blocks(x):  # [b, n*c, ...] -> [n, b, c, ...]
        return jnp.moveaxis(x.reshape(b, nblk, c, *x.shape[2:]), 1, 0)

    pos = jnp.arange(c, dtype=jnp.float32)
    dist = pos[:, None] - pos[None, :]
    causal = dist >= 0
    diag = jnp.where(causal, jnp.exp(-s[:, None, None] * jnp.where(causal, dist, 0.0)), 0.0)  # [h,c,c]
    q_decay = jnp.exp(-s[None, :] * (pos + 1)[:, None])  # [c, h]
    lengths = jnp.minimum(c, t - jnp.arange(nblk) * c).astype(jnp.float32)  # real length per block

    state0 = _zero_state(q, v) if initial_state is None else initial_state.astype(jnp.float32)
    seg_before = seg[:, 0]  # the initial state belongs to the first segment

    def body(carry, xs):
        state, prev_seg = carry
        qb, kb, vb, sb, m = xs  # [b, c, h, d], seg [b, c], m scalar
        same = (sb[:, :, None] == sb[:, None, :])[:, None]  # [b, 1, c, c]
        scores = jnp.einsum("bthd,buhd->bhtu", qb, kb, precision=_HI) * jnp.where(same, diag[None], 0.0)
        o = jnp.einsum("bhtu,buhe->bthe", scores, vb, precision=_HI)
        sees_state = (sb == prev_seg[:, None]).astype(jnp.float32)  # [b, c]
        o = o + jnp.einsum("bthd,th,bt,bhde->bthe", qb, q_decay, sees_state, state, precision=_HI)

        last = jnp.take_along_axis(sb, (m.astype(jnp.int32) - 1)[None, None].repeat(b, 0), axis=1)[:, 0]
        in_last = (sb == last[:, None]).astype(jnp.float32)  # tokens that survive into the state
        k_exp = m - 1 - pos  # [c]; negative only on padding
        k_w = jnp.where(k_exp[:, None] >= 0, jnp.exp(-s[None] * jnp.maximum(k_exp, 0.0)[:, None]), 0.0)
        new = jnp.einsum("buhd,uh,bu,buhe->bhde", kb, k_w, in_last, vb, precision=_HI)
        keep = jnp.exp(-s * m)[None, :, None, None] * (prev_seg == last).astype(jnp.float32)[:, None, None, None]
        return (keep * state + new, last), o

    xs = (blocks(q), blocks(k), blocks(v), jnp.moveaxis(seg.reshape(b, nblk, c), 1, 0), lengths)
    (state, _), o = jax.lax.scan(body, (state0, seg_before), xs)
    o = jnp.moveaxis(o, 0, 1).reshape(b, nblk * c, h, dv)[:, :t]
    return o.astype(out_dtype), state
