"""Shared inputs and checks for the kernel tests (each kernel against pallas_kernels' reference)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.lightning_attention import reference

DECAY = jnp.array([1e-4, 0.3, 5.0], jnp.float32)  # H = 3: almost no decay, moderate, e^-5 per step
ref_quadratic = jax.jit(reference.quadratic)


def rel_err(x, ref) -> float:
    """max |x - ref| / max |ref| in fp32."""
    x, ref = np.asarray(x, np.float32), np.asarray(ref, np.float32)
    return float(np.max(np.abs(x - ref)) / max(np.max(np.abs(ref)), 1e-6))


def inputs(rng: np.random.Generator, b, t, dk, dv, dtype, *, h=3):
    """q, k [b, t, h, dk] and v [b, t, h, dv] in ``dtype``; s0 [b, h, dk, dv] fp32.

    The 1/sqrt(dk) scale keeps |o| O(1) even for the tiny decay (which sums ~t terms).
    """
    q = jnp.asarray(rng.standard_normal((b, t, h, dk)) / dk**0.5, jnp.float32).astype(dtype)
    k = jnp.asarray(rng.standard_normal((b, t, h, dk)) / dk**0.5, jnp.float32).astype(dtype)
    v = jnp.asarray(rng.standard_normal((b, t, h, dv)), jnp.float32).astype(dtype)
    s0 = jnp.asarray(rng.standard_normal((b, h, dk, dv)), jnp.float32)
    return q, k, v, s0


def segments(t):
    """Two rows: boundaries inside a block and on a block edge (16), a 1-token segment, the last
    token alone; the second row changes segment twice, the first change at position 3."""
    row0 = np.zeros(t, np.int32)
    row0[7:16] = 1
    row0[16:17] = 2
    row0[17 : t - 1] = 3
    row0[t - 1] = 4
    row1 = np.full(t, 9, np.int32)
    row1[:3] = 5
    row1[32:] = 11
    return jnp.asarray(np.stack([row0, row1]))


def value_and_grads(fn, q, k, v, s0, seg, do, dst, *, decay=DECAY):
    """(o, final state) and the vjp w.r.t. (q, k, v[, s0]) for cotangents on both outputs.

    ``fn(q, k, v, decay, initial_state=, segment_ids=)`` returns (o, final state).
    """

    def f(q, k, v, *s0):
        return fn(q, k, v, decay, initial_state=s0[0] if s0 else None, segment_ids=seg)

    args = (q, k, v) if s0 is None else (q, k, v, s0)
    out, vjp = jax.vjp(f, *args)
    return out, vjp((do, dst))


def assert_outputs_and_grads_match(outs, grads, ref_outs, ref_grads, dtype):
    """(o, state) and (dq, dk, dv[, ds0]) against the reference's: fp32 tightly, bf16 relative to the max.

    bf16 tolerance: operands are rounded to bf16 before the dots and dq, dk, dv are stored in bf16
    (2^-9 each), summed over a few dozen terms; 3e-2 of the largest entry still catches O(1) errors.
    """
    names = ("o", "state", "dq", "dk", "dv", "ds0")
    assert len(grads) == len(ref_grads)
    for name, g, w in zip(names, (*outs, *grads), (*ref_outs, *ref_grads), strict=False):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        if dtype == jnp.float32:
            np.testing.assert_allclose(g, w, atol=5e-5, rtol=5e-5, err_msg=name)
        else:
            assert rel_err(g, w) < 3e-2, (name, rel_err(g, w))


def assert_forward_matches(o, st, q, k, v, s0, seg):
    """A kernel's (o, final state) against the fp32 quadratic oracle on the same (possibly bf16-rounded) inputs.

    fp32: 2e-5. bf16 tolerance: the kernels round the masked score tile, the decayed keys and the fp32
    state to bf16 (relative 2^-9 each) before the tensor-core / MXU dots, and o itself is stored in bf16
    (another 2^-9); sums of ~50 such terms give a few 1e-3 relative to max|o| (3e-3 to 7e-3 measured on an
    H200 at T=300-1000). 2e-2 leaves margin but still catches a wrong decay or mask (O(1) errors).
    """
    o_ref, st_ref = ref_quadratic(q, k, v, DECAY, initial_state=s0, segment_ids=seg)
    assert o.dtype == q.dtype and st.dtype == jnp.float32
    assert o.shape == o_ref.shape and st.shape == st_ref.shape
    if q.dtype == jnp.float32:
        np.testing.assert_allclose(o, o_ref, atol=2e-5, rtol=2e-5)
        np.testing.assert_allclose(st, st_ref, atol=2e-5, rtol=2e-5)
    else:
        assert rel_err(o, o_ref) < 2e-2
        assert rel_err(st, st_ref) < 2e-2


def assert_decay_gradient_is_zero_and_op_matches_reference(rng, **op_kwargs):
    """``ops.lightning_attention(**op_kwargs)`` (an impl through the public dispatcher) matches impl
    "reference" in value and dq, and gives decay (a fixed buffer) a zero gradient."""
    from pallas_kernels.lightning_attention import ops

    q, k, v, _ = inputs(rng, 1, 24, 16, 16, jnp.float32)

    def loss(fn, q, decay):
        return jnp.sum(jnp.sin(fn(q, k, v, decay)))

    kern = functools.partial(ops.lightning_attention, **op_kwargs)
    ref = functools.partial(ops.lightning_attention, impl="reference")
    val, (dq, dd) = jax.jit(jax.value_and_grad(functools.partial(loss, kern), argnums=(0, 1)))(q, DECAY)
    val_ref, dq_ref = jax.jit(jax.value_and_grad(functools.partial(loss, ref)))(q, DECAY)
    np.testing.assert_allclose(val, val_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dq, dq_ref, rtol=5e-5, atol=5e-5)
    np.testing.assert_array_equal(dd, jnp.zeros_like(DECAY))
