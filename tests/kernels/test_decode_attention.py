"""Split-K decode attention (Pallas Triton, interpret mode on the CPU) and its XLA path vs the fp32 oracle."""

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.decode_attention import gpu_triton, ops, reference
from tests.kernels.common import rel_err


def _inputs(rng, b, H, K, D, S, dtype):
    q = jnp.asarray(rng.standard_normal((b, H, D)), jnp.float32).astype(dtype)
    k = jnp.asarray(rng.standard_normal((b, S, K, D)), jnp.float32).astype(dtype)
    v = jnp.asarray(rng.standard_normal((b, S, K, D)), jnp.float32).astype(dtype)
    return q, k, v


# Rows: one slot only; a short range; a range that starts mid-block (left padding) and ends mid-block; the whole
# cache; an empty range (a row not yet filled: zeros). Each row's valid blocks are cut into `splits` runs at run time.
def _bounds(S, rng):
    a = int(rng.integers(1, S // 4))
    start = np.array([0, 3, a, 0, 7], np.int32)
    length = np.array([1, 9, S - int(rng.integers(1, 17)), S, 7], np.int32)
    return jnp.asarray(start), jnp.asarray(length)


@pytest.mark.parametrize("H,K,D,dtype,tol", [
    (4, 4, 16, jnp.float32, 1e-5),   # MHA (G = 1, padded to 16 rows), fp32: round-off only
    (6, 2, 32, jnp.float32, 1e-5),   # G = 3 (not a power of two)
    (8, 2, 64, jnp.bfloat16, 2e-2),  # bf16 operands and bf16 p in the value dot: ~2^-8 relative per term
])
def test_kernel_matches_oracle_on_ragged_rows(H, K, D, dtype, tol):
    rng = np.random.default_rng()
    S = 272  # 17 blocks of 16: runs of unequal length, a cache that is no power-of-two number of blocks
    q, k, v = _inputs(rng, 5, H, K, D, S, dtype)
    start, length = _bounds(S, rng)
    ref = reference.decode_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                                     start, length)
    out = gpu_triton.decode_attention(q, k, v, start, length, splits=3, block_k=16, interpret=True)
    assert out.dtype == dtype and out.shape == (5, H, D)
    assert rel_err(out, ref) < tol
    assert np.all(np.asarray(out[4], np.float32) == 0)  # empty range -> zeros, not NaN
    xla = ops.xla_decode_attention(q, k, v, start, length)
    assert rel_err(xla[:4], ref[:4]) < tol  # the XLA path (an empty row is NaN-free only in the kernel / oracle)


def test_slots_outside_the_range_are_never_read():
    """Poison every slot outside [start, length): the kernel must not load them (NaN would propagate)."""
    rng = np.random.default_rng()
    S, K, D = 128, 2, 16
    q, k, v = _inputs(rng, 2, 4, K, D, S, jnp.float32)
    start, length = jnp.array([16, 40]), jnp.array([48, 41])
    pos = np.arange(S)[None, :, None, None]
    outside = (pos < np.asarray(start)[:, None, None, None]) | (pos >= np.asarray(length)[:, None, None, None])
    blk = 16  # the kernel reads whole blocks: keep the slots of blocks that meet the range finite
    lo_blk = (np.asarray(start) // blk) * blk
    hi_blk = -(-np.asarray(length) // blk) * blk
    far = (pos < lo_blk[:, None, None, None]) | (pos >= hi_blk[:, None, None, None])
    kp, vp = (jnp.where(far, jnp.nan, a) for a in (k, v))
    ref = reference.decode_attention(q, jnp.where(outside, 0, k), jnp.where(outside, 0, v), start, length)
    for splits in (2, 7):  # 7: more runs than the second row's one valid block (empty runs merge as nothing)
        out = gpu_triton.decode_attention(q, kp, vp, start, length, splits=splits, block_k=blk, interpret=True)
        assert np.all(np.isfinite(np.asarray(out)))
        assert rel_err(out, ref) < 1e-5


def test_dispatch_and_bad_shapes():
    rng = np.random.default_rng()
    q, k, v = _inputs(rng, 2, 4, 2, 16, 64, jnp.float32)
    start, length = jnp.array([0, 2]), jnp.array([64, 30])
    ref = reference.decode_attention(q, k, v, start, length)
    assert rel_err(ops.decode_attention(q, k, v, start, length, impl="auto"), ref) < 1e-5  # CPU: xla
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.decode_attention(q, k, v, start, length, impl="cuda")
    q24, k24, v24 = _inputs(rng, 1, 2, 1, 24, 64, jnp.float32)
    assert gpu_triton.fits(q.shape, k.shape, 16) and not gpu_triton.fits(q24.shape, k24.shape)
    with pytest.raises(ValueError, match="head_dim 24"):
        gpu_triton.decode_attention(q24, k24, v24, start[:1], length[:1], interpret=True)
    with pytest.raises(ValueError, match="cache length 56 is not a multiple of block_k = 16"):
        gpu_triton.decode_attention(q, k[:, :56], v[:, :56], start, length, block_k=16, interpret=True)
    with pytest.raises(ValueError, match="splits=0"):
        gpu_triton.decode_attention(q, k, v, start, length, splits=0, block_k=16, interpret=True)


def test_default_splits():
    assert gpu_triton.default_splits(1, 8, 65536, 64) == 66  # few programs: ~528 in all
    assert gpu_triton.default_splits(1, 4, 65600, 64) == 132  # an odd number of blocks (once: one split per row)
    assert gpu_triton.default_splits(64, 8, 65536, 64) == 1  # 512 programs already
    assert gpu_triton.default_splits(1, 1, 128, 64) == 2  # never more splits than blocks
