"""Sequence split (pallas_kernels/lightning_attention/split.py): P chunks run as a batch, chained through
their states, equal the unsplit computation in outputs, final state and gradients (q, k, v, initial
state), with segments that start at a chunk's first token, inside a chunk, and span chunks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.lightning_attention import ops, split
from tests.kernels.common import DECAY, assert_outputs_and_grads_match, inputs, value_and_grads


def _segments(t, parts):
    """Row 0: one segment; row 1: a start exactly at chunk 2's first token, one inside chunk 1, one in the
    last chunk; the segment from chunk 2 runs on into chunk 3."""
    L = t // parts
    row1 = np.ones(t, np.int32)
    row1[L + 3:] = 2
    row1[2 * L:] = 3
    row1[t - 2:] = 4
    return jnp.asarray(np.stack([np.zeros(t, np.int32), row1]))


def _split_vs_whole(rng, impl, t, parts, dtype, use_s0, use_seg, **kw):
    q, k, v, s0 = inputs(rng, 2, t, 8, 8, dtype)
    s0 = s0 if use_s0 else None
    seg = _segments(t, parts) if use_seg else None
    do = jnp.asarray(rng.standard_normal(v.shape), dtype)
    dst = jnp.asarray(rng.standard_normal((2, 3, 8, 8)), jnp.float32)
    run = functools.partial(ops.lightning_attention, return_state=True, impl=impl, block_size=4, **kw)
    outs, grads = value_and_grads(functools.partial(run, seq_split=parts), q, k, v, s0, seg, do, dst)
    ref_outs, ref_grads = value_and_grads(functools.partial(run, seq_split=1), q, k, v, s0, seg, do, dst)
    return outs, grads, ref_outs, ref_grads


@pytest.mark.parametrize("use_s0, use_seg", [(False, False), (True, True), (True, False)])
def test_split_reference_equals_whole(rng, use_s0, use_seg):
    outs, grads, ref_outs, ref_grads = _split_vs_whole(rng, "reference", 40, 4, jnp.float32, use_s0, use_seg)
    assert_outputs_and_grads_match(outs, grads, ref_outs, ref_grads, jnp.float32)


def test_split_triton_kernel_equals_whole(rng):
    outs, grads, ref_outs, ref_grads = _split_vs_whole(rng, "triton", 24, 2, jnp.float32, True, True,
                                                       interpret=True)
    assert_outputs_and_grads_match(outs, grads, ref_outs, ref_grads, jnp.float32)


@pytest.mark.parametrize("use_s0", [False, True])
def test_split_interleaved_qkv_equals_whole(rng, use_s0):
    """ops.lightning_attention_qkv split in 4 (split_sequence_qkv: its backward seeds each chunk's kernels with the
    chunk's end-state cotangent instead of autodiff through the chunk states) == the unsplit kernels, with a
    segment starting on a chunk's first token, one inside a chunk and one spanning chunks."""
    t, parts, d = 64, 4, 16
    qkv = jnp.asarray(rng.standard_normal((2, t, 3, 3 * d)) / d**0.5, jnp.float32)
    s0 = jnp.asarray(rng.standard_normal((2, 3, d, d)), jnp.float32) if use_s0 else None
    seg = _segments(t, parts)
    do = jnp.asarray(rng.standard_normal((2, t, 3, d)), jnp.float32)
    dst = jnp.asarray(rng.standard_normal((2, 3, d, d)), jnp.float32)

    def run(parts):
        def f(x, *s):
            return ops.lightning_attention_qkv(x, DECAY, initial_state=s[0] if s else None, segment_ids=seg,
                                               return_state=True, impl="triton", interpret=True, block_size=16,
                                               seq_split=parts)

        out, vjp = jax.vjp(f, *((qkv,) if s0 is None else (qkv, s0)))
        return out, vjp((do, dst))

    outs, grads = run(parts)
    ref_outs, ref_grads = run(1)
    for a, b in zip((*outs, *grads), (*ref_outs, *ref_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-5)


def test_split_bf16_within_bf16_tolerance(rng):
    outs, grads, ref_outs, ref_grads = _split_vs_whole(rng, "reference", 32, 4, jnp.bfloat16, True, True)
    assert_outputs_and_grads_match(outs, grads, ref_outs, ref_grads, jnp.bfloat16)


def test_auto_parts_fills_the_sms_only_when_needed():
    assert split.auto_parts(1, 8192, 16, 128, 132) == 4  # 32 blocks -> 128
    assert split.auto_parts(1, 65536, 64, 128, 132) == 1  # 128 blocks already
    assert split.auto_parts(2, 16384, 16, 128, 132) == 1  # 64 blocks: splitting measured no faster
    assert split.auto_parts(1, 65536, 8, 128, 132) == 8
    assert split.auto_parts(1, 8191, 16, 128, 132) == 1  # no power of two divides the length
    assert split.auto_parts(1, 1536, 4, 64, 132) == 1  # chunks would be shorter than MIN_CHUNK
    q = jnp.zeros((1, 8192, 16, 128))
    assert ops._seq_parts("auto", "reference", q, q) == 1  # CPU / TPU paths never split by themselves


def test_bad_seq_split():
    q = jnp.zeros((1, 12, 3, 4))
    for bad, msg in ((5, "divide"), (0, "positive"), ("two", "positive"), (True, "positive")):
        with pytest.raises(ValueError, match=msg):
            ops.lightning_attention(q, q, q, DECAY, seq_split=bad, impl="reference")
