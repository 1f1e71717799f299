"""Pallas TPU lightning attention kernels, run in TPU interpret mode on CPU, vs the jnp oracles.

Shapes are tiny (interpret mode is slow and every new shape recompiles); they still respect the TPU
tiling rules (interpret mode does not check them): blocks of C rows with C a multiple of 8 (fp32) or
16 (bf16), full head_dim lanes. Decays include a tiny (1e-4), a moderate and a large (5.0) rate.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.lightning_attention import reference, tpu
from tests.kernels.common import (
    DECAY,
    assert_decay_gradient_is_zero_and_op_matches_reference,
    assert_forward_matches,
    assert_outputs_and_grads_match,
)
from tests.kernels.common import inputs as _inputs, segments as _segments, value_and_grads as _value_and_grads


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
def test_forward_fp32(rng, t, block, use_s0, use_seg):
    q, k, v, s0 = _inputs(rng, 2, t, 16, 16, jnp.float32)
    s0 = s0 if use_s0 else None
    seg = _segments(t) if use_seg else None
    o, st = _run(q, k, v, s0, seg, block)
    assert_forward_matches(o, st, q, k, v, s0, seg)


def test_forward_bf16_dk_ne_dv(rng):
    t = 50
    q, k, v, s0 = _inputs(rng, 2, t, 16, 32, jnp.bfloat16)
    seg = _segments(t)
    o, st = _run(q, k, v, s0, seg, 16)
    assert_forward_matches(o, st, q, k, v, s0, seg)


@pytest.mark.parametrize(
    "t,use_s0,use_seg,dtype",
    [
        (40, True, False, jnp.float32),  # d(final state) flows back to d(initial_state)
        (50, True, True, jnp.float32),  # last block of 2 tokens, initial state, segments
        (48, False, True, jnp.bfloat16),  # no initial state
    ],
)
def test_gradients(rng, t, use_s0, use_seg, dtype):
    q, k, v, s0 = _inputs(rng, 2, t, 16, 16, dtype)
    s0 = s0 if use_s0 else None
    seg = _segments(t) if use_seg else None
    do = jnp.asarray(rng.standard_normal(v.shape), jnp.float32).astype(dtype)
    dst = jnp.asarray(rng.standard_normal((2, 3, 16, 16)), jnp.float32)
    kern = lambda *a, **kw: tpu.lightning_attention(*a, block_size=16, interpret=True, **kw)  # noqa: E731
    outs, grads = jax.jit(functools.partial(_value_and_grads, kern))(q, k, v, s0, seg, do, dst)
    ref_outs, ref_grads = jax.jit(functools.partial(_value_and_grads, reference.quadratic))(
        q, k, v, s0, seg, do, dst
    )
    assert_outputs_and_grads_match(outs, grads, ref_outs, ref_grads, dtype)


def test_decay_gradient_is_zero_and_ops_dispatch(rng):
    assert_decay_gradient_is_zero_and_op_matches_reference(rng, block_size=16, impl="tpu", interpret=True)
