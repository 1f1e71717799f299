"""Sequence split: run a lightning-attention kernel on ``parts`` independent slices of the sequence.

A GPU kernel gives each (batch, head, value slice) one thread block that walks the whole sequence, so at
batch * heads * (dv / 64) below the number of SMs most of the GPU idles (B1 H16 D128 is 32 blocks on
132 SMs). Split the sequence into P equal chunks of length L and:
  1. each chunk's own end state from a zero start, and the factor its incoming state is carried by,
     in XLA:  local_c = sum_j e^{-s (L-1-j)} k_j^T v_j  over the chunk's tokens after its last segment
     start;  carry_c = e^{-s L}, or 0 when a segment starts inside the chunk (its first token included);
  2. a scan over the P chunks: in_c = end_{c-1} (zeroed when chunk c starts a segment),
     end_c = local_c + carry_c * in_c, starting from the caller's initial state;
  3. the kernel on [batch * P, L] with in_c as each slice's initial state: exact outputs.
Everything is differentiable (the kernels' custom_vjp takes initial-state cotangents), so the backward
splits too. Costs: one extra read of k and v, and the [batch, P, heads, dk, dv] fp32 states.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MIN_CHUNK = 1024  # shorter chunks add more state traffic than the extra blocks win back


def num_sms() -> int:
    """The default device's streaming multiprocessors (``core_count``; 132, an H100 / H200's, where unknown)."""
    return int(getattr(jax.devices()[0], "core_count", None) or 132)


def auto_parts(b: int, t: int, h: int, dv: int, num_sms: int) -> int:
    """1 unless the unsplit kernel would occupy at most a quarter of the SMs; then the largest power of
    two P with b * h * ceil(dv / 64) * P <= num_sms, P | t and t / P >= MIN_CHUNK.

    Measured on an H200 (experiments/results/seq_split_h200.md), D 128 bf16, fwd / bwd (its "fwd+bwd" column timed
    jax.grad, which drops the forward kernel): B1 H16 T8K
    (32 blocks) split 4: 1.25x / 1.28x faster; B1 H8 T32K split 8: 2.3x / 2.9x; B2 H16 T16K (64 blocks)
    split 2: 0.85x / 1.02x, so half-occupied GPUs are left alone.
    """
    blocks = b * h * max(1, -(-dv // 64))
    if 4 * blocks > num_sms:
        return 1
    p = 1
    while blocks * p * 2 <= num_sms and t % (p * 2) == 0 and t // (p * 2) >= MIN_CHUNK:
        p *= 2
    return p


def _chunk_carry(decay, segment_ids, b: int, P: int, L: int, h: int):
    """(carry [b, P, h]: e^{-s L}, or 0 when a segment starts inside chunk c (its first token included), which
    drops the incoming state; starts [b, P]: a segment starts at the chunk's first token; new [b, P, L]: segment
    starts (an id differing from the previous token's), or None without segment ids)."""
    carry = jnp.broadcast_to(jnp.exp(-decay.astype(jnp.float32) * L), (b, P, h))
    if segment_ids is None:
        return carry, jnp.zeros((b, P), bool), None
    seg = segment_ids.reshape(b, P * L)
    new = jnp.concatenate([jnp.zeros((b, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1).reshape(b, P, L)
    return jnp.where(jnp.any(new, axis=-1)[..., None], 0.0, carry), new[:, :, 0], new


def _chunk_states(k, v, decay, segment_ids):
    """k [b, P, L, h, dk], v [b, P, L, h, dv] -> (local [b, P, h, dk, dv] fp32, carry [b, P, h] fp32,
    starts [b, P] bool: a segment starts at the chunk's first token)."""
    b, P, L, h, _ = k.shape
    f32 = jnp.float32
    s = decay.astype(f32)
    j = jnp.arange(L)
    w = jnp.broadcast_to(jnp.exp(-s[None, :] * (L - 1 - j)[:, None].astype(f32)), (b, P, L, h))  # [b, P, L, h]
    carry, starts, new = _chunk_carry(decay, segment_ids, b, P, L, h)
    if new is not None:
        last = jnp.max(jnp.where(new, j, -1), axis=-1)  # [b, P] last segment start in the chunk, -1: none
        w = jnp.where((j[None, None, :] >= last[..., None])[..., None], w, 0.0)
    kw = (k.astype(f32) * w[..., None]).astype(k.dtype)
    local = jnp.einsum("bpjhd,bpjhe->bphde", kw, v, preferred_element_type=f32)
    return local, carry, starts


def _incoming_states(parts: int, k, v, decay, initial_state, segment_ids):
    """Steps 1 and 2: (each chunk's incoming state [b * parts, h, dk, dv], the final state [b, h, dk, dv])."""
    b, t, h, dk = k.shape
    dv = v.shape[-1]
    if t % parts:
        raise ValueError(f"seq_split={parts} must divide the sequence length {t}")
    L = t // parts
    chunked = [a.reshape(b, parts, L, h, a.shape[-1]) for a in (k, v)]
    local, carry, starts = _chunk_states(*chunked, decay, segment_ids)
    s0 = jnp.zeros((b, h, dk, dv), jnp.float32) if initial_state is None else initial_state.astype(jnp.float32)

    def step(state, xs):
        local_c, carry_c, start_c = xs
        state_in = jnp.where(start_c[:, None, None, None], 0.0, state)
        return local_c + carry_c[..., None, None] * state_in, state_in

    move = lambda a: jnp.moveaxis(a, 1, 0)  # noqa: E731 - scan over the chunk axis
    final, incoming = jax.lax.scan(step, s0, (move(local), move(carry), move(starts)))
    return jnp.moveaxis(incoming, 0, 1).reshape(b * parts, h, dk, dv), final


def split_sequence(kernel, parts: int, q, k, v, decay, *, initial_state, segment_ids):
    """``kernel(q, k, v, decay, initial_state=, segment_ids=) -> (o, final state)`` run on ``parts``
    chunks of the sequence in parallel (see module doc). ``parts`` must divide the sequence length."""
    b, t, h, _ = q.shape
    incoming, final = _incoming_states(parts, k, v, decay, initial_state, segment_ids)
    flat = lambda a: a.reshape(b * parts, t // parts, *a.shape[2:])  # noqa: E731
    o, _ = kernel(flat(q), flat(k), flat(v), decay, initial_state=incoming,
                  segment_ids=None if segment_ids is None else flat(segment_ids))
    return o.reshape(b, t, h, v.shape[-1]), final


def _chunk_reach(q, do, decay, segment_ids):
    """The backward's counterpart of ``_chunk_states``: q, do [b, P, L, h, d] -> (local [b, P, h, dk, dv] fp32, the
    cotangent a chunk's incoming state gets from its own outputs: sum_j e^{-s (j+1)} q_j^T do_j over the tokens
    before the chunk's first segment start, which are the ones that state reaches; carry [b, P, h]; starts [b, P])."""
    b, P, L, h, _ = q.shape
    f32 = jnp.float32
    s = decay.astype(f32)
    j = jnp.arange(L)
    w = jnp.broadcast_to(jnp.exp(-s[None, :] * (j + 1)[:, None].astype(f32)), (b, P, L, h))
    carry, starts, new = _chunk_carry(decay, segment_ids, b, P, L, h)
    if new is not None:
        first = jnp.min(jnp.where(new, j, L), axis=-1)  # [b, P] first segment start in the chunk, L: none
        w = jnp.where((j[None, None, :] < first[..., None])[..., None], w, 0.0)
    qw = (q.astype(f32) * w[..., None]).astype(q.dtype)
    local = jnp.einsum("bpjhd,bpjhe->bphde", qw, do.astype(q.dtype), preferred_element_type=f32)
    return local, carry, starts


def split_sequence_qkv(fwd_fn, bwd_fn, parts: int):
    """``split_sequence`` for an interleaved qkv [b, t, h, 3 d], with a backward that never leaves the kernels'
    interleaved gradient buffer: ``f(qkv, decay, initial_state, segment_ids) -> (o, final state)``, differentiable
    in qkv and initial_state.

    ``fwd_fn(qkv, decay, s0, seg) -> (o, state)`` and ``bwd_fn(qkv, decay, s0, seg, do, dstate) -> (d qkv, d s0)``
    are a kernel's raw forward and backward (not differentiable). Left to autodiff, the chunk states' k and v slices
    would send their own cotangents back through XLA, to be padded, concatenated and added to the kernel's d qkv
    (two passes over it). Instead the backward finds each chunk's end-state cotangent first, the way the forward
    finds its incoming state: with R_c = ``_chunk_reach`` (what chunk c's own outputs give its incoming state),
        dIn_c = R_c + carry_c * dEnd_c,   dEnd_{P-1} = d final,   dEnd_{c-1} = dIn_c (0 when chunk c starts a
        segment),
    and one run of ``bwd_fn`` on the chunks, seeded with dEnd_c, gives d qkv whole (and dIn_0 = d initial_state).
    """

    def chunks(a, b, L):
        return a.reshape(b * parts, L, *a.shape[2:])

    def forward(qkv, decay, initial_state, segment_ids):
        b, t, h, d3 = qkv.shape
        d = d3 // 3
        incoming, final = _incoming_states(parts, qkv[..., d: 2 * d], qkv[..., 2 * d:], decay, initial_state,
                                           segment_ids)
        seg = None if segment_ids is None else chunks(segment_ids, b, t // parts)
        o, _ = fwd_fn(chunks(qkv, b, t // parts), decay, incoming, seg)
        return (o.reshape(b, t, h, d), final), incoming

    @jax.custom_vjp
    def f(qkv, decay, initial_state, segment_ids):
        return forward(qkv, decay, initial_state, segment_ids)[0]

    def f_fwd(qkv, decay, initial_state, segment_ids):
        out, incoming = forward(qkv, decay, initial_state, segment_ids)
        return out, (qkv, decay, initial_state, segment_ids, incoming)

    def f_bwd(res, cts):
        qkv, decay, initial_state, segment_ids, incoming = res
        do, dfinal = cts
        b, t, h, d3 = qkv.shape
        d, L = d3 // 3, t // parts
        q = qkv[..., :d].reshape(b, parts, L, h, d)
        reach, carry, starts = _chunk_reach(q, do.reshape(b, parts, L, h, d), decay, segment_ids)

        def step(d_end, xs):  # reverse over chunks: d_end is the cotangent of chunk c's end state
            reach_c, carry_c, start_c = xs
            d_in = reach_c + carry_c[..., None, None] * d_end
            return jnp.where(start_c[:, None, None, None], 0.0, d_in), d_end

        move = lambda a: jnp.moveaxis(a, 1, 0)  # noqa: E731 - scan over the chunk axis
        _, d_end = jax.lax.scan(step, dfinal.astype(jnp.float32), (move(reach), move(carry), move(starts)),
                                reverse=True)
        seg = None if segment_ids is None else chunks(segment_ids, b, L)
        dqkv, d_in = bwd_fn(chunks(qkv, b, L), decay, incoming, seg, chunks(do, b, L),
                            jnp.moveaxis(d_end, 0, 1).reshape(b * parts, h, d, d))
        ds0 = None if initial_state is None else d_in.reshape(b, parts, h, d, d)[:, 0].astype(initial_state.dtype)
        return dqkv.reshape(qkv.shape), jnp.zeros_like(decay), ds0, None

    f.defvjp(f_fwd, f_bwd)
    return f
