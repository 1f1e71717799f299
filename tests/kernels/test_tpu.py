"""Pallas TPU lightning attention kernels, run in TPU interpret mode on CPU, vs the jnp oracles.

Shapes are tiny (interpret mode is slow and every new shape recompiles); they still respect the TPU
tiling rules (interpret mode does not check them): blocks of C rows with C a multiple of 8 (fp32) or
16 (bf16), full head_dim lanes. Decays include a tiny (1e-4), a moderate and a large (5.0) rate.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.lightning_attention import ops, reference, tpu
from tests.kernels.common import DECAY, assert_outputs_and_grads_match
from tests.kernels.common import segments as _segments, value_and_grads as _value_and_grads
from tests.kernels.common import inputs, ref_quadratic as _ref_quadratic, rel_err as _rel_err

_inputs = functools.partial(inputs, np.random.default_rng(1234))

_seed = itertools.count(1234)


def _keys(n):
    return jax.random.split(jax.random.PRNGKey(next(_seed)), n)




def _run(q, k, v, s0, seg, block):
    return tpu.lightning_attention(
        q, k, v, DECAY, initial_state=s0, segment_ids=seg, block_size=block, interpret=True
    )


@pytest.mark.parametrize(
    "t,block,use_s0,use_seg",
    [
        (40, 16, False, False),  # 3 blocks, the last one of 8 tokens
        (40, 64, True, True),  # single block shorter than block_size
    ],
)
def test_forward_fp32(t, block, use_s0, use_seg):
    q, k, v, s0 = _inputs(2, t, 16, 16, jnp.float32)
    s0 = s0 if use_s0 else None
    seg = _segments(t) if use_seg else None
    o, st = _run(q, k, v, s0, seg, block)
    o_ref, st_ref = _ref_quadratic(q, k, v, DECAY, initial_state=s0, segment_ids=seg)
    assert o.dtype == jnp.float32 and st.dtype == jnp.float32
    assert o.shape == o_ref.shape and st.shape == st_ref.shape
    np.testing.assert_allclose(o, o_ref, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(st, st_ref, atol=2e-5, rtol=2e-5)


def test_forward_bf16_dk_ne_dv():
    t = 50
    q, k, v, s0 = _inputs(2, t, 16, 32, jnp.bfloat16)
    seg = _segments(t)
    o, st = _run(q, k, v, s0, seg, 16)
    # Oracle in fp32 on the same bf16-rounded inputs.
    o_ref, st_ref = _ref_quadratic(q, k, v, DECAY, initial_state=s0, segment_ids=seg)
    assert o.dtype == jnp.bfloat16 and st.dtype == jnp.float32
    # bf16 tolerance: the kernel rounds the masked score tile, the decayed keys and the fp32 state to
    # bf16 (relative 2^-9 each) before the MXU, and o itself is stored in bf16 (another 2^-9); sums
    # of ~50 such terms give a few 1e-3 relative to max|o|. 2e-2 leaves margin but still catches any
    # wrong decay or mask (those are O(1) errors).
    assert _rel_err(o, o_ref) < 2e-2
    assert _rel_err(st, st_ref) < 2e-2


@pytest.mark.parametrize(
    "t,use_s0,use_seg,dtype",
    [
        (40, True, False, jnp.float32),  # d(final state) flows back to d(initial_state)
        (50, True, True, jnp.float32),  # last block of 2 tokens, initial state, segments
        (48, False, True, jnp.bfloat16),  # no initial state
    ],
)
def test_gradients(t, use_s0, use_seg, dtype):
    q, k, v, s0 = _inputs(2, t, 16, 16, dtype)
    s0 = s0 if use_s0 else None
    seg = _segments(t) if use_seg else None
    kdo, kds = _keys(2)
    do = jax.random.normal(kdo, v.shape).astype(dtype)
    dst = jax.random.normal(kds, (2, 3, 16, 16), jnp.float32)
    kern = lambda *a, **kw: tpu.lightning_attention(*a, block_size=16, interpret=True, **kw)  # noqa: E731
    outs, grads = jax.jit(functools.partial(_value_and_grads, kern))(q, k, v, s0, seg, do, dst)
    ref_outs, ref_grads = jax.jit(functools.partial(_value_and_grads, reference.quadratic))(
        q, k, v, s0, seg, do, dst
    )
    assert_outputs_and_grads_match(outs, grads, ref_outs, ref_grads, dtype)


def test_decay_gradient_is_zero_and_ops_dispatch():
    q, k, v, _ = _inputs(1, 24, 16, 16, jnp.float32)

    def loss(fn, q, decay):
        return jnp.sum(jnp.sin(fn(q, k, v, decay)))

    kern = functools.partial(ops.lightning_attention, block_size=16, impl="tpu", interpret=True)
    ref = functools.partial(ops.lightning_attention, impl="reference")
    val, (dq, dd) = jax.jit(jax.value_and_grad(functools.partial(loss, kern), argnums=(0, 1)))(q, DECAY)
    val_ref, dq_ref = jax.jit(jax.value_and_grad(functools.partial(loss, ref)))(q, DECAY)
    np.testing.assert_allclose(val, val_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dq, dq_ref, rtol=5e-5, atol=5e-5)
    np.testing.assert_array_equal(dd, jnp.zeros_like(DECAY))  # decay is a fixed buffer
